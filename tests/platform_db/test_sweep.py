"""Housekeeping (platform_db.sweep): what no one can use any more goes, in bounded batches, one
sweeper at a time; `platform-db sweep` and the services' own timer run it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from platform_auth.app import create_app
from platform_auth.state import auth_state
from platform_db.sweep import SWEEP_LOCK, sweep
from service_kit.db import async_url
from tests.conftest import auth_settings, running
from tests.pg import plain_url, sql
from tests.platform_db.migration_helpers import run_cli
from tests.polling import poll


async def seed(url: str) -> None:
    """A user with 3 expired and 2 live sessions; 2 expired and 1 live verification rows; 2
    old and 1 recent rate-limit counters."""
    await sql(url, "INSERT INTO \"user\" (id, name, email) VALUES ('u1', 'Ada', 'ada@x.test')")
    hours = [48, 1, 1 / 3600, -1, -7 * 24]
    for i, ago in enumerate(timedelta(hours=h) for h in hours):
        await sql(
            url,
            "INSERT INTO session (id, token, user_id, expires_at, updated_at) VALUES"
            " ($1, $2, 'u1', (now() at time zone 'utc') - $3::interval, now())",
            f"s{i}",
            f"token-{i}",
            ago,
        )
    for i, ago in enumerate(timedelta(minutes=m) for m in (24 * 60, 1, -60)):
        await sql(
            url,
            "INSERT INTO verification (id, identifier, value, expires_at) VALUES"
            " ($1, 'reset', 'v', (now() at time zone 'utc') - $2::interval)",
            f"v{i}",
            ago,
        )
    for i, ago_s in enumerate([3 * 86400, 86400 + 60, 10]):
        await sql(
            url,
            "INSERT INTO rate_limit (id, key, count, last_request) VALUES"
            " ($1, $2, 1, floor(extract(epoch from now()) * 1000) - $3 * 1000)",
            f"r{i}",
            f"127.0.0.1|/sign-in/email/{i}",
            ago_s,
        )


async def ids(url: str, table: str) -> set[str]:
    return {r["id"] for r in await sql(url, f'SELECT id FROM "{table}"')}


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url(db_url))
    yield engine
    await engine.dispose()


async def test_expired_and_old_rows_go_in_batches_and_live_ones_stay(
    db_url: str, engine: AsyncEngine
) -> None:
    await seed(db_url)
    swept = await sweep(engine, batch=2)  # 3 expired sessions: two batches
    assert (swept.sessions, swept.verifications, swept.rate_limits) == (3, 2, 2)
    assert swept.complete
    assert await ids(db_url, "session") == {"s3", "s4"}
    assert await ids(db_url, "verification") == {"v2"}
    assert await ids(db_url, "rate_limit") == {"r2"}
    assert await ids(db_url, "user") == {"u1"}
    again = await sweep(engine)
    assert again.total == 0


async def test_the_rate_limit_age_is_the_callers(db_url: str, engine: AsyncEngine) -> None:
    await seed(db_url)
    swept = await sweep(engine, rate_limit_age=5)
    assert swept.rate_limits == 3


async def test_a_sweeper_that_only_tries_leaves_the_round_to_the_one_sweeping(
    db_url: str, engine: AsyncEngine
) -> None:
    await seed(db_url)
    other = await asyncpg.connect(plain_url(db_url))
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT pg_advisory_xact_lock($1)", SWEEP_LOCK)
        swept = await sweep(engine, wait=False)
        assert not swept.complete
        assert swept.total == 0
        assert len(await ids(db_url, "session")) == 5
        # One that waits does its round once the other's transaction ends.
        waiting = asyncio.create_task(sweep(engine))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await tx.commit()
        assert (await asyncio.wait_for(waiting, 30)).sessions == 3
    finally:
        await other.close()


async def test_a_batch_skips_rows_a_request_holds(db_url: str, engine: AsyncEngine) -> None:
    await seed(db_url)
    other = await asyncpg.connect(plain_url(db_url))
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM session WHERE id = 's0' FOR UPDATE")
            swept = await asyncio.wait_for(sweep(engine), 30)  # does not wait for s0
            assert swept.sessions == 2
        assert await ids(db_url, "session") == {"s0", "s3", "s4"}
    finally:
        await other.close()


async def test_the_command_sweeps_and_says_what(db_url: str) -> None:
    await seed(db_url)
    result = await run_cli("sweep", "--batch-size", "2", database_url=db_url)
    assert result.returncode == 0, result
    assert (
        "platform-db: swept 3 expired sessions, 2 expired verification rows, "
        "2 old rate-limit counters" in result.stdout
    ), result
    assert await ids(db_url, "session") == {"s3", "s4"}


async def test_the_command_refuses_a_zero_batch(db_url: str) -> None:
    result = await run_cli("sweep", "--batch-size", "0", database_url=db_url)
    assert result.returncode == 2, result
    assert "must be at least 1" in result.stderr


async def test_a_service_sweeps_on_its_timer(db_url: str) -> None:
    await seed(db_url)
    app = create_app(title="sweep test", settings=auth_settings(db_url, SWEEP_INTERVAL=0.2))
    async with running(app):
        sweeper = auth_state(app).sweeper
        assert sweeper is not None

        async def swept() -> bool:
            return await ids(db_url, "session") == {"s3", "s4"}

        await poll(swept, "the service's timer sweeps the expired sessions", within=30)
        await poll(lambda: _true(sweeper.rounds >= 2), "and sweeps again", within=30)
    assert await ids(db_url, "verification") == {"v2"}


async def test_a_service_can_leave_sweeping_to_a_cronjob(db_url: str) -> None:
    app = create_app(title="sweep test", settings=auth_settings(db_url, SWEEP_INTERVAL=0))
    async with running(app):
        assert auth_state(app).sweeper is None


async def _true(value: bool) -> bool:
    return value
