"""docker-compose.yml read as `docker compose` reads it: interpolated with a .env, services merged.

The tests under tests/deploy take each service's command and environment from here, so the
file cannot drift from what they run.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, TEST_SECRET

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"

# The secrets .env.example leaves blank, as someone filling in their .env would set them.
SECRETS = {"POSTGRES_PASSWORD": "compose-order-test", "AUTH_SECRET": TEST_SECRET}

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_]\w*))"
)


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""

    def sub(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["named"]
        op, arg = m["op"], m["arg"] or ""
        value = variables.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op is not None and op.endswith("?") and unset:
            raise ValueError(f"compose would refuse to start: {name}: {arg}")
        if op is not None and op.endswith("-") and unset:
            return arg
        return value or ""

    return _VAR.sub(sub, value)


def read_dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class Service:
    name: str
    environment: dict[str, str]  # env_file, then `environment`, as compose merges them
    depends_on: dict[str, str]  # dependency -> condition
    healthcheck: tuple[str, ...] | None
    build: dict[str, Any] | None  # the project's own image; None for a pulled one (postgres)
    build_args: dict[str, str]
    compose_command: tuple[str, ...] | None  # a `command` overriding the image's CMD
    ports: tuple[str, ...]

    @property
    def built(self) -> bool:
        return self.build is not None

    @property
    def command(self) -> tuple[str, ...]:
        """What the container runs: the compose `command`, else the image's CMD (`COMMAND`)."""
        if self.compose_command is not None:
            return self.compose_command
        return tuple(shlex.split(self.build_args.get("COMMAND", "")))


def load_compose(variables: Mapping[str, str]) -> dict[str, Service]:
    raw: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    services: dict[str, Service] = {}
    for name, spec in raw["services"].items():
        env: dict[str, str] = {}
        env_files = spec.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            # The .env, whose contents are also what compose interpolates with.
            assert env_file == ".env", f"{name}: unexpected env_file {env_file}"
            env.update(variables)
        for key, value in (spec.get("environment") or {}).items():
            env[key] = interpolate(str(value), variables)
        depends = spec.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {dep: {"condition": "service_started"} for dep in depends}
        test = (spec.get("healthcheck") or {}).get("test")
        if isinstance(test, str):  # the string form is a shell command
            test = ["CMD-SHELL", test]
        build = spec.get("build")
        args = (build or {}).get("args") or {}
        assert isinstance(args, dict), f"{name}: build args as a mapping, please"
        command = spec.get("command")
        if isinstance(command, str):  # the string form is split like a shell would
            command = shlex.split(command)
        services[name] = Service(
            name=name,
            environment=env,
            depends_on={dep: cond["condition"] for dep, cond in depends.items()},
            healthcheck=tuple(interpolate(str(a), variables) for a in test) if test else None,
            build=build,
            build_args={k: interpolate(str(v), variables) for k, v in args.items()},
            compose_command=None if command is None else tuple(str(a) for a in command),
            ports=tuple(interpolate(str(p), variables) for p in spec.get("ports") or ()),
        )
    return services


def compose_variables() -> dict[str, str]:
    """A .env made from .env.example with its blank secrets filled in."""
    return read_dotenv(ENV_EXAMPLE) | SECRETS
