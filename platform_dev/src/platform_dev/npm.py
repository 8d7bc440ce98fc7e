"""Node projects in the repository (a package.json and its package-lock.json), installed once,
for the tests and the benchmark that run better-auth itself.

`npm ci` runs only when package.json or package-lock.json changed since the last install in
that directory; a file lock keeps two runs from installing at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path


class NpmError(RuntimeError):
    pass


def node_missing() -> bool:
    return shutil.which("node") is None or shutil.which("npm") is None


def _lock_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()


def npm_ci(directory: Path) -> Path:
    """`directory` with its locked packages installed (`npm ci`, skipped when up to date)."""
    stamp = directory / "node_modules" / ".installed-from-lock"
    wanted = _lock_digest(directory)
    lock_path = (
        Path(tempfile.gettempdir())
        / f"npm-ci-{hashlib.sha256(bytes(directory)).hexdigest()[:16]}.lock"
    )
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.exists() and stamp.read_text() == wanted):
            result = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=directory,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                raise NpmError(f"npm ci in {directory} failed:\n{result.stdout}\n{result.stderr}")
            stamp.write_text(wanted)
    return directory
