"""Autogenerate for one owner never touches another owner's tables.

The column-adding test changes a model, which would pollute the shared `SQLModel.metadata`
of this process; it runs that part in a child process (this module, run with `-m`) and
writes the new migration into a copy of the service's migrations folder.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from platform_db.trees import PLATFORM
from service_kit import migrate
from service_kit.db import async_url
from service_kit.migrate import MigrationError, MigrationTree
from tests.services.helpers import connect
from trading.app import TREE as TRADING_TREE
from web.app import TREE as WEB_TREE

REPO = Path(__file__).resolve().parents[2]
TREES: dict[str, MigrationTree] = {"platform": PLATFORM, "web": WEB_TREE, "trading": TRADING_TREE}
SERVICE_TREES: dict[str, MigrationTree] = {"web": WEB_TREE, "trading": TRADING_TREE}
MESSAGE = "add todo priority"


async def diff_ops(url: str, tree: MigrationTree) -> list[Any]:
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: migrate.diff(tree, c))
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------------------
# diff: each tree sees only what it owns
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TREES)
async def test_fully_migrated_database_has_no_diff(full_db: str, name: str) -> None:
    assert await diff_ops(full_db, TREES[name]) == []


DRIFTS = [
    # (SQL run on a fully migrated database, the tree that owns what it touched)
    ("ALTER TABLE web.todos ADD COLUMN stray integer", "web"),
    ("CREATE TABLE web.stray (id integer)", "web"),
    ("ALTER TABLE trading.todos ADD COLUMN stray integer", "trading"),
    ("CREATE TABLE trading.stray (id integer)", "trading"),
    ('ALTER TABLE "user" ADD COLUMN stray text', "platform"),
    ("CREATE INDEX stray_idx ON session (ip_address)", "platform"),
    # Nobody's: a table some other app keeps in public, a whole other schema.
    ("CREATE TABLE public.stray (id text PRIMARY KEY)", None),
    ("CREATE SCHEMA stray; CREATE TABLE stray.todos (id text)", None),
]


@pytest.mark.parametrize(("sql", "owner"), DRIFTS, ids=[d[0][:40] for d in DRIFTS])
async def test_only_the_owner_sees_a_change(full_db: str, sql: str, owner: str | None) -> None:
    async with connect(full_db) as conn:
        await conn.execute(sql)
    for name, tree in TREES.items():
        ops = await diff_ops(full_db, tree)
        if name == owner:
            assert ops, name
            assert all("stray" in repr(op) for op in ops), (name, ops)
        else:
            assert ops == [], (name, ops)


@pytest.mark.parametrize("name", SERVICE_TREES)
async def test_initial_diff_creates_only_the_services_table(db_url: str, name: str) -> None:
    """With only the platform migrated, a service's diff is its own table and nothing else."""
    tree = SERVICE_TREES[name]
    ops = await diff_ops(db_url, tree)
    kinds = sorted(op[0] for op in ops)
    assert kinds == ["add_index", "add_table"], ops
    table = next(op[1] for op in ops if op[0] == "add_table")
    assert (table.schema, table.name) == (tree.schema, "todos")
    index = next(op[1] for op in ops if op[0] == "add_index")
    assert (index.table.schema, index.table.name) == (tree.schema, "todos")
    assert await diff_ops(db_url, PLATFORM) == []


# --------------------------------------------------------------------------------------
# revision: a new column in a service model yields a migration with only that column
# --------------------------------------------------------------------------------------
async def run_child(name: str, step: str, url: str, location: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.services.test_autogenerate",
        name,
        step,
        url,
        str(location),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def op_calls(module: ast.Module, function: str) -> list[ast.Call]:
    """The `op.*` calls in `function` (not counting `op.f`, which only names things)."""
    fn = next(n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == function)
    return [
        node
        for node in ast.walk(fn)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "op"
        and node.func.attr != "f"
    ]


def module_value(module: ast.Module, name: str) -> Any:
    for node in module.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
            and node.value is not None
        ):
            return ast.literal_eval(node.value)
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found")


def keywords(call: ast.Call) -> dict[str | None, Any]:
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


def call_name(node: ast.expr) -> str:
    assert isinstance(node, ast.Call), ast.dump(node)
    return ast.unparse(node.func)


async def columns(url: str, schema: str) -> dict[str, tuple[str, str]]:
    async with connect(url) as conn:
        rows = await conn.fetch(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = 'todos'",
            schema,
        )
    return {r["column_name"]: (r["data_type"], r["is_nullable"]) for r in rows}


async def versions(url: str) -> dict[str, str]:
    async with connect(url) as conn:
        rows = [
            await conn.fetchval(f"SELECT string_agg(version_num, ',') FROM {table}")
            for table in (
                "public.platform_alembic_version",
                "web.alembic_version",
                "trading.alembic_version",
            )
        ]
    return dict(zip(("platform", "web", "trading"), rows, strict=True))


@pytest.mark.parametrize("name", SERVICE_TREES)
async def test_new_column_yields_a_migration_with_only_that_column(
    full_db: str, tmp_path: Path, name: str
) -> None:
    tree = SERVICE_TREES[name]
    other = next(t for n, t in SERVICE_TREES.items() if n != name)
    source = Path(importlib.import_module(name).__file__ or "").parent / "migrations"
    repo_versions = sorted(p.name for p in (source / "versions").glob("*.py"))
    location = tmp_path / "migrations"
    shutil.copytree(source, location, ignore=shutil.ignore_patterns("__pycache__"))
    before = await versions(full_db)
    other_columns = await columns(full_db, other.schema)

    made = await run_child(name, "revision", full_db, location)
    # `check` against the unchanged migrations notices the model change first.
    assert "add_column" in made["check_before"]
    assert "priority" in made["check_before"]

    path = Path(made["path"])
    assert path.parent == location / "versions"
    assert path.name == "0002_add_todo_priority.py"
    source_text = await asyncio.to_thread(path.read_text)
    module = ast.parse(source_text)
    assert module_value(module, "revision") == "0002"
    assert module_value(module, "down_revision") == "0001"

    (up,) = op_calls(module, "upgrade")
    assert ast.unparse(up.func) == "op.add_column"
    assert ast.literal_eval(up.args[0]) == "todos"
    assert keywords(up) == {"schema": tree.schema}
    column = up.args[1]
    assert isinstance(column, ast.Call)
    assert call_name(column) == "sa.Column"
    assert ast.literal_eval(column.args[0]) == "priority"
    assert call_name(column.args[1]) == "sa.Integer"
    assert keywords(column) == {"nullable": True}

    (down,) = op_calls(module, "downgrade")
    assert ast.unparse(down.func) == "op.drop_column"
    assert [ast.literal_eval(a) for a in down.args] == ["todos", "priority"]
    assert keywords(down) == {"schema": tree.schema}

    bodies = "\n".join(
        ast.unparse(n) for n in module.body if isinstance(n, ast.FunctionDef)
    ).lower()
    for word in ("create_table", "drop_table", "alter_column", "user", "session", "account"):
        assert word not in bodies
    assert "verification" not in bodies
    assert other.schema not in bodies
    assert "import sqlmodel" in source_text

    # Nothing was written into the repository.
    assert sorted(p.name for p in (source / "versions").glob("*.py")) == repo_versions
    # Generating touched no database object.
    assert await versions(full_db) == before

    await run_child(name, "apply", full_db, location)  # upgrade, then check passes
    assert (await columns(full_db, tree.schema))["priority"] == ("integer", "YES")
    assert await columns(full_db, other.schema) == other_columns
    assert await versions(full_db) == {**before, name: "0002"}

    await run_child(name, "downgrade", full_db, location)
    assert "priority" not in await columns(full_db, tree.schema)
    assert await versions(full_db) == before

    # The model change never reached this process's metadata.
    model = importlib.import_module(f"{name}.models").Todo
    assert "priority" not in model.__table__.c


# --------------------------------------------------------------------------------------
# The child process: `python -m tests.services.test_autogenerate NAME STEP URL LOCATION`
# --------------------------------------------------------------------------------------
def _child(name: str, step: str, url: str, location: str) -> dict[str, Any]:
    models = importlib.import_module(f"{name}.models")
    models.Todo.__table__.append_column(Column("priority", Integer, nullable=True))
    original: MigrationTree = importlib.import_module(f"{name}.app").TREE
    tree = dataclasses.replace(original, script_location=location)
    if step == "revision":
        try:
            asyncio.run(migrate.check(original, url))
            check_before = ""
        except MigrationError as exc:
            check_before = str(exc)
        script = asyncio.run(migrate.revision(tree, url, MESSAGE))
        return {"check_before": check_before, "path": script.path if script else None}
    if step == "apply":
        heads = asyncio.run(migrate.upgrade(tree, url))
        asyncio.run(migrate.check(tree, url))
        return {"heads": list(heads)}
    if step == "downgrade":
        return {"heads": list(asyncio.run(migrate.downgrade(tree, url, "0001")))}
    raise SystemExit(f"unknown step {step!r}")


if __name__ == "__main__":
    print(json.dumps(_child(*sys.argv[1:5])))
