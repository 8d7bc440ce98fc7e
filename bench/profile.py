"""Where the service's time goes: py-spy samples the running process, we sum the stacks.

py-spy is a transient tool, not a dependency: `pip install py-spy` (into this environment or
anywhere on PATH) before `python -m bench --profile`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Each sample goes to exactly one bucket: the hand-off to a worker thread if the stack is in
# it, else by the package of the innermost frame (where the CPU actually was).
THREAD_HANDOFF = "a sync dependency run in a worker thread (anyio, threading)"
NATIVE = "uvloop and httptools (C, no Python frame)"
BUCKETS: tuple[tuple[str, str], ...] = (
    ("sqlalchemy/", "SQLAlchemy (ORM, core, pool, result rows)"),
    ("greenlet", "SQLAlchemy (ORM, core, pool, result rows)"),
    ("asyncpg/", "asyncpg (Python side)"),
    ("pydantic", "pydantic (validation, serialisation)"),
    ("fastapi/dependencies/", "FastAPI: dependency solving"),
    ("fastapi/", "FastAPI/Starlette: routing, middleware, responses"),
    ("starlette/", "FastAPI/Starlette: routing, middleware, responses"),
    ("uvicorn/", "uvicorn: HTTP protocol"),
    ("/service_kit/", "our code"),
    ("/platform_db/", "our code"),
    ("/platform_auth/", "our code"),
    ("/web/", "our code"),
    ("/asyncio/", "asyncio (tasks, futures, event loop)"),
)
# Inclusive: the share of samples with such a frame anywhere in the stack.
INCLUSIVE: tuple[tuple[str, str], ...] = (
    ("SQLAlchemy, with the driver work it calls", "sqlalchemy/"),
    ("FastAPI dependency solving, with what the dependencies run", "fastapi/dependencies/"),
    ("pydantic, with what it calls", "pydantic"),
    ("a sync dependency's hand-off to a worker thread", "run_in_threadpool"),
)


@dataclass
class Profile:
    samples: int = 0
    buckets: Counter[str] = field(default_factory=Counter)
    leaves: Counter[str] = field(default_factory=Counter)  # self time per function
    inclusive: Counter[str] = field(default_factory=Counter)

    def share(self, count: int) -> float:
        return 100.0 * count / self.samples if self.samples else 0.0


def py_spy_path() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else None


def start_py_spy(pid: int, seconds: int, output: Path) -> subprocess.Popen[bytes]:
    exe = py_spy_path()
    if exe is None:
        raise SystemExit("--profile needs py-spy on PATH: pip install py-spy (a transient tool)")
    args = [
        exe, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
        "--format", "raw", "--output", str(output), "--nonblocking", "--gil", "--full-filenames",
    ]  # fmt: skip
    return subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def package_of(path: str) -> str:
    """The package a source file belongs to: site-packages' top folder, ours, or the stdlib."""
    parts = path.replace("\\", "/").split("/")
    if "site-packages" in parts:
        top = parts[parts.index("site-packages") + 1]
        return top.removesuffix(".py")
    for ours in ("service_kit", "platform_db", "platform_auth", "web", "trading", "bench"):
        if ours in parts[:-1]:
            return ours
    for i, part in enumerate(parts):
        if re.fullmatch(r"python3\.\d+", part) and i + 1 < len(parts):
            return "stdlib " + parts[i + 1].removesuffix(".py")
    return parts[-1] if parts else path


def _short(func: str, path: str) -> str:
    return f"{func} ({package_of(path)})"


def bucket_of(frames: list[tuple[str, str]]) -> str:
    if any(
        "anyio/" in path
        or func == "run_in_threadpool"
        or path.endswith(("/threading.py", "/queue.py"))
        for func, path in frames
    ):
        return THREAD_HANDOFF
    if not frames:
        return NATIVE
    func, path = frames[-1]
    if func in ("Runner.run", "run_until_complete", "run_forever") or "uvloop" in path:
        return NATIVE
    for fragment, label in BUCKETS:
        if fragment in path:
            return label
    return f"other: {package_of(path)}"


def summarise(raw: str) -> Profile:
    """Sum py-spy's collapsed stacks (`frame;frame;... count` per line)."""
    prof = Profile()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for text in filter(None, stack.split(";")):
            m = _FRAME.match(text)
            if m is not None:
                frames.append((m["func"], m["file"]))
        prof.samples += count
        prof.buckets[bucket_of(frames)] += count
        if frames:
            prof.leaves[_short(*frames[-1])] += count
        joined = ";".join(f"{f} ({p}" for f, p in frames)
        for label, marker in INCLUSIVE:
            if marker in joined:
                prof.inclusive[label] += count
    return prof


def report(prof: Profile, route: str, top: int = 15) -> list[str]:
    lines = [
        f"{prof.samples} samples (py-spy, 200 Hz, only while the GIL was held) of the service "
        f"process serving {route}.",
        "",
        "| where the CPU was (innermost frame) | share |",
        "|---|---:|",
    ]
    small = 0
    for name, count in prof.buckets.most_common():
        if prof.share(count) < 1 or name.startswith("other"):
            small += count
        else:
            lines.append(f"| {name} | {prof.share(count):.0f}% |")
    if small:
        lines.append(f"| other (stdlib and the rest) | {prof.share(small):.0f}% |")
    lines += ["", "| inclusive | share |", "|---|---:|"]
    for label, _ in INCLUSIVE:
        lines.append(f"| {label} | {prof.share(prof.inclusive[label]):.0f}% |")
    lines += ["", "| function (self time) | share |", "|---|---:|"]
    for name, count in prof.leaves.most_common(top):
        lines.append(f"| {name} | {prof.share(count):.0f}% |")
    return lines
