"""Both services behind a real PgBouncer in transaction mode (Debian's pgbouncer 1.18: no
prepared-statement support), as a managed Postgres's pooled URL puts them.

With DATABASE_URL pooled and DATABASE_DIRECT_URL direct: sign-ups and todos on both
services under concurrency answer without a single error and leave no prepared statement
behind on PgBouncer's server connections; migrations and the session cache's LISTEN use the
direct URL, so a sign-out on one service is refused by the other at once while its cache
serves. With the pooled URL alone, nothing unsafe happens: migrations refuse to take their
lock through it, the app runs its statements pooled, and the listener, deaf behind the
pooler, keeps the cache off and says which setting fixes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from platform_auth.state import auth_state
from service_kit.state import kit_state
from tests.conftest import auth_settings, running
from tests.e2e.conftest import Proc, Processes, clean_env, command
from tests.factories import unique_email
from tests.pg import plain_url
from tests.pgbouncer import PgBouncer, pgbouncer
from tests.platform_db.test_session_cache import Remote, bearer
from tests.polling import poll
from trading.app import SERVICE as TRADING
from web.app import SERVICE as WEB

USERS_PER_SERVICE = 20
TODOS_PER_USER = 3


@pytest.fixture
def pooler(admin_url: str, tmp_path: Path) -> Iterator[PgBouncer]:
    with pgbouncer(admin_url, tmp_path / "pgbouncer") as bouncer:
        yield bouncer


@asynccontextmanager
async def behind(
    processes: Processes, bouncer: PgBouncer, direct: str, *names: str
) -> AsyncIterator[list[Remote]]:
    """`names` served with the pooled DATABASE_URL and the direct DATABASE_DIRECT_URL."""
    pooled = bouncer.pooled(direct)
    started = [
        await processes.serve(name, pooled, DATABASE_DIRECT_URL=direct, DB_POOL_SIZE="5")
        for name in names
    ]
    await asyncio.gather(*(p.wait_ready() for p in started))
    clients = [httpx.AsyncClient(base_url=str(p.base_url), timeout=60) for p in started]
    try:
        yield [Remote(p, c, direct) for p, c in zip(started, clients, strict=True)]
    finally:
        for c in clients:
            await c.aclose()
    for p in started:
        assert "Traceback" not in p.output(), p.describe()


async def leftover_prepared_statements(url: str, connections: int = 8) -> int:
    """Prepared statements found on PgBouncer's server connections (looked at through it)."""
    found = 0
    conns = [await asyncpg.connect(plain_url(url), statement_cache_size=0) for _ in range(2)]
    try:
        for i in range(connections):
            found += int(await conns[i % 2].fetchval("SELECT count(*) FROM pg_prepared_statements"))
    finally:
        for c in conns:
            await c.close()
    return found


async def workload(remote: Remote, statuses: Counter[int]) -> list[str]:
    """USERS_PER_SERVICE users at once: sign up, create, list, update and delete todos."""

    async def one(i: int) -> str:
        client = remote.client
        body = {"name": f"U{i}", "email": unique_email(), "password": "correct horse battery"}
        r = await client.post("/api/auth/sign-up/email", json=body)
        statuses[r.status_code] += 1
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        auth = bearer(token)
        created = []
        for n in range(TODOS_PER_USER):
            r = await client.post("/todos", json={"title": f"t{n}"}, headers=auth)
            statuses[r.status_code] += 1
            assert r.status_code == 201, r.text
            created.append(r.json()["id"])
        r = await client.get("/todos", headers=auth)
        statuses[r.status_code] += 1
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == TODOS_PER_USER
        r = await client.patch(f"/todos/{created[0]}", json={"completed": True}, headers=auth)
        statuses[r.status_code] += 1
        assert r.status_code == 200, r.text
        r = await client.delete(f"/todos/{created[1]}", headers=auth)
        statuses[r.status_code] += 1
        assert r.status_code == 204, r.text
        return token

    remote.client.cookies.clear()
    return await asyncio.gather(*(one(i) for i in range(USERS_PER_SERVICE)))


async def test_both_services_behind_pgbouncer_in_transaction_mode(
    full_db: str, pooler: PgBouncer, processes: Processes
) -> None:
    async with behind(processes, pooler, full_db, "web", "trading") as (web, trading):
        for remote in (web, trading):
            # The listener heard its own NOTIFY sent through the pooler: the cache is on.
            await remote.proc.wait_for_output("session cache on", within=30)
        statuses: Counter[int] = Counter()
        await asyncio.gather(workload(web, statuses), workload(trading, statuses))
        per_user = 2 + TODOS_PER_USER + 2
        assert sum(statuses.values()) == 2 * USERS_PER_SERVICE * per_user
        assert set(statuses) == {200, 201, 204}, statuses  # not one error through the pooler
        assert await leftover_prepared_statements(pooler.pooled(full_db)) == 0

        # One login: signed up on web, served from trading's cache, signed out on web.
        token, _ = await web.sign_up()
        await trading.warm(token)
        r = await web.client.post("/api/auth/sign-out", headers=bearer(token))
        assert r.status_code == 200, r.text
        signed_out = time.monotonic()
        await poll(lambda: trading.rejected(token), "trading refuses the signed-out session")
        latency = time.monotonic() - signed_out
        print(f"revocation seen by trading {latency * 1000:.0f} ms after web's sign-out")
    for proc in (web.proc, trading.proc):
        assert "DuplicatePreparedStatement" not in proc.output(), proc.describe()
        assert "prepared statement" not in proc.output(), proc.describe()


async def migrate_through(url: str, processes: Processes, **env: str) -> Proc:
    proc = await processes.start(
        "platform-db-migrate",
        [command("platform-db"), "migrate"],
        clean_env(DATABASE_URL=url, **env),
    )
    await proc.wait(60)
    return proc


async def test_migrations_refuse_to_lock_through_the_pooler(
    full_db: str, pooler: PgBouncer, processes: Processes
) -> None:
    refused = await migrate_through(pooler.pooled(full_db), processes)
    assert refused.returncode not in (0, None), refused.describe()
    out = refused.output()
    assert "DATABASE_DIRECT_URL" in out, out
    assert "transaction pooler" in out, out
    assert "Traceback" not in out, out
    # With the direct URL beside it, the same command runs (on the direct connection).
    ran = await migrate_through(pooler.pooled(full_db), processes, DATABASE_DIRECT_URL=full_db)
    assert ran.returncode == 0, ran.describe()
    assert "platform-db: at" in ran.output(), ran.describe()


async def test_the_pooled_url_alone_falls_back_safely(
    full_db: str, pooler: PgBouncer, caplog: pytest.LogCaptureFixture
) -> None:
    pooled = pooler.pooled(full_db)
    caplog.set_level(logging.WARNING)
    web_app = WEB.create_app(auth_settings(pooled))
    trading_app = TRADING.create_app(auth_settings(pooled))
    async with running(web_app) as web, running(trading_app) as trading:
        # Found out at start: the URL keeps no session, so statements run pooled.
        assert kit_state(web_app).database.pooled
        assert kit_state(trading_app).database.pooled
        assert any("does not keep a session" in r.getMessage() for r in caplog.records)

        async def sign_up(client: httpx.AsyncClient) -> str:
            body = {"name": "P", "email": unique_email(), "password": "correct horse battery"}
            r = await client.post("/api/auth/sign-up/email", json=body)
            assert r.status_code == 200, r.text
            token: str = r.json()["token"]
            r = await client.post("/todos", json={"title": "pooled"}, headers=bearer(token))
            assert r.status_code == 201, r.text
            return token

        tokens = await asyncio.gather(*(sign_up(c) for c in (web, trading) for _ in range(10)))
        web.cookies.clear()
        trading.cookies.clear()

        # The listener, behind the pooler, never hears its own NOTIFY: the cache stays off.
        async def deaf() -> bool:
            return any(
                "session cache off" in r.getMessage() and "DATABASE_DIRECT_URL" in r.getMessage()
                for r in caplog.records
            )

        await poll(deaf, "the listener reports that it cannot hear", within=15)
        for app in (web_app, trading_app):
            cache = auth_state(app).cache
            assert (cache.enabled, len(cache)) == (False, 0)
        # So a sign-out anywhere is refused everywhere at once (every request reads the row).
        token = tokens[0]
        assert (await trading.get("/todos", headers=bearer(token))).status_code == 200
        r = await web.post("/api/auth/sign-out", headers=bearer(token))
        assert r.status_code == 200, r.text
        r = await trading.get("/todos", headers=bearer(token))
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED"), r.text
    assert await leftover_prepared_statements(pooled) == 0
