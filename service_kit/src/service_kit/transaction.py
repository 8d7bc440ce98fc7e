"""The request's database access, owned here: handlers and helpers never commit.

Two kinds for a service's routes, chosen by the route, not by its HTTP verb, both running the
kit's compiled statements (`service_kit.compiled`) on one pooled connection:
- `ReadDb`: statements without a transaction, each committed by itself (a GET that reads);
- `WriteDb`: the request's one transaction, committed when the handler returns and before
  the response is sent (scope="function"), so a failed commit is never a 2xx; rolled back if
  the handler raises.
Either connects at its first statement and gives the connection back as soon as the handler
is done, so a request never holds two (the auth dependency's own short session is closed
before the route runs) and none is held while the response is written.

`ReadOrm` / `WriteOrm` are the same two kinds as ORM sessions, for code that works with
mapped objects (the login's routes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

import asyncpg
from asyncpg.transaction import Transaction
from fastapi import Depends, Request
from opentelemetry.trace import SpanKind
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from service_kit.compiled import Compiled
from service_kit.db import Database, ReadSession
from service_kit.errors import UNAVAILABLE_SQLSTATES, InvalidInput, ServiceUnavailable
from service_kit.openapi import raises
from service_kit.state import kit_state
from service_kit.tracing import attributes, span_name

log = logging.getLogger(__name__)
# A checkout slower than this waited for a connection to be given back (or opened one).
POOL_WAIT = 0.001


def database(request: Request) -> Database:
    """The process's database (the kit's typed state, set up by the app's lifespan)."""
    return kit_state(request.app).database


def _stale(exc: BaseException) -> bool:
    # A cached statement or type that another process's DDL made stale (asyncpg has already
    # dropped its caches, so the next try prepares afresh).
    return isinstance(
        exc, asyncpg.InvalidCachedStatementError | asyncpg.exceptions.OutdatedSchemaCacheError
    ) or (isinstance(exc, asyncpg.InternalServerError) and "cache lookup failed" in str(exc))


def _unavailable(reason: BaseException) -> ServiceUnavailable:
    log.warning("database unavailable: %s", type(reason).__name__)
    return ServiceUnavailable(headers={"Retry-After": "1"})


async def _begin(driver: asyncpg.Connection) -> Transaction:
    tx = driver.transaction()
    await tx.start()
    return tx


class Statements:
    """A request's connection, taken from the pool at the first statement, running compiled
    statements on the asyncpg connection underneath.

    Errors become the kit's: a value Postgres refuses (SQLSTATE class 22) is InvalidInput
    (400); a connection lost, a server going away or a statement gone stale in a
    transaction is ServiceUnavailable (503, the client may retry at once); anything else
    is raised as it is (a bug: 500).
    """

    __slots__ = ("_broken", "_database", "_driver", "_engine", "_proxied", "_transaction", "_tx")

    def __init__(
        self, engine: AsyncEngine, *, transaction: bool, database: Database | None = None
    ) -> None:
        self._engine = engine
        self._database = database  # counts the checkouts that had to wait
        self._transaction = transaction
        self._proxied: PoolProxiedConnection | None = None
        self._driver: asyncpg.Connection | None = None
        self._tx: Transaction | None = None
        self._broken = False

    async def _connect(self) -> asyncpg.Connection:
        started = time.perf_counter()
        try:
            proxied = await self._engine.raw_connection()
        except (self._engine.dialect.loaded_dbapi.Error, OSError, PoolTimeout) as exc:
            # No connection to be had (the server is shutting down, turns connections away or
            # is gone; the pool waited in vain): the pool raises the driver's own errors here,
            # not SQLAlchemy's wrapped ones the error handlers answer with 503.
            raise _unavailable(exc) from exc
        if self._database is not None and time.perf_counter() - started > POOL_WAIT:
            self._database.pool_waits += 1
        self._proxied = proxied
        driver: asyncpg.Connection = proxied.driver_connection
        self._driver = driver
        if self._transaction:
            # Both in _run: a pooled connection the server closed refuses to make the
            # transaction object already (asyncpg's InterfaceError), not only to start it.
            self._tx = await self._run(_begin, driver)
        return driver

    async def _run(self, call: Any, *args: Any) -> Any:
        try:
            return await call(*args)
        except asyncpg.PostgresError as exc:
            sqlstate = exc.sqlstate or ""
            if sqlstate.startswith("22"):
                raise InvalidInput() from None
            if sqlstate.startswith(UNAVAILABLE_SQLSTATES):
                self._broken = True
                raise _unavailable(exc) from exc
            if _stale(exc):
                # In a transaction, the transaction is aborted: the request as a whole can be
                # retried (a read without one is retried here, see _fetch).
                raise _unavailable(exc) from exc
            raise
        except asyncpg.exceptions.OutdatedSchemaCacheError as exc:
            raise _unavailable(exc) from exc
        except (
            OSError,
            TimeoutError,
            asyncpg.InterfaceError,  # the connection is closed
            asyncpg.exceptions.InternalClientError,  # its protocol is in a state it cannot use
        ) as exc:
            self._broken = True
            raise _unavailable(exc) from exc

    async def _fetch(self, statement: Compiled, params: Mapping[str, Any]) -> list[Any]:
        tracer = self._database.tracer if self._database is not None else None
        if tracer is None:
            return await self._fetch_untraced(statement, params)
        with tracer.start_as_current_span(
            span_name(statement.sql), kind=SpanKind.CLIENT, attributes=attributes(statement.sql)
        ):
            return await self._fetch_untraced(statement, params)

    async def _fetch_untraced(self, statement: Compiled, params: Mapping[str, Any]) -> list[Any]:
        driver = self._driver or await self._connect()
        args = statement.args(params)
        if self._tx is not None:
            result: list[Any] = await self._run(driver.fetch, statement.sql, *args)
            return result
        try:
            result = await self._run(driver.fetch, statement.sql, *args)
        except ServiceUnavailable as exc:
            # Autocommit: nothing else ran in a transaction this failure aborted, so a
            # statement another process's DDL made stale can simply run once more.
            if exc.__cause__ is None or not _stale(exc.__cause__):
                raise
            result = await self._run(driver.fetch, statement.sql, *args)
        return result

    async def rows(self, statement: Compiled, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every row `statement` returns, each a dict by column key."""
        return [statement.row(r) for r in await self._fetch(statement, params)]

    async def row(self, statement: Compiled, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row `statement` returns, or None."""
        records = await self._fetch(statement, params)
        return statement.row(records[0]) if records else None

    async def close(self, *, commit: bool) -> None:
        proxied, tx = self._proxied, self._tx
        self._proxied = self._driver = self._tx = None
        if proxied is None:
            return
        try:
            if tx is not None and not self._broken:
                await self._run(tx.commit if commit else tx.rollback)
        finally:
            # Back to the pool (through SQLAlchemy, which may need to await there), or, if
            # the connection broke, closed and replaced.
            await greenlet_spawn(proxied.invalidate if self._broken else proxied.close)


# The error handlers answer a database out of reach with 503 and a value Postgres refuses
# (SQLSTATE class 22) with 400: every route with database access can answer either.
@raises(ServiceUnavailable, InvalidInput)
async def _read(request: Request) -> AsyncIterator[Statements]:
    db = database(request)
    # Behind a transaction pooler a statement outside a transaction is not safe (db.py).
    statements = Statements(db.engine, transaction=db.pooled, database=db)
    try:
        yield statements
    finally:
        await statements.close(commit=False)


@raises(ServiceUnavailable, InvalidInput)
async def _write(request: Request) -> AsyncIterator[Statements]:
    db = database(request)
    statements = Statements(db.engine, transaction=True, database=db)
    try:
        yield statements
    except BaseException:
        await statements.close(commit=False)
        raise
    await statements.close(commit=True)


ReadDb = Annotated[Statements, Depends(_read, scope="function")]
WriteDb = Annotated[Statements, Depends(_write, scope="function")]


@raises(ServiceUnavailable, InvalidInput)
async def _read_orm(request: Request) -> AsyncIterator[ReadSession]:
    # Autocommit: every statement is already committed; there is nothing to end.
    async with database(request).read_sessionmaker() as session:
        yield session


@raises(ServiceUnavailable, InvalidInput)
async def _write_orm(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: commit when the handler returns, roll back if it raises."""
    async with database(request).write_sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()


ReadOrm = Annotated[ReadSession, Depends(_read_orm)]
WriteOrm = Annotated[AsyncSession, Depends(_write_orm, scope="function")]
