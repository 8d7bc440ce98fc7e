"""Real processes for end-to-end tests: the installed console commands, started, awaited, stopped.

`processes` starts a command with its own environment, sends its stdout and stderr to a log
file (shown in assertion messages) and, at teardown, always stops it and its children:
SIGTERM to its process group, then SIGKILL if it is still there after a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from platform_dev.embedded import free_port
from tests.conftest import TEST_SECRET
from tests.pg import sql

BIN = Path(sys.executable).parent

# Settings a service reads from the environment; the runner's own values must not leak in.
SETTINGS_VARS = (
    "DATABASE_URL", "DATABASE_DIRECT_URL", "AUTH_SECRET", "BETTER_AUTH_SECRET", "ENVIRONMENT",
    "COOKIE_SECURE", "COOKIE_DOMAIN", "COOKIE_PREFIX", "SESSION_EXPIRES_IN", "SESSION_UPDATE_AGE",
    "TRUSTED_ORIGINS", "PLATFORM_WAIT_TIMEOUT", "MIGRATION_LOCK_TIMEOUT", "DB_POOL_SIZE",
    "MIGRATION_DDL_LOCK_TIMEOUT",
    "DB_MAX_OVERFLOW", "PASSWORD_HASH_CONCURRENCY", "HOST", "PORT", "LOG_LEVEL",
    "FORWARDED_ALLOW_IPS", "ACCESS_LOG", "WEB_PORT", "TRADING_PORT", "RATE_LIMIT_ENABLED",
    "REQUIRE_EMAIL_VERIFICATION", "AUTH_URL", "BETTER_AUTH_URL", "SMTP_HOST", "ALLOWED_HOSTS",
    "WEB_CONCURRENCY", "MAX_HEADER_BYTES", "MAX_HEADERS", "HEADER_TIMEOUT", "MAX_CONNECTIONS",
    "KEEP_ALIVE_TIMEOUT",
)  # fmt: skip

READY_TIMEOUT = 90.0  # seconds a served process may take to migrate and answer /readyz
STOP_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL at teardown


def command(name: str) -> str:
    """The console command `name` installed next to this Python (`platform-db`, `web`, ...)."""
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"the `{name}` command is not installed in this environment")
    return str(path)


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any service setting, plus `values`."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(values)
    return env


def service_env(database_url: str, **values: str) -> dict[str, str]:
    """What a service process needs to run against `database_url`."""
    defaults = {
        "DATABASE_URL": database_url,
        "AUTH_SECRET": TEST_SECRET,
        "ENVIRONMENT": "test",
        "PLATFORM_WAIT_TIMEOUT": "60",
        "MIGRATION_LOCK_TIMEOUT": "60",
        "DB_POOL_SIZE": "5",
        "PASSWORD_HASH_CONCURRENCY": "2",
        "ACCESS_LOG": "0",
    }
    defaults.update(values)
    return clean_env(**defaults)


@dataclass
class Proc:
    """A started command; its output goes to `log`."""

    name: str
    process: asyncio.subprocess.Process
    log: Path
    base_url: str | None = None
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def describe(self, tail: int = 60) -> str:
        lines = self.output().splitlines()[-tail:]
        state = "running" if self.returncode is None else f"exited with {self.returncode}"
        return f"{self.name} (pid {self.pid}, {state}); last output:\n" + "\n".join(lines)

    async def wait(self, within: float) -> int:
        """The exit code, once the process exits within `within` seconds (else fail)."""
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            pytest.fail(f"still running after {within:.0f}s: {self.describe()}")

    def signal_group(self, sig: signal.Signals) -> None:
        """Send `sig` to the process and every child in its process group (like a terminal)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    async def wait_for_output(self, text: str, within: float) -> str:
        """The output once it contains `text` (bounded); fail if the process exits first."""
        deadline = time.monotonic() + within
        while True:
            out = self.output()
            if text in out:
                return out
            if self.returncode is not None:
                pytest.fail(f"exited before printing {text!r}: {self.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} after {within:.0f}s: {self.describe()}")
            await asyncio.sleep(0.1)

    async def wait_ready(self, within: float = READY_TIMEOUT) -> None:
        """Poll `base_url/readyz` until it answers 200 (bounded); fail if the process exits."""
        assert self.base_url is not None
        await wait_ready(self.base_url, within, self)

    async def stop(self) -> None:
        """SIGTERM the group, SIGKILL it if it is still there after STOP_TIMEOUT."""
        if self.stopped:
            return
        self.stopped = True
        if self.returncode is not None:
            # Long gone: its group id may belong to someone else by now; signal nothing.
            return
        self.signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self.signal_group(signal.SIGKILL)
            await self.process.wait()
        # Children the leader left behind share its process group: end them too.
        self.signal_group(signal.SIGKILL)


async def wait_ready(base_url: str, within: float, proc: Proc | None = None) -> None:
    """Poll `base_url/readyz` until it answers 200, at most `within` seconds."""
    deadline = time.monotonic() + within
    last = "no answer"
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        while True:
            if proc is not None and proc.returncode is not None:
                pytest.fail(f"exited before {base_url} was ready: {proc.describe()}")
            try:
                r = await client.get("/readyz")
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                where = proc.describe() if proc is not None else ""
                pytest.fail(f"{base_url}/readyz not 200 after {within:.0f}s ({last}) {where}")
            await asyncio.sleep(0.2)


class Processes:
    """Starts commands for one test and stops every one of them at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Proc] = []

    async def start(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: Path | None = None,
        base_url: str | None = None,
    ) -> Proc:
        """Start `args` (in its own process group) with exactly `env`."""
        log = self.log_dir / f"{len(self.started):02d}-{name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        proc = Proc(name=name, process=process, log=log, base_url=base_url)
        self.started.append(proc)
        return proc

    async def serve(
        self,
        service: str,
        database_url: str,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        **env: str,
    ) -> Proc:
        """Start `<service> serve` on a free port (not waiting for it to be ready)."""
        port = port or free_port()
        return await self.start(
            f"{service}-serve-{port}",
            [command(service), "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            service_env(database_url, **env),
            base_url=f"http://127.0.0.1:{port}",
        )

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.started))


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    """Start commands for this test; every one of them is stopped when the test ends.

    Request it after the database fixture (`db_url`, `full_db`, ...): fixtures are torn down
    in reverse order, so the processes stop before their database is dropped.
    """
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    procs = Processes(log_dir)
    try:
        yield procs
    finally:
        await procs.stop_all()


async def run(
    args: Sequence[str], env: Mapping[str, str], within: float = 120
) -> tuple[int, str, str]:
    """Run a command to its end (bounded): exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        pytest.fail(f"{' '.join(args)} did not finish within {within:.0f}s")
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


async def table_exists(database_url: str, qualified: str) -> bool:
    rows = await sql(database_url, "SELECT to_regclass($1) IS NOT NULL AS found", qualified)
    return bool(rows[0]["found"])


async def versions(database_url: str, version_table: str) -> list[str]:
    """The revisions recorded in a version table (schema-qualified), [] when it is absent."""
    if not await table_exists(database_url, version_table):
        return []
    rows = await sql(database_url, f"SELECT version_num FROM {version_table} ORDER BY 1")
    return [r["version_num"] for r in rows]
