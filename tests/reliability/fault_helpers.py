"""Shared pieces of the database-fault and concurrency tests: a Postgres server of the test's
own (so it can be stopped and crashed), real service processes, and a load driver that keeps
every answer it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from platform_dev.embedded import EmbeddedPostgres
from tests.e2e.conftest import Processes

# Durable settings on purpose: fsync and synchronous_commit stay on (Postgres's defaults), so
# a commit the service acknowledged is on disk before the client hears 201, and a crash
# (`pg_ctl stop -m immediate`) followed by WAL replay must bring every such row back.
DURABLE_SETTINGS: dict[str, str] = {"fsync": "on", "synchronous_commit": "on"}


@contextlib.asynccontextmanager
async def own_server(data_dir: Path) -> AsyncIterator[EmbeddedPostgres]:
    """A Postgres server only this test uses (it may stop, crash and restart it)."""
    server = EmbeddedPostgres(data_dir, settings=DURABLE_SETTINGS)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def stop_server(server: EmbeddedPostgres, mode: str) -> None:
    """`pg_ctl stop -m fast` (clean shutdown) or `-m immediate` (a crash: no checkpoint,
    WAL replay at the next start). Runs in a thread: the event loop keeps serving the load."""
    args = ["-D", str(server.pgdata), "-m", mode, "-w", "stop"]
    await asyncio.to_thread(server._run, "pg_ctl", args, timeout=90)


async def start_server(server: EmbeddedPostgres) -> None:
    """Start the server again, on the port it had (its `port` is kept)."""
    await asyncio.to_thread(server.start)


@contextlib.asynccontextmanager
async def started_processes(log_dir: Path) -> AsyncIterator[Processes]:
    """Processes for one test; every one is stopped (SIGTERM, then SIGKILL) when it ends."""
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    procs = Processes(log_dir)
    try:
        yield procs
    finally:
        await procs.stop_all()


async def poll(check: Callable[[], bool], within: float) -> bool:
    """Whether `check` comes to hold within `within` seconds (polled; never raises)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def sign_up(client: httpx.AsyncClient, email: str) -> str:
    """A new user through the service's API; its bearer token."""
    r = await client.post(
        "/api/auth/sign-up/email",
        json={"name": "Load", "email": email, "password": "correct horse battery"},
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


@dataclass
class Outcome:
    """One request of a load run and what came back (`status` None: no HTTP answer at all)."""

    method: str
    path: str
    phase: str
    status: int | None
    body: str
    retry_after: str | None = None
    title: str | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def is_clean_unavailable(o: Outcome) -> bool:
    """A 503 in the documented shape: {code: SERVICE_UNAVAILABLE, message}, Retry-After, and
    nothing that looks like a stack trace."""
    body = o.json()
    return (
        o.status == 503
        and isinstance(body, dict)
        and set(body) == {"code", "message"}
        and body["code"] == "SERVICE_UNAVAILABLE"
        and o.retry_after is not None
        and "Traceback" not in o.body
    )


@dataclass
class Load:
    """Concurrent workers that each call `step` in a loop until `stop()`, tagging every
    outcome with the phase that was current when the request started."""

    client: httpx.AsyncClient
    step: Callable[[Load, int, int], Any]  # (load, worker, n) -> awaitable Outcome
    workers: int = 8
    phase: str = "before"
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def request(
        self, method: str, path: str, *, title: str | None = None, **kwargs: Any
    ) -> Outcome:
        phase = self.phase
        try:
            r = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            outcome = Outcome(
                method, path, phase, None, f"{type(exc).__name__}: {exc}", None, title
            )
        else:
            outcome = Outcome(
                method, path, phase, r.status_code, r.text, r.headers.get("retry-after"), title
            )
        self.outcomes.append(outcome)
        return outcome

    async def _worker(self, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            outcome: Outcome = await self.step(self, worker, n)
            n += 1
            if outcome.status is None or outcome.status >= 500:
                await asyncio.sleep(0.05)  # do not spin while the database is away

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def count(self, ok: Callable[[Outcome], bool], *, phase: str | None = None) -> int:
        return sum(1 for o in self.outcomes if ok(o) and (phase is None or o.phase == phase))

    async def until(self, what: str, ok: Callable[[Outcome], bool], n: int, within: float) -> None:
        """Wait (bounded) until `n` outcomes satisfy `ok`; fail with a summary otherwise."""
        deadline = time.monotonic() + within
        while self.count(ok) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {n} x {what} within {within:.0f}s: {self.summary()}")
            await asyncio.sleep(0.05)

    def summary(self) -> str:
        by = Counter((o.phase, o.status) for o in self.outcomes)
        odd = [o for o in self.outcomes if o.status not in (200, 201, 204) and o.status != 503]
        sample = "; ".join(f"{o.method} {o.path} -> {o.status} {o.body[:300]}" for o in odd[:5])
        return f"{dict(by)} first unexpected: {sample or 'none'}"
