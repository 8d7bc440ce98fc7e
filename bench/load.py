"""The load generator: wrk (Debian's package), driven by a generated Lua script.

The script holds the requests to send (method, path, bearer token, JSON body), prebuilt once
per wrk thread and sent round robin, so each request can carry its own session and target.
wrk counts errors: connect/read/write failures, timeouts, and responses with status >= 400.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

WRK_INSTALL = "apt-get install -y wrk"


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    token: str | None = None
    body: str | None = None


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    errors: int
    error_detail: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    generator_cpu: float  # CPU seconds wrk used / wall seconds (1.0 = one core)
    server_cpu: float  # the same for the service process
    postgres_cpu: float  # the same for Postgres (all its processes)
    connections: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def server_ms(self) -> float:
        """The service's CPU milliseconds per request: what a request costs the server,
        whatever else the machine was doing."""
        return 1000 * self.server_cpu / self.rps if self.rps else 0.0

    @property
    def postgres_ms(self) -> float:
        return 1000 * self.postgres_cpu / self.rps if self.rps else 0.0


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(f"the benchmark needs wrk, the load generator: {WRK_INSTALL}")
    return path


def wrk_version() -> str:
    proc = subprocess.run([wrk_path(), "-v"], capture_output=True, text=True, check=False)
    first = (proc.stdout or proc.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


def _lua_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


_SCRIPT = """
local reqs = {}
local i = 0

function init(args)
  for _, d in ipairs(data) do
    local headers = { ["Host"] = host_header }
    if d[3] ~= "" then headers["Authorization"] = "Bearer " .. d[3] end
    local body = nil
    if d[4] ~= "" then
      headers["Content-Type"] = "application/json"
      body = d[4]
    end
    reqs[#reqs + 1] = wrk.format(d[1], d[2], headers, body)
  end
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.1f\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def lua_script(reqs: Sequence[Req], host_header: str) -> str:
    if not reqs:
        raise ValueError("no requests to send")
    rows = [
        "{" + ",".join(_lua_str(v) for v in (r.method, r.path, r.token or "", r.body or "")) + "},"
        for r in reqs
    ]
    return (
        f"host_header = {_lua_str(host_header)}\n" + "data = {\n" + "\n".join(rows) + "\n}\n"
    ) + _SCRIPT


def _wait_with_usage(proc: subprocess.Popen[bytes]) -> float:
    """Wait for `proc`; the CPU seconds it used (user + system)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return float(usage.ru_utime + usage.ru_stime)


def run_wrk(
    base_url: str,
    reqs: Sequence[Req],
    *,
    seconds: int,
    connections: int,
    timeout: int = 30,
    server_cpu: Callable[[], float] | None = None,
    postgres_cpu: Callable[[], float] | None = None,
) -> Result:
    """Run wrk (one thread) against `base_url` for `seconds`, sending `reqs` round robin."""
    host_header = base_url.split("://", 1)[1].rstrip("/")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "script.lua"
        script.write_text(lua_script(reqs, host_header))
        out_path = Path(tmp) / "out.txt"
        args = [
            wrk_path(), "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout}s",
            "-s", str(script), base_url,
        ]  # fmt: skip
        server0 = server_cpu() if server_cpu else 0.0
        pg0 = postgres_cpu() if postgres_cpu else 0.0
        started = time.monotonic()
        with out_path.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
            gen_cpu = _wait_with_usage(proc)
        wall = time.monotonic() - started
        server1 = server_cpu() if server_cpu else 0.0
        pg1 = postgres_cpu() if postgres_cpu else 0.0
        output = out_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{output}")
    line = next((ln for ln in output.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    n = [float(x) for x in line.split()[1:]]
    duration = n[1] / 1e6
    detail = dict(zip(("connect", "read", "write", "status>=400", "timeout"), n[2:7], strict=True))
    return Result(
        requests=int(n[0]),
        seconds=duration,
        errors=int(sum(n[2:7])),
        error_detail=", ".join(f"{k} {int(v)}" for k, v in detail.items() if v),
        p50_ms=n[7] / 1000,
        p90_ms=n[8] / 1000,
        p99_ms=n[9] / 1000,
        max_ms=n[10] / 1000,
        mean_ms=n[11] / 1000,
        generator_cpu=gen_cpu / wall,
        server_cpu=(server1 - server0) / wall,
        postgres_cpu=(pg1 - pg0) / wall,
        connections=connections,
    )
