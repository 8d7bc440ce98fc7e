"""What makes a package a service: its tree, its app factory, its command line and `serve`."""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from fastapi import FastAPI
from pydantic import ValidationError

from service_kit import migrate
from service_kit.access_log import ACCESS_LOGGER, RequestIdFilter
from service_kit.cli import main_for, positive_int, subcommands
from service_kit.http_server import BoundedHttpToolsProtocol
from service_kit.logs import LogFormat, json_config
from service_kit.metrics import serve_metrics
from service_kit.migrate import MigrationError, MigrationTree
from service_kit.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ServiceDefinition:
    """A service as the kit runs it: its tree, how to read its settings and build its app."""

    name: str
    tree: MigrationTree
    create_app: Callable[[Any], FastAPI]
    load_settings: Callable[[], Settings]
    default_port: int
    description: str = ""


def load(read: Callable[[], T], what: str = "settings") -> T:
    """Read settings (`read()`: a class, or `Settings.from_env`); a problem becomes one
    readable MigrationError."""
    try:
        return read()
    except ValidationError as exc:
        # A check across several settings has no single field to name.
        problems = "; ".join(
            f"{e['loc'][0]}: {e['msg']}" if e["loc"] else e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise MigrationError(f"invalid or missing {what}: {problems}") from None


def _log_config(service: ServiceDefinition, level: str, log_format: LogFormat) -> dict[str, Any]:
    """uvicorn's logging, plus the kit's access log (uvicorn's own is off: the kit's names the
    route, not the path) with the request id on its lines; in JSON if `log_format` says so."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": RequestIdFilter}}
    config["formatters"]["kit_access"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s %(message)s request_id=%(request_id)s",
    }
    config["handlers"]["kit_access"] = {
        "formatter": "kit_access",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
        "filters": ["request_id"],
    }
    config["loggers"][ACCESS_LOGGER] = {
        "handlers": ["kit_access"],
        "level": level.upper(),
        "propagate": False,
    }
    return json_config(config, level) if log_format == "json" else config


def _factory(service: ServiceDefinition) -> str:
    """The import path of the service's app factory, for worker processes to call."""
    fn = service.create_app
    return f"{fn.__module__}:{fn.__qualname__}"


def serve(service: ServiceDefinition, host: str, port: int, workers: int | None = None) -> int:
    """Migrate the service's own tree (after the platform's), then serve with uvicorn:
    `workers` processes (default WEB_CONCURRENCY, else 1), each building its own app."""
    import uvicorn

    settings = service.load_settings()
    server, database = settings.server, settings.database
    workers = workers or server.workers
    heads = asyncio.run(
        migrate.upgrade(
            service.tree,
            database.direct_url,  # the lock is a session's: never through a pooler
            wait_timeout=database.platform_wait_timeout,
            lock_timeout=database.migration_lock_timeout,
            ddl_lock_timeout=database.migration_ddl_lock_timeout,
        )
    )
    log.info("%s: migrations at %s", service.name, " ".join(heads))
    if server.metrics_port:
        # Before the app exists: its metrics must be the multiprocess kind (see metrics.py).
        serve_metrics(host, server.metrics_port)
    # One worker: the app is built here. Several: each worker process imports the factory and
    # builds its own (own pool, own listener), reading the same environment.
    app: FastAPI | str = service.create_app(settings) if workers == 1 else _factory(service)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    log.info(
        "%s: serving on http://%s:%d (docs: http://%s:%d/docs)%s",
        *(service.name, shown, port, shown, port),
        f" with {workers} workers" if workers > 1 else "",
        extra={"url": f"http://{shown}:{port}", "workers": workers},
    )
    BoundedHttpToolsProtocol.limits = server
    uvicorn.run(
        app,
        factory=workers > 1,
        workers=workers,
        host=host,
        port=port,
        http=BoundedHttpToolsProtocol,
        # No limit_concurrency: it answers 503 to every request once MAX_CONNECTIONS are
        # open, where the protocol bounds the connections themselves (one task each).
        timeout_keep_alive=server.keep_alive_timeout,
        log_level=server.log_level,
        proxy_headers=bool(server.forwarded_allow_ips),
        forwarded_allow_ips=server.forwarded_allow_ips or None,
        access_log=False,  # the app's own (ACCESS_LOG), service_kit.access_log
        log_config=_log_config(service, server.log_level, server.log_lines),
    )
    return 0


def service_main(service: ServiceDefinition) -> NoReturn:
    """The console command of a service: the migration subcommands plus `serve`."""

    def extend(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int | None]:
        sub = subcommands(parser)
        p = sub.add_parser("serve", help="migrate this service's tree, then serve HTTP")
        p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        p.add_argument(
            "--port", type=int, default=int(os.environ.get("PORT", service.default_port))
        )
        p.add_argument(
            "--workers",
            type=positive_int,
            default=None,
            help="worker processes (default: WEB_CONCURRENCY, else 1)",
        )

        def handle(args: argparse.Namespace) -> int | None:
            if args.command == "serve":
                return serve(service, args.host, args.port, args.workers)
            return None

        return handle

    sys.exit(main_for(service.tree, service.description or f"The {service.name} service.", extend))
