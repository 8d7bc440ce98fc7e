"""The reliability report: run every fault and abuse test, write docs/reliability.md from it.

    uv run python -m tests.reliability.report [--output PATH] [-- PYTEST_ARGS...]

Runs `pytest tests/reliability` with RELIABILITY_OUT set to a fresh temporary directory.
Each test's `record()` call (tests/reliability/record.py) appends its figures to
$RELIABILITY_OUT/results.jsonl; this module, loaded into that pytest run as a plugin
(`-p tests.reliability.report`), appends a line when each test phase starts and one with
each test's outcome, so every figure is tied to the test that produced it (or, when a
fixture records a summary at setup or teardown, to its test file) and to the command that
reproduces it. The report is written even when tests fail (their failures are listed), and
the command exits with pytest's exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDER = "tests/reliability"
COMMAND = "uv run python -m tests.reliability.report"
RESULTS = "results.jsonl"


# --------------------------------------------------------------------------------------
# Plugin side: runs inside the pytest process the report starts.
# --------------------------------------------------------------------------------------
def _append(line: dict[str, Any]) -> None:
    out = os.environ.get("RELIABILITY_OUT")
    if not out:
        return
    path = Path(out) / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _append({"event": "phase", "nodeid": item.nodeid, "when": "setup"})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    _append({"event": "phase", "nodeid": item.nodeid, "when": "call"})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    _append({"event": "phase", "nodeid": item.nodeid, "when": "teardown"})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # One outcome per test: the call phase, or setup/teardown when they did not pass.
    if report.when == "call" or report.outcome != "passed":
        message = ""
        if report.outcome != "passed":
            crash = getattr(report.longrepr, "reprcrash", None)
            message = getattr(crash, "message", "") or str(report.longrepr or "")
        _append(
            {
                "event": "outcome",
                "nodeid": report.nodeid,
                "when": report.when,
                "outcome": report.outcome,
                "message": message,
            }
        )


# --------------------------------------------------------------------------------------
# Report side.
# --------------------------------------------------------------------------------------
_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


@dataclass
class Result:
    nodeid: str
    outcome: str = "passed"
    message: str = ""


@dataclass
class Figures:
    """One `record()` line and what produced it: a test (recorded while it ran) or a whole
    test file (recorded by a fixture at setup or teardown, e.g. a module's summary)."""

    line: dict[str, Any]
    source: str  # a test's node id, or a file path for a fixture's summary

    @property
    def case(self) -> str:
        return str(self.line["case"])


def read_results(path: Path) -> tuple[list[Result], list[Figures]]:
    """Tests in the order they ran with their outcomes, and the figures recorded."""
    runs: dict[str, Result] = {}
    figures: list[Figures] = []
    nodeid, when = "", ""
    if not path.exists():
        return [], []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        line = json.loads(raw)
        event = line.get("event")
        if event == "phase":
            nodeid, when = line["nodeid"], line["when"]
            runs.setdefault(nodeid, Result(nodeid))
        elif event == "outcome":
            run = runs.setdefault(line["nodeid"], Result(line["nodeid"]))
            outcome = line["outcome"]
            if outcome == "failed" and line["when"] != "call":
                outcome = "error"  # a failed setup or teardown around the test
            if _RANK.get(outcome, 0) > _RANK.get(run.outcome, 0):
                run.outcome, run.message = outcome, line.get("message", "")
        elif "case" in line:
            source = nodeid if when == "call" else nodeid.split("::", 1)[0]
            figures.append(Figures(line, source or "(outside any test)"))
    return list(runs.values()), figures


def outcome_of(source: str, runs: list[Result]) -> str:
    """A test's outcome; for a file, the worst outcome of its tests."""
    found = [r.outcome for r in runs if r.nodeid == source or r.nodeid.startswith(source + "::")]
    return max(found, key=lambda o: _RANK.get(o, 0)) if found else "unknown"


def case_name(fig: Figures, figures: list[Figures]) -> str:
    """The case, with the test's parameters when several tests record the same case."""
    same = [f for f in figures if f.case == fig.case]
    if len({f.source for f in same}) > 1 and fig.source.endswith("]") and "[" in fig.source:
        return f"{fig.case} [{fig.source.rsplit('[', 1)[1]}"
    return fig.case


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _short(message: str, limit: int = 300) -> str:
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _postgres_version() -> str:
    try:
        from platform_dev.embedded import _bin_dir

        out = subprocess.run(
            [str(_bin_dir() / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        return out.replace("postgres (PostgreSQL) ", "PostgreSQL ")
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return "PostgreSQL (version unknown)"


def machine() -> str:
    return (
        f"{_cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()} "
        f"({platform.machine()}), Python {platform.python_version()}, "
        f"{_postgres_version()} (embedded)"
    )


def render(
    runs: list[Result],
    figures: list[Figures],
    *,
    started: datetime,
    seconds: float,
    exit_code: int,
) -> str:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.outcome] = counts.get(run.outcome, 0) + 1
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no tests"
    total_requests = sum(int(f.line["requests"]) for f in figures)
    total_errors = sum(int(f.line["errors"]) for f in figures)
    total_lost = sum(int(f.line["lost"]) for f in figures)
    server = (
        "`DATABASE_URL` (shared fixtures) and embedded servers of their own"
        if os.environ.get("DATABASE_URL")
        else "embedded servers"
    )
    out = [
        "# Reliability report",
        "",
        f"Generated by `{COMMAND}`, which runs `pytest {FOLDER}` and writes this file from "
        "that run's figures: do not edit it by hand, run the command again. Every fault and "
        "abuse test records what it sent and what it saw; each test asserts its own targets "
        "(no 500, no stack trace in an answer or a log, rows lost = 0), so a row whose "
        "result is not `passed` is a target missed (see Failures).",
        "",
        f"- **Run**: {started:%Y-%m-%d %H:%M} UTC, {seconds:.0f} s; {summary} "
        f"(pytest exit code {exit_code}).",
        f"- **Machine**: {machine()}; Postgres: {server}.",
        f"- **Totals**: {total_requests} requests, {total_errors} errors seen, "
        f"{total_lost} rows lost.",
        "",
        "**Requests** counts the HTTP requests (or, for start-up and migration cases, the "
        "process runs) of the case. **Errors seen** counts answers that were not a success: "
        "for a database fault these include the expected clean `503 SERVICE_UNAVAILABLE` "
        "answers (with `Retry-After`) while Postgres is away; the notes say what they were. "
        "**Rows lost** counts writes the service acknowledged (2xx) that are not in the table "
        "afterwards; the target is 0. **Result** is the outcome of the test that recorded the "
        "row (for a file's summary, the worst outcome of the file's tests).",
        "",
        "| case | how it is tested | requests | errors seen | rows lost | notes | result "
        "| reproduce |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for fig in figures:
        line = fig.line
        out.append(
            f"| {_cell(case_name(fig, figures))} | {_cell(line['how'])} | {line['requests']} | "
            f"{line['errors']} | {line['lost']} | {_cell(line.get('notes', ''))} | "
            f"{outcome_of(fig.source, runs)} | `uv run pytest '{_cell(fig.source)}'` |"
        )
    if not figures:
        out.append("| (no test recorded figures) | | | | | | | |")
    out += [
        "",
        "## Tests",
        "",
        f"All of them: `{COMMAND}`, or `uv run pytest {FOLDER}` (the same tests and targets, "
        "without writing this file).",
        "",
        "| test | result |",
        "|---|---|",
    ]
    out += [f"| `{_cell(run.nodeid)}` | {run.outcome} |" for run in runs]
    failed = [run for run in runs if _RANK.get(run.outcome, 0) >= _RANK["failed"]]
    if failed:
        out += ["", "## Failures", ""]
        out += [f"- `{run.nodeid}`: {_cell(_short(run.message))}" for run in failed]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.report",
        description=f"Run pytest {FOLDER} and write the reliability report from that run.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "docs" / "reliability.md",
        help="where to write the report (default: docs/reliability.md)",
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="reliability-") as out:
        env = {**os.environ, "RELIABILITY_OUT": out}
        started = datetime.now(UTC)
        clock = time.monotonic()
        cmd = [sys.executable, "-m", "pytest", FOLDER, "-p", "tests.reliability.report"]
        exit_code = subprocess.run([*cmd, *args.pytest_args], cwd=REPO, env=env, check=False)
        seconds = time.monotonic() - clock
        runs, figures = read_results(Path(out) / RESULTS)
    text = render(runs, figures, started=started, seconds=seconds, exit_code=exit_code.returncode)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    shown = args.output.resolve()
    with contextlib.suppress(ValueError):
        shown = shown.relative_to(REPO)
    print(f"wrote {shown} ({len(runs)} tests, pytest exit code {exit_code.returncode})")
    return exit_code.returncode


if __name__ == "__main__":
    sys.exit(main())
