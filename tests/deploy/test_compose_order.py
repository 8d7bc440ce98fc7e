"""docker-compose.yml's start order, checked without containers.

Each service's command (its build argument `COMMAND`, which the root Dockerfile makes the image's
CMD) and `environment` come from the compose file itself (interpolated with .env.example, as
`docker compose` would with a .env copied from it), and its `env_file` is .env.example; the
`postgres` service is the embedded Postgres of the test run. The commands run as separate
processes, each started only when its `depends_on` conditions hold. So the file cannot drift
from what is tested here; `.ci/compose-test` runs the same file with real containers where
there are some.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from platform_dev.embedded import free_port
from tests.conftest import REPO, TEST_SECRET

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
BIN = Path(sys.executable).parent

# The secrets .env.example leaves blank, as someone filling in their .env would set them.
SECRETS = {"POSTGRES_PASSWORD": "compose-order-test", "AUTH_SECRET": TEST_SECRET}
READY_WITHIN = 90.0  # bound of the polls below, in seconds (not a timing assertion)
STOP_WITHIN = 15.0

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


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------
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


@pytest.fixture
async def stack(empty_db: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """Processes on a new, empty database (as a fresh `pgdata` volume); all stopped at the end."""
    s = Stack(empty_db, tmp_path)
    try:
        yield s
    finally:
        await s.stop_all()


async def up(stack: Stack, services: Mapping[str, Service]) -> list[str]:
    """Start the built services as `docker compose up` would order them; return the served ones.

    Services without a build (postgres) are the test's database: there and healthy. A service
    starts once every dependency meets its condition; a one-shot must exit 0 (compose would
    start nothing that depends on it otherwise).
    """
    external = {name for name, s in services.items() if not s.built}
    pending = [s for s in services.values() if s.built]
    exited: dict[str, int] = {}
    served: list[str] = []

    def ready(dep: str, condition: str) -> bool:
        if dep in external:
            return True
        if condition == "service_completed_successfully":
            return exited.get(dep) == 0
        if condition == "service_healthy":
            return ("healthy", dep) in stack.events
        return dep in stack.running

    while pending:
        startable = [s for s in pending if all(ready(d, c) for d, c in s.depends_on.items())]
        assert startable, f"nothing can start: {[s.name for s in pending]}, exited {exited}"
        for service in startable:
            pending.remove(service)
            await stack.start(service)
        # One-shots (no healthcheck, nobody waits for their health) run to their end here.
        for service in startable:
            if service.healthcheck is None:
                exited[service.name] = await stack.wait_exit(service.name)
                assert exited[service.name] == 0, stack.running[service.name].describe()
            else:
                served.append(service.name)
        awaited = {d for p in pending for d, c in p.depends_on.items() if c == "service_healthy"}
        for service in startable:
            if service.name in awaited and service.healthcheck is not None:
                await stack.wait_healthy(service.name)
    return served


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------
def test_services_wait_for_postgres_and_the_init_container() -> None:
    """Every served service depends on postgres healthy and each one-shot completed."""
    services = load_compose(compose_variables())
    one_shots = [s.name for s in services.values() if s.built and s.healthcheck is None]
    served = [s for s in services.values() if s.built and s.healthcheck is not None]
    assert one_shots == ["platform-db"]
    assert services["platform-db"].command == ("platform-db", "migrate")
    assert services["platform-db"].depends_on == {"postgres": "service_healthy"}
    assert {s.name for s in served} == {"web", "trading"}
    for service in served:
        assert service.command == (service.name, "serve")
        assert service.depends_on == {
            "postgres": "service_healthy",
            "platform-db": "service_completed_successfully",
        }, service.name


def dockerfile_args() -> set[str]:
    return set(re.findall(r"^ARG ([A-Za-z_]\w*)", DOCKERFILE.read_text(), re.MULTILINE))


def test_one_dockerfile_builds_every_image_from_its_build_args() -> None:
    """All images come from the root Dockerfile; the build args are consistent with the rest.

    The container runs the image's CMD (the build argument COMMAND, so compose sets no
    `command` to drift from it); PACKAGE is the distribution that provides COMMAND's program;
    a served service's PORT is the one its environment, healthcheck and published port use.
    """
    services = load_compose(compose_variables())
    built = [s for s in services.values() if s.built]
    assert {s.name for s in built} == {"platform-db", "web", "trading"}
    declared = dockerfile_args()
    for service in built:
        where = {k: v for k, v in (service.build or {}).items() if k != "args"}
        assert where == {"context": ".", "dockerfile": "Dockerfile"}, service.name
        assert service.compose_command is None, f"{service.name}: the image's CMD is COMMAND"
        args = service.build_args
        assert set(args) <= declared, f"{service.name}: the Dockerfile has no ARG for {args}"
        assert {"PACKAGE", "COMMAND"} <= set(args), service.name
        program = service.command[0]
        scripts = metadata.distribution(args["PACKAGE"]).entry_points.select(
            group="console_scripts"
        )
        assert program in scripts.names, f"{service.name}: {args['PACKAGE']} has no {program}"
        if service.healthcheck is None:
            assert "PORT" not in args, f"{service.name} serves nothing"
            continue
        port = args["PORT"]
        assert service.environment["PORT"] == port, service.name
        assert [p.rsplit(":", 1)[-1] for p in service.ports] == [port], service.ports
    # Each image holds its own package: no two services build the same one.
    packages = [s.build_args["PACKAGE"] for s in built]
    assert len(set(packages)) == len(packages), packages


async def test_compose_commands_come_up_in_order(stack: Stack) -> None:
    services = load_compose(compose_variables())
    served = await up(stack, services)

    assert sorted(served) == ["trading", "web"]
    init = stack.running["platform-db"].output()
    assert re.search(r"^platform-db: at \S+ \(head\)$", init, re.MULTILINE), init
    # The init container had exited 0 before either service started.
    order = stack.events
    assert order.index(("exited 0", "platform-db")) < order.index(("started", "web"))
    assert order.index(("exited 0", "platform-db")) < order.index(("started", "trading"))

    async with httpx.AsyncClient(timeout=10) as client:
        for name in served:
            # The compose healthcheck itself (/readyz) turns healthy, bounded.
            await stack.wait_healthy(name)
            base = f"http://127.0.0.1:{stack.running[name].port}"
            ready = await client.get(f"{base}/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["trees"]["platform-db"], ready.text
            assert ready.json()["trees"][name], ready.text
            docs = await client.get(f"{base}/docs")
            assert docs.status_code == 200
            assert "swagger" in docs.text.lower()
            assert stack.running[name].process.returncode is None


async def test_without_the_init_container_services_wait_then_exit(stack: Stack) -> None:
    """Started without platform-db, the services wait for it, then fail naming its command."""
    services = load_compose(compose_variables())
    init_command = " ".join(services["platform-db"].command)
    served = [s for s in services.values() if s.built and s.healthcheck is not None]
    for service in served:
        await stack.start(service, PLATFORM_WAIT_TIMEOUT="2")
    for service in served:
        code = await stack.wait_exit(service.name)
        out = stack.running[service.name].output()
        assert code != 0, out
        assert f"{service.name}: waiting up to 2s for the platform-db tree" in out, out
        assert f"Run `{init_command}` first" in out, out
        assert "Traceback" not in out, out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "a"),
        ("$A-$$A", "a-$A"),
        ("${MISSING:-d}|${EMPTY:-d}|${EMPTY-d}|${MISSING-d}", "d|d||d"),
        ("x${EMPTY}y", "xy"),
    ],
)
def test_interpolation_follows_compose(text: str, expected: str) -> None:
    assert interpolate(text, {"A": "a", "EMPTY": ""}) == expected


@pytest.mark.parametrize("text", ["${EMPTY:?need it}", "${MISSING?need it}", "${MISSING:?x}"])
def test_interpolation_refuses_missing_required(text: str) -> None:
    with pytest.raises(ValueError, match="compose would refuse to start"):
        interpolate(text, {"EMPTY": ""})


def test_env_example_has_no_secrets_and_compose_requires_them() -> None:
    example = read_dotenv(ENV_EXAMPLE)
    for name in SECRETS:
        assert example[name] == "", f".env.example must leave {name} blank"
    with pytest.raises(ValueError, match="AUTH_SECRET"):
        load_compose(read_dotenv(ENV_EXAMPLE) | {"POSTGRES_PASSWORD": "x"})
