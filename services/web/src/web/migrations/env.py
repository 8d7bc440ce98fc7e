"""Alembic environment of the web tree; the logic is shared in platform_db.migrate."""

from platform_db.migrate import run_env

run_env()
