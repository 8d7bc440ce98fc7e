"""`platform-db dev`: everything locally, in order, in one command.

Starts an embedded Postgres (data kept in `.data/`), migrates the platform tree, then
each service's tree, then serves every service on its own port until Ctrl-C.
Services are found through the `platform_db.services` entry-point group; this command joins
`platform-db` through the `platform_db.commands` group, so nothing installed in an image
(where this package is not) refers to it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import httpx

from platform_db.trees import PLATFORM
from platform_dev.embedded import EmbeddedPostgres
from service_kit import migrate
from service_kit.cli import subcommands
from service_kit.migrate import MigrationError
from service_kit.service import ServiceDefinition


def discover_services() -> list[ServiceDefinition]:
    found = [ep.load() for ep in entry_points(group="platform_db.services")]
    return sorted(
        (s for s in found if isinstance(s, ServiceDefinition)),
        key=lambda s: (s.default_port, s.name),
    )


def _command(service: ServiceDefinition) -> str:
    beside = Path(sys.executable).parent / service.name
    path = str(beside) if beside.exists() else shutil.which(service.name)
    if path is None:
        raise MigrationError(f"the `{service.name}` command is not installed; run `uv sync`")
    return path


def _auth_secret(data_dir: Path) -> str:
    """AUTH_SECRET from the environment, else one generated once and kept in the data folder."""
    if os.environ.get("AUTH_SECRET"):
        return os.environ["AUTH_SECRET"]
    path = data_dir / "auth_secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MigrationError(f"{url} exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise MigrationError(f"{url} was not ready after {timeout:.0f}s")


def _interrupt_on_sigterm() -> None:
    """Make SIGTERM (a supervisor, `timeout`, a closed terminal) stop everything like Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def run_dev(host: str, data_dir: Path) -> int:
    _interrupt_on_sigterm()
    data_dir.mkdir(parents=True, exist_ok=True)
    services = discover_services()
    server: EmbeddedPostgres | None = None
    children: list[subprocess.Popen[bytes]] = []
    try:
        url = os.environ.get("DATABASE_URL")
        if not url:
            server = EmbeddedPostgres(data_dir / "postgres")
            url = server.start()
            print(f"postgres: {url} (data in {server.data_dir})")
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "AUTH_SECRET": _auth_secret(data_dir),
            "ENVIRONMENT": os.environ.get("ENVIRONMENT", "development"),
        }
        print(f"{PLATFORM.name}: at {' '.join(asyncio.run(migrate.upgrade(PLATFORM, url)))}")
        for service in services:
            heads = asyncio.run(migrate.upgrade(service.tree, url))
            print(f"{service.name}: at {' '.join(heads)}")
        urls: list[tuple[str, str]] = []
        for service in services:
            port = int(os.environ.get(f"{service.name.upper()}_PORT", service.default_port))
            cmd = [_command(service), "serve", "--host", host, "--port", str(port)]
            children.append(subprocess.Popen(cmd, env=env))
            urls.append((service.name, f"http://{host}:{port}"))
        for (_name, base), proc in zip(urls, children, strict=True):
            _wait_ready(base, proc)
        print("\nReady. Ctrl-C stops everything.")
        for name, base in urls:
            print(f"  {name:<10} {base}/docs")
        sys.stdout.flush()
        while all(p.poll() is None for p in children):
            time.sleep(0.5)
        failed = [p.args for p in children if p.returncode not in (None, 0)]
        return 1 if failed else 0
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave Postgres running.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in children:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if server is not None:
            server.stop()
            print("postgres: stopped")


def register(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int | None]:
    """Add `dev` to `platform-db` (the entry point `platform_db.commands: dev`)."""
    p = subcommands(parser).add_parser(
        "dev", help="run everything locally: embedded Postgres, migrations in order, all services"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--data-dir", default=".data", help="where the local database lives")

    def handle(args: argparse.Namespace) -> int | None:
        if args.command != "dev":
            return None
        return run_dev(args.host, Path(args.data_dir))

    return handle
