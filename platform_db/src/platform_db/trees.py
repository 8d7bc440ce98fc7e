"""The platform's migration tree."""

from platform_db.models import PLATFORM_TABLES
from service_kit.migrate import MigrationTree

PLATFORM = MigrationTree(
    name="platform-db",
    script_location="platform_db:migrations",
    models_module="platform_db.models",
    schema="public",
    version_table="platform_alembic_version",
    owned_tables=PLATFORM_TABLES,
    baseline="0001",  # the four tables exactly as better-auth 1.7.25 creates them
    triggers=(
        ("session", "session_notify_change"),
        ("session", "session_notify_truncate"),
        ("user", "user_notify_change"),
        ("user", "user_notify_truncate"),
    ),
)
