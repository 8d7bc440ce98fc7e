"""The auth models: UTC timestamps at the boundary, ids and tokens, Drizzle's names."""

from __future__ import annotations

import string
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Index, MetaData, Table, Text, UniqueConstraint, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import SQLModel, col

from platform_auth.tokens import generate_id, generate_token
from platform_db.models import PLATFORM_TABLES, Account, RateLimit, Session, User, Verification
from service_kit.db import async_url
from service_kit.metadata import NAMING_CONVENTION, metadata
from service_kit.types import UTCDateTime, utcnow
from tests.platform_db.migration_helpers import execute, fetch

ALPHANUMERIC = set(string.ascii_letters + string.digits)
PLUS_TWO = timezone(timedelta(hours=2), "+02")


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(async_url(db_url), poolclass=NullPool)
    yield eng
    await eng.dispose()


def user(user_id: str, **values: Any) -> User:
    return User(id=user_id, name="Ada", email=f"{user_id}@example.test", **values)


def table_of(model: type[SQLModel]) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


# --------------------------------------------------------------------------------------
# UTCDateTime against the database.
# --------------------------------------------------------------------------------------
async def test_aware_non_utc_is_stored_as_utc_and_read_back_aware(
    engine: AsyncEngine, db_url: str
) -> None:
    written = datetime(2030, 5, 6, 1, 30, 15, 250_000, tzinfo=PLUS_TWO)
    async with AsyncSession(engine) as db:
        db.add(user("u1", created_at=written, updated_at=written))
        await db.commit()
    # What is in the column: the UTC wall time, naive (timestamp without time zone).
    raw = await fetch(db_url, "SELECT created_at, updated_at FROM \"user\" WHERE id = 'u1'")
    assert raw == [(datetime(2030, 5, 5, 23, 30, 15, 250_000),) * 2]
    async with AsyncSession(engine) as db:
        read = (await db.execute(select(User).where(col(User.id) == "u1"))).scalar_one()
    assert read.created_at == written
    assert read.created_at.utcoffset() == timedelta(0)
    assert read.created_at.tzinfo is UTC
    assert (read.created_at.hour, read.created_at.day) == (23, 5)


async def test_rows_written_by_others_read_back_as_aware_utc(
    engine: AsyncEngine, db_url: str
) -> None:
    # A better-auth app writes naive UTC wall times; we must see them as UTC instants.
    await execute(
        db_url,
        """
        INSERT INTO "user" (id, name, email) VALUES ('u1', 'A', 'a@example.test');
        INSERT INTO account (id, account_id, provider_id, user_id, updated_at,
                             access_token_expires_at)
            VALUES ('a1', 'u1', 'github', 'u1', '2031-01-02 03:04:05', NULL);
        """,
    )
    async with AsyncSession(engine) as db:
        account = (await db.execute(select(Account))).scalar_one()
        found = (await db.execute(select(User))).scalar_one()
    assert account.updated_at == datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert account.updated_at.tzinfo is UTC
    assert account.access_token_expires_at is None
    # A server default (now()) reads back aware too.
    assert found.created_at.tzinfo is UTC


async def test_utc_comparison_in_queries(engine: AsyncEngine) -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    async with AsyncSession(engine) as db:
        db.add(user("u1"))
        await db.flush()
        db.add(Session(id="s1", token="t1", user_id="u1", expires_at=now, updated_at=now))
        await db.commit()
        # 13:30 at +02 is 11:30 UTC: before the expiry; 14:30 at +02 is after it.
        before = datetime(2030, 1, 1, 13, 30, tzinfo=PLUS_TWO)
        after = datetime(2030, 1, 1, 14, 30, tzinfo=PLUS_TWO)
        alive = select(col(Session.id)).where(col(Session.expires_at) > before)
        assert (await db.execute(alive)).scalars().all() == ["s1"]
        alive = select(col(Session.id)).where(col(Session.expires_at) > after)
        assert (await db.execute(alive)).scalars().all() == []


async def test_naive_datetime_is_rejected(engine: AsyncEngine, db_url: str) -> None:
    naive = datetime(2030, 1, 1, 12, 0)
    async with AsyncSession(engine) as db:
        db.add(user("u1", created_at=naive))
        with pytest.raises(StatementError, match="naive datetime"):
            await db.commit()
    assert await fetch(db_url, 'SELECT id FROM "user"') == []
    async with AsyncSession(engine) as db:
        query = select(Verification).where(col(Verification.expires_at) < naive)
        with pytest.raises(StatementError, match="naive datetime"):
            await db.execute(query)


def test_utc_datetime_type_boundary() -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    column_type = UTCDateTime()
    assert column_type.process_bind_param(None, dialect) is None
    assert column_type.process_result_value(None, dialect) is None
    with pytest.raises(ValueError, match="naive"):
        column_type.process_bind_param(datetime(2030, 1, 1), dialect)
    # The column is a plain timestamp without time zone, as better-auth's.
    assert column_type.compile(dialect=dialect) == "TIMESTAMP WITHOUT TIME ZONE"
    now = utcnow()
    assert now.tzinfo is UTC


def test_python_side_defaults_are_aware_utc() -> None:
    u = user("u1")
    assert u.email_verified is False
    assert u.image is None
    for value in (u.created_at, u.updated_at):
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------------------
# Ids and tokens.
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("generate", [generate_id, generate_token], ids=["id", "token"])
def test_ids_and_tokens_are_32_alphanumerics_and_unique(generate: Callable[[], str]) -> None:
    draws = [generate() for _ in range(5000)]
    for value in draws:
        assert isinstance(value, str)
        assert len(value) == 32
        assert set(value) <= ALPHANUMERIC
    assert len(set(draws)) == len(draws)
    # The whole alphabet is used (160,000 characters: a missing one means a bias).
    assert set("".join(draws)) == ALPHANUMERIC


# --------------------------------------------------------------------------------------
# Metadata and Drizzle's names.
# --------------------------------------------------------------------------------------
def test_models_share_the_one_metadata() -> None:
    assert metadata is SQLModel.metadata
    assert metadata.naming_convention == NAMING_CONVENTION
    for model in (User, Session, Account, Verification, RateLimit):
        assert table_of(model).metadata is metadata
    tables = frozenset({"user", "session", "account", "verification", "rate_limit"})
    assert tables == PLATFORM_TABLES


def test_naming_convention_yields_drizzle_names() -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table("user", md, Column("id", Text, primary_key=True), Column("email", Text, unique=True))
    Table(
        "session",
        md,
        Column("id", Text, primary_key=True),
        Column("token", Text),
        Column("user_id", Text, ForeignKey("user.id", ondelete="CASCADE")),
        UniqueConstraint("token"),
    )
    verification = Table(
        "verification", md, Column("id", Text, primary_key=True), Column("identifier", Text)
    )
    index = Index(None, verification.c.identifier)
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    ddl = "\n".join(str(CreateTable(t).compile(dialect=dialect)) for t in md.sorted_tables)
    ddl += "\n" + str(CreateIndex(index).compile(dialect=dialect))
    for name in (
        "user_pkey",
        "user_email_unique",
        "session_pkey",
        "session_token_unique",
        "session_user_id_user_id_fk",
        "verification_identifier_idx",
    ):
        assert f" {name} " in ddl, ddl


def test_model_tables_have_drizzle_names() -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    ddl = ""
    for model in (User, Session, Account, Verification):
        table = table_of(model)
        ddl += str(CreateTable(table).compile(dialect=dialect))
        ddl += "".join(str(CreateIndex(i).compile(dialect=dialect)) for i in table.indexes)
    for name in (
        "user_pkey",
        "user_email_unique",
        "session_pkey",
        "session_token_unique",
        "session_user_id_user_id_fk",
        '"session_userId_idx"',
        "account_pkey",
        "account_user_id_user_id_fk",
        '"account_userId_idx"',
        "verification_pkey",
        "verification_identifier_idx",
    ):
        assert f" {name} " in ddl, name
    assert ddl.count("ON DELETE CASCADE") == 2
