"""The benchmark's quick mode runs to the end, so the benchmark cannot rot.

It asserts what the run measured and that nothing failed, never how fast anything was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.npm import node_missing

TODO_ROUTES = ("GET /todos", "GET /todos/{id}", "POST /todos", "PATCH /todos/{id}")
SIGN_IN = "POST /api/auth/sign-in/email"
GET_SESSION = "GET /api/auth/get-session"
RUN_TIMEOUT = 200  # seconds; the quick mode takes well under a minute on a quiet machine
GROWTH_ROUTES = ("GET /todos first page", "GET /todos after deep cursor", "GET /todos/{id}")


def run_quick(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    chart = tmp_path / "bench.svg"
    args = [sys.executable, "-m", "bench", "--quick", "--json", str(out), "--chart", str(chart)]
    with subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        try:
            stdout, stderr = child.communicate(timeout=RUN_TIMEOUT)
        finally:
            if child.poll() is None:  # SIGTERM lets it stop the servers and Postgres it started
                child.terminate()
                try:
                    child.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
    proc = subprocess.CompletedProcess(args, child.returncode, stdout, stderr)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{stdout}\n{stderr[-4000:]}"
    return proc, json.loads(out.read_text())


def test_quick_mode_measures_every_route_without_errors(tmp_path: Path) -> None:
    proc, data = run_quick(tmp_path)

    measured = {(r["route"], r["impl"]): r for r in data["routes"]}
    expected = {(route, impl) for route in TODO_ROUTES for impl in ("ours", "floor")}
    # better-auth's own server beside ours on the auth routes, where Node is (.ci/run has it).
    auth_impls = ("ours",) if node_missing() else ("ours", "better-auth")
    expected |= {(route, impl) for route in (GET_SESSION, SIGN_IN) for impl in auth_impls}
    assert set(measured) == expected
    for key, r in measured.items():
        assert r["requests"] > 0, key
        assert r["errors"] == 0, (key, r["error_detail"])
        for field in ("rps", "p50_ms", "p99_ms", "generator_cpu"):
            assert isinstance(r[field], float | int), (key, field)

    # Our throughput as a ratio of the floor's, for every todo route, printed and recorded.
    assert set(data["ratios"]) == set(TODO_ROUTES)
    for route in TODO_ROUTES:
        assert data["ratios"][route] > 0
        assert f"ratio {route}: ours " in proc.stdout

    # Growth: the same reads on the small and the large table, a deep cursor included.
    cases = {(g["case"], g["route"]): g for g in data["growth"]}
    sizes = sorted({g["total"] for g in data["growth"]})
    assert len(sizes) == 2
    assert {route for _, route in cases} == set(GROWTH_ROUTES)
    assert len(cases) == 2 * len(GROWTH_ROUTES)
    for key, g in cases.items():
        assert g["requests"] > 0, key
        assert g["errors"] == 0, (key, g["error_detail"])
    assert set(data["growth_ratios"]) == set(GROWTH_ROUTES)
    for route in GROWTH_ROUTES:
        assert f"growth {route}: large/small" in proc.stdout

    # Memory: both numbers printed; the sign-in burst had no failure.
    memory = data["memory"]
    assert memory["burst"] == 100
    assert memory["burst_ok"] == 100
    assert memory["burst_failures"] == 0
    assert memory["under_load_kib"] > 0
    assert memory["burst_peak_kib"] > 0
    assert "peak RSS under the todo-route benchmark" in proc.stdout
    assert "peak RSS with 100 concurrent sign-ins" in proc.stdout
    # Scaling out: 1 and 2 workers, and 1 worker through a real PgBouncer, all answered.
    scale = {r["impl"]: r for r in data["scale"]}
    assert set(scale) == {"1 worker", "2 workers", "1 worker, PgBouncer"}
    for impl, r in scale.items():
        assert r["requests"] > 0, impl
        assert r["errors"] == 0, (impl, r["error_detail"])
    assert set(data["scale_ratios"]) == {
        "2 workers / 1 worker",
        "through PgBouncer / direct (1 worker)",
    }
    assert "scale 2 workers / 1 worker: " in proc.stdout
    assert data["errors"] == 0

    # One summary table: every todo route against the floor, the auth routes against
    # better-auth, the peak RSS; and the chart of the same run.
    summary = {(r["route"], r["against"]): r for r in data["summary"]}
    assert set(summary) == {(route, "floor") for route in TODO_ROUTES} | {
        (GET_SESSION, "better-auth"),
        (SIGN_IN, "better-auth"),
    }
    for key, row in summary.items():
        measured_against = key[0] not in (GET_SESSION, SIGN_IN) or not node_missing()
        assert (row["met"] is not None) == measured_against, key
        assert row["ours_rps"] == measured[(key[0], "ours")]["rps"], key
    assert isinstance(data["rss_met"], bool)
    table = proc.stdout.split("## Summary", 1)[1]
    for route in (*TODO_ROUTES, GET_SESSION, SIGN_IN, "peak RSS, todo routes"):
        assert f"| {route} |" in table, route
    # The output files' paths (options of this run) appear in neither the report nor the chart:
    # both get committed.
    assert str(tmp_path) not in proc.stdout
    assert str(tmp_path) not in (tmp_path / "bench.svg").read_text()
    assert "`python -m bench --quick`" in (tmp_path / "bench.svg").read_text()
    drawn = ET.parse(tmp_path / "bench.svg").getroot()  # noqa: S314 (the run's own file)
    assert drawn.tag == "{http://www.w3.org/2000/svg}svg"
    titles = [t.text or "" for t in drawn.iter("{http://www.w3.org/2000/svg}title")]
    # A bar per route and implementation, in each of the two panels.
    assert len(titles) == 2 * len(measured)
    for route, impl in measured:
        assert any(t.startswith(f"{route}, {impl}: ") for t in titles), (route, impl)
