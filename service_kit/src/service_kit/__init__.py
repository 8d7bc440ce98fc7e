"""The service kit: how a service runs. Knows nothing of auth.

Engine and per-request transaction, errors, middleware, health, settings, migration runner,
console commands and `serve`, per-owner statements and keyset cursors.
"""
