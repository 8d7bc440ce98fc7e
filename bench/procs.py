"""Processes the benchmark starts, the cores they run on, and what /proc says about them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Cores:
    """Where things run: the server on its own core(s), everything else on the rest."""

    server: frozenset[int] | None
    load: frozenset[int] | None

    @classmethod
    def split(cls, pin: bool) -> Cores:
        if not pin or not hasattr(os, "sched_getaffinity"):
            return cls(None, None)
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return cls(None, None)
        return cls(frozenset(cores[:1]), frozenset(cores[1:]))

    def describe(self) -> str:
        if self.server is None or self.load is None:
            return "not pinned (fewer than 2 cores available, or --no-pin)"
        return (
            f"service process on CPU {_cpus(self.server)}; Postgres, the load generator "
            f"and this runner on CPU {_cpus(self.load)}"
        )

    def pin_self(self) -> None:
        """Put this process (and so Postgres and wrk, which it starts) on the load cores."""
        if self.load is not None:
            os.sched_setaffinity(0, self.load)


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime of reaped children
    return ticks / CLK_TCK


def child_pids(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2 :].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def tree_cpu_seconds(root: int) -> float:
    """CPU time of a process and its live children, plus what its reaped children used."""
    return cpu_seconds(root, children=True) + sum(cpu_seconds(p) for p in child_pids(root))


def memory_kib(pid: int, field: str) -> int:
    """A `/proc/PID/status` memory field in KiB: VmRSS (now) or VmHWM (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False if the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Server:
    """A server process in its own process group, optionally pinned, logging to a file."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        port: int,
        log: Path,
        cpus: frozenset[int] | None,
    ) -> None:
        self.name = name
        self.port = port
        self.log = log
        self.base_url = f"http://127.0.0.1:{port}"

        def pin() -> None:  # runs in the child before exec: every thread it starts inherits
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        with log.open("wb") as out:
            self.process = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                preexec_fn=pin,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self, tail: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-tail:])

    def wait_ready(self, path: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.process.returncode}:\n{self.output()}"
                    )
                try:
                    r = client.get(path)
                    if r.status_code == 200:
                        return
                    last = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s ({last})")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT)
