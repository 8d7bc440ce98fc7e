"""deploy/kubernetes: rendered by kubectl's kustomize, validated offline, and run for real.

The base is rendered as an operator would (`kubectl kustomize deploy/kubernetes`) and every
object is validated against Kubernetes' own schemas, strictly (kubernetes-validate ships them;
no cluster needed). The containers are then held to what the rest of the repository says: the
commands, ports and environment of docker-compose.yml and the Dockerfile, the settings the
services read, the probes' paths. Last, each container's command runs with its environment
resolved as the kubelet would (ConfigMap, Secret, literals) against the test's Postgres: the
Job migrates and exits 0, then each Deployment's probes answer on its port.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from platform_auth.settings import ServiceSettings
from tests.conftest import REPO, TEST_SECRET
from tests.deploy.compose import COMPOSE_FILE, DOCKERFILE, Service, compose_variables, load_compose
from tests.deploy.stack import READY_WITHIN, Running, Stack
from tests.polling import poll

BASE = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes release the base is written for (autoscaling/v2, policy/v1 and
# batch/v1 Jobs with ttlSecondsAfterFinished are all GA there), and the newest schema shipped.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SECRET_NAME = "shared-auth"
# The database's default max_connections: the base's connection budget must fit in it.
POSTGRES_MAX_CONNECTIONS = 100

Object = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (.ci/run installs it): the base cannot be rendered")
    return found


@pytest.fixture(scope="module")
def rendered() -> list[Object]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(BASE)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def find(objects: list[Object], kind: str, name: str | None = None) -> list[Object]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[Object], kind: str, name: str) -> Object:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(objects: list[Object]) -> Iterator[tuple[Object, Object]]:
    """(workload, its pod spec) for every Job, CronJob and Deployment."""
    for o in objects:
        if o["kind"] in ("Job", "Deployment"):
            yield o, o["spec"]["template"]["spec"]
        elif o["kind"] == "CronJob":
            yield o, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def known_variables() -> set[str]:
    """Every environment variable a service or platform-db process reads (its settings)."""
    names: set[str] = set()
    for field in ServiceSettings.model_fields.values():
        concern = field.annotation
        assert isinstance(concern, type)
        assert issubclass(concern, BaseSettings)
        for setting in concern.model_fields.values():
            alias = setting.validation_alias
            if isinstance(alias, AliasChoices):
                names.update(str(a) for a in alias.choices)
            elif isinstance(alias, str):
                names.add(alias)
    return names


def config_map_data(objects: list[Object], name: str) -> dict[str, str]:
    return dict(one(objects, "ConfigMap", name).get("data") or {})


def container_env(
    objects: list[Object], container: Object, secret: dict[str, str]
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first, then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_map_data(objects, source["configMapRef"]["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == SECRET_NAME, var
        if ref["key"] in secret:
            env[var["name"]] = secret[ref["key"]]
        else:
            # The kubelet refuses to start a container whose required key is missing.
            assert ref.get("optional"), f"{var['name']}: the Secret has no {ref['key']}"
    return env


def port_of(container: Object, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"{container['name']}: no port named {port}"
    return int(named[port])


# --------------------------------------------------------------------------------------
# Rendering and validation
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_kubernetes(rendered: list[Object], version: str) -> None:
    for obj in rendered:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validation_refuses_a_misspelt_field(rendered: list[Object]) -> None:
    """Strict validation bites: a typo an apply would silently drop is an error here."""
    deployment = copy.deepcopy(one(rendered, "Deployment", "web"))
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["paht"] = probe["httpGet"].pop("path")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_the_base_has_a_migrate_job_and_each_service_its_own_objects(
    rendered: list[Object],
) -> None:
    served = sorted(
        s.name for s in load_compose(compose_variables()).values() if s.built and s.healthcheck
    )
    deployments = sorted(o["metadata"]["name"] for o in find(rendered, "Deployment"))
    assert deployments == served == ["trading", "web"]
    assert [o["metadata"]["name"] for o in find(rendered, "Job")] == ["platform-db-migrate"]
    # One sweeper, the CronJob: the services' own timers are off where it runs.
    (cron,) = find(rendered, "CronJob")
    assert cron["metadata"]["name"] == "platform-db-sweep"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (settings,) = (
        c
        for c in find(rendered, "ConfigMap")
        if c["metadata"]["name"].startswith("shared-auth-settings")
    )
    assert settings["data"]["SWEEP_INTERVAL"] == "0"
    for name in served:
        deployment = one(rendered, "Deployment", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), name
        # The HorizontalPodAutoscaler owns the replica count, so an apply never resets it.
        assert "replicas" not in deployment["spec"], name
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
        service = one(rendered, "Service", name)
        assert service["spec"]["selector"] == selector, name
        pdb = one(rendered, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"] == selector, name
        hpa = one(rendered, "HorizontalPodAutoscaler", name)
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"], name


def test_the_readmes_overlay_renders_and_changes_what_it_says(tmp_path: Path) -> None:
    """README "Run on Kubernetes": its overlay, next to a copy of the base, as it is laid out."""
    readme = (REPO / "README.md").read_text()
    found = re.search(
        r"```yaml\n# (deploy/overlays/\S+/kustomization.yaml)\n(.*?)```", readme, re.S
    )
    assert found is not None, "README: no overlay example"
    overlay = tmp_path / found.group(1)
    overlay.parent.mkdir(parents=True)
    overlay.write_text(found.group(2))
    shutil.copytree(BASE, tmp_path / "deploy" / "kubernetes")
    out = subprocess.run(
        [kubectl(), "kustomize", str(overlay.parent)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    objects = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    assert {o["metadata"].get("namespace") for o in objects} == {"shared-auth"}
    for _, pod in workloads(objects):
        (container,) = pod["containers"]
        assert container["image"].startswith("registry.example.com/shared-auth/"), container
        settings = container_env(objects, container, {"DATABASE_URL": "-", "AUTH_SECRET": "-"})
        # Merged into the base's settings, not replacing them.
        assert settings["AUTH_URL"] == "https://app.example.com"
        assert settings["ENVIRONMENT"] == "production"
    for obj in objects:
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)


# --------------------------------------------------------------------------------------
# Agreement with the compose file, the Dockerfile and the settings
# --------------------------------------------------------------------------------------
def test_commands_ports_and_probes_are_the_compose_files(rendered: list[Object]) -> None:
    compose = load_compose(compose_variables())
    for workload, pod in workloads(rendered):
        (container,) = pod["containers"]
        image = container["image"].rsplit(":", 1)[0]
        source = compose[container["name"]]
        # The same image as compose builds, running the command compose's image runs (the
        # CronJob: another subcommand of that image's program).
        assert source.build is not None
        assert image == compose_image(container["name"]), container["name"]
        program = container["command"][0]
        scripts = metadata.distribution(source.build_args["PACKAGE"]).entry_points
        assert program in scripts.select(group="console_scripts").names, program
        if workload["kind"] == "CronJob":
            assert container["command"] == ["platform-db", "sweep"]
            assert source.command[0] == program
            assert subcommand_exists(program, "sweep")
            assert pod["restartPolicy"] in ("Never", "OnFailure")
            continue
        assert tuple(container["command"]) == source.command, container["name"]
        if workload["kind"] == "Job":
            assert pod["restartPolicy"] in ("Never", "OnFailure")
            assert "ports" not in container
            assert source.healthcheck is None
            continue
        port = source.build_args["PORT"]
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env["PORT"] == port, container["name"]
        assert env["HOST"] == source.environment["HOST"], container["name"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": int(port), "metrics": int(env["METRICS_PORT"])}, ports
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == env["METRICS_PORT"]
        assert source.healthcheck is not None
        compose_probe = re.search(r"/(readyz|healthz)\b", " ".join(source.healthcheck))
        assert compose_probe is not None
        probes = {
            kind: (
                container[kind]["httpGet"]["path"],
                port_of(container, kind_port(container, kind)),
            )
            for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        }
        assert probes == {
            # Ready as compose's healthcheck says; alive (and started) without the database.
            "readinessProbe": (compose_probe.group(0), int(port)),
            "livenessProbe": ("/healthz", int(port)),
            "startupProbe": ("/healthz", int(port)),
        }, container["name"]
        service = one(rendered, "Service", container["name"])
        (service_port,) = service["spec"]["ports"]
        assert port_of(container, service_port["targetPort"]) == int(port)


def subcommand_exists(program: str, name: str) -> bool:
    """`program name --help` exits 0 (argparse: 2 for a subcommand it does not have)."""
    path = Path(sys.executable).parent / program
    return subprocess.run([path, name, "--help"], capture_output=True, check=False).returncode == 0


def kind_port(container: Object, kind: str) -> int | str:
    port: int | str = container[kind]["httpGet"]["port"]
    return port


def compose_image(name: str) -> str:
    """The image compose builds for a service, without its tag."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    image: str = raw["services"][name]["image"]
    return image.split(":", 1)[0]


def test_environment_names_are_settings_the_services_read(rendered: list[Object]) -> None:
    known = known_variables()
    for workload, pod in workloads(rendered):
        (container,) = pod["containers"]
        names = {v["name"] for v in container.get("env", [])}
        for source in container.get("envFrom", []):
            names |= config_map_data(rendered, source["configMapRef"]["name"]).keys()
        unknown = names - known
        assert not unknown, f"{workload['metadata']['name']}: nothing reads {sorted(unknown)}"
        secrets = {
            v["name"]: v["valueFrom"]["secretKeyRef"]
            for v in container.get("env", [])
            if "valueFrom" in v
        }
        # Secrets come from the Secret, never from a literal in a manifest.
        wanted = {"DATABASE_URL", "DATABASE_DIRECT_URL"}
        if workload["kind"] == "Deployment":
            wanted.add("AUTH_SECRET")
        assert secrets.keys() == wanted, workload["metadata"]["name"]
        for name, ref in secrets.items():
            assert (ref["name"], ref["key"]) == (SECRET_NAME, name)
            # Only the direct URL may be absent: it defaults to DATABASE_URL.
            assert bool(ref.get("optional")) == (name == "DATABASE_DIRECT_URL"), name


def test_pods_run_as_the_images_user_read_only_and_bounded(rendered: list[Object]) -> None:
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert user is not None
    for workload, pod in workloads(rendered):
        name = workload["metadata"]["name"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert (context["runAsUser"], context["runAsGroup"]) == (
            int(user.group(1)),
            int(user.group(2)),
        ), name
        assert pod["automountServiceAccountToken"] is False, name
        (container,) = pod["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        # The one writable place is a bounded emptyDir on /tmp.
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert mounts.keys() == {"/tmp"}, name
        assert "sizeLimit" in volumes[mounts["/tmp"]]["emptyDir"], name
        for key in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][key].keys(), (name, key)


def test_the_connection_budget_fits_postgres_defaults(rendered: list[Object]) -> None:
    """At the autoscalers' maximum: replicas x workers x (pool + overflow + listener) + Jobs."""
    used = 0
    for workload, pod in workloads(rendered):
        (container,) = pod["containers"]
        env = container_env(rendered, container, {"DATABASE_URL": "-", "AUTH_SECRET": "-"})
        if workload["kind"] in ("Job", "CronJob"):
            used += 1  # migrate holds one connection (its lock's), a sweep one
            continue
        hpa = one(rendered, "HorizontalPodAutoscaler", workload["metadata"]["name"])
        per_worker = int(env["DB_POOL_SIZE"]) + int(env["DB_MAX_OVERFLOW"]) + 1
        used += hpa["spec"]["maxReplicas"] * int(env["WEB_CONCURRENCY"]) * per_worker
    assert used <= POSTGRES_MAX_CONNECTIONS, used


# --------------------------------------------------------------------------------------
# The containers' commands, run
# --------------------------------------------------------------------------------------
def as_service(objects: list[Object], container: Object, secret: dict[str, str]) -> Service:
    return Service(
        name=container["name"],
        environment=container_env(objects, container, secret),
        depends_on={},
        healthcheck=None,
        build={},
        build_args={},
        compose_command=tuple(container["command"]),
        ports=(),
    )


async def answers(client: httpx.AsyncClient, running: Running, url: str) -> bool:
    """What the kubelet's httpGet probe counts as success (here: 200), while the process runs."""
    assert running.process.returncode is None, running.describe()
    try:
        return (await client.get(url)).status_code == 200
    except httpx.TransportError:
        return False


async def test_the_job_then_the_deployments_come_up(stack: Stack, rendered: list[Object]) -> None:
    secret = {"DATABASE_URL": stack.database_url, "AUTH_SECRET": TEST_SECRET}
    (job,) = find(rendered, "Job")
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    await stack.start(as_service(rendered, migrate, secret))
    assert await stack.wait_exit(migrate["name"]) == 0, stack.running[migrate["name"]].describe()

    deployments = find(rendered, "Deployment")
    containers = [d["spec"]["template"]["spec"]["containers"][0] for d in deployments]
    for container in containers:
        await stack.start(as_service(rendered, container, secret))
    async with httpx.AsyncClient(timeout=5) as client:
        for container in containers:
            running = stack.running[container["name"]]
            # The container port stands for the free port the process was given instead.
            base = f"http://127.0.0.1:{running.port}"
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                url = base + container[kind]["httpGet"]["path"]
                check = functools.partial(answers, client, running, url)
                await poll(check, f"{container['name']}: {kind} {url}", READY_WITHIN, 0.2)
            ready = (await client.get(f"{base}/readyz")).json()
            assert ready["trees"]["platform-db"], ready
            assert ready["trees"][container["name"]], ready
            assert running.env["ENVIRONMENT"] == "production"
            assert "DATABASE_DIRECT_URL" not in running.env
