"""tests/fixtures/betterauth_schema.sql is what better-auth 1.7.25 produces, checked against
better-auth itself (pinned in node/package.json) so the fixture can never drift unnoticed.

The fixture stands for "the four tables as better-auth's own tooling makes them" wherever the
tests need that (tests/platform_db). Here better-auth produces them again, a database is built
from each result, and what Postgres holds is compared (pg_catalog), never SQL text:

1. better-auth's Drizzle schema generator, the one @better-auth/drizzle-adapter 1.7.25 ships
   (`createSchema` of its relations-v2 adapter, provider "pg", camelCase off, so snake_case
   columns; the `auth` CLI, whose `generate` prints such a module, is not among node/'s
   packages), writes the schema module. Its tables, turned into DDL as drizzle-kit does, must
   build exactly the fixture's database: the same tables, columns (position, type,
   nullability, default), constraints and indexes, names included. node/schema.mjs, which the
   server compat tests run on, must build the same database.
2. better-auth's own migrator (`getMigrations(options).runMigrations()`, Kysely, from
   better-auth/db/migration) creates its tables on an empty database, with the snake_case
   column names schema.mjs maps. It is another tool with other conventions, so only what both
   produce by design is compared (see `as_the_migrator_sees`).

drizzle-kit is not among node/'s packages, so the script below turns the generated Drizzle
tables into DDL itself; only the SQL syntax is its own. Every name (`<table>_<column>_unique`,
`<table>_<column>_<target>_<column>_fk`, the index names), type (`getSQLType()`), default and
foreign-key action is read from drizzle-orm's table config, which is what drizzle-kit reads,
and anything the script does not render (checks, composite keys, partial or expression
indexes, ...) makes it throw rather than be left out.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from platform_db.models import PLATFORM_TABLES
from platform_db.trees import PLATFORM
from service_kit.migrate import upgrade
from tests.compat.helpers import BETTER_AUTH_VERSION, NODE_MISSING
from tests.npm import node_missing
from tests.pg import create_database, drop_database, plain_url
from tests.platform_db.migration_helpers import AUTH_TABLES, REFERENCE_SQL

NODE_TIMEOUT = 120.0

# Run as `node reference.mjs drizzle|migrate <schema.mjs>` from a folder whose node_modules is
# node/node_modules. Prints one JSON object.
SCRIPT = r"""
import { writeFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";

import { drizzleAdapter } from "@better-auth/drizzle-adapter/relations-v2";
import { getMigrations } from "better-auth/db/migration";
import { bearer } from "better-auth/plugins";
import { getTableColumns, is, SQL } from "drizzle-orm";
import { getTableConfig, PgDialect, PgTable } from "drizzle-orm/pg-core";
import pg from "pg";

const [mode, schemaPath] = process.argv.slice(2);
// What shapes the tables in node/server.mjs's configuration (bearer adds no table), and the
// same with its database rate limits, which add the rateLimit model.
const tableOptions = { emailAndPassword: { enabled: true }, plugins: [bearer()] };
const withRateLimits = { ...tableOptions, rateLimit: { enabled: true, storage: "database" } };

const quote = (name) => `"${name.replaceAll('"', '""')}"`;
const list = (columns) => columns.map((column) => quote(column.name)).join(", ");
const dialect = new PgDialect();
const unsupported = (what) => {
  throw new Error(`the DDL renderer does not handle ${what}`);
};

function defaultSql(column) {
  const value = column.default;
  if (value === undefined) return undefined;
  if (is(value, SQL)) return dialect.sqlToQuery(value).sql;
  if (typeof value === "string") return `'${value.replaceAll("'", "''")}'`;
  if (typeof value === "boolean" || typeof value === "number") return String(value);
  return unsupported(`the default of ${column.name}: ${JSON.stringify(value)}`);
}

// The statements drizzle-kit writes for these tables: CREATE TABLE with inline primary keys,
// defaults, NOT NULL and named unique constraints; then the foreign keys; then the indexes.
function toDdl(module) {
  const creates = [];
  const foreignKeys = [];
  const indexes = [];
  for (const table of Object.values(module).filter((value) => is(value, PgTable))) {
    const config = getTableConfig(table);
    if (config.schema) unsupported(`the schema of ${config.name}`);
    if (config.checks.length || config.primaryKeys.length) unsupported(`keys of ${config.name}`);
    if (config.policies.length || config.enableRLS) unsupported(`policies on ${config.name}`);
    const lines = config.columns.map((column) => {
      if (column.generated || column.generatedIdentity) unsupported(`generated ${column.name}`);
      const defaultValue = defaultSql(column);
      return [
        quote(column.name),
        column.getSQLType(),
        column.primary ? "PRIMARY KEY" : "",
        defaultValue === undefined ? "" : `DEFAULT ${defaultValue}`,
        column.notNull ? "NOT NULL" : "",
      ]
        .filter(Boolean)
        .join(" ");
    });
    for (const column of config.columns.filter((column) => column.isUnique)) {
      const nulls = column.uniqueType === "not distinct" ? " NULLS NOT DISTINCT" : "";
      lines.push(`CONSTRAINT ${quote(column.uniqueName)} UNIQUE${nulls}(${quote(column.name)})`);
    }
    for (const unique of config.uniqueConstraints) {
      const nulls = unique.nullsNotDistinct ? " NULLS NOT DISTINCT" : "";
      lines.push(`CONSTRAINT ${quote(unique.getName())} UNIQUE${nulls}(${list(unique.columns)})`);
    }
    creates.push(`CREATE TABLE ${quote(config.name)} (\n  ${lines.join(",\n  ")}\n)`);
    for (const foreignKey of config.foreignKeys) {
      const { columns, foreignColumns, foreignTable } = foreignKey.reference();
      const target = getTableConfig(foreignTable);
      foreignKeys.push(
        `ALTER TABLE ${quote(config.name)} ADD CONSTRAINT ${quote(foreignKey.getName())} ` +
          `FOREIGN KEY (${list(columns)}) REFERENCES ` +
          `${quote(target.schema ?? "public")}.${quote(target.name)}(${list(foreignColumns)}) ` +
          `ON DELETE ${foreignKey.onDelete} ON UPDATE ${foreignKey.onUpdate}`,
      );
    }
    for (const index of config.indexes) {
      const { name, columns, unique, method, where, concurrently, only } = index.config;
      if (where || concurrently || only || Object.keys(index.config.with ?? {}).length)
        unsupported(`the options of index ${name}`);
      for (const column of columns) {
        if (is(column, SQL)) unsupported(`the expression in index ${name}`);
        const { order, nulls, opClass } = column.indexConfig;
        if (order !== "asc" || nulls !== "last" || opClass) unsupported(`the order of ${name}`);
      }
      const kind = unique ? "UNIQUE INDEX" : "INDEX";
      indexes.push(
        `CREATE ${kind} ${quote(name)} ON ${quote(config.name)} USING ${method} (${list(columns)})`,
      );
    }
  }
  return [...creates, ...foreignKeys, ...indexes];
}

// better-auth's Drizzle schema generator, for Postgres with snake_case columns. Its module also
// defines relations with drizzle-orm 1.x's `defineRelationsPart`, which the pinned 0.x lacks;
// relations are no DDL, so a stand-in takes its place.
async function generate(tables, file) {
  const adapter = drizzleAdapter({}, { provider: "pg", camelCase: false });
  const options = { ...tables, database: adapter };
  const { code } = await adapter(options).createSchema(options, "auth-schema.ts");
  const relationsImport = 'import { defineRelationsPart } from "drizzle-orm";\n';
  if (!code.startsWith(relationsImport)) throw new Error(`unexpected generator output:\n${code}`);
  const module = code.replace(relationsImport, "const defineRelationsPart = () => ({});\n");
  await writeFile(file, module);
  return { code, ddl: toDdl(await import(pathToFileURL(file).href)) };
}

async function drizzle() {
  const plain = await generate(tableOptions, "auth-schema.mjs");
  const limited = await generate(withRateLimits, "auth-schema-rate-limits.mjs");
  const ours = await import(pathToFileURL(schemaPath).href);
  return {
    code: plain.code,
    generator: plain.ddl,
    codeWithRateLimits: limited.code,
    generatorWithRateLimits: limited.ddl,
    schemaMjs: toDdl(ours),
  };
}

// better-auth's own migrator on DATABASE_URL, each field named as schema.mjs names its column.
// With RATE_LIMITS=1, as configured with database rate limits (the rateLimit model's table and
// field names are options of `rateLimit`).
async function migrate() {
  const rateLimits = process.env.RATE_LIMITS === "1";
  const models = {};
  for (const [model, table] of Object.entries(await import(pathToFileURL(schemaPath).href))) {
    if (!is(table, PgTable)) continue;
    const renamed = Object.entries(getTableColumns(table)).filter(([key, c]) => key !== c.name);
    const fields = Object.fromEntries(renamed.map(([key, c]) => [key, c.name]));
    if (model !== "rateLimit") models[model] = { fields };
    else if (rateLimits) {
      const modelName = getTableConfig(table).name;
      models[model] = { ...withRateLimits.rateLimit, modelName, fields };
    }
  }
  const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 1 });
  try {
    const tables = rateLimits ? withRateLimits : tableOptions;
    const options = { ...tables, ...models, database: pool, telemetry: { enabled: false } };
    const migrations = await getMigrations(options);
    const sql = await migrations.compileMigrations();
    await migrations.runMigrations();
    return { sql, models };
  } finally {
    await pool.end();
  }
}

const result = mode === "drizzle" ? await drizzle() : await migrate();
process.stdout.write(JSON.stringify(result));
"""


# --------------------------------------------------------------------------------------
# What Postgres holds, read from pg_catalog.
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    position: int
    type: str
    not_null: bool
    default: str | None
    identity: str
    generated: str


@dataclass(frozen=True)
class Structure:
    relations: dict[str, str]  # name -> relkind ("r": a table); indexes are below
    columns: dict[tuple[str, str], Column]  # (table, column) -> its attributes
    # (table, name) -> pg_get_constraintdef, which holds no name: "PRIMARY KEY (id)",
    # "UNIQUE (email)", "FOREIGN KEY (user_id) REFERENCES "user"(id) ON DELETE CASCADE"
    constraints: dict[tuple[str, str], str]
    # (table, name) -> pg_get_indexdef without the name, for each index backing no
    # constraint: "CREATE INDEX ON public.session USING btree (user_id)"
    indexes: dict[tuple[str, str], str]


RELATIONS = """
SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind NOT IN ('i', 'I')
"""
COLUMNS = """
SELECT c.relname, a.attname, a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
"""
# Not-null constraints (in pg_constraint since Postgres 18) are the columns' nullability.
CONSTRAINTS = """
SELECT c.relname, con.conname, pg_get_constraintdef(con.oid)
FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND con.contype <> 'n'
"""
INDEXES = """
SELECT t.relname, i.relname,
       replace(pg_get_indexdef(i.oid), ' INDEX ' || quote_ident(i.relname) || ' ON ', ' INDEX ON ')
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'public'
  AND NOT EXISTS (SELECT FROM pg_constraint con WHERE con.conindid = i.oid AND con.conrelid = t.oid)
"""


async def describe(url: str) -> Structure:
    conn = await asyncpg.connect(plain_url(url))
    try:
        relations = {str(row[0]): str(row[1]) for row in await conn.fetch(RELATIONS)}
        columns = {
            (row[0], row[1]): Column(row[2], row[3], row[4], row[5], row[6], row[7])
            for row in await conn.fetch(COLUMNS)
        }
        constraints = {(row[0], row[1]): str(row[2]) for row in await conn.fetch(CONSTRAINTS)}
        indexes = {(row[0], row[1]): str(row[2]) for row in await conn.fetch(INDEXES)}
    finally:
        await conn.close()
    return Structure(relations, columns, constraints, indexes)


def only(structure: Structure, tables: Iterable[str]) -> Structure:
    """The part of `structure` that belongs to `tables`."""
    keep = set(tables)
    return Structure(
        {name: kind for name, kind in structure.relations.items() if name in keep},
        {key: value for key, value in structure.columns.items() if key[0] in keep},
        {key: value for key, value in structure.constraints.items() if key[0] in keep},
        {key: value for key, value in structure.indexes.items() if key[0] in keep},
    )


async def structure_of(admin_url: str, statements: Iterable[str]) -> Structure:
    """The structure of a new database built by these statements (dropped afterwards)."""
    url = await create_database(admin_url, prefix="ref")
    try:
        conn = await asyncpg.connect(plain_url(url))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()
        return await describe(url)
    finally:
        await drop_database(admin_url, url)


# --------------------------------------------------------------------------------------
# Comparing, one line per fact.
# --------------------------------------------------------------------------------------
def column_fact(table: str, name: str, col: Column, type_: str, default: str | None) -> str:
    null = "NOT NULL" if col.not_null else "NULL"
    fact = f"column {table}.{name}: #{col.position} {type_} {null} DEFAULT {default}"
    if col.identity or col.generated:
        fact += f" identity={col.identity!r} generated={col.generated!r}"
    return fact


def facts(structure: Structure) -> list[str]:
    """Everything in the structure, names included."""
    lines = [f"relation {name}: relkind {kind}" for name, kind in structure.relations.items()]
    lines += [
        column_fact(table, name, col, col.type, col.default)
        for (table, name), col in structure.columns.items()
    ]
    lines += [f"constraint {t}.{name}: {d}" for (t, name), d in structure.constraints.items()]
    lines += [f"index {t}.{name}: {d}" for (t, name), d in structure.indexes.items()]
    return lines


# How better-auth's migrator differs by design from its Drizzle generator, and so from the
# DDL drizzle-kit writes for it (better-auth/dist/db/get-migration.mjs against the generator):
# - types: a date field is `timestamptz` for the migrator, `timestamp(...)` (without time
#   zone) in the generated Drizzle schema;
MIGRATOR_TYPES = {"timestamp with time zone": "timestamp without time zone"}
# - defaults: a date field defaulting to "now" gets DEFAULT CURRENT_TIMESTAMP from the
#   migrator, `.defaultNow()` (DEFAULT now()) from the generator: the same value in Postgres.
#   The migrator writes no other default when it creates a table (a static default only when
#   it adds a column to an existing table; better-auth supplies the value on insert anyway),
#   so the fixture's other defaults (email_verified's false) are not compared here;
MIGRATOR_DEFAULTS = {"CURRENT_TIMESTAMP": "now()"}
COMPARED_DEFAULT = "now()"
# - names: the migrator leaves unique and foreign-key constraints to Postgres's default names
#   (user_email_key, session_user_id_fkey) where drizzle-orm names them (user_email_unique,
#   session_user_id_user_id_fk), and names a field's index after its column
#   (session_user_id_idx) where the generator uses the field's key (session_userId_idx). Both
#   declare the primary keys inline, so Postgres names those (user_pkey) on both sides: only
#   those names, and the table and column names, are compared here.


def as_the_migrator_sees(structure: Structure, *, migrated: bool) -> list[str]:
    """The facts better-auth's migrator and the Drizzle DDL share by design; `migrated` for
    the migrator's tables, whose types and defaults are mapped to the Drizzle ones."""
    lines = [f"relation {name}: relkind {kind}" for name, kind in structure.relations.items()]
    for (table, name), col in structure.columns.items():
        type_, default = col.type, col.default
        if migrated:
            type_ = MIGRATOR_TYPES.get(type_, type_)
            default = MIGRATOR_DEFAULTS.get(default, default) if default else None
        shown = default if default == COMPARED_DEFAULT else None
        lines.append(column_fact(table, name, col, type_, shown))
    for (table, name), definition in structure.constraints.items():
        shown_name = name if definition.startswith("PRIMARY KEY") else "(name not compared)"
        lines.append(f"constraint {table}.{shown_name}: {definition}")
    lines += [f"index {t}.(name not compared): {d}" for (t, _), d in structure.indexes.items()]
    return lines


def assert_same(
    expected: list[str], produced: list[str], expected_is: str, produced_by: str, details: str
) -> None:
    """The same facts in both; else each difference, then `details`."""
    only_produced = sorted((Counter(produced) - Counter(expected)).elements())
    only_expected = sorted((Counter(expected) - Counter(produced)).elements())
    message = [f"{expected_is} differs from {produced_by}:"]
    message += [f"  only in better-auth's: {line}" for line in only_produced]
    message += [f"  only in {expected_is}: {line}" for line in only_expected]
    if only_produced or only_expected:
        pytest.fail("\n".join([*message, details]), pytrace=False)


# --------------------------------------------------------------------------------------
# Running better-auth.
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node_dir(request: pytest.FixtureRequest) -> Path:
    """node/ with its locked packages installed; without Node the tests fail, never skip."""
    if node_missing():
        pytest.fail(NODE_MISSING, pytrace=False)
    project: Path = request.getfixturevalue("node_project")
    installed = json.loads((project / "node_modules/better-auth/package.json").read_text())
    assert installed["version"] == BETTER_AUTH_VERSION, installed["version"]
    return project


@pytest.fixture(scope="module")
def workdir(node_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the script and what it writes, resolving packages from node/."""
    folder = tmp_path_factory.mktemp("better-auth-reference")
    (folder / "node_modules").symlink_to(node_dir / "node_modules", target_is_directory=True)
    (folder / "reference.mjs").write_text(SCRIPT)
    return folder


async def run_script(workdir: Path, node_dir: Path, mode: str, **env: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        "node",
        "reference.mjs",
        mode,
        str(node_dir / "schema.mjs"),
        cwd=workdir,
        env={**os.environ, "BETTER_AUTH_TELEMETRY": "0", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=NODE_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        pytest.fail(f"reference.mjs {mode} failed ({process.returncode}):\n{stderr.decode()}")
    result: dict[str, Any] = json.loads(stdout)
    return result


@pytest.fixture(scope="module")
async def fixture_structure(admin_url: str) -> Structure:
    """The database tests/fixtures/betterauth_schema.sql builds."""
    return await structure_of(admin_url, [REFERENCE_SQL.read_text()])


@pytest.fixture(scope="module")
async def generated(workdir: Path, node_dir: Path) -> dict[str, Any]:
    """better-auth's Drizzle schema module (`code`), the DDL of its tables (`generator`) and
    of node/schema.mjs's (`schemaMjs`)."""
    return await run_script(workdir, node_dir, "drizzle")


# --------------------------------------------------------------------------------------
# The tests.
# --------------------------------------------------------------------------------------
async def test_fixture_is_better_auths_drizzle_schema_as_drizzle_kit_ddl(
    admin_url: str, fixture_structure: Structure, generated: dict[str, Any]
) -> None:
    assert fixture_structure.relations == dict.fromkeys(AUTH_TABLES, "r")
    produced = await structure_of(admin_url, generated["generator"])
    assert_same(
        facts(fixture_structure),
        facts(produced),
        "the fixture",
        "the DDL of better-auth's Drizzle schema",
        "better-auth generated this Drizzle schema:\n" + generated["code"],
    )


async def test_schema_mjs_is_better_auths_drizzle_schema(
    admin_url: str, generated: dict[str, Any]
) -> None:
    ours = await structure_of(admin_url, generated["schemaMjs"])
    produced = await structure_of(admin_url, generated["generatorWithRateLimits"])
    assert_same(
        facts(ours),
        facts(produced),
        "node/schema.mjs",
        "better-auth's Drizzle schema (with database rate limits)",
        "better-auth generated this Drizzle schema:\n" + generated["codeWithRateLimits"],
    )


async def test_platform_tables_are_better_auths_with_database_rate_limits(
    admin_url: str, empty_db: str, generated: dict[str, Any]
) -> None:
    """Our migrations build what better-auth's Drizzle schema is with
    `rateLimit.storage: "database"`: its four tables and `rate_limit`, names included."""
    await upgrade(PLATFORM, empty_db)
    ours = only(await describe(empty_db), PLATFORM_TABLES)
    produced = await structure_of(admin_url, generated["generatorWithRateLimits"])
    assert set(produced.relations) == PLATFORM_TABLES
    assert_same(
        facts(ours),
        facts(produced),
        "the platform's migrations",
        "better-auth's Drizzle schema (with database rate limits)",
        "better-auth generated this Drizzle schema:\n" + generated["codeWithRateLimits"],
    )


async def test_rate_limit_table_agrees_with_better_auths_migrator(
    admin_url: str, empty_db: str, workdir: Path, node_dir: Path
) -> None:
    """better-auth's migrator, with database rate limits and our names, makes `rate_limit` as
    our migration does (compared as `as_the_migrator_sees` compares)."""
    result = await run_script(
        workdir, node_dir, "migrate", DATABASE_URL=plain_url(empty_db), RATE_LIMITS="1"
    )
    migrated = only(await describe(empty_db), {"rate_limit"})
    assert migrated.relations == {"rate_limit": "r"}, result["sql"]
    ours_url = await create_database(admin_url, prefix="ref")
    try:
        await upgrade(PLATFORM, ours_url)
        ours = only(await describe(ours_url), {"rate_limit"})
    finally:
        await drop_database(admin_url, ours_url)
    assert_same(
        as_the_migrator_sees(ours, migrated=False),
        as_the_migrator_sees(migrated, migrated=True),
        "the platform's rate_limit",
        "the rate_limit table better-auth's migrator creates",
        "better-auth's migrator ran:\n" + result["sql"],
    )


async def test_fixture_agrees_with_the_tables_better_auths_migrator_creates(
    empty_db: str, fixture_structure: Structure, workdir: Path, node_dir: Path
) -> None:
    result = await run_script(workdir, node_dir, "migrate", DATABASE_URL=plain_url(empty_db))
    migrated = await describe(empty_db)
    assert_same(
        as_the_migrator_sees(fixture_structure, migrated=False),
        as_the_migrator_sees(migrated, migrated=True),
        "the fixture",
        "the tables better-auth's migrator creates (its timestamptz and CURRENT_TIMESTAMP shown as "
        "timestamp and now(), as_the_migrator_sees tells why)",
        "better-auth's migrator ran:\n" + result["sql"],
    )
