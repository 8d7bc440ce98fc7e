"""The metrics of an app (service_kit.metrics, platform_auth.metrics), read from its own
registry in process; tests/e2e/test_metrics.py scrapes a served one."""

from __future__ import annotations

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from platform_auth.state import auth_state
from platform_db.trees import PLATFORM
from service_kit.access_log import UNMATCHED
from service_kit.metrics import Metrics
from service_kit.state import kit_state
from tests.conftest import auth_settings, running
from tests.factories import sign_up
from tests.polling import poll
from web.app import SERVICE as WEB

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_requests_are_counted_by_route_template_and_status(full_db: str) -> None:
    app = WEB.create_app(auth_settings(full_db, METRICS_PORT=9999))
    async with running(app) as client:
        metrics = kit_state(app).metrics
        assert metrics is not None
        for todo in ("a", "b", "c"):  # three ids, one route
            assert (await client.get(f"/todos/{todo}")).status_code == 401
        assert (await client.get("/no/such/path/xyz")).status_code == 404
        token, _ = await sign_up(client)
        client.cookies.clear()
        wrong = {"email": "nobody@example.com", "password": "not the password"}
        assert (await client.post("/api/auth/sign-in/email", json=wrong)).status_code == 401
        auth = {"authorization": f"Bearer {token}"}
        for _ in range(3):
            assert (await client.get("/todos", headers=auth)).status_code == 200
        await metrics.refresh()

        async def revisions_read() -> bool:  # by the refresh task, which started with the app
            return any(name == "migration_revision" for name, _ in samples(metrics))

        await poll(revisions_read, "the trees' revisions are read")
        found = samples(metrics)

    get_one = {"method": "GET", "route": "/todos/{todo_id}"}
    assert value(found, "http_requests_total", **get_one, status="401") == 3
    assert value(found, "http_request_duration_seconds_count", **get_one) == 3
    assert value(found, "http_request_duration_seconds_bucket", **get_one, le="+Inf") == 3
    assert value(found, "http_request_duration_seconds_sum", **get_one) > 0
    # A path no route matched is one label, whatever the path: a client cannot mint series.
    unmatched = {"method": "GET", "route": UNMATCHED, "status": "404"}
    assert value(found, "http_requests_total", **unmatched) == 1
    assert not any("/no/such" in str(labels) for _, labels in found)
    assert value(found, "auth_events_total", event="sign_up", outcome="ok") == 1
    assert value(found, "auth_events_total", event="sign_in", outcome="failed") == 1
    # The first GET looked the session up, then it was cached.
    assert value(found, "session_cache_hits_total") >= 2
    assert value(found, "session_cache_misses_total") >= 1
    assert value(found, "session_cache_size") >= 1
    assert value(found, "session_listener_up") == 1
    assert value(found, "db_pool_size") == 5  # the tests' DB_POOL_SIZE
    assert value(found, "db_pool_checked_out") == 0
    for head in PLATFORM.heads():
        assert value(found, "migration_revision", tree=PLATFORM.name, revision=head) == 1
    assert any(name == "migration_revision" and ("tree", "web") in labels for name, labels in found)


async def test_the_rate_limits_count_their_refusals(full_db: str) -> None:
    settings = auth_settings(full_db, METRICS_PORT=9999, RATE_LIMIT_ENABLED=True)
    app = WEB.create_app(settings)
    async with running(app) as client:
        wrong = {"email": "nobody@example.com", "password": "not the password"}
        codes = [
            (await client.post("/api/auth/sign-in/email", json=wrong)).status_code for _ in range(4)
        ]
        assert codes == [401, 401, 401, 429]
        login = auth_state(app).metrics
        assert login is not None
        metrics = kit_state(app).metrics
        assert metrics is not None
        found = samples(metrics)
    assert value(found, "rate_limit_refusals_total", rule="sign-in") == 1
    assert value(found, "auth_events_total", event="sign_in", outcome="failed") == 3


async def test_no_metrics_port_no_metrics(full_db: str) -> None:
    app = WEB.create_app(auth_settings(full_db))
    async with running(app) as client:
        assert kit_state(app).metrics is None
        assert auth_state(app).metrics is None
        assert (await client.get("/healthz")).status_code == 200


async def test_the_service_port_does_not_serve_metrics(full_db: str) -> None:
    app = WEB.create_app(auth_settings(full_db, METRICS_PORT=9999))
    async with running(app) as client:
        r: httpx.Response = await client.get("/metrics")
        assert r.status_code == 404
