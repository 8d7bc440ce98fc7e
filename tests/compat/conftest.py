"""Fixtures that run better-auth itself beside our services.

`node_project` installs the pinned better-auth (tests/compat/node, with `tests.npm`).
`start_stack` starts our web and trading services as real `serve` processes and a better-auth server
(Drizzle adapter) on the test's database with the same secret, each on its own port, and
stops them after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from platform_dev.embedded import free_port
from tests.compat.helpers import (
    APP_ORIGIN,
    NODE_DIR,
    NODE_MISSING,
    SESSION_COOKIE,
    Server,
    Stack,
)
from tests.conftest import TEST_SECRET
from tests.npm import installed, node_missing

# The better-auth server runs in a zone far from UTC: the rows it writes must still be UTC.
NODE_TZ = "America/New_York"
START_TIMEOUT = 90.0


@pytest.fixture(scope="session")
def node_project() -> Path:
    """tests/compat/node with its locked packages installed."""
    if node_missing():
        pytest.skip(NODE_MISSING)
    return installed(NODE_DIR)


def _start(name: str, argv: list[str], env: dict[str, str], cwd: Path, logs: Path) -> Server:
    port = free_port()
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [arg.format(port=port) for arg in argv],
            cwd=cwd,
            env={**env, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name=name, url=f"http://127.0.0.1:{port}", process=process, log=log)


def _stop(server: Server) -> None:
    if server.process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=15)


async def _wait_ready(server: Server, path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            if server.process.poll() is not None:
                pytest.fail(
                    f"{server.name} exited with {server.process.returncode}:\n{server.output()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(server.url + path)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"{server.name} not ready in {START_TIMEOUT:.0f}s:\n{server.output()}")
            await asyncio.sleep(0.1)


StartStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def start_stack(node_project: Path, db_url: str, tmp_path: Path) -> AsyncIterator[StartStack]:
    """`await start_stack(services=("web", "trading"), secure=False)` starts the servers."""
    started: list[Server] = []

    async def start(
        services: tuple[str, ...] = ("web", "trading"),
        secure: bool = False,
        rate_limits: bool = False,
    ) -> Stack:
        inherited = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "AUTH_SECRET", "BETTER_AUTH_SECRET")
        }
        ours_env = {
            **inherited,
            "DATABASE_URL": db_url,
            "AUTH_SECRET": TEST_SECRET,
            "ENVIRONMENT": "development",  # cookies without the __Secure- prefix ...
            "COOKIE_SECURE": "true" if secure else "false",  # ... unless asked for
            "TRUSTED_ORIGINS": APP_ORIGIN,
            "RATE_LIMIT_ENABLED": "true" if rate_limits else "false",
            "RATE_LIMIT_STORAGE": "database",
            # The test client stands for a proxy on this machine naming the client.
            "FORWARDED_ALLOW_IPS": "127.0.0.1",
            "LOG_LEVEL": "warning",
            "ACCESS_LOG": "0",
            "DB_POOL_SIZE": "3",
            "PASSWORD_HASH_CONCURRENCY": "2",
        }
        ba_env = {
            **inherited,
            "DATABASE_URL": db_url,
            "BETTER_AUTH_SECRET": TEST_SECRET,
            "TRUSTED_ORIGINS": APP_ORIGIN,
            "SECURE_COOKIES": "1" if secure else "0",
            "TZ": NODE_TZ,
            "NODE_ENV": "test",
            "BETTER_AUTH_TELEMETRY": "0",
            "RATE_LIMITS": "database" if rate_limits else "",
        }
        ba = _start("better-auth", ["node", "server.mjs"], ba_env, node_project, tmp_path)
        started.append(ba)
        stack = Stack(
            db_url=db_url,
            better_auth=ba,
            cookie_name=("__Secure-" if secure else "") + SESSION_COOKIE,
        )
        bin_dir = Path(sys.executable).parent
        for name in services:
            argv = [str(bin_dir / name), "serve", "--host", "127.0.0.1", "--port", "{port}"]
            server = _start(name, argv, ours_env, tmp_path, tmp_path)
            started.append(server)
            stack.ours[name] = server
        await asyncio.gather(
            _wait_ready(ba, "/api/auth/ok"),
            *(_wait_ready(server, "/readyz") for server in stack.ours.values()),
        )
        return stack

    try:
        yield start
    finally:
        for server in reversed(started):
            _stop(server)
