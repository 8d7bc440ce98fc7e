"""deploy/grafana's dashboard asks only for metrics the services export."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service_kit.state import kit_state
from tests.conftest import REPO, auth_settings, running
from tests.factories import sign_up
from tests.polling import poll
from web.app import SERVICE as WEB

DASHBOARD = REPO / "deploy" / "grafana" / "shared-auth.json"

# PromQL words that are not metric names.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metrics a PromQL expression selects (label matchers, grouping labels, ranges,
    strings and functions taken out first)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)  # grouping labels
    names = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {n for n in names if n.lower() not in _KEYWORDS}


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_extractor_finds_metrics_and_nothing_else() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket"
        '{job=~"$job", status=~"5.."}[5m]))) / on (route) group_left sum(up) == 1'
    )
    assert metric_names(expr) == {"http_request_duration_seconds_bucket", "up"}


async def exported(full_db: str) -> set[str]:
    """Every sample name a service exports once it has served a little."""
    settings = auth_settings(full_db, METRICS_PORT=9999, RATE_LIMIT_ENABLED=True)
    app = WEB.create_app(settings)
    async with running(app) as client:
        metrics = kit_state(app).metrics
        assert metrics is not None
        await sign_up(client)
        await client.get("/todos/x")
        wrong = {"email": "nobody@example.com", "password": "not the password"}
        for _ in range(4):  # the fourth is refused: a labelled counter shows once counted
            await client.post("/api/auth/sign-in/email", json=wrong)

        def names() -> set[str]:
            text = generate_latest(metrics.registry).decode()
            return {s.name for f in text_string_to_metric_families(text) for s in f.samples}

        async def complete() -> bool:
            await metrics.refresh()
            return "migration_revision" in names()

        await poll(complete, "every metric has a sample")
        return names()


async def test_every_panel_asks_for_metrics_the_services_export(full_db: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    found = queries(dashboard)
    assert len(found) >= 10, found
    known = await exported(full_db)
    for title, expr in found:
        names = metric_names(expr)
        assert names, (title, expr)
        assert names <= known, (title, sorted(names - known))


async def test_a_misspelt_metric_would_be_caught(full_db: str) -> None:
    known = await exported(full_db)
    with pytest.raises(AssertionError):
        assert metric_names("sum(rate(http_request_total[5m]))") <= known
