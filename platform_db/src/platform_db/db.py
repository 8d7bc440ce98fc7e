"""Engine, per-request session and the transaction it owns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from platform_db.settings import DatabaseSettings


def async_url(url: str) -> str:
    """Accept the URL forms operators use (postgres://, postgresql://) and select asyncpg."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got scheme {parts.scheme!r}")
    # libpq's sslmode is spelt ssl for asyncpg.
    query = [("ssl" if k == "sslmode" else k, v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(("postgresql+asyncpg", parts.netloc, parts.path, urlencode(query), ""))


def asyncpg_dsn(url: str) -> tuple[str, dict[str, object]]:
    """A DSN and keyword arguments for `asyncpg.connect` (for connections outside the pool)."""
    parts = urlsplit(async_url(url))
    query = dict(parse_qsl(parts.query))
    kwargs: dict[str, object] = {}
    if "ssl" in query:
        kwargs["ssl"] = query.pop("ssl")
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))
    return dsn, kwargs


def create_engine(settings: DatabaseSettings, **kwargs: object) -> AsyncEngine:
    options: dict[str, object] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_pre_ping": True,
    }
    options.update(kwargs)
    return create_async_engine(async_url(settings.database_url), **options)


class Database:
    """The engine and session factory of one process, kept on `app.state.db`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessionmaker = async_sessionmaker(
            engine, class_=AsyncSession, expire_on_commit=False, autoflush=False
        )

    async def dispose(self) -> None:
        await self.engine.dispose()


async def _db_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: commit when the handler returns, roll back if it raises."""
    database: Database = request.app.state.db
    async with database.sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()


# scope="function": commit before the response is sent, so a failed commit is never a 2xx.
DbSession = Annotated[AsyncSession, Depends(_db_session, scope="function")]
