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

import re
from collections.abc import Mapping
from importlib import metadata

import httpx
import pytest

from tests.deploy.compose import (
    DOCKERFILE,
    ENV_EXAMPLE,
    SECRETS,
    Service,
    compose_variables,
    interpolate,
    load_compose,
    read_dotenv,
)
from tests.deploy.stack import Stack


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
