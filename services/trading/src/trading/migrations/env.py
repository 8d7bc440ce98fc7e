"""Alembic environment of the trading tree; the logic is shared in service_kit.migrate."""

from service_kit.migrate import run_env

run_env()
