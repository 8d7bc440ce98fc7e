"""A request's statements (service_kit.transaction.Statements) on a real Postgres: the
transaction of a write, and the kit's errors for what the database answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Column, MetaData, Table, Text, bindparam, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from platform_dev.embedded import free_port
from service_kit.compiled import Compiled
from service_kit.db import create_engine
from service_kit.errors import InvalidInput, ServiceUnavailable
from service_kit.settings import DatabaseSettings
from service_kit.transaction import Statements

metadata = MetaData()
notes = Table("notes", metadata, Column("id", Text, primary_key=True), Column("body", Text))
ADD = Compiled(insert(notes).returning(*notes.c), keys=["id", "body"])
ALL = Compiled(select(notes).order_by(notes.c.id))
ONE = Compiled(select(notes).where(notes.c.id == bindparam("key")))


@pytest.fixture
async def engine(empty_db: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseSettings(database_url=empty_db), pool_size=2)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def stored(engine: AsyncEngine) -> list[dict[str, object]]:
    db = Statements(engine, transaction=False)
    try:
        return await db.rows(ALL, {})
    finally:
        await db.close(commit=False)


async def test_a_write_is_one_transaction_committed_at_close(engine: AsyncEngine) -> None:
    db = Statements(engine, transaction=True)
    assert await db.row(ADD, {"id": "a", "body": "one"}) == {"id": "a", "body": "one"}
    await db.row(ADD, {"id": "b", "body": "two"})
    assert await stored(engine) == []  # not visible before the commit
    await db.close(commit=True)
    assert [r["id"] for r in await stored(engine)] == ["a", "b"]


async def test_a_failed_write_leaves_no_half_written_rows(engine: AsyncEngine) -> None:
    db = Statements(engine, transaction=True)
    await db.row(ADD, {"id": "a", "body": "one"})
    with pytest.raises(InvalidInput):  # Postgres text cannot hold NUL: SQLSTATE class 22
        await db.row(ADD, {"id": "b", "body": "nul \x00 here"})
    await db.close(commit=False)
    assert await stored(engine) == []


async def test_a_read_commits_each_statement_by_itself(engine: AsyncEngine) -> None:
    db = Statements(engine, transaction=False)
    await db.row(ADD, {"id": "a", "body": "one"})
    assert [r["id"] for r in await stored(engine)] == ["a"]  # before this one's close
    assert await db.row(ONE, {"key": "missing"}) is None
    await db.close(commit=False)


async def test_the_connection_goes_back_to_the_pool(engine: AsyncEngine) -> None:
    for _ in range(5):  # a pool of 2: a connection kept would block the third
        db = Statements(engine, transaction=True)
        await db.rows(ALL, {})
        await db.close(commit=True)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_read_reprepares_a_statement_that_ddl_made_stale(engine: AsyncEngine) -> None:
    db = Statements(engine, transaction=False)
    await db.row(ADD, {"id": "a", "body": "one"})
    await db.rows(ALL, {})  # prepared and cached on this connection
    async with engine.begin() as conn:  # another release changes the result type
        await conn.execute(text("ALTER TABLE notes ALTER COLUMN body TYPE varchar(50)"))
    assert await db.rows(ALL, {}) == [{"id": "a", "body": "one"}]
    await db.close(commit=False)


async def test_a_stale_statement_in_a_write_is_503_and_rolled_back(engine: AsyncEngine) -> None:
    db = Statements(engine, transaction=True)
    await db.rows(ALL, {})
    await db.close(commit=True)
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE notes ALTER COLUMN body TYPE varchar(50)"))
    db = Statements(engine, transaction=True)  # the pool's one used connection, cache stale
    await db.row(ADD, {"id": "a", "body": "one"})
    with pytest.raises(ServiceUnavailable) as raised:
        await db.rows(ALL, {})
    assert raised.value.headers == {"Retry-After": "1"}
    await db.close(commit=False)
    assert await stored(engine) == []


async def test_a_lost_connection_is_503_and_not_given_back(engine: AsyncEngine) -> None:
    db = Statements(engine, transaction=False)
    pid = (await db.row(Compiled(select(func.pg_backend_pid().label("pid"))), {}) or {})["pid"]
    async with engine.connect() as other:
        await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with pytest.raises(ServiceUnavailable):
        await db.rows(ALL, {})
    await db.close(commit=False)
    assert await stored(engine) == []  # the next request gets a working connection


async def test_a_server_that_refuses_connections_is_503(empty_db: str) -> None:
    """Connecting fails (the pool raises the driver's own errors here, unwrapped): a server
    shutting down or turning connections away, or no server at all."""
    probe = create_engine(DatabaseSettings(database_url=empty_db))
    async with probe.begin() as conn:
        name = (await conn.execute(text("SELECT current_database()"))).scalar_one()
    await probe.dispose()
    admin = create_engine(DatabaseSettings(database_url=empty_db.rsplit("/", 1)[0] + "/postgres"))
    async with admin.begin() as conn:  # "database is not currently accepting connections"
        await conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
    refused = create_engine(DatabaseSettings(database_url=empty_db))
    nobody = create_engine(
        DatabaseSettings(database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    )
    try:
        for engine in (refused, nobody):
            db = Statements(engine, transaction=True)
            with pytest.raises(ServiceUnavailable) as raised:
                await db.rows(ALL, {})
            assert raised.value.headers == {"Retry-After": "1"}
            await db.close(commit=False)
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        for engine in (admin, refused, nobody):
            await engine.dispose()


async def test_a_write_on_a_connection_the_server_closed_is_503(engine: AsyncEngine) -> None:
    db = Statements(engine, transaction=False)
    await db.rows(ALL, {})  # a connection in the pool now
    await db.close(commit=False)
    async with engine.connect() as other:  # the server ends every other backend
        await other.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    for _ in range(2):  # the pool may lend the dead one: a 503, then a working connection
        db = Statements(engine, transaction=True)
        try:
            await db.row(ADD, {"id": "a", "body": "one"})
        except ServiceUnavailable:
            await db.close(commit=False)
            continue
        await db.close(commit=True)
        break
    assert [r["id"] for r in await stored(engine)] == ["a"]
