"""Session lifecycle against a real database: create, validate, expire, slide, revoke."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import col

from platform_auth.sessions import (
    SessionPolicy,
    create_session,
    revoke_session,
    revoke_user_sessions,
    validate_session,
)
from platform_db.models import Session
from service_kit.db import create_engine
from service_kit.types import utcnow
from tests.conftest import auth_settings
from tests.factories import make_user

POLICY = SessionPolicy(expires_in=timedelta(days=7), update_age=timedelta(days=1))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    # Up to four at once: the test's own, two racing sessions and a watcher (no overflow).
    eng = create_engine(auth_settings(db_url).database, pool_size=4)
    yield eng
    await eng.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@pytest.fixture
async def db(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with sessions() as session:
        yield session


class StatementLog:
    """Every SQL statement the engine sends, via `before_cursor_execute`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.statements: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    def clear(self) -> None:
        self.statements.clear()

    def writes(self) -> list[str]:
        return [s for s in self.statements if re.match(r"\s*(UPDATE|DELETE|INSERT)", s, re.I)]


async def _expires_at_in_db(sessions: async_sessionmaker[AsyncSession], token: str) -> Any:
    async with sessions() as other:
        return (
            await other.execute(select(col(Session.expires_at)).where(col(Session.token) == token))
        ).scalar_one_or_none()


async def _set_expiry(db: AsyncSession, token: str, delta: timedelta) -> None:
    await db.execute(
        update(Session).where(col(Session.token) == token).values(expires_at=utcnow() + delta)
    )
    await db.commit()


async def test_create_session(db: AsyncSession, sessions: async_sessionmaker[AsyncSession]) -> None:
    user = await make_user(db)
    s = await create_session(db, user.id, POLICY, ip_address="10.0.0.1", user_agent="pytest")
    await db.commit()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", s.token)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", s.id)
    async with sessions() as other:
        row = (
            await other.execute(select(Session).where(col(Session.token) == s.token))
        ).scalar_one()
    assert row.user_id == user.id
    assert row.expires_at - row.created_at == timedelta(days=7)
    assert row.created_at == row.updated_at
    assert abs(row.created_at - utcnow()) < timedelta(minutes=5)
    assert (row.ip_address, row.user_agent) == ("10.0.0.1", "pytest")


async def test_create_session_stores_naive_utc(db: AsyncSession) -> None:
    user = await make_user(db)
    s = await create_session(db, user.id, POLICY)
    await db.commit()
    # The column is `timestamp without time zone` holding UTC, whatever the server's zone.
    await db.execute(text("SET TIME ZONE 'America/New_York'"))
    db_now_utc = (await db.execute(text("SELECT now() AT TIME ZONE 'UTC'"))).scalar_one()
    created = (
        await db.execute(text("SELECT created_at FROM session WHERE token = :t"), {"t": s.token})
    ).scalar_one()
    assert created.tzinfo is None
    assert abs(created - db_now_utc) < timedelta(minutes=5)


async def test_remember_me_false_is_one_day(db: AsyncSession) -> None:
    user = await make_user(db)
    s = await create_session(db, user.id, POLICY, remember_me=False)
    await db.commit()
    assert s.expires_at - s.created_at == timedelta(days=1)
    ctx = await validate_session(db, s.token, POLICY)
    assert ctx is not None
    assert not ctx.refreshed
    assert ctx.session.expires_at - ctx.session.created_at == timedelta(days=1)


async def test_tokens_are_unique(db: AsyncSession) -> None:
    user = await make_user(db)
    made = [await create_session(db, user.id, POLICY) for _ in range(20)]
    await db.commit()
    assert len({s.token for s in made}) == 20
    assert len({s.id for s in made}) == 20


async def test_validate_unknown_token(db: AsyncSession) -> None:
    assert await validate_session(db, "x" * 32, POLICY) is None
    assert await validate_session(db, "", POLICY) is None


async def test_validate_is_one_query(db: AsyncSession, engine: AsyncEngine) -> None:
    user = await make_user(db, name="Grace")
    s = await create_session(db, user.id, POLICY)
    await db.commit()
    log = StatementLog(engine)
    ctx = await validate_session(db, s.token, POLICY)
    assert ctx is not None
    assert len(log.statements) == 1, log.statements
    assert re.search(r"\bJOIN\b", log.statements[0], re.I)
    assert ctx.session.id == s.id
    assert ctx.user.id == user.id
    assert ctx.user.name == "Grace"
    assert ctx.refreshed is False


async def test_expired_session_is_rejected_and_deleted(
    db: AsyncSession, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user = await make_user(db)
    s = await create_session(db, user.id, POLICY)
    keep = await create_session(db, user.id, POLICY)
    await db.commit()
    await _set_expiry(db, s.token, -timedelta(seconds=1))
    assert await validate_session(db, s.token, POLICY) is None
    await db.commit()
    assert await _expires_at_in_db(sessions, s.token) is None
    assert await _expires_at_in_db(sessions, keep.token) is not None


async def test_no_refresh_before_update_age(
    db: AsyncSession, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    user = await make_user(db)
    s = await create_session(db, user.id, POLICY)
    await db.commit()
    # expires_at - 7d + 1d is a minute in the future: not due yet.
    await _set_expiry(db, s.token, timedelta(days=6, minutes=1))
    before = await _expires_at_in_db(sessions, s.token)
    log = StatementLog(engine)
    ctx = await validate_session(db, s.token, POLICY)
    await db.commit()
    assert ctx is not None
    assert ctx.refreshed is False
    assert log.writes() == []
    assert await _expires_at_in_db(sessions, s.token) == before


async def test_sliding_refresh_writes_once(
    db: AsyncSession, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    user = await make_user(db)
    s = await create_session(db, user.id, POLICY)
    await db.commit()
    # expires_at - 7d + 1d is a minute in the past: due.
    await _set_expiry(db, s.token, timedelta(days=6, minutes=-1))
    log = StatementLog(engine)
    start = utcnow()
    ctx = await validate_session(db, s.token, POLICY)
    await db.commit()
    assert ctx is not None
    assert ctx.refreshed is True
    assert len(log.writes()) == 1
    stored = await _expires_at_in_db(sessions, s.token)
    assert stored == ctx.session.expires_at
    assert start + timedelta(days=7) <= stored <= utcnow() + timedelta(days=7)
    assert ctx.session.updated_at == stored - timedelta(days=7)

    # Right after, the session is fresh: no second write.
    log.clear()
    again = await validate_session(db, s.token, POLICY)
    await db.commit()
    assert again is not None
    assert again.refreshed is False
    assert log.writes() == []
    assert await _expires_at_in_db(sessions, s.token) == stored


async def _wait_until_blocked_on_a_lock(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as watcher:
        for _ in range(200):
            waiting = (
                await watcher.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            ).scalar_one()
            await watcher.rollback()
            if waiting:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the second refresh never waited for the first one's row lock")


async def test_concurrent_refreshes_write_once(
    db: AsyncSession, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user = await make_user(db)
    s = await create_session(db, user.id, POLICY)
    await db.commit()
    await _set_expiry(db, s.token, timedelta(days=5))
    async with sessions() as a, sessions() as b:
        first = await validate_session(a, s.token, POLICY)  # refreshes; not committed yet
        assert first is not None
        assert first.refreshed
        # `b` still reads the old expiry, finds the session due and tries to refresh it too;
        # its UPDATE waits for `a`'s row lock, then must match nothing.
        second = asyncio.create_task(validate_session(b, s.token, POLICY))
        await _wait_until_blocked_on_a_lock(sessions)
        await a.commit()
        assert await second is not None
        await b.commit()
    async with sessions() as other:
        row = (
            await other.execute(select(Session).where(col(Session.token) == s.token))
        ).scalar_one()
    assert (row.expires_at, row.updated_at) == (first.session.expires_at, first.session.updated_at)


async def test_update_age_zero_never_refreshes(db: AsyncSession, engine: AsyncEngine) -> None:
    never = SessionPolicy(expires_in=timedelta(days=7), update_age=timedelta(0))
    user = await make_user(db)
    s = await create_session(db, user.id, never)
    await db.commit()
    await _set_expiry(db, s.token, timedelta(days=2))  # long due under the default policy
    log = StatementLog(engine)
    ctx = await validate_session(db, s.token, never)
    assert ctx is not None
    assert not ctx.refreshed
    assert log.writes() == []
    # Control: the default policy does refresh this very session.
    ctx = await validate_session(db, s.token, POLICY)
    assert ctx is not None
    assert ctx.refreshed
    assert len(log.writes()) == 1


async def test_short_session_is_never_slid(db: AsyncSession, engine: AsyncEngine) -> None:
    """A rememberMe=false session keeps its one day, however often it is used."""
    user = await make_user(db)
    s = await create_session(db, user.id, POLICY, remember_me=False)
    await db.commit()
    log = StatementLog(engine)
    for _ in range(2):
        ctx = await validate_session(db, s.token, POLICY)
        assert ctx is not None
        assert not ctx.refreshed
        assert ctx.session.expires_at == s.expires_at
    assert log.writes() == []


async def test_revoke_session(db: AsyncSession, sessions: async_sessionmaker[AsyncSession]) -> None:
    user = await make_user(db)
    s = await create_session(db, user.id, POLICY)
    other = await create_session(db, user.id, POLICY)
    await db.commit()
    assert await revoke_session(db, s.token) is True
    await db.commit()
    assert await _expires_at_in_db(sessions, s.token) is None
    assert await validate_session(db, s.token, POLICY) is None
    assert await validate_session(db, other.token, POLICY) is not None
    assert await revoke_session(db, s.token) is False
    assert await revoke_session(db, "unknown-token") is False


async def test_revoke_user_sessions_except_one(
    db: AsyncSession, sessions: async_sessionmaker[AsyncSession]
) -> None:
    ada = await make_user(db, name="Ada")
    bob = await make_user(db, name="Bob")
    ada_sessions = [await create_session(db, ada.id, POLICY) for _ in range(3)]
    bob_session = await create_session(db, bob.id, POLICY)
    await db.commit()
    keep = ada_sessions[1]
    assert await revoke_user_sessions(db, ada.id, keep_token=keep.token) == 2
    await db.commit()
    async with sessions() as other:
        left = set(
            (await other.execute(select(col(Session.token)).order_by(col(Session.token)))).scalars()
        )
    assert left == {keep.token, bob_session.token}

    assert await revoke_user_sessions(db, ada.id) == 1
    await db.commit()
    async with sessions() as other:
        count = (await other.execute(select(func.count()).select_from(Session))).scalar_one()
    assert count == 1
    assert await validate_session(db, bob_session.token, POLICY) is not None
