"""The application factory under every service: database, one error shape, health, the HTTP
middleware, typed state. What a service adds (auth, its routes) comes in as arguments."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
)

from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from service_kit import tracing
from service_kit.access_log import AccessLogMiddleware
from service_kit.db import Database, create_engine, keeps_session
from service_kit.errors import install_error_handlers
from service_kit.health import router as health_router
from service_kit.metrics import Metrics, refreshing
from service_kit.middleware import (
    AllowedHostsMiddleware,
    BodySizeLimitMiddleware,
    SecurityHeadersMiddleware,
)
from service_kit.migrate import MigrationTree, current_heads
from service_kit.openapi import install as install_openapi
from service_kit.settings import DatabaseSettings, Settings
from service_kit.state import KitState

log = logging.getLogger(__name__)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


async def _pooled(settings: DatabaseSettings) -> bool:
    """Whether DATABASE_URL is transaction-pooled: said by DATABASE_DIRECT_URL, or found out.

    Without DATABASE_DIRECT_URL, DATABASE_URL is taken to be direct once it is seen to keep a
    session; a URL that does not (the pooled URL alone) still runs safely, pooled.
    """
    if settings.database_direct_url:
        return settings.pooled
    if await keeps_session(settings.database_url) is not False:
        return False  # direct, or unreachable for now (then as configured: direct)
    log.warning(
        "DATABASE_URL does not keep a session between transactions: it is a transaction "
        "pooler (such as PgBouncer in transaction mode). Its statements run without "
        "prepared-statement caching; set DATABASE_DIRECT_URL to the database's direct URL "
        "for migrations and the session cache"
    )
    return True


REVISIONS_EVERY = 30.0  # seconds between two reads of the trees' revisions, per process


def watch_database(metrics: Metrics, database: Database, trees: Sequence[MigrationTree]) -> None:
    """The pool's gauges, the checkouts that waited, and each tree's revision in the
    database (`migration_revision{tree, revision} 1`), refreshed with the other gauges."""
    metrics.watch_pool(database.engine)
    waits = metrics.counter(
        "db_pool_waits", "Checkouts by requests that waited for a connection (over 1 ms)"
    )
    revision = metrics.gauge(
        "migration_revision",
        "1 for the revision each migration tree is at in the database",
        ["tree", "revision"],
        across="livemax",
    )
    counted = 0
    shown: dict[str, tuple[str, ...]] = {}
    next_read = 0.0

    def read_waits() -> None:
        nonlocal counted
        if database.pool_waits > counted:
            waits.inc(database.pool_waits - counted)
            counted = database.pool_waits

    async def read_revisions() -> None:
        nonlocal next_read
        now = time.monotonic()
        if now < next_read:
            return
        next_read = now + REVISIONS_EVERY
        async with database.engine.connect() as conn:
            for tree in trees:
                found = await current_heads(conn, tree)
                if shown.get(tree.name) == found:
                    continue
                for old in shown.get(tree.name, ()):
                    revision.labels(tree.name, old).set(0)
                for head in found:
                    revision.labels(tree.name, head).set(1)
                shown[tree.name] = found

    metrics.on_refresh(read_waits)
    metrics.on_refresh(read_revisions)


def _outermost_access_log(
    app: FastAPI, *, enabled: bool, secret_paths: tuple[str, ...], metrics: Metrics | None
) -> None:
    """Put the request id, the access log and the request metrics around everything,
    Starlette's error middleware included (add_middleware puts it inside that): a 500 has its
    id, its line and its count too."""
    build = app.build_middleware_stack
    observe = metrics.observe if metrics is not None else None

    def build_with_access_log() -> ASGIApp:
        return AccessLogMiddleware(
            build(), enabled=enabled, secret_path_segments=secret_paths, observe=observe
        )

    # Starlette builds the stack on the first request by calling this attribute.
    app.build_middleware_stack = build_with_access_log  # type: ignore[method-assign]


# Young objects tolerated before a collection (CPython's default is 700). A request makes
# hundreds of short-lived containers and no cyclic garbage, so at 700 the collector ran every
# few requests and a full pass every third of a second (measured: 0.2 ms of CPU per request,
# and ~100 ms pauses in the write routes' p99); at 10,000 it barely runs, and what a cycle
# could hold up is bounded by the same number of objects.
GC_THRESHOLDS = (10_000, 10, 10)


@contextmanager
def frozen_startup_heap() -> Iterator[None]:
    """While the app serves, what start-up built (modules, routes, models, compiled
    statements, the pool) is out of the garbage collector's reach: it lives as long as the
    app, yet every full collection would walk all of it, a pause every request in flight
    waits for. At shutdown it is handed back, so an app that stops (in a test run, many do)
    leaves nothing behind that could never be collected."""
    gc.collect()
    gc.freeze()
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def create_app(
    *,
    title: str,
    settings: Settings,
    trees: Sequence[MigrationTree],
    routers: Sequence[APIRouter] = (),
    middleware: Sequence[Middleware] = (),
    lifespan: Lifespan | None = None,
    host_patterns: frozenset[str] = frozenset({"*"}),
    private_paths: tuple[str, ...] = (),
    secret_path_segments: tuple[str, ...] = (),
    description: str = "",
    version: str = "0.1.0",
) -> FastAPI:
    """An app whose `/readyz` requires `trees` at head, with `routers` mounted in that order.

    `middleware` (outermost first) runs inside the kit's own (host check, body limit,
    security headers), so its answers get the same headers; `lifespan` runs once the
    database is open. `secret_path_segments`: path segments followed by a single-use token,
    which the access log redacts where no route template stands in for the path.
    """
    metrics = Metrics() if settings.server.metrics_port else None
    state = KitState(trees=tuple(trees), metrics=metrics)

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        pooled = await _pooled(settings.database)
        state.database = Database(create_engine(settings.database, pooled=pooled), pooled=pooled)
        if settings.server.tracing:
            state.database.tracer = tracing.tracer()
            tracing.instrument(state.database.engine, state.database.tracer)
        if metrics is not None:
            watch_database(metrics, state.database, state.trees)
        try:
            async with (
                lifespan(app) if lifespan else nullcontext(),
                refreshing(metrics) if metrics is not None else nullcontext(),
            ):
                with frozen_startup_heap():
                    yield
        finally:
            await state.database.dispose()
            state.database = None

    # Swagger UI's files are served by the service itself: no CDN, works offline.
    app = FastAPIOffline(
        title=title,
        description=description,
        version=version,
        lifespan=run,
        redoc_url=None,
        swagger_ui_parameters={"persistAuthorization": True},
        # FastAPI's own OpenTelemetry makes the request spans when traces are on; off, it
        # would still look up the global providers on every request (3.4 us) to find none.
        telemetry=tracing.telemetry(settings.server.tracing),
    )
    app.state.kit = state
    _outermost_access_log(
        app,
        enabled=settings.server.access_log,
        secret_paths=secret_path_segments,
        metrics=metrics,
    )
    install_error_handlers(app)
    for layer in reversed(middleware):  # add_middleware puts each outside the ones before it
        app.add_middleware(layer.cls, *layer.args, **layer.kwargs)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(
        AllowedHostsMiddleware,
        patterns=host_patterns,
        exempt_paths=frozenset({"/healthz", "/readyz"}),
    )
    app.add_middleware(
        SecurityHeadersMiddleware,
        docs_paths=("/docs", "/static-offline-docs"),
        private_paths=private_paths,
    )
    for router in routers:
        app.include_router(router)
    app.include_router(health_router)
    install_openapi(app)  # every route's errors, from the code it runs
    return app
