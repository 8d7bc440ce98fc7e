"""The operator's commands against real `serve` processes: a revocation is refused by every
running service at once; a service's own timer sweeps."""

from __future__ import annotations

import asyncio

import httpx

from tests.e2e.conftest import Processes
from tests.factories import sign_up
from tests.pg import sql
from tests.platform_db.migration_helpers import run_cli
from tests.platform_db.test_session_cache import bearer
from tests.polling import poll


async def test_a_revocation_reaches_every_served_process_at_once(
    full_db: str, processes: Processes
) -> None:
    # Cached sessions live an hour: a refusal sooner than that is the NOTIFY's doing.
    web = await processes.serve("web", full_db, SESSION_CACHE_TTL="3600")
    trading = await processes.serve("trading", full_db, SESSION_CACHE_TTL="3600")
    await asyncio.gather(web.wait_ready(), trading.wait_ready())
    async with (
        httpx.AsyncClient(base_url=web.base_url or "", timeout=30) as w,
        httpx.AsyncClient(base_url=trading.base_url or "", timeout=30) as t,
    ):
        token, _ = await sign_up(w, email="ops@example.com")
        w.cookies.clear()
        for client in (w, t):
            for _ in range(2):  # looked up, then answered from the process's cache
                assert (await client.get("/todos", headers=bearer(token))).status_code == 200

        result = await run_cli(
            "sessions", "revoke", "--user", "ops@example.com", database_url=full_db
        )
        assert result.returncode == 0, result
        for client in (w, t):

            async def refused(client: httpx.AsyncClient = client) -> bool:
                return (await client.get("/todos", headers=bearer(token))).status_code == 401

            await poll(refused, "a revoked session is refused", within=30)


async def test_a_served_process_sweeps_on_its_timer(full_db: str, processes: Processes) -> None:
    await sql(full_db, "INSERT INTO \"user\" (id, name, email) VALUES ('u1', 'A', 'a@x.test')")
    await sql(
        full_db,
        "INSERT INTO session (id, token, user_id, expires_at, updated_at) VALUES"
        " ('old', 'old-token', 'u1', (now() at time zone 'utc') - interval '1 day', now())",
    )
    proc = await processes.serve("web", full_db, SWEEP_INTERVAL="1")
    await proc.wait_ready()

    async def swept() -> bool:
        return await sql(full_db, "SELECT 1 FROM session WHERE id = 'old'") == []

    await poll(swept, lambda: f"the expired session is swept: {proc.describe()}", within=30)
    await proc.stop()
    assert "swept 1 expired sessions" in proc.output(), proc.describe()
