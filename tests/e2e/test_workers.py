"""`serve --workers N` (or WEB_CONCURRENCY=N): migrations run once, then N uvicorn worker
processes each build their own app, with their own pool and session listener."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from platform_auth.cache import LISTENER_NAME
from tests.e2e.conftest import Proc, Processes
from tests.pg import sql
from tests.platform_db.test_session_cache import bearer
from tests.polling import poll

WORKER_STARTED = re.compile(r"Started server process \[(\d+)\]")


async def listeners(db_url: str) -> int:
    rows = await sql(
        db_url,
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = $1",
        LISTENER_NAME,
    )
    return int(rows[0]["n"])


def worker_pids(proc: Proc) -> set[str]:
    return set(WORKER_STARTED.findall(proc.output()))


@pytest.mark.parametrize("how", ["flag", "WEB_CONCURRENCY"])
async def test_two_workers_each_with_their_own_listener(
    how: str, full_db: str, processes: Processes
) -> None:
    if how == "flag":
        proc = await processes.serve("web", full_db, args=("--workers", "2"))
    else:
        proc = await processes.serve("web", full_db, WEB_CONCURRENCY="2")
    await proc.wait_ready()
    assert proc.base_url is not None

    async def both_up() -> bool:
        return len(worker_pids(proc)) == 2 and await listeners(full_db) == 2

    await poll(both_up, lambda: f"two workers, two listeners: {proc.describe()}", within=60)
    out = proc.output()
    assert out.count("migrations at") == 1, out  # once, before the workers
    assert "with 2 workers" in out, out
    assert str(proc.pid) not in worker_pids(proc)  # the workers are children of `serve`

    # Requests spread over both; a sign-out through one is honoured by the other.
    async with httpx.AsyncClient(base_url=proc.base_url, timeout=30) as client:
        body = {"name": "W", "email": "workers@example.com", "password": "correct horse battery"}
        r = await client.post("/api/auth/sign-up/email", json=body)
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        client.cookies.clear()
        answers = await asyncio.gather(
            *(client.get("/todos", headers=bearer(token)) for _ in range(20))
        )
        assert {a.status_code for a in answers} == {200}
        r = await client.post("/api/auth/sign-out", headers=bearer(token))
        assert r.status_code == 200, r.text

        async def refused_everywhere() -> bool:
            after = await asyncio.gather(
                *(client.get("/todos", headers=bearer(token)) for _ in range(20))
            )
            return {a.status_code for a in after} == {401}

        await poll(refused_everywhere, "every worker refuses the signed-out session")
    await proc.stop()
    await poll(lambda: _none_left(full_db), "the workers' listeners close with them")
    assert "Traceback" not in proc.output(), proc.describe()


async def _none_left(db_url: str) -> bool:
    return await listeners(db_url) == 0
