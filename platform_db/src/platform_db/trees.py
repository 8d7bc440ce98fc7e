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
    # rate_limit (0003) is there only if better-auth ran with database rate limits.
    baseline_tables=frozenset({"user", "session", "account", "verification"}),
    triggers=(
        ("session", "session_notify_change"),
        ("session", "session_notify_truncate"),
        ("user", "user_notify_change"),
        ("user", "user_notify_truncate"),
    ),
)
