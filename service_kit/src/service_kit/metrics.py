"""Prometheus metrics, served on their own port (`METRICS_PORT`), never on the service's.

`serve` calls `serve_metrics` before anything imports prometheus_client: it points
prometheus-client's multiprocess mode at a fresh directory (`PROMETHEUS_MULTIPROC_DIR`, or one
of its own) and starts the `/metrics` endpoint in the `serve` process, which adds up what every
worker process writes there, so one scrape counts every worker. prometheus_client is imported
lazily for that reason: its value class is chosen when it is first imported.

Each app has a `Metrics` of its own (tests build many apps in one process): the kit's
`http_requests_total` (method, route template, status), `http_request_duration_seconds` and the
database pool's gauges; other packages add theirs through `counter` and `gauge`. Gauges that
describe one process's state (pool, cache) are refreshed every `REFRESH_SECONDS` by the app's
lifespan, not on every request: a request pays for two observations and nothing more.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REFRESH_SECONDS = 5.0
# Seconds: from a cached session's hit (well under a millisecond) to a slow write.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_PID = re.compile(r"_(\d+)\.db$")

Refresh = Callable[[], Awaitable[None] | None]


class Metrics:
    """One app's metrics, on a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        self._refreshers: list[Refresh] = []
        self.requests: Counter = Counter(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration: Histogram = Histogram(
            "http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by method and route template",
            ["method", "route"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        # (method, route, status) -> the label children: labels() costs more than inc().
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._observers: list[Callable[[str, str, int, float], None]] = []

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        from prometheus_client import Counter

        return Counter(name, documentation, list(labels), registry=self.registry)

    def gauge(
        self, name: str, documentation: str, labels: Sequence[str] = (), *, across: str = "livesum"
    ) -> Gauge:
        """A gauge; `across`: how the workers' values add up (prometheus-client's
        multiprocess_mode: livesum, livemax, livemin, liveall)."""
        from prometheus_client import Gauge

        mode: Any = across
        return Gauge(
            name, documentation, list(labels), registry=self.registry, multiprocess_mode=mode
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            if len(self._children) > 10_000:  # routes are templates: this is a bug elsewhere
                return
            children = (
                self.requests.labels(method, route, str(status)),
                self.duration.labels(method, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        for observer in self._observers:
            observer(method, route, status, seconds)

    def on_request(self, observer: Callable[[str, str, int, float], None]) -> None:
        """Also call `observer(method, route, status, seconds)` for every request."""
        self._observers.append(observer)

    def on_refresh(self, refresh: Refresh) -> None:
        """Run `refresh` every REFRESH_SECONDS while the app serves (and once at start)."""
        self._refreshers.append(refresh)

    async def refresh(self) -> None:
        for refresh in self._refreshers:
            try:
                result = refresh()
                if result is not None:
                    await result
            except Exception as exc:  # a gauge can wait for the next round
                log.warning("metrics: refreshing failed (%s)", type(exc).__name__)

    async def refresh_forever(self, interval: float = REFRESH_SECONDS) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(interval)

    def watch_pool(self, engine: AsyncEngine) -> None:
        """Gauges of the engine's pool: its size, connections lent out, overflow open."""
        size = self.gauge("db_pool_size", "Connections the pool keeps")
        out = self.gauge("db_pool_checked_out", "Connections lent to requests now")
        overflow = self.gauge("db_pool_overflow", "Connections open beyond the pool's size")
        pool: Any = engine.sync_engine.pool

        def read() -> None:
            size.set(pool.size())
            out.set(pool.checkedout())
            overflow.set(max(0, pool.overflow()))

        self.on_refresh(read)


@contextlib.asynccontextmanager
async def refreshing(metrics: Metrics) -> Any:
    """Keep `metrics`' gauges fresh while the block runs."""
    task = asyncio.create_task(metrics.refresh_forever(), name="metrics-refresh")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _dead_pids(path: Path) -> Iterable[int]:
    for file in path.glob("gauge_live*.db"):
        match = _PID.search(file.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            yield pid
        except PermissionError:
            continue


def serve_metrics(host: str, port: int) -> Path:
    """Before the app is built: multiprocess mode on, and `/metrics` served on `port` by a
    thread of this process, adding up every worker's values. The directory."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # a previous run's: its counters are not ours
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before serve_metrics")

    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
    from prometheus_client.registry import Collector

    class LiveCollector(Collector):
        """Every worker's values; a worker that is gone no longer counts in live gauges."""

        def __init__(self) -> None:
            self._all = MultiProcessCollector(None, path=str(path))  # type: ignore[no-untyped-call]
            self._lock = threading.Lock()

        def collect(self) -> Iterable[Any]:
            with self._lock:
                for pid in _dead_pids(path):
                    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
            return self._all.collect()  # type: ignore[no-untyped-call,no-any-return]

    registry = CollectorRegistry()
    registry.register(LiveCollector())
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port, extra={"metrics_port": port})
    return path
