"""Replicas on one database share the auth rate limits (RATE_LIMIT_STORAGE=database, the
default outside development): real `web serve` processes with production settings."""

from __future__ import annotations

import asyncio

import httpx

from tests.e2e.conftest import Processes
from tests.pg import sql

SIGN_IN = "/api/auth/sign-in/email"
WRONG = {"email": "nobody@example.com", "password": "not the password"}


async def test_a_client_alternating_between_replicas_is_refused_on_its_fourth_try(
    full_db: str, processes: Processes
) -> None:
    # One replica with two workers, one with one: three processes counting one client.
    replicas = [
        await processes.serve("web", full_db, args=("--workers", "2"), ENVIRONMENT="production"),
        await processes.serve("web", full_db, ENVIRONMENT="production"),
    ]
    await asyncio.gather(*(r.wait_ready() for r in replicas))
    clients = [httpx.AsyncClient(base_url=str(r.base_url), timeout=30) for r in replicas]
    try:
        codes = []
        for i in range(4):
            # A new connection each time, so the two workers of the first replica both serve.
            r = await clients[i % 2].post(SIGN_IN, json=WRONG, headers={"connection": "close"})
            codes.append(r.status_code)
        assert codes == [401, 401, 401, 429], codes
        assert r.json()["code"] == "TOO_MANY_REQUESTS"
        assert 1 <= int(r.headers["retry-after"]) <= 10
        rows = await sql(full_db, "SELECT key, count FROM rate_limit")
        assert [(row["key"], row["count"]) for row in rows] == [("127.0.0.1|/sign-in/email", 3)]
    finally:
        for c in clients:
            await c.aclose()
    for proc in replicas:
        assert "Traceback" not in proc.output(), proc.describe()
