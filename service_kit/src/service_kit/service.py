"""What makes a package a service: its tree, its app factory, its command line and `serve`."""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from fastapi import FastAPI
from pydantic import ValidationError

from service_kit import migrate
from service_kit.cli import main_for, subcommands
from service_kit.http_server import BoundedHttpToolsProtocol
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
    # Path segments after which a URL carries a single-use token (a mailed link's
    # `/reset-password/<token>`): the access log writes `[redacted]` instead.
    secret_path_segments: tuple[str, ...] = ()


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


class RedactTokens(logging.Filter):
    """uvicorn's access log writes each request line, so the tokens of mailed links too."""

    def __init__(self, secret_path_segments: Sequence[str] = ()) -> None:
        super().__init__()
        # A `?token=` (or `&token=`) value anywhere, and the segment after each named one.
        paths = "|".join(re.escape(f"/{segment}/") for segment in secret_path_segments)
        pattern = (
            rf"({paths})[^/?#\s]+|([?&]token=)[^&#\s]+" if paths else r"()([?&]token=)[^&#\s]+"
        )
        self._secret = re.compile(pattern)

    def redact(self, path: str) -> str:
        return self._secret.sub(lambda m: f"{m.group(1) or m.group(2)}[redacted]", path)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn.access: (client, method, path with query string, http version, status)
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], self.redact(args[2]), args[3], args[4])
        return True


def _log_config(service: ServiceDefinition) -> dict[str, object]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {
        "redact_tokens": {
            "()": RedactTokens,
            "secret_path_segments": service.secret_path_segments,
        }
    }
    config["handlers"]["access"]["filters"] = ["redact_tokens"]
    return config


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
    # One worker: the app is built here. Several: each worker process imports the factory and
    # builds its own (own pool, own listener), reading the same environment.
    app: FastAPI | str = service.create_app(settings) if workers == 1 else _factory(service)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    print(
        f"{service.name}: serving on http://{shown}:{port} (docs: http://{shown}:{port}/docs)"
        + (f" with {workers} workers" if workers > 1 else "")
    )
    sys.stdout.flush()
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
        access_log=server.access_log,
        log_config=_log_config(service),
    )
    return 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


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
            type=_positive,
            default=None,
            help="worker processes (default: WEB_CONCURRENCY, else 1)",
        )

        def handle(args: argparse.Namespace) -> int | None:
            if args.command == "serve":
                return serve(service, args.host, args.port, args.workers)
            return None

        return handle

    sys.exit(main_for(service.tree, service.description or f"The {service.name} service.", extend))
