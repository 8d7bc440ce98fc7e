"""`/metrics` of a served process, on METRICS_PORT: one scrape counts every worker."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from platform_dev.embedded import free_port
from tests.e2e.conftest import Processes
from tests.polling import poll

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def total(found: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


@pytest.mark.parametrize("workers", [1, 2])
async def test_one_scrape_counts_every_worker(
    workers: int, full_db: str, processes: Processes
) -> None:
    metrics_port = free_port()
    proc = await processes.serve(
        "web",
        full_db,
        args=("--workers", str(workers)),
        METRICS_PORT=str(metrics_port),
        ENVIRONMENT="production",
    )
    await proc.wait_ready()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    async with httpx.AsyncClient(base_url=proc.base_url or "", timeout=30) as client:
        for i in range(10):
            # A new connection each time: with two workers, both serve some.
            r = await client.get(f"/todos/id-{i}", headers={"connection": "close"})
            assert r.status_code == 401
        r = await client.post(
            "/api/auth/sign-up/email",
            json={"name": "M", "email": "metrics@example.com", "password": "correct horse battery"},
        )
        assert r.status_code == 200, r.text
        assert (await client.get("/metrics")).status_code == 404  # not on the service's port

    found = await scrape(url)
    get_one = {"method": "GET", "route": "/todos/{todo_id}"}
    assert total(found, "http_requests_total", **get_one, status="401") == 10
    assert total(found, "http_request_duration_seconds_count", **get_one) == 10
    assert total(found, "auth_events_total", event="sign_up", outcome="ok") == 1

    async def gauges_refreshed() -> bool:
        now = await scrape(url)
        return (
            total(now, "session_listener_up") == 1
            and total(now, "db_pool_size") == 5 * workers  # DB_POOL_SIZE=5, per worker
            and total(now, "migration_revision", tree="platform-db") >= 1
        )

    await poll(gauges_refreshed, lambda: f"the gauges: {proc.describe()}", within=30)
    await proc.stop()
    assert "Traceback" not in proc.output(), proc.describe()
