"""The engine, its URL forms, and the read and the write session factories of a process."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from service_kit.errors import is_stale_statement
from service_kit.settings import DatabaseSettings


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


class _NoRowsInLogs(logging.Filter):
    """SQLAlchemy's engine logger at DEBUG writes every result row: session tokens, password
    hashes. Drop those records (the statements stay; their parameters are hidden)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Row "))


_ENGINE_LOGGER = logging.getLogger("sqlalchemy.engine.Engine")
if not any(isinstance(f, _NoRowsInLogs) for f in _ENGINE_LOGGER.filters):
    _ENGINE_LOGGER.addFilter(_NoRowsInLogs())


def create_engine(settings: DatabaseSettings, **kwargs: object) -> AsyncEngine:
    options: dict[str, object] = {
        # Bound parameters are tokens, hashes and addresses: keep them out of SQL logs and of
        # the text of database errors (which end up logged).
        "hide_parameters": True,
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        # No pre-ping: it costs a round trip per request. A connection that died with the
        # server fails its request with 503 and SQLAlchemy then invalidates the whole pool,
        # so the next requests reconnect. Recycling bounds a connection's age anyway.
        "pool_recycle": 1800,
    }
    options.update(kwargs)
    return create_async_engine(async_url(settings.database_url), **options)


class ReadSession(AsyncSession):
    """The session of a read (autocommit): a statement another process's DDL made stale is
    run once more, since nothing else ran in a transaction that its failure would abort."""

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute(*args, **kwargs)
        except DBAPIError as exc:
            if not is_stale_statement(exc):
                raise
            return await super().execute(*args, **kwargs)


class Database:
    """The engine and the two session factories of one process."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.write_sessionmaker = async_sessionmaker(
            engine, class_=AsyncSession, expire_on_commit=False, autoflush=False
        )
        # Reads run each statement on its own: no BEGIN and COMMIT round trips.
        self.read_sessionmaker = async_sessionmaker(
            engine.execution_options(isolation_level="AUTOCOMMIT"),
            class_=ReadSession,
            expire_on_commit=False,
            autoflush=False,
        )

    async def dispose(self) -> None:
        await self.engine.dispose()
