"""The benchmark: `uv run python -m bench` (full) or `uv run python -m bench --quick` (CI).

One run: an embedded Postgres, the web service (`web serve`, uvicorn, one worker) and the
floor (bench/floor.py), both pinned to one core; wrk and Postgres on the other core(s).
It measures, for our service beside the floor:

1. the todo routes and sign-in: requests per second, p50/p99 latency, errors, and our
   throughput as a ratio of the floor's on each todo route;
2. growth: GET /todos (first page, and the page after a deep cursor) and GET /todos/{id}
   with 1 thousand and with 1 million todos in the table (the caller owning 100 thousand);
3. memory: the service's peak RSS under that load, and with 100 concurrent sign-ins.

Progress goes to stderr, the report (Markdown) to stdout; `--json FILE` writes the numbers.
The exit code is 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench import betterauth, chart, floor, profile, seed
from bench.load import Req, Result, run_wrk, wrk_path, wrk_version
from bench.procs import (
    Cores,
    Server,
    cpu_seconds,
    memory_kib,
    reset_peak_rss,
    tree_cpu_seconds,
)
from platform_db.trees import PLATFORM
from platform_dev.embedded import EmbeddedPostgres, free_port
from platform_dev.pgbouncer import binary as pgbouncer_binary
from platform_dev.pgbouncer import pgbouncer
from service_kit import migrate
from web.app import TREE as WEB_TREE

REPO = Path(__file__).resolve().parent.parent
# The service's own default (platform_auth.settings.AuthSettings.password_hash_concurrency).
DEFAULT_HASH_CONCURRENCY = max(2, os.cpu_count() or 2)
BIN = Path(sys.executable).parent
DB_NAME = "bench"

# Durability off: the benchmark measures the service, not this machine's disk.
PG_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
    "jit": "off",
}

# A service reads these from the environment; the runner's own values must not leak in.
_SETTING_PREFIXES = (
    "DATABASE_URL", "AUTH_", "BETTER_AUTH_", "ENVIRONMENT", "COOKIE_", "SESSION_",
    "TRUSTED_ORIGINS", "PLATFORM_WAIT", "MIGRATION_LOCK", "DB_", "PASSWORD_HASH", "HOST",
    "PORT", "LOG_LEVEL", "FORWARDED_ALLOW", "ACCESS_LOG", "RATE_LIMIT_", "SMTP_", "MAIL_",
    "REQUIRE_EMAIL", "EMAIL_VERIFICATION", "RESET_PASSWORD", "MAX_BODY",
)  # fmt: skip

LIST, GET, POST, PATCH = "GET /todos", "GET /todos/{id}", "POST /todos", "PATCH /todos/{id}"
SIGN_IN = "POST /api/auth/sign-in/email"
GET_SESSION = "GET /api/auth/get-session"
TODO_ROUTES = (LIST, GET, POST, PATCH)
AUTH_ROUTES = (GET_SESSION, SIGN_IN)
PAGE = 20
RATIO_TARGET = 0.5  # ours / the floor, on every todo route, by req/s and by CPU per request
TAIL_TARGET = 2.0  # our p99 / the floor's p99, at most
# Ours / better-auth's own server, at least: get-session (a cache hit for us, a query for it)
# and sign-in (scrypt-bound on both).
BETTER_AUTH_TARGETS = {GET_SESSION: 3.0, SIGN_IN: 1.0}
RSS_TARGET_MIB = 100  # one worker's peak RSS under the todo-route benchmark, below
GROWTH_TARGET = 1.5
FLOOR, BETTER_AUTH = "floor", "better-auth"


@dataclass(frozen=True)
class Config:
    quick: bool
    seconds: int  # per measured wrk run
    warmup: int  # per route and server, before measuring
    connections: int
    users: int  # users with sessions who drive the todo routes
    todos_per_user: int
    others: int  # users owning the rest of the table in the growth runs
    small_total: int
    small_caller: int
    large_total: int
    large_caller: int
    burst: int  # concurrent sign-ins for the memory check
    pool_size: int
    hash_concurrency: int
    pin: bool
    profile: str | None  # the route to profile
    profile_raw: Path | None

    @property
    def signin_connections(self) -> int:
        return min(self.connections, 2 * self.hash_concurrency)


def make_config(args: argparse.Namespace) -> Config:
    quick = bool(args.quick)
    return Config(
        quick=quick,
        seconds=args.seconds or (1 if quick else 10),
        warmup=1 if quick else 2,
        connections=args.connections,
        users=20 if quick else 200,
        todos_per_user=25 if quick else 50,
        others=100 if quick else 900,
        small_total=1_000,
        small_caller=100,
        large_total=50_000 if quick else 1_000_000,
        large_caller=5_000 if quick else 100_000,
        burst=args.burst,
        pool_size=args.pool_size,
        hash_concurrency=args.hash_concurrency,
        pin=not args.no_pin,
        profile=args.profile or (LIST if args.profile_raw else None),
        profile_raw=args.profile_raw,
    )


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the report -----------------------------------------------------------------------------


@dataclass
class Measured:
    route: str
    impl: str
    result: Result


@dataclass(frozen=True)
class SummaryRow:
    route: str
    against: str  # the floor, or better-auth
    ours: Result
    theirs: Result | None
    ratio: float | None  # ours / theirs, by requests per second
    target: str
    met: bool | None  # None: not measured


def _yes(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "**no**")


@dataclass
class Report:
    command: str
    config: Config
    machine: dict[str, str] = field(default_factory=dict)
    routes: list[Measured] = field(default_factory=list)
    growth: list[tuple[str, int, int, Measured]] = field(default_factory=list)
    scale: list[Measured] = field(default_factory=list)  # GET /todos: workers, the pooler
    plans: list[tuple[str, str, str]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    starved: list[str] = field(default_factory=list)

    def find(self, route: str, impl: str) -> Result | None:
        return next((m.result for m in self.routes if m.route == route and m.impl == impl), None)

    def ratios(self) -> dict[str, float]:
        out = {}
        for route in TODO_ROUTES:
            ours, base = self.find(route, "ours"), self.find(route, "floor")
            if ours is not None and base is not None and base.rps > 0:
                out[route] = ours.rps / base.rps
        return out

    def cpu_ratios(self) -> dict[str, float]:
        """Per todo route: the floor's server CPU per request over ours (ours/floor per core)."""
        out = {}
        for route in TODO_ROUTES:
            ours, base = self.find(route, "ours"), self.find(route, "floor")
            if ours is not None and base is not None and ours.server_ms > 0:
                out[route] = base.server_ms / ours.server_ms
        return out

    def _growth_pairs(self) -> list[tuple[str, Result, Result]]:
        by: dict[tuple[str, str], Result] = {(c, m.route): m.result for c, _, _, m in self.growth}
        cases = list(dict.fromkeys(c for c, _, _, _ in self.growth))
        if len(cases) < 2:
            return []
        small, large = cases[0], cases[-1]
        return [
            (route, by[(small, route)], res)
            for (case, route), res in by.items()
            if case == large and (small, route) in by
        ]

    def growth_ratios(self) -> dict[str, float]:
        """Per growth route: the large table's time per request (1/throughput) over the
        small one's."""
        return {route: s.rps / g.rps for route, s, g in self._growth_pairs() if g.rps > 0}

    def growth_cpu_ratios(self) -> dict[str, float]:
        """The same with CPU per request (service plus Postgres): robust to a busy machine."""
        out = {}
        for route, s, g in self._growth_pairs():
            if s.server_ms + s.postgres_ms > 0:
                out[route] = (g.server_ms + g.postgres_ms) / (s.server_ms + s.postgres_ms)
        return out

    def scale_ratios(self) -> dict[str, float]:
        """2 workers / 1 worker and pooled / direct, by requests per second."""
        got = {m.impl: m.result.rps for m in self.scale}
        out: dict[str, float] = {}
        one = got.get(ONE_WORKER)
        if one and TWO_WORKERS in got:
            out["2 workers / 1 worker"] = got[TWO_WORKERS] / one
        if one and POOLED in got:
            out["through PgBouncer / direct (1 worker)"] = got[POOLED] / one
        return out

    def summary(self) -> list[SummaryRow]:
        """One row per target of the run: each todo route against the floor (throughput, CPU
        per request, p99), each auth route against better-auth, the worker's peak RSS."""
        rows: list[SummaryRow] = []
        for route in TODO_ROUTES:
            ours, base = self.find(route, "ours"), self.find(route, FLOOR)
            if ours is None or base is None or not base.rps or not ours.server_ms:
                continue
            ratio, per_cpu = ours.rps / base.rps, base.server_ms / ours.server_ms
            tail = ours.p99_ms / base.p99_ms if base.p99_ms else float("inf")
            met = ratio >= RATIO_TARGET and per_cpu >= RATIO_TARGET and tail <= TAIL_TARGET
            rows.append(
                SummaryRow(
                    route,
                    FLOOR,
                    ours,
                    base,
                    ratio,
                    f"req/s and CPU/req >= {RATIO_TARGET} ({per_cpu:.2f} per CPU), "
                    f"p99 <= {TAIL_TARGET}x ({tail:.2f}x)",
                    met,
                )
            )
        for route, target in BETTER_AUTH_TARGETS.items():
            ours, base = self.find(route, "ours"), self.find(route, BETTER_AUTH)
            if ours is None:
                continue
            if base is None or not base.rps:
                rows.append(SummaryRow(route, BETTER_AUTH, ours, None, None, "not measured", None))
                continue
            ratio = ours.rps / base.rps
            rows.append(
                SummaryRow(route, BETTER_AUTH, ours, base, ratio, f">= {target}", ratio >= target)
            )
        return rows

    def chart(self) -> str:
        """The SVG of this run: every route measured against a baseline, with its baseline."""
        routes = (*TODO_ROUTES, *AUTH_ROUTES)
        bars = [
            chart.Bar(m.route, m.impl, m.result.rps, m.result.p99_ms)
            for route in routes
            for m in self.routes
            if m.route == route
        ]
        machine = self.machine.get("machine", "")
        subtitle = f"{self.machine.get('code', '')}; {machine}; wrk {self.config.connections} "
        subtitle += f"connections, {self.config.seconds} s per run; `{self.command}`"
        return chart.svg(
            bars,
            "Ours beside the raw floor and better-auth 1.7.25 (each route to its own scale)",
            subtitle,
        )

    def rss_met(self) -> bool | None:
        peak = self.memory.get("under_load_kib")
        return None if peak is None else peak / 1024 < RSS_TARGET_MIB

    def errors(self) -> int:
        return (
            sum(m.result.errors for m in self.routes)
            + sum(m.result.errors for _, _, _, m in self.growth)
            + sum(m.result.errors for m in self.scale)
        )

    def markdown(self) -> list[str]:
        c = self.config
        out = [f"# Benchmark ({'quick' if c.quick else 'full'} mode)", ""]
        out.append(f"Command: `{self.command}`")
        out.append("")
        out += [f"- {k}: {v}" for k, v in self.machine.items()]
        out += ["", "## Todo routes and sign-in, ours beside the floor", ""]
        out.append(
            f"{c.users} users with a session, {c.users * c.todos_per_user:,} todos of theirs; "
            f"wrk, 1 thread, {c.connections} connections ({c.signin_connections} for sign-in), "
            f"{c.seconds} s per run after a {c.warmup} s warm-up. CPU columns: cores busy "
            f"(1.0 = one core) for the server process, Postgres, and wrk; CPU ms/req: the "
            f"server process's CPU time per request, which other load on the machine does not "
            f"change much."
        )
        out += ["", _TABLE_HEAD, _TABLE_RULE]
        out += [_row(m.route, m.impl, m.result) for m in self.routes]
        out.append("")
        for route, ratio in self.ratios().items():
            ours, base = self.find(route, "ours"), self.find(route, "floor")
            assert ours is not None
            assert base is not None
            met = "met" if ratio >= RATIO_TARGET else "NOT met"
            per_cpu = self.cpu_ratios().get(route, 0.0)
            out.append(
                f"ratio {route}: ours {ours.rps:,.0f} req/s / floor {base.rps:,.0f} req/s = "
                f"{ratio:.2f} (target >= {RATIO_TARGET}: {met}); per CPU: floor "
                f"{base.server_ms:.2f} ms / ours {ours.server_ms:.2f} ms = {per_cpu:.2f}"
            )
        out += ["", "## Growth: the same reads on a small and a large table", ""]
        out += [_GROWTH_HEAD, _GROWTH_RULE]
        for case, total, caller, m in self.growth:
            r = m.result
            out.append(
                f"| {case} | {total:,} | {caller:,} | {m.route} | {r.rps:,.0f} | "
                f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | {r.server_ms:.2f} | "
                f"{r.postgres_ms:.2f} |"
            )
        out.append("")
        cpu = self.growth_cpu_ratios()
        for route, ratio in self.growth_ratios().items():
            met = "met" if ratio <= GROWTH_TARGET else "NOT met"
            out.append(
                f"growth {route}: large/small time per request = {ratio:.2f} "
                f"(target <= {GROWTH_TARGET}: {met}); CPU per request (service + Postgres) "
                f"= {cpu.get(route, 0.0):.2f}"
            )
        if self.plans:
            out += ["", "Query plans (EXPLAIN ANALYZE of the list query, top node):", ""]
            out += [f"- {case}, {what}: {plan}" for case, what, plan in self.plans]
        if self.scale:
            out += ["", "## Scaling out: workers and the pooler (GET /todos, every core)", ""]
            out += [_TABLE_HEAD, _TABLE_RULE]
            out += [_row(m.route, m.impl, m.result) for m in self.scale]
            out.append("")
            out += [f"scale {name}: {value:.2f}" for name, value in self.scale_ratios().items()]
        out += ["", "## Memory of the service process", ""]
        mem = self.memory
        if mem:
            mib = {k: v / 1024 for k, v in mem.items() if k.endswith("_kib")}
            out.append(
                f"- peak RSS under the todo-route benchmark: {mib['under_load_kib']:.0f} MiB "
                f"(the floor: {mib['floor_under_load_kib']:.0f} MiB); before it "
                f"{mib['before_routes_kib']:.0f} MiB, and {mib['started_peak_kib']:.0f} MiB at "
                "most while starting (one scrypt hash: the dummy unknown emails are checked "
                "against)"
            )
            out.append(
                f"- peak RSS with {mem['burst']} concurrent sign-ins: "
                f"{mib['burst_peak_kib']:.0f} MiB (from {mib['burst_before_kib']:.0f} MiB; at "
                f"most {mem['hash_concurrency']} scrypt hashes of 32 MiB at once, so bounded by "
                f"about {mib['bound_kib']:.0f} MiB: {'yes' if mem['bounded'] else 'NO'}); "
                f"{mem['burst_ok']} answered 200, {mem['burst_failures']} failed, "
                f"all done in {mem['burst_seconds']:.1f} s"
            )
        if self.profile:
            out += ["", "## Profile", "", *self.profile]
        out += ["", "## Summary", "", *self.summary_markdown()]
        notes = list(self.notes)
        if self.starved:
            notes.insert(
                0,
                "In these runs the server process got less than 0.8 of a core, so something "
                "else (Postgres, wrk, or other load on the machine) limited the throughput; "
                "compare CPU ms per request instead: " + "; ".join(self.starved) + ".",
            )
        if notes:
            out += ["", "## Notes", ""]
            out += [f"- {n}" for n in notes]
        return out

    def summary_markdown(self) -> list[str]:
        out = [
            "| route | against | ours req/s | theirs req/s | ratio | ours p50 / p99 ms "
            "| theirs p50 / p99 ms | target | met |",
            "|---|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in self.summary():
            theirs = f"{r.theirs.rps:,.0f}" if r.theirs else "-"
            theirs_lat = f"{r.theirs.p50_ms:.2f} / {r.theirs.p99_ms:.2f}" if r.theirs else "-"
            ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
            out.append(
                f"| {r.route} | {r.against} | {r.ours.rps:,.0f} | {theirs} | {ratio} | "
                f"{r.ours.p50_ms:.2f} / {r.ours.p99_ms:.2f} | {theirs_lat} | {r.target} | "
                f"{_yes(r.met)} |"
            )
        peak = self.memory.get("under_load_kib")
        if peak is not None:
            out.append(
                f"| peak RSS, todo routes | - | {peak / 1024:.0f} MiB | - | - | - | - | "
                f"< {RSS_TARGET_MIB} MiB | {_yes(self.rss_met())} |"
            )
        return out

    def as_json(self) -> dict[str, Any]:
        def res(r: Result) -> dict[str, Any]:
            return {**dataclasses.asdict(r), "rps": r.rps}

        return {
            "command": self.command,
            "config": dataclasses.asdict(self.config),
            "machine": self.machine,
            "routes": [{"route": m.route, "impl": m.impl, **res(m.result)} for m in self.routes],
            "ratios": self.ratios(),
            "cpu_ratios": self.cpu_ratios(),
            "growth": [
                {"case": c, "total": t, "caller": n, "route": m.route, **res(m.result)}
                for c, t, n, m in self.growth
            ],
            "growth_ratios": self.growth_ratios(),
            "growth_cpu_ratios": self.growth_cpu_ratios(),
            "scale": [{"route": m.route, "impl": m.impl, **res(m.result)} for m in self.scale],
            "scale_ratios": self.scale_ratios(),
            "plans": [{"case": c, "query": q, "plan": p} for c, q, p in self.plans],
            "memory": self.memory,
            "profile": self.profile,
            "notes": self.notes,
            "errors": self.errors(),
            "summary": [
                {
                    "route": r.route,
                    "against": r.against,
                    "ours_rps": r.ours.rps,
                    "theirs_rps": r.theirs.rps if r.theirs else None,
                    "ratio": r.ratio,
                    "ours_p99_ms": r.ours.p99_ms,
                    "theirs_p99_ms": r.theirs.p99_ms if r.theirs else None,
                    "target": r.target,
                    "met": r.met,
                }
                for r in self.summary()
            ],
            "rss_met": self.rss_met(),
        }


_TABLE_HEAD = (
    "| route | impl | req/s | p50 ms | p99 ms | errors | server CPU | Postgres CPU | wrk CPU "
    "| CPU ms/req |"
)
_TABLE_RULE = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
_GROWTH_HEAD = (
    "| table | todos | caller's | request | req/s | p50 ms | p99 ms | errors "
    "| server CPU ms/req | Postgres CPU ms/req |"
)
_GROWTH_RULE = "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"


def _row(route: str, impl: str, r: Result) -> str:
    errors = f"{r.errors} ({r.error_detail})" if r.errors else "0"
    return (
        f"| {route} | {impl} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {errors} | "
        f"{r.server_cpu:.2f} | {r.postgres_cpu:.2f} | {r.generator_cpu:.2f} | "
        f"{r.server_ms:.2f} |"
    )


# -- the machine ----------------------------------------------------------------------------


def machine_info(pg_version: str, cores: Cores) -> dict[str, str]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    import uvicorn

    return {
        "code": code_version(),
        "machine": f"{model}, {os.cpu_count()} CPUs, {mem} RAM",
        "system": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "load average at start": load,
        "pinning": cores.describe(),
        "software": (
            f"Python {platform.python_version()}, uvicorn {uvicorn.__version__}, "
            f"PostgreSQL {pg_version} (embedded, fsync off), {wrk_version()}"
        ),
    }


def code_version() -> str:
    """The commit this run measured, and whether the work tree had changes on top of it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}" + (" with uncommitted changes" if dirty else "")


# -- steps ----------------------------------------------------------------------------------


def service_env(database_url: str, config: Config, secret: str) -> dict[str, str]:
    """The service as it is deployed: production defaults (access log on, pool of 20), only
    the database and the secret set, and rate limits off, so that sign-in can be measured
    from one client address (the todo routes have no limits either way)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    env.update(
        DATABASE_URL=database_url,
        AUTH_SECRET=secret,
        RATE_LIMIT_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    if config.hash_concurrency != DEFAULT_HASH_CONCURRENCY:
        env["PASSWORD_HASH_CONCURRENCY"] = str(config.hash_concurrency)
    return env


async def prepare_database(admin_url: str, url: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        version = str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
    await migrate.upgrade(PLATFORM, url)
    await migrate.upgrade(WEB_TREE, url)
    return version


@contextmanager
def connected(url: str) -> Iterator[Callable[[Any], Any]]:
    """Run coroutines on one event loop against one connection, from synchronous code."""
    loop = asyncio.new_event_loop()
    conn: asyncpg.Connection = loop.run_until_complete(asyncpg.connect(url))

    def run(make: Any) -> Any:
        return loop.run_until_complete(make(conn))

    try:
        yield run
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


def measure(
    report: Report,
    route: str,
    impl: str,
    server: Server,
    reqs: Sequence[Req],
    *,
    connections: int,
    pg_pid: int,
    seconds: int,
    warmup: int,
    timeout: int = 30,
    workers: bool = False,
) -> Result:
    kwargs: dict[str, Any] = {"connections": connections, "timeout": timeout}
    # Several workers: the CPU is spent in `serve`'s children.
    server_cpu = (
        (lambda: tree_cpu_seconds(server.pid)) if workers else (lambda: cpu_seconds(server.pid))
    )
    if warmup:
        run_wrk(server.base_url, reqs, seconds=warmup, **kwargs)
    result = run_wrk(
        server.base_url,
        reqs,
        seconds=seconds,
        server_cpu=server_cpu,
        postgres_cpu=lambda: tree_cpu_seconds(pg_pid),
        **kwargs,
    )
    log(
        f"  {route:32} {impl:5} {result.rps:9,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
        f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}  "
        f"cpu server {result.server_cpu:.2f} pg {result.postgres_cpu:.2f} "
        f"wrk {result.generator_cpu:.2f}"
    )
    if result.server_cpu < 0.8 and route != SIGN_IN and not workers:
        report.starved.append(f"{route} ({impl}) {result.server_cpu:.2f}")
    return result


def credentials(email: str) -> dict[str, str]:
    return {"email": email, "password": seed.PASSWORD}


def sign_in_burst(base_url: str, emails: Sequence[str], pid: int, count: int) -> dict[str, Any]:
    """`count` sign-ins sent at once; the service's peak RSS meanwhile."""
    before = memory_kib(pid, "VmRSS")
    reset = reset_peak_rss(pid)
    sampled = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                sampled.append(memory_kib(pid, "VmRSS"))
            except OSError:
                return
            time.sleep(0.01)

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=300) as client:

            async def one(i: int) -> int:
                email = emails[i % len(emails)]
                try:
                    r = await client.post("/api/auth/sign-in/email", json=credentials(email))
                except httpx.HTTPError:
                    return 0
                return r.status_code

            return await asyncio.gather(*(one(i) for i in range(count)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        statuses = asyncio.run(burst())
    finally:
        stop.set()
        sampler.join()
    elapsed = time.monotonic() - started
    peak = max(sampled)
    if reset:
        peak = max(peak, memory_kib(pid, "VmHWM"))
    return {
        "burst": count,
        "burst_before_kib": before,
        "burst_peak_kib": peak,
        "burst_ok": sum(1 for s in statuses if s == 200),
        "burst_failures": sum(1 for s in statuses if s != 200),
        "burst_statuses": sorted({s for s in statuses}),
        "burst_seconds": elapsed,
    }


async def _plan(conn: asyncpg.Connection, sql: str, *args: Any) -> str:
    rows = await conn.fetch("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
    plan = json.loads(rows[0][0])[0]
    node = plan["Plan"]
    while node.get("Node Type") == "Limit" and node.get("Plans"):
        node = node["Plans"][0]
    name = node.get("Node Type", "?")
    if "Index Name" in node:
        name += f" using {node['Index Name']}"
    return f"{name}, {plan['Execution Time']:.3f} ms"


def growth_case(
    report: Report,
    run_db: Callable[[Any], Any],
    case: str,
    ours: Server,
    caller: seed.BenchUser,
    config: Config,
    pg_pid: int,
) -> None:
    total = run_db(lambda c: seed.count_todos(c))
    owned = run_db(lambda c: seed.count_todos(c, caller.id))
    deep = min(int(owned * 0.9), owned - 2 * PAGE - 2)
    cursor, after, after_id = run_db(lambda c: seed.cursor_at(c, caller.id, deep))
    ids = run_db(lambda c: seed.todo_ids(c, caller.id, 1000))
    report.plans.append(
        (case, "first page", run_db(lambda c: _plan(c, floor.LIST_SQL, caller.id, PAGE + 1)))
    )
    report.plans.append(
        (
            case,
            f"page after row {deep:,}",
            run_db(lambda c: _plan(c, floor.LIST_AFTER_SQL, caller.id, PAGE + 1, after, after_id)),
        )
    )
    log(f"growth, {case}: {total:,} todos, the caller owns {owned:,}; deep cursor at {deep:,}")
    runs = (
        (f"{LIST} first page", [Req("GET", f"/todos?limit={PAGE}", caller.token)]),
        (
            f"{LIST} after row {deep:,}",
            [Req("GET", f"/todos?limit={PAGE}&cursor={cursor}", caller.token)],
        ),
        (GET, [Req("GET", f"/todos/{i}", caller.token) for i in ids]),
    )
    for label, reqs in runs:
        route = label if not label.startswith(f"{LIST} after") else f"{LIST} after deep cursor"
        res = measure(
            report,
            route,
            "ours",
            ours,
            reqs,
            connections=config.connections,
            pg_pid=pg_pid,
            seconds=config.seconds,
            warmup=config.warmup,
        )
        report.growth.append((case, total, owned, Measured(route, "ours", res)))


# -- the run --------------------------------------------------------------------------------


def run(config: Config, command: str) -> Report:
    wrk_path()  # fail early, with the install line, when wrk is missing
    if config.profile and profile.py_spy_path() is None:
        raise SystemExit("--profile needs py-spy on PATH: pip install py-spy (a transient tool)")
    cores = Cores.split(config.pin)
    cores.pin_self()
    report = Report(command=command, config=config)
    started = time.monotonic()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        log("starting an embedded Postgres")
        pg = EmbeddedPostgres(tmp / "pg", settings=PG_SETTINGS)
        stack.enter_context(pg)
        url = pg.url(DB_NAME)
        pg_version = asyncio.run(prepare_database(pg.url(), url))
        pg_pid = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
        report.machine = machine_info(pg_version, cores)
        run_db = stack.enter_context(connected(url))

        log("seeding users, sessions and the small table")
        pw_hash = seed.password_hash()
        base = seed.seed_base()
        users = run_db(lambda c: seed.add_users(c, "user", config.users, pw_hash))
        caller = run_db(lambda c: seed.add_users(c, "caller", 1, pw_hash))[0]
        others = run_db(lambda c: seed.add_users(c, "other", config.others, pw_hash))
        other_ids = [u.id for u in others]
        run_db(lambda c: seed.add_todos(c, [caller.id], 1, config.small_caller, tag="c", base=base))
        rest = config.small_total - config.small_caller
        run_db(lambda c: seed.add_todos(c, other_ids, 1, rest, tag="o", base=base))
        run_db(seed.analyze)

        secret = secrets.token_urlsafe(32)
        env = service_env(url, config, secret)
        ours_port, floor_port = free_port(), free_port()
        log("starting the service (web serve) and the floor, one uvicorn worker each")
        ours = Server(
            "web serve",
            [str(BIN / "web"), "serve", "--host", "127.0.0.1", "--port", str(ours_port)],
            env,
            ours_port,
            tmp / "web.log",
            cores.server,
        )
        stack.callback(ours.stop)
        base_floor = Server(
            "floor",
            [
                sys.executable,
                *("-m", "bench.floor", "--port", str(floor_port)),
                *("--pool-size", str(config.pool_size)),
            ],
            {**env, "PYTHONPATH": str(REPO)},
            floor_port,
            tmp / "floor.log",
            cores.server,
        )
        stack.callback(base_floor.stop)
        servers = [ours, base_floor]
        why_not = betterauth.unavailable()
        ba = None
        if why_not is None:
            log("starting better-auth's own server (Node) on the same database")
            ba = betterauth.start(url, secret, config.pool_size, tmp / "ba.log", cores.server)
            stack.callback(ba.stop)
            servers.append(ba)
        else:
            report.notes.append(why_not)
        try:
            ours.wait_ready("/readyz")
            base_floor.wait_ready("/healthz")
            if ba is not None:
                ba.wait_ready("/api/auth/ok")
            reqs = steps(
                report, config, run_db, ours, base_floor, ba, users, caller, other_ids, pg_pid, base
            )
            for server in servers:
                server.stop()
            scale_out(report, config, env, tmp, reqs, pg_pid, pg.url(), url)
        except BaseException:
            for server in servers:
                log(f"{server.name} log (tail):\n{server.output()}")
            raise
    report.notes.append(f"The whole run took {time.monotonic() - started:.0f} s.")
    return report


def steps(
    report: Report,
    config: Config,
    run_db: Callable[[Any], Any],
    ours: Server,
    base_floor: Server,
    ba: Server | None,
    users: list[seed.BenchUser],
    caller: seed.BenchUser,
    other_ids: list[str],
    pg_pid: int,
    base: datetime,
) -> list[Req]:
    """Every measured step but the scale-out one; the GET /todos requests, for it."""
    small = f"{config.small_total:,} todos"
    growth_case(report, run_db, small, ours, caller, config, pg_pid)

    n = config.users * config.todos_per_user
    log(f"seeding {n:,} todos for {config.users} users")
    run_db(lambda c: seed.add_todos(c, [u.id for u in users], 1, n, tag="u", base=base))
    run_db(seed.analyze)
    pairs = run_db(lambda c: seed.owned_pairs(c, users, min(10, config.todos_per_user)))
    per_route: dict[str, list[Req]] = {
        LIST: [Req("GET", f"/todos?limit={PAGE}", u.token) for u in users],
        GET: [Req("GET", f"/todos/{todo}", token) for token, todo in pairs],
        POST: [
            Req("POST", "/todos", u.token, json.dumps({"title": f"bench todo {i}"}))
            for i, u in enumerate(users)
        ],
        PATCH: [
            Req(
                "PATCH",
                f"/todos/{todo}",
                token,
                json.dumps({"completed": i % 2 == 0, "title": f"patched {i}"}),
            )
            for i, (token, todo) in enumerate(pairs)
        ],
    }
    # The peak so far is the start's: importing the app computes one scrypt hash (the dummy
    # that unknown emails are verified against, 32 MiB for a moment). Measure the routes' own.
    started_peak = memory_kib(ours.pid, "VmHWM")
    before_routes = memory_kib(ours.pid, "VmRSS")
    floor_reset = reset_peak_rss(base_floor.pid)
    if not reset_peak_rss(ours.pid) or not floor_reset:
        log("  this kernel does not reset VmHWM: the peaks below include the start")
    log("todo routes: ours beside the floor")
    for route in TODO_ROUTES:
        for impl, server in (("ours", ours), ("floor", base_floor)):
            res = measure(
                report,
                route,
                impl,
                server,
                per_route[route],
                connections=config.connections,
                pg_pid=pg_pid,
                seconds=config.seconds,
                warmup=config.warmup,
            )
            report.routes.append(Measured(route, impl, res))
    under_load = memory_kib(ours.pid, "VmHWM")
    floor_under_load = memory_kib(base_floor.pid, "VmHWM")

    if config.profile:
        report.profile = profile_route(config, ours, config.profile, per_route[config.profile])

    emails = [u.email for u in users]
    log(f"{config.burst} concurrent sign-ins")
    burst = sign_in_burst(ours.base_url, emails, ours.pid, config.burst)
    # Before the burst the process holds what the todo routes made it grow to; each scrypt
    # hash running adds its 32 MiB (48 MiB allowed for allocator slack), plus 32 MiB for the
    # requests themselves. Unbounded hashing would add 32 MiB per concurrent sign-in.
    bound = burst["burst_before_kib"] + config.hash_concurrency * 48 * 1024 + 32 * 1024
    report.memory = {
        "started_peak_kib": started_peak,
        "before_routes_kib": before_routes,
        "under_load_kib": under_load,
        "floor_under_load_kib": floor_under_load,
        "hash_concurrency": config.hash_concurrency,
        "bound_kib": bound,
        "bounded": burst["burst_peak_kib"] <= bound,
        **burst,
    }
    log(
        f"  peak RSS {burst['burst_peak_kib'] / 1024:.0f} MiB, "
        f"{burst['burst_failures']} of {config.burst} failed"
    )

    auth_routes(report, config, ours, ba, users, pg_pid)

    with_cursor = run_db(lambda c: seed.count_todos(c, caller.id))
    log(f"growing the table to {config.large_total:,} todos ({config.large_caller:,} the caller's)")
    t0 = time.monotonic()
    run_db(
        lambda c: seed.add_todos(
            c, [caller.id], with_cursor + 1, config.large_caller, tag="c", base=base
        )
    )
    total = run_db(lambda c: seed.count_todos(c))
    # Continue the others' numbering after the small table's rows.
    first = config.small_total - config.small_caller + 1
    run_db(
        lambda c: seed.add_todos(
            c, other_ids, first, first + config.large_total - total - 1, tag="o", base=base
        )
    )
    run_db(seed.analyze)
    log(f"  seeded in {time.monotonic() - t0:.0f} s")
    large = f"{config.large_total:,} todos"
    growth_case(report, run_db, large, ours, caller, config, pg_pid)
    return per_route[LIST]


ONE_WORKER, TWO_WORKERS, POOLED = "1 worker", "2 workers", "1 worker, PgBouncer"


def scale_out(
    report: Report,
    config: Config,
    env: dict[str, str],
    tmp: Path,
    reqs: Sequence[Req],
    pg_pid: int,
    admin_url: str,
    url: str,
) -> None:
    """GET /todos on every core: `web serve` with 1 and with 2 workers, and 1 worker with
    DATABASE_URL through PgBouncer in transaction mode (its pooled statements)."""
    log("scaling out: 1 worker, 2 workers, 1 worker through PgBouncer (not pinned)")
    with ExitStack() as stack:
        cases: list[tuple[str, list[str], dict[str, str]]] = [
            (ONE_WORKER, [], env),
            (TWO_WORKERS, ["--workers", "2"], env),
        ]
        if pgbouncer_binary() is None:
            report.notes.append("No pgbouncer on this machine: the pooled run was skipped.")
        else:
            bouncer = stack.enter_context(
                pgbouncer(admin_url, tmp / "pgbouncer", pool_size=config.pool_size)
            )
            pooled_env = {**env, "DATABASE_URL": bouncer.pooled(url), "DATABASE_DIRECT_URL": url}
            cases.append((POOLED, [], pooled_env))
        for impl, extra, case_env in cases:
            port = free_port()
            server = Server(
                f"web serve ({impl})",
                [str(BIN / "web"), "serve", "--host", "127.0.0.1", "--port", str(port), *extra],
                case_env,
                port,
                tmp / f"web-{port}.log",
                None,
            )
            try:
                server.wait_ready("/readyz")
                res = measure(
                    report,
                    LIST,
                    impl,
                    server,
                    reqs,
                    connections=config.connections,
                    pg_pid=pg_pid,
                    seconds=config.seconds,
                    warmup=config.warmup,
                    workers=True,
                )
                report.scale.append(Measured(LIST, impl, res))
            except BaseException:
                log(f"{server.name} log (tail):\n{server.output()}")
                raise
            finally:
                server.stop()


def profile_route(config: Config, ours: Server, route: str, reqs: Sequence[Req]) -> list[str]:
    seconds = config.seconds
    log(f"profiling the service under {route} for {seconds} s (py-spy)")
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp:
        raw_path = Path(tmp) / "stacks.txt"
        spy = profile.start_py_spy(ours.pid, seconds + 1, raw_path)
        time.sleep(0.5)
        run_wrk(ours.base_url, reqs, seconds=seconds, connections=config.connections)
        _, err = spy.communicate(timeout=120)
        if spy.returncode != 0 or not raw_path.exists():
            return [f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}"]
        raw = raw_path.read_text()
    if config.profile_raw is not None:
        config.profile_raw.write_text(raw)
    return profile.report(profile.summarise(raw), route)


def auth_routes(
    report: Report,
    config: Config,
    ours: Server,
    ba: Server | None,
    users: list[seed.BenchUser],
    pg_pid: int,
) -> None:
    """get-session and sign-in, on ours and on better-auth's own server: the same users."""
    log("auth routes: ours beside better-auth" if ba else "auth routes: ours")
    reqs = {
        GET_SESSION: [Req("GET", "/api/auth/get-session", u.token) for u in users],
        SIGN_IN: [
            Req("POST", "/api/auth/sign-in/email", None, json.dumps(credentials(u.email)))
            for u in users
        ],
    }
    for route in AUTH_ROUTES:
        signing_in = route == SIGN_IN
        for impl, server in (("ours", ours), (BETTER_AUTH, ba)):
            if server is None:
                continue
            res = measure(
                report,
                route,
                impl,
                server,
                reqs[route],
                connections=config.signin_connections if signing_in else config.connections,
                pg_pid=pg_pid,
                seconds=max(config.seconds, 2) if signing_in else config.seconds,
                warmup=0 if signing_in else config.warmup,
                timeout=60,
            )
            report.routes.append(Measured(route, impl, res))


# Options naming where output goes: the report and the chart show the run without them, so
# no path of the machine that ran it ends up in a committed file.
_OUTPUT_OPTIONS = ("--json", "--chart", "--profile-raw")


def shown_command(args: Sequence[str]) -> str:
    shown: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _OUTPUT_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in _OUTPUT_OPTIONS)):
            shown.append(arg)
    return " ".join(["python -m bench", *shown])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="short runs, small data (CI)")
    parser.add_argument("--seconds", type=int, default=0, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--burst", type=int, default=100, help="concurrent sign-ins")
    parser.add_argument("--pool-size", type=int, default=20, help="database connections each")
    parser.add_argument(
        "--hash-concurrency",
        type=int,
        default=DEFAULT_HASH_CONCURRENCY,
        help="PASSWORD_HASH_CONCURRENCY of the service (default: the service's own)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--profile",
        nargs="?",
        const=LIST,
        choices=(LIST, GET, POST, PATCH),
        help=f"profile one todo route with py-spy (default {LIST!r})",
    )
    parser.add_argument(
        "--profile-raw", type=Path, help="with --profile: keep py-spy's collapsed stacks here"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--chart",
        type=Path,
        help="write the chart (SVG) here; default: docs/benchmarks.svg in a full run, none in "
        "a quick one",
    )
    args = parser.parse_args(argv)
    # Stopped with SIGTERM: unwind, so the servers and Postgres this run started stop too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    config = make_config(args)
    command = shown_command(sys.argv[1:] if argv is None else argv)
    report = run(config, command)
    print("\n".join(report.markdown()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), indent=2, default=str) + "\n")
    chart_path = args.chart or (None if config.quick else REPO / "docs" / "benchmarks.svg")
    if chart_path is not None:
        chart_path.write_text(report.chart())
        log(f"chart written to {chart_path}")
    failures = report.errors() + int(report.memory.get("burst_failures", 0))
    if failures:
        print(f"\n{failures} requests failed", file=sys.stderr)
        sys.exit(1)
