"""Deployment commands run as local processes on the test's Postgres, as a container would run them.

A `Service` (from the compose file, or built from a Kubernetes container) is started with its
command and environment; the database host becomes this run's embedded server, and a
container's 0.0.0.0 and fixed port become 127.0.0.1 and a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from platform_dev.embedded import free_port
from tests.deploy.compose import Service

BIN = Path(sys.executable).parent
READY_WITHIN = 90.0  # bound of the polls below, in seconds (not a timing assertion)
STOP_WITHIN = 15.0


@dataclass
class Running:
    service: Service
    process: asyncio.subprocess.Process
    log: Path
    port: int | None
    env: dict[str, str]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def describe(self) -> str:
        state = self.process.returncode
        status = "running" if state is None else f"exited with {state}"
        tail = "\n".join(self.output().splitlines()[-40:])
        return f"{self.service.name} ({status}):\n{tail}"

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_WITHIN)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def executable(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"the compose file runs `{name}`, which this environment lacks"
    return str(path)


class Stack:
    """Runs compose services as local processes; every one is stopped at the end."""

    def __init__(self, database_url: str, log_dir: Path) -> None:
        self.database_url = database_url
        self.log_dir = log_dir
        self.running: dict[str, Running] = {}
        self.events: list[tuple[str, str]] = []  # (event, service), in the order they happened

    async def start(self, service: Service, **overrides: str) -> Running:
        port = free_port() if "PORT" in service.environment else None
        env = {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            **service.environment,
            # The compose network's `postgres` host is this run's embedded server; a container's
            # 0.0.0.0 and fixed port become 127.0.0.1 and a free port.
            "DATABASE_URL": self.database_url,
            **({"HOST": "127.0.0.1", "PORT": str(port)} if port else {}),
            # Each container has its ports to itself; here they share one host.
            **({"METRICS_PORT": str(free_port())} if "METRICS_PORT" in service.environment else {}),
            **overrides,
        }
        log = self.log_dir / f"{service.name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                executable(service.command[0]),
                *service.command[1:],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        running = Running(service, process, log, port, env)
        self.running[service.name] = running
        self.events.append(("started", service.name))
        return running

    async def wait_exit(self, name: str, within: float = READY_WITHIN) -> int:
        running = self.running[name]
        try:
            code = await asyncio.wait_for(running.process.wait(), within)
        except TimeoutError:
            pytest.fail(f"still running after {within:.0f}s: {running.describe()}")
        self.events.append(("exited 0" if code == 0 else f"exited {code}", name))
        return code

    async def healthy(self, name: str) -> bool:
        """Run the service's own compose healthcheck once (what Docker would run)."""
        running = self.running[name]
        test = running.service.healthcheck
        assert test, f"{name} has no healthcheck"
        kind, *args = test
        argv = ["/bin/sh", "-c", args[0]] if kind == "CMD-SHELL" else args
        assert kind in ("CMD", "CMD-SHELL"), f"{name}: healthcheck kind {kind}"
        check = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=running.env,
        )
        try:
            return await asyncio.wait_for(check.wait(), 30) == 0
        except TimeoutError:
            check.kill()
            await check.wait()
            return False

    async def wait_healthy(self, name: str, within: float = READY_WITHIN) -> None:
        running = self.running[name]
        deadline = time.monotonic() + within
        while not await self.healthy(name):
            if running.process.returncode is not None:
                pytest.fail(f"exited before it was healthy: {running.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"not healthy after {within:.0f}s: {running.describe()}")
            await asyncio.sleep(0.3)
        self.events.append(("healthy", name))

    async def stop_all(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.running.values()))
