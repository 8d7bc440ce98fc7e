"""Statements compiled once for asyncpg (service_kit.compiled) against SQLAlchemy itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    delete,
    insert,
    select,
    update,
)

from service_kit.compiled import Compiled, NotCompilable
from service_kit.db import asyncpg_dsn, create_engine
from service_kit.settings import DatabaseSettings
from service_kit.types import UTCDateTime, utcnow

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", Text, primary_key=True),
    Column("n", Integer, nullable=False),
    Column("done", Boolean, nullable=False),
    Column("note", Text),
    Column("at", UTCDateTime, nullable=False),
)
with_default = Table(
    "with_default",
    metadata,
    Column("id", Text, primary_key=True),
    Column("at", UTCDateTime, default=utcnow),
)

WHEN = datetime(2026, 12, 3, 14, 0, 1, 234567, tzinfo=UTC)


@pytest.fixture
async def conn(empty_db: str) -> AsyncIterator[asyncpg.Connection]:
    engine = create_engine(DatabaseSettings(database_url=empty_db))
    async with engine.begin() as setup:
        await setup.run_sync(metadata.create_all)
    await engine.dispose()
    dsn, kwargs = asyncpg_dsn(empty_db)
    connection = await asyncpg.connect(dsn, **kwargs)
    yield connection
    await connection.close()


async def test_an_insert_and_a_select_give_what_sqlalchemy_gives(
    conn: asyncpg.Connection, empty_db: str
) -> None:
    add = Compiled(insert(things).returning(*things.c), keys=["id", "n", "done", "note", "at"])
    stored = add.row(
        await conn.fetchrow(
            add.sql, *add.args({"id": "a", "n": 1, "done": True, "note": None, "at": WHEN})
        )
    )
    # The column type's conversions both ways: aware UTC in Python, naive UTC in the table.
    assert stored == {"id": "a", "n": 1, "done": True, "note": None, "at": WHEN}
    assert await conn.fetchval("SELECT at FROM things") == WHEN.replace(tzinfo=None)

    statement = select(things).where(things.c.id == bindparam("key"))
    get = Compiled(statement)
    engine = create_engine(DatabaseSettings(database_url=empty_db))
    try:
        async with engine.connect() as sa:
            expected = (await sa.execute(statement, {"key": "a"})).mappings().one()
    finally:
        await engine.dispose()
    (record,) = await conn.fetch(get.sql, *get.args({"key": "a"}))
    assert get.row(record) == dict(expected)
    assert get.keys == ("id", "n", "done", "note", "at")


async def test_an_aware_time_in_another_zone_is_stored_as_utc(conn: asyncpg.Connection) -> None:
    add = Compiled(insert(things).returning(things.c.at), keys=["id", "n", "done", "at"])
    plus_two = WHEN.astimezone(timezone(timedelta(hours=2)))
    row = add.row(
        await conn.fetchrow(add.sql, *add.args({"id": "b", "n": 2, "done": False, "at": plus_two}))
    )
    assert row == {"at": WHEN}
    assert row["at"].tzinfo is UTC


def test_a_naive_time_is_refused_before_it_reaches_the_database() -> None:
    add = Compiled(insert(things), keys=["id", "n", "done", "at"])
    with pytest.raises(ValueError, match="naive"):
        add.args({"id": "c", "n": 3, "done": False, "at": WHEN.replace(tzinfo=None)})


async def test_update_and_delete_return_what_returning_names(conn: asyncpg.Connection) -> None:
    add = Compiled(insert(things), keys=["id", "n", "done", "at"])
    await conn.execute(add.sql, *add.args({"id": "d", "n": 4, "done": False, "at": WHEN}))
    change = Compiled(
        update(things)
        .where(things.c.id == bindparam("key"))
        .values(n=bindparam("new_n"))
        .returning(things.c.id, things.c.n)
    )
    (record,) = await conn.fetch(change.sql, *change.args({"key": "d", "new_n": 40}))
    assert change.row(record) == {"id": "d", "n": 40}
    drop = Compiled(delete(things).where(things.c.id == bindparam("key")).returning(things.c.id))
    assert [drop.row(r) for r in await conn.fetch(drop.sql, *drop.args({"key": "d"}))] == [
        {"id": "d"}
    ]
    assert await conn.fetch(drop.sql, *drop.args({"key": "d"})) == []


def test_a_missing_parameter_is_a_key_error_not_a_null() -> None:
    get = Compiled(select(things).where(things.c.id == bindparam("key")))
    with pytest.raises(KeyError):
        get.args({})


def test_a_python_side_default_is_refused_unless_its_value_is_passed() -> None:
    with pytest.raises(NotCompilable, match="at"):
        Compiled(insert(with_default), keys=["id"])
    Compiled(insert(with_default), keys=["id", "at"])  # every value passed: fine


def test_sql_that_depends_on_the_values_is_refused() -> None:
    with pytest.raises(NotCompilable):
        Compiled(select(things).where(things.c.id.in_(bindparam("keys", expanding=True))))
