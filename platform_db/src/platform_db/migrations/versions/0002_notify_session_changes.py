"""notify session changes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:40:00

Every service process caches validated sessions and LISTENs on these channels, so a sign-out,
a revocation or a user change anywhere (a better-auth app writing the same tables included)
evicts the cached entry in every process at once. Payloads carry ids, never tokens.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION platform_notify_session_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify('platform_session_changed', '*');
            ELSE
                PERFORM pg_notify('platform_session_changed', OLD.id);
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION platform_notify_user_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify('platform_user_changed', '*');
            ELSE
                PERFORM pg_notify('platform_user_changed', OLD.id);
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        'CREATE TRIGGER session_notify_change AFTER UPDATE OR DELETE ON "session" '
        "FOR EACH ROW EXECUTE FUNCTION platform_notify_session_change()"
    )
    op.execute(
        'CREATE TRIGGER session_notify_truncate AFTER TRUNCATE ON "session" '
        "FOR EACH STATEMENT EXECUTE FUNCTION platform_notify_session_change()"
    )
    op.execute(
        'CREATE TRIGGER user_notify_change AFTER UPDATE OR DELETE ON "user" '
        "FOR EACH ROW EXECUTE FUNCTION platform_notify_user_change()"
    )
    op.execute(
        'CREATE TRIGGER user_notify_truncate AFTER TRUNCATE ON "user" '
        "FOR EACH STATEMENT EXECUTE FUNCTION platform_notify_user_change()"
    )


def downgrade() -> None:
    op.execute('DROP TRIGGER user_notify_truncate ON "user"')
    op.execute('DROP TRIGGER user_notify_change ON "user"')
    op.execute('DROP TRIGGER session_notify_truncate ON "session"')
    op.execute('DROP TRIGGER session_notify_change ON "session"')
    op.execute("DROP FUNCTION platform_notify_user_change()")
    op.execute("DROP FUNCTION platform_notify_session_change()")
