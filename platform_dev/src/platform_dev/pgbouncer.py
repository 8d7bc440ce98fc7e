"""A PgBouncer (Debian's `pgbouncer` package) in transaction mode in front of a Postgres
server, for the tests and the benchmark: what a managed Postgres hands out as its pooled URL.

Trust authentication, loopback only: a test's and a benchmark's pooler, never a production one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from platform_dev.embedded import SYSTEM_USER, free_port, wait_for_port

MISSING = (
    "pgbouncer is not installed (`apt-get install pgbouncer`; .ci/run installs it): the "
    "pooler tests and the benchmark's pooled run need a real one"
)


class PgBouncerError(RuntimeError):
    pass


@dataclass
class PgBouncer:
    host: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def pooled(self, url: str) -> str:
        """`url`'s database and user, through the pooler (trust auth between client and it)."""
        parts = urlsplit(url)
        user = parts.username or "postgres"
        netloc = f"{quote(unquote(user), safe='')}@{self.host}:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def log_text(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found is None and Path("/usr/sbin/pgbouncer").exists():  # Debian's place, off PATH
        found = "/usr/sbin/pgbouncer"
    return found


def _unprivileged_user() -> str:
    try:
        pwd.getpwnam(SYSTEM_USER)  # made by the embedded server when it runs as root
        return SYSTEM_USER
    except KeyError:
        return "nobody"


def _server_line(admin_url: str) -> str:
    """The [databases] entry: every database name, to the server, as its admin user."""
    parts = urlsplit(admin_url)
    fields = [f"host={parts.hostname or '127.0.0.1'}", f"port={parts.port or 5432}"]
    if parts.username:
        fields.append(f"user={unquote(parts.username)}")
    if parts.password:
        fields.append(f"password={unquote(parts.password)}")
    return "* = " + " ".join(fields)


@contextlib.contextmanager
def pgbouncer(admin_url: str, directory: Path, *, pool_size: int = 4) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode on a free port, in front of `admin_url`'s server, with
    `pool_size` server connections per database and user."""
    path = binary()
    if path is None:
        raise PgBouncerError(MISSING)
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    user = urlsplit(admin_url).username or "postgres"
    (directory / "users.txt").write_text(f'"{unquote(user)}" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        "\n".join(
            [
                "[databases]",
                _server_line(admin_url),
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {directory / 'users.txt'}",
                "pool_mode = transaction",
                f"default_pool_size = {pool_size}",
                "max_client_conn = 1000",
                "ignore_startup_parameters = extra_float_digits",
                "",
            ]
        )
    )
    args = [path, str(ini)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        directory.chmod(0o755)
        args = [path, "-u", _unprivileged_user(), str(ini)]
    log = directory / "pgbouncer.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise PgBouncerError(
                    f"pgbouncer exited with {process.returncode}:\n{log.read_text()}"
                )
            try:
                wait_for_port("127.0.0.1", port, timeout=0.5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise PgBouncerError(
                        f"pgbouncer did not listen within 15 s:\n{log.read_text()}"
                    ) from None
        yield PgBouncer("127.0.0.1", port, log, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
