"""Startup order and replicas, with the real console commands."""

from __future__ import annotations

import asyncio

import asyncpg

from platform_db.trees import PLATFORM
from tests.e2e.conftest import (
    Processes,
    command,
    run,
    service_env,
    table_exists,
    versions,
)
from tests.pg import plain_url, sql
from tests.polling import poll
from trading.app import TREE as TRADING_TREE
from web.app import TREE as WEB_TREE


async def test_service_migrate_waits_for_the_platform_tree(
    empty_db: str, processes: Processes
) -> None:
    # Too early, with a short wait: a clear failure naming the command to run, no traceback.
    code, out, err = await run(
        [command("trading"), "migrate"], service_env(empty_db, PLATFORM_WAIT_TIMEOUT="3")
    )
    assert code == 1, (out, err)
    assert "`platform-db migrate`" in err, err
    assert "PLATFORM_WAIT_TIMEOUT" in err, err
    assert "Traceback" not in err + out, err
    assert not await table_exists(empty_db, "trading.todos")
    assert await versions(empty_db, "public.platform_alembic_version") == []

    # Started first with a long wait, it goes on once the platform tree is migrated.
    trading = await processes.start(
        "trading-migrate",
        [command("trading"), "migrate"],
        service_env(empty_db, PLATFORM_WAIT_TIMEOUT="60"),
    )
    await trading.wait_for_output("waiting up to 60s for the platform-db tree", within=30)
    assert trading.returncode is None, trading.describe()
    code, out, err = await run([command("platform-db"), "migrate"], service_env(empty_db))
    assert code == 0, (out, err)
    assert await trading.wait(within=60) == 0, trading.describe()
    assert "Traceback" not in trading.output(), trading.describe()
    assert await table_exists(empty_db, "trading.todos")
    assert await versions(empty_db, "trading.alembic_version") == list(TRADING_TREE.heads())
    assert await versions(empty_db, "public.platform_alembic_version") == list(PLATFORM.heads())


async def test_two_replicas_migrate_an_empty_service_schema_once(
    db_url: str, processes: Processes
) -> None:
    assert not await table_exists(db_url, "web.todos")
    # A barrier: while the test holds this lock, each replica's first read of the platform's
    # version table blocks; once both are blocked, releasing it lets them race together.
    barrier = await asyncpg.connect(plain_url(db_url))
    try:
        tx = barrier.transaction()
        await tx.start()
        await barrier.execute("LOCK TABLE public.platform_alembic_version IN ACCESS EXCLUSIVE MODE")
        first = await processes.serve("web", db_url)
        second = await processes.serve("web", db_url)

        async def both_blocked() -> bool:
            n = await barrier.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted"
                " AND relation = 'public.platform_alembic_version'::regclass"
            )
            return bool(n == 2)

        await poll(
            both_blocked,
            within=60,
            interval=0.2,
            what=lambda: (
                f"replicas never reached the barrier:\n{first.describe()}\n{second.describe()}"
            ),
        )
        await tx.rollback()
    finally:
        await barrier.close()
    await asyncio.gather(first.wait_ready(), second.wait_ready())

    for proc in (first, second):
        assert proc.returncode is None, proc.describe()
        assert "Traceback" not in proc.output(), proc.describe()
    rows = await sql(
        db_url,
        "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'web' AND tablename = 'todos'",
    )
    assert rows[0]["n"] == 1
    assert await versions(db_url, "web.alembic_version") == list(WEB_TREE.heads())
    # The other service's tree was left alone.
    assert not await table_exists(db_url, "trading.todos")
