"""The engine, its URL forms, and the read and the write session factories of a process.

Behind a transaction pooler (PgBouncer in transaction mode, a managed Postgres's pooled URL)
consecutive statements of one client connection may run on different server connections,
and no session state survives a transaction. The engine then runs "pooled": no prepared
statement is cached or named (each one is the unnamed statement, parsed and run inside one
transaction, so it can neither clash with another client's nor leak on a server), and reads
run in a transaction too (outside one, the parse and the execution of a statement could go
to two server connections). A direct URL keeps asyncpg's statement caches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from opentelemetry.trace import Tracer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
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


log = logging.getLogger(__name__)

# Pooled mode: asyncpg's own statement cache off, SQLAlchemy's prepared-statement cache off,
# and every statement SQLAlchemy prepares is the unnamed one.
POOLED_CONNECT_ARGS: dict[str, object] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": lambda: "",
}


def create_engine(
    settings: DatabaseSettings, *, pooled: bool | None = None, **kwargs: object
) -> AsyncEngine:
    """The process's engine on DATABASE_URL; `pooled` (default: `settings.pooled`) for a
    transaction-pooled URL."""
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
    if settings.pooled if pooled is None else pooled:
        options["connect_args"] = dict(POOLED_CONNECT_ARGS)
    options.update(kwargs)
    return create_async_engine(async_url(settings.database_url), **options)


PROBE_TIMEOUT = 2.0  # seconds a NOTIFY may take to come back on a direct connection


async def hears_notify(
    listening: asyncpg.Connection,
    notify: Callable[[str], Awaitable[object]],
    wait: float = PROBE_TIMEOUT,
) -> bool:
    """Whether a NOTIFY that `notify(channel)` sends (on another connection) reaches a LISTEN
    on `listening`: False when `listening` goes through a transaction pooler, whose server
    connection holding the LISTEN is no longer this client's once the statement is done."""
    channel = f"kit_probe_{secrets.token_hex(8)}"
    heard = asyncio.Event()

    def on_notify(*_: object) -> None:
        heard.set()

    # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that arrives
    # as the NOTIFY does, and the caller (a listener being stopped) would run on.
    try:
        async with asyncio.timeout(wait):
            await listening.add_listener(channel, on_notify)
            await notify(channel)
            await heard.wait()
        return True
    except TimeoutError:
        return False
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(wait):
                await listening.remove_listener(channel, on_notify)


async def keeps_session(url: str, wait: float = PROBE_TIMEOUT) -> bool | None:
    """Whether `url` keeps one server session per client connection (a NOTIFY from a second
    connection reaches a LISTEN on the first); None when it cannot tell (unreachable)."""
    dsn, kwargs = asyncpg_dsn(url)
    # No statement cache: through a transaction pooler a cached statement would clash.
    kwargs.update(timeout=wait, statement_cache_size=0)
    try:
        listening = await asyncpg.connect(dsn, **kwargs)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    try:

        async def notify(channel: str) -> None:
            sender = await asyncpg.connect(dsn, **kwargs)
            try:
                await sender.execute("SELECT pg_notify($1, '')", channel)
            finally:
                await sender.close()

        return await hears_notify(listening, notify, wait)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    finally:
        listening.terminate()


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

    def __init__(self, engine: AsyncEngine, *, pooled: bool = False) -> None:
        self.engine, self.pooled = engine, pooled
        self.pool_waits = 0  # request checkouts that waited (service_kit.transaction)
        self.tracer: Tracer | None = None  # set when traces are on (service_kit.tracing)
        self.write_sessionmaker = async_sessionmaker(
            engine, class_=AsyncSession, expire_on_commit=False, autoflush=False
        )
        # Reads run each statement on its own: no BEGIN and COMMIT round trips (except behind
        # a transaction pooler, where a statement outside a transaction is not safe).
        self.autocommit_engine = (
            engine if pooled else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self.read_sessionmaker = async_sessionmaker(
            self.autocommit_engine, class_=ReadSession, expire_on_commit=False, autoflush=False
        )

    @contextlib.asynccontextmanager
    async def statements(self) -> AsyncIterator[AsyncConnection]:
        """A connection for statements that are each atomic on their own (an upsert): each
        commits by itself, in one round trip; behind a transaction pooler, all in one
        transaction, committed at the end."""
        if self.pooled:
            async with self.engine.begin() as conn:
                yield conn
        else:
            async with self.autocommit_engine.connect() as conn:
                yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()
