"""Session lifecycle: create, validate (one indexed query), slide, revoke."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from platform_auth.cache import SessionCache
from platform_auth.settings import AuthSettings
from platform_auth.tokens import generate_id, generate_token
from platform_db.models import Session, User
from service_kit.types import utcnow

# rememberMe=false: a one-day session and a cookie that ends with the browser session.
SHORT_SESSION = timedelta(days=1)
_SLACK = timedelta(minutes=1)


@dataclass(frozen=True)
class SessionPolicy:
    expires_in: timedelta
    update_age: timedelta

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> SessionPolicy:
        return cls(
            expires_in=timedelta(seconds=settings.session_expires_in),
            update_age=timedelta(seconds=settings.session_update_age),
        )

    def is_short(self, session: Session) -> bool:
        """A `rememberMe: false` session: one day long when it was last set, never slid.

        Read from the row itself, so it holds for bearer clients (which send no
        dont_remember cookie) and for sessions a better-auth app created.
        """
        if self.expires_in <= SHORT_SESSION:
            return False
        return session.expires_at - session.updated_at <= SHORT_SESSION + _SLACK

    def needs_refresh(self, session: Session, now: datetime) -> bool:
        # better-auth: refresh once `updateAge` has passed since the expiry was last set.
        if not self.update_age or self.is_short(session):
            return False
        return session.expires_at - self.expires_in + self.update_age <= now


@dataclass(frozen=True)
class AuthContext:
    """The signed-in user and the session that proved it."""

    session: Session
    user: User
    refreshed: bool = False


async def create_session(
    db: AsyncSession,
    user_id: str,
    policy: SessionPolicy,
    *,
    ip_address: str | None = None,
    user_agent: str | None = None,
    remember_me: bool = True,
) -> Session:
    now = utcnow()
    session = Session(
        id=generate_id(),
        token=generate_token(),
        user_id=user_id,
        expires_at=now + (policy.expires_in if remember_me else SHORT_SESSION),
        created_at=now,
        updated_at=now,
        ip_address=ip_address,
        user_agent=user_agent,
    )
    db.add(session)
    await db.flush()
    return session


async def find_session(db: AsyncSession, token: str) -> tuple[Session, User] | None:
    """The session with this token and its user, in one query on the unique token index."""
    row = (
        await db.execute(
            select(Session, User)
            .join(User, col(Session.user_id) == col(User.id))
            .where(col(Session.token) == token)
        )
    ).first()
    return (row[0], row[1]) if row is not None else None


async def validate_session(
    db: AsyncSession, token: str, policy: SessionPolicy
) -> AuthContext | None:
    """The live session for `token`, refreshed if due; None if unknown or expired.

    An expired session is deleted in the caller's transaction; the caller decides to commit.
    """
    found = await find_session(db, token)
    if found is None:
        return None
    session, user = found
    now = utcnow()
    if session.expires_at <= now:
        await db.execute(delete(Session).where(col(Session.id) == session.id))
        return None
    if policy.needs_refresh(session, now):
        new_expiry = now + policy.expires_in
        # The guard makes concurrent refreshes of one session a single write.
        await db.execute(
            update(Session)
            .where(col(Session.id) == session.id, col(Session.expires_at) == session.expires_at)
            .values(expires_at=new_expiry, updated_at=now)
        )
        session.expires_at, session.updated_at = new_expiry, now
        return AuthContext(session=session, user=user, refreshed=True)
    return AuthContext(session=session, user=user)


async def list_sessions(db: AsyncSession, user_id: str) -> list[Session]:
    """The user's unexpired sessions, newest first."""
    rows = await db.execute(
        select(Session)
        .where(col(Session.user_id) == user_id, col(Session.expires_at) > utcnow())
        .order_by(col(Session.created_at).desc())
    )
    return list(rows.scalars())


# Revocations also evict from this process's cache (`cache`) at once: the NOTIFY the delete
# fires reaches every process, this one included, but only after the commit.
async def revoke_session(
    db: AsyncSession, token: str, *, cache: SessionCache | None = None
) -> bool:
    result = await db.execute(delete(Session).where(col(Session.token) == token))
    if cache is not None:
        cache.evict_token(token)
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def revoke_user_session(
    db: AsyncSession, user_id: str, token: str, *, cache: SessionCache | None = None
) -> bool:
    """Revoke one of `user_id`'s sessions; another user's token is left alone."""
    result = await db.execute(
        delete(Session).where(col(Session.token) == token, col(Session.user_id) == user_id)
    )
    revoked = bool(result.rowcount)  # type: ignore[attr-defined]
    if revoked and cache is not None:
        cache.evict_token(token)
    return revoked


async def revoke_user_sessions(
    db: AsyncSession,
    user_id: str,
    *,
    keep_token: str | None = None,
    cache: SessionCache | None = None,
) -> int:
    stmt = delete(Session).where(col(Session.user_id) == user_id)
    if keep_token is not None:
        stmt = stmt.where(col(Session.token) != keep_token)
    result = await db.execute(stmt)
    if cache is not None:
        cache.evict_user(user_id)
    return int(result.rowcount)  # type: ignore[attr-defined]
