"""The request's database access, owned here: handlers and helpers never commit.

Two kinds for a service's routes, chosen by the route, not by its HTTP verb, both Core
connections (a service's routes run Core statements; an ORM session per request cost more
than the statement it ran):
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

from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Executable, Result
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from service_kit.db import Database, ReadSession
from service_kit.errors import InvalidInput, ServiceUnavailable, is_stale_statement
from service_kit.openapi import raises
from service_kit.state import kit_state


def database(request: Request) -> Database:
    """The process's database (the kit's typed state, set up by the app's lifespan)."""
    return kit_state(request.app).database


class Statements:
    """A request's Core connection, taken from the pool at the first statement."""

    __slots__ = ("_conn", "_engine", "_transaction")

    def __init__(self, engine: AsyncEngine, *, transaction: bool) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._transaction = transaction

    async def _connection(self) -> AsyncConnection:
        conn = await self._engine.connect().start()
        self._conn = conn
        if self._transaction:
            await conn.begin()
        return conn

    async def execute(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> Result[Any]:
        conn = self._conn or await self._connection()
        if self._transaction:
            return await conn.execute(statement, parameters)
        try:
            return await conn.execute(statement, parameters)
        except DBAPIError as exc:
            # Autocommit: nothing else ran in a transaction this failure aborted, so a
            # statement another process's DDL made stale can simply run once more.
            if not is_stale_statement(exc):
                raise
            return await conn.execute(statement, parameters)

    async def close(self, *, commit: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._transaction and conn.in_transaction():
                await (conn.commit() if commit else conn.rollback())
        finally:
            await conn.close()


# The error handlers answer a database out of reach with 503 and a value Postgres refuses
# (SQLSTATE class 22) with 400: every route with database access can answer either.
@raises(ServiceUnavailable, InvalidInput)
async def _read(request: Request) -> AsyncIterator[Statements]:
    statements = Statements(database(request).autocommit_engine, transaction=False)
    try:
        yield statements
    finally:
        await statements.close(commit=False)


@raises(ServiceUnavailable, InvalidInput)
async def _write(request: Request) -> AsyncIterator[Statements]:
    statements = Statements(database(request).engine, transaction=True)
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
