"""Helpers for the migration and CLI tests: the reference schema, catalog descriptions,
console commands run as real processes, and throwaway copies of the platform tree."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import shutil
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from platform_db.trees import PLATFORM
from service_kit.migrate import MigrationTree
from tests.pg import plain_url

REPO = Path(__file__).resolve().parents[2]
REFERENCE_SQL = REPO / "tests" / "fixtures" / "betterauth_schema.sql"
CLI = Path(sys.executable).parent / "platform-db"

AUTH_TABLES = ("user", "session", "account", "verification")


# --------------------------------------------------------------------------------------
# Talking to the database directly (asyncpg, never the code under test).
# --------------------------------------------------------------------------------------
async def connect(url: str) -> Any:
    return await asyncpg.connect(plain_url(url))


async def execute(url: str, sql: str) -> None:
    conn = await connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fetch(url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    conn = await connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def build_reference(url: str) -> None:
    """Create the auth tables the way better-auth's own tooling does."""
    await execute(url, REFERENCE_SQL.read_text())


async def existing_tables(url: str, schema: str = "public") -> set[str]:
    rows = await fetch(
        url,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
        schema,
    )
    return {str(r[0]) for r in rows}


async def version_rows(url: str, tree: MigrationTree = PLATFORM) -> list[str] | None:
    """The version table's rows, or None when the table does not exist."""
    qualified = f'"{tree.schema}"."{tree.version_table}"'
    exists = await fetch(url, "SELECT to_regclass($1)", qualified)
    if exists[0][0] is None:
        return None
    return sorted(str(r[0]) for r in await fetch(url, f"SELECT version_num FROM {qualified}"))


# --------------------------------------------------------------------------------------
# A description of a schema from pg_catalog and information_schema.
# --------------------------------------------------------------------------------------
SchemaDescription = dict[str, list[tuple[Any, ...]]]


async def describe_schema(url: str, schema: str = "public") -> SchemaDescription:
    """Relations, columns (types, nullability, defaults), constraints, indexes, triggers and
    functions of `schema`."""
    queries = {
        "relations": (
            "SELECT c.relname, c.relkind::text, c.relpersistence::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1"
        ),
        "columns": (
            "SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), "
            "a.attnotnull, pg_get_expr(d.adbin, d.adrelid), "
            "a.attidentity::text, a.attgenerated::text "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') "
            "AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        "information_schema.columns": (
            "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, "
            "column_default, character_maximum_length, datetime_precision "
            "FROM information_schema.columns WHERE table_schema = $1"
        ),
        "constraints": (
            "SELECT c.relname, con.conname, con.contype::text, pg_get_constraintdef(con.oid), "
            "con.condeferrable, con.condeferred, con.convalidated "
            "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1"
        ),
        "information_schema.referential_constraints": (
            "SELECT constraint_name, unique_constraint_name, match_option, update_rule, "
            "delete_rule FROM information_schema.referential_constraints "
            "WHERE constraint_schema = $1"
        ),
        "indexes": ("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = $1"),
        "triggers": (
            "SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text "
            "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND NOT t.tgisinternal"
        ),
        "functions": (
            "SELECT p.proname, pg_get_function_identity_arguments(p.oid), "
            "pg_get_functiondef(p.oid) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1"
        ),
    }
    conn = await connect(url)
    try:
        description: SchemaDescription = {}
        for name, sql in queries.items():
            rows = [tuple(row) for row in await conn.fetch(sql, schema)]
            description[name] = sorted(rows, key=repr)
        return description
    finally:
        await conn.close()


# --------------------------------------------------------------------------------------
# Console commands as real processes.
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessResult:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:  # shown by failing asserts
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def cli_env(database_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


async def run_process(
    argv: list[str], env: Mapping[str, str], *, limit: float = 120.0
) -> ProcessResult:
    """Run a process to completion (killed if it outlives `limit` seconds)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    return ProcessResult(proc.returncode, out.decode(), err.decode())


async def run_cli(
    *args: str, database_url: str | None, limit: float = 120.0, **extra_env: str
) -> ProcessResult:
    """Run the installed `platform-db` console command."""
    return await run_process([str(CLI), *args], cli_env(database_url, **extra_env), limit=limit)


async def run_python(
    source: str, *, database_url: str | None, limit: float = 120.0
) -> ProcessResult:
    """Run `python -c source` in the project's interpreter."""
    return await run_process(
        [sys.executable, "-c", textwrap.dedent(source)], cli_env(database_url), limit=limit
    )


# --------------------------------------------------------------------------------------
# Throwaway trees: the platform tree copied to a folder, plus revisions a test adds.
# --------------------------------------------------------------------------------------
def copy_tree(
    tree: MigrationTree, tmp_path: Path, revisions: Mapping[str, str] | None = None
) -> MigrationTree:
    """A copy of `tree`'s migrations in `tmp_path` with extra revision files (name -> source):
    the next release of that tree, as far as its database is concerned.

    The copy keeps the tree's name (so its advisory lock key), version table and models.
    """
    package, folder = tree.script_location.split(":")
    source = Path(importlib.import_module(package).__file__ or "").resolve().parent / folder
    location = tmp_path / f"{tree.name}-migrations"
    shutil.copytree(source, location, ignore=shutil.ignore_patterns("__pycache__"))
    for filename, text in (revisions or {}).items():
        (location / "versions" / filename).write_text(textwrap.dedent(text))
    return dataclasses.replace(tree, script_location=str(location))


def copy_platform_tree(tmp_path: Path, revisions: Mapping[str, str] | None = None) -> MigrationTree:
    return copy_tree(PLATFORM, tmp_path, revisions)


def advisory_lock_ids(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key as (classid = high half, objid = low half)."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF
