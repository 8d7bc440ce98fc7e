"""A copy of the workspace with its own virtualenv: the next release of the project, or the
result of following one of the README's paths, without changing the repository itself.

The copy holds the workspace's packages and lock; `uv sync --offline` makes its virtualenv
from uv's cache (every wheel is there already), and its commands run against a real Postgres.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from platform_dev.embedded import free_port
from tests.conftest import TEST_SECRET
from tests.e2e.conftest import Processes, clean_env, service_env

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
MEMBERS = ("service_kit", "platform_db", "platform_auth", "platform_dev", "services")
IGNORE = shutil.ignore_patterns("__pycache__", ".venv", "*.pyc", ".data")


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv runs the tests (`uv run pytest`), so it is on PATH or in $UV"
    return uv


def readme_section(title: str) -> str:
    start = README.index(f"### {title}\n")
    end = README.find("\n#", start + 4)
    return README[start : end if end != -1 else None]


def fenced(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def readme_commands(section: str) -> list[list[str]]:
    """The `uv run ...` / `uv ...` lines of the section's sh block, without the comments and the
    `DATABASE_URL=...` placeholder (the test sets DATABASE_URL), split on `&&`."""
    (block,) = fenced(section, "sh")
    commands = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        for part in line.split("&&"):
            words = shlex.split(part.strip().removeprefix("DATABASE_URL=... "))
            if words:
                commands.append(words)
    return commands


@dataclass
class Workspace:
    root: Path
    env: dict[str, str]

    def run(self, args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """A README command in the copy: `uv ...` with its own uv and virtualenv."""
        assert args[0] == "uv", args
        argv = [_uv(), *args[1:]]
        if args[1] in ("sync", "run", "lock"):
            argv.insert(2, "--offline")
        result = subprocess.run(
            argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0 and "not found in the cache" in result.stderr:
            # A new member makes uv resolve again, which may need index pages that a machine's
            # cache never held (only wheels): then ask the index once.
            argv.remove("--offline")
            result = subprocess.run(
                argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300
            )
        if check:
            assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def exec(
        self, args: Sequence[str], stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Any other command, in the copy, with the copy's environment (or `env`)."""
        return subprocess.run(
            args, input=stdin, cwd=self.root, env=env or self.env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip

    def bin(self, name: str) -> str:
        return str(self.root / ".venv" / "bin" / name)

    def openapi(self, service: str) -> dict[str, object]:
        script = (
            f"import json; from {service}.app import create_app; "
            "print(json.dumps(create_app().openapi(), sort_keys=True))"
        )
        out = subprocess.run(
            [self.bin("python"), "-c", script],
            cwd=self.root, env=self.env, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        parsed: dict[str, object] = json.loads(out.stdout)
        return parsed


def copy_workspace(target: Path) -> None:
    target.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(REPO / name, target / name)
    for name in MEMBERS:
        shutil.copytree(REPO / name, target / name, ignore=IGNORE)


def make_workspace(root: Path, db_url: str) -> Workspace:
    """A copy of the workspace at `root` with its own virtualenv, its commands reading `db_url`."""
    copy_workspace(root)
    env = clean_env(DATABASE_URL=db_url, AUTH_SECRET=TEST_SECRET, ENVIRONMENT="test")
    for name in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH"):
        env.pop(name, None)
    ws = Workspace(root=root, env=env)
    ws.run(["uv", "sync", "--locked"])
    return ws


async def serve(processes: Processes, ws: Workspace, service: str, db_url: str) -> str:
    port = free_port()
    proc = await processes.start(
        f"{service}-copy",
        [ws.bin(service), "serve", "--host", "127.0.0.1", "--port", str(port)],
        {**service_env(db_url), "PATH": ws.env["PATH"]},
        cwd=ws.root,
        base_url=f"http://127.0.0.1:{port}",
    )
    await proc.wait_ready()
    return f"http://127.0.0.1:{port}"
