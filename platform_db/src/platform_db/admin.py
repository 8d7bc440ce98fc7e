"""What an operator does to accounts without writing SQL: find users, look at one, end all of
a user's sessions, delete a user (and, through the foreign keys, every service's rows of
theirs). Never a token, a password hash or a secret in what these return.

A revocation or a deletion removes `session` rows; the platform's triggers send the NOTIFY
every running service's session cache listens for, so each of them refuses those sessions
at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, column, delete, func, or_, select, table, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from platform_db.models import NOW_UTC, Account, Session, User

_user = User.__table__  # type: ignore[attr-defined]
_session = Session.__table__  # type: ignore[attr-defined]
_account = Account.__table__  # type: ignore[attr-defined]


class NoSuchUser(LookupError):
    def __init__(self, email: str) -> None:
        super().__init__(f"no user with the email {email!r}")


@dataclass(frozen=True)
class UserSummary:
    id: str
    email: str
    name: str
    email_verified: bool
    created_at: datetime
    live_sessions: int


@dataclass(frozen=True)
class SessionInfo:
    id: str
    created_at: datetime
    expires_at: datetime
    ip_address: str | None
    user_agent: str | None


@dataclass(frozen=True)
class UserDetail:
    user: UserSummary
    sign_in_methods: list[str]  # the accounts' provider ids: credential, google, ...
    sessions: list[SessionInfo]


@dataclass(frozen=True)
class Deleted:
    """A deleted user, with the rows that went with them, by table."""

    user: UserSummary
    rows: dict[str, int] = field(default_factory=dict)


def _summary_query() -> Select[Any]:
    live = (
        select(func.count())
        .where(_session.c.user_id == _user.c.id, _session.c.expires_at > NOW_UTC)
        .scalar_subquery()
    )
    return select(
        _user.c.id,
        _user.c.email,
        _user.c.name,
        _user.c.email_verified,
        _user.c.created_at,
        live.label("live_sessions"),
    )


async def list_users(
    engine: AsyncEngine, *, search: str | None = None, limit: int = 50
) -> list[UserSummary]:
    """Users, newest first; `search` matches a part of the email or the name (any case)."""
    query = _summary_query().order_by(_user.c.created_at.desc(), _user.c.id).limit(limit)
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(or_(_user.c.email.ilike(pattern), _user.c.name.ilike(pattern)))
    async with engine.connect() as conn:
        return [UserSummary(**row._mapping) for row in await conn.execute(query)]


async def _find(conn: AsyncConnection, email: str) -> UserSummary:
    # better-auth stores emails lower-cased; an operator may type them any way.
    query = _summary_query().where(_user.c.email == email.strip().lower())
    row = (await conn.execute(query)).first()
    if row is None:
        raise NoSuchUser(email)
    return UserSummary(**row._mapping)


async def show_user(engine: AsyncEngine, email: str) -> UserDetail:
    async with engine.connect() as conn:
        user = await _find(conn, email)
        methods = await conn.execute(
            select(_account.c.provider_id)
            .where(_account.c.user_id == user.id)
            .order_by(_account.c.provider_id)
        )
        sessions = await conn.execute(
            select(
                _session.c.id,
                _session.c.created_at,
                _session.c.expires_at,
                _session.c.ip_address,
                _session.c.user_agent,
            )
            .where(_session.c.user_id == user.id, _session.c.expires_at > NOW_UTC)
            .order_by(_session.c.created_at.desc())
        )
        return UserDetail(
            user=user,
            sign_in_methods=list(methods.scalars()),
            sessions=[SessionInfo(**row._mapping) for row in sessions],
        )


async def revoke_sessions(engine: AsyncEngine, email: str) -> int:
    """End every session of the user; how many there were."""
    async with engine.begin() as conn:
        user = await _find(conn, email)
        result = await conn.execute(delete(_session).where(_session.c.user_id == user.id))
        return int(result.rowcount or 0)


# Every single-column foreign key to `user`, whoever owns the referencing table (the catalog's
# own names: nothing here comes from input).
_FOREIGN_KEYS_TO_USER = text(
    """
    SELECT n.nspname, c.relname, a.attname
    FROM pg_constraint k
    JOIN pg_class c ON c.oid = k.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
    WHERE k.contype = 'f' AND k.confrelid = to_regclass('"user"')
      AND array_length(k.conkey, 1) = 1
    ORDER BY n.nspname, c.relname, a.attname
    """
)


async def delete_user(engine: AsyncEngine, email: str) -> Deleted:
    """Delete the user; their sessions, accounts and every service's rows that reference them
    go with them (the foreign keys cascade). The rows are counted first, in the same
    transaction."""
    async with engine.begin() as conn:
        user = await _find(conn, email)
        counts: dict[str, int] = {}
        for schema, name, col in (await conn.execute(_FOREIGN_KEYS_TO_USER)).all():
            referencing = table(name, column(col), schema=schema)
            count = (
                await conn.execute(
                    select(func.count()).select_from(referencing).where(column(col) == user.id)
                )
            ).scalar_one()
            label = name if schema == "public" else f"{schema}.{name}"
            counts[label] = counts.get(label, 0) + int(count)
        await conn.execute(delete(_user).where(_user.c.id == user.id))
        return Deleted(user=user, rows=counts)
