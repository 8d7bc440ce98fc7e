"""The README's two paths, followed literally in a copy of the workspace: "Adding a column"
(its diff and its commands) and "Adding a service" (the scaffold, `uv sync`, a migration).

Each test copies the workspace's packages and lock to a temporary folder, makes its own
virtualenv there with `uv sync --offline` (every wheel is in uv's cache already), and runs
that copy's commands against a real Postgres: nothing in the repository itself changes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Processes
from tests.e2e.workspace import (
    Workspace,
    fenced,
    make_workspace,
    readme_commands,
    readme_section,
    serve,
)
from tests.services.helpers import connect, sign_up


@pytest.fixture
def workspace(tmp_path: Path, db_url: str) -> Workspace:
    """A copy of the workspace with its own virtualenv, its commands reading `db_url`."""
    return make_workspace(tmp_path / "workspace", db_url)


def upgrade_ops(migration: Path) -> tuple[list[str], list[str]]:
    """The `op.*` calls of a migration's upgrade() and downgrade(), as source text."""
    tree = ast.parse(migration.read_text())
    found: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in ("upgrade", "downgrade"):
            found[node.name] = [
                ast.unparse(stmt.value)
                for stmt in node.body
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            ]
    return found["upgrade"], found["downgrade"]


async def test_adding_a_column_as_the_readme_says(
    workspace: Workspace, db_url: str, processes: Processes
) -> None:
    ws = workspace
    section = readme_section("Adding a column")
    (diff,) = fenced(section, "diff")
    commands = readme_commands(section)
    assert commands[0][:3] == ["uv", "run", "web"], commands
    assert commands[0][3] == "revision", commands

    for tree in ("platform-db", "web", "trading"):
        ws.run(["uv", "run", tree, "migrate"])
    trading_api_before = ws.openapi("trading")
    trading_files_before = _tree_files(ws.root / "services" / "trading")

    applied = ws.exec(["git", "apply", "--verbose", "-"], stdin=diff)
    assert applied.returncode == 0, f"the README's diff no longer applies:\n{applied.stderr}"
    for command in commands:
        ws.run(command)

    versions = ws.root / "services" / "web" / "src" / "web" / "migrations" / "versions"
    (migration,) = versions.glob("0002_*.py")
    assert migration.name == "0002_add_todo_priority.py"
    upgrade, downgrade = upgrade_ops(migration)
    assert len(upgrade) == 1, upgrade
    assert upgrade[0].startswith("op.add_column('todos', sa.Column('priority', sa.Integer()")
    assert "schema='web'" in upgrade[0]
    assert downgrade == ["op.drop_column('todos', 'priority', schema='web')"]

    for tree in ("platform-db", "web", "trading"):
        ws.run(["uv", "run", tree, "check"])

    # Trading: its files, its table and its OpenAPI are as they were.
    assert _tree_files(ws.root / "services" / "trading") == trading_files_before
    assert ws.openapi("trading") == trading_api_before
    async with connect(db_url) as conn:
        columns = await conn.fetch(
            "SELECT table_schema, column_name FROM information_schema.columns "
            "WHERE table_name = 'todos' AND column_name = 'priority'"
        )
    assert [tuple(r) for r in columns] == [("web", "priority")]

    # Web's API takes, returns and documents it.
    schemas = ws.openapi("web")["components"]["schemas"]  # type: ignore[index]
    assert schemas["TodoCreate"]["properties"]["priority"]["type"] == "integer"
    assert "priority" in schemas["TodoRead"]["required"]
    assert "priority" in schemas["TodoUpdate"]["properties"]
    base = await serve(processes, ws, "web", db_url)
    async with httpx.AsyncClient(base_url=base) as client:
        caller = await sign_up(client)
        r = await client.post("/todos", json={"title": "t", "priority": 3}, headers=caller.headers)
        assert r.status_code == 201, r.text
        assert r.json()["priority"] == 3
        todo_id = r.json()["id"]
        r = await client.get(f"/todos/{todo_id}", headers=caller.headers)
        assert r.json()["priority"] == 3
        r = await client.patch(f"/todos/{todo_id}", json={"priority": None}, headers=caller.headers)
        assert r.status_code == 422, r.text
        r = await client.post("/todos", json={"title": "u"}, headers=caller.headers)
        assert r.json()["priority"] == 0


def _tree_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


async def test_adding_a_service_as_the_readme_says(
    workspace: Workspace, db_url: str, empty_db: str, processes: Processes
) -> None:
    ws = workspace
    commands = readme_commands(readme_section("Adding a service"))
    assert commands[0][:4] == ["uv", "run", "platform-db", "new-service"], commands
    name = commands[0][4]
    assert name == "billing"
    ws.run(["uv", "run", "web", "migrate"])

    # Everything up to the first migrate: the scaffold, `uv sync`, the first revision.
    for command in commands:
        if command[2:4] == [name, "migrate"]:
            break
        ws.run(command)

    service = ws.root / "services" / name
    assert (service / "src" / name / "models.py").is_file()
    (migration,) = (service / "src" / name / "migrations" / "versions").glob("0001_*.py")
    upgrade, _ = upgrade_ops(migration)
    assert upgrade[0].startswith("op.create_table('items'"), upgrade
    assert f"schema='{name}'" in upgrade[0]
    assert "sa.ForeignKeyConstraint(['user_id'], ['user.id']" in upgrade[0]
    assert all(f"schema='{name}'" in op for op in upgrade), upgrade

    migrate_check = [
        c for c in commands if c[2:4] == [name, "migrate"] or c[2:4] == [name, "check"]
    ]
    assert [c[3] for c in migrate_check] == ["migrate", "check"]
    for command in migrate_check:
        ws.run(command)
    ws.run(["uv", "run", "platform-db", "check"])

    # The generated code is as clean as the rest of the workspace.
    lint = ws.exec([ws.bin("ruff"), "check", f"services/{name}"])
    assert lint.returncode == 0, lint.stdout

    web = await serve(processes, ws, "web", db_url)
    billing = await serve(processes, ws, name, db_url)
    async with httpx.AsyncClient(base_url=web) as client:
        caller = await sign_up(client)
    async with httpx.AsyncClient(base_url=billing) as client:
        assert (await client.get("/docs")).status_code == 200
        r = await client.post("/items", json={"name": "invoice 1"}, headers=caller.headers)
        assert r.status_code == 201, r.text
        assert r.json()["userId"] == caller.user_id
        r = await client.get("/items", headers=caller.headers)
        assert [i["name"] for i in r.json()["items"]] == ["invoice 1"]
        assert (await client.get("/items")).status_code == 401
    async with connect(db_url) as conn:
        assert await conn.fetchval(f"SELECT count(*) FROM {name}.items") == 1
        assert await conn.fetchval(f"SELECT version_num FROM {name}.alembic_version") == "0001"
