"""The migration runner shared by the platform's CLI, the services and the tests.

Each owner of the database (the platform, each service) has its own Alembic tree and
version table. All tables share `SQLModel.metadata` (so cross-schema foreign keys
resolve); each tree filters, on both the model and the reflected side, to what it owns,
so autogenerate for one owner can never create, alter or drop another owner's tables.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from alembic import command
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Connection, MetaData, Table, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service_kit import history
from service_kit.db import async_url, hears_notify
from service_kit.history import Relation, TreeStatus
from service_kit.types import UTCDateTime

log = logging.getLogger(__name__)

T = TypeVar("T")


class MigrationError(RuntimeError):
    """A migration command could not do what was asked; the message says what to do."""


@dataclass(frozen=True)
class MigrationTree:
    """One owner's Alembic tree."""

    name: str  # also the console command: "platform-db", "web", "trading"
    script_location: str  # "package:folder"
    models_module: str  # imported before Alembic runs, so the metadata is complete
    schema: str  # the Postgres schema the owner's tables live in
    version_table: str
    owned_tables: frozenset[str] | None = None  # None: every table in `schema`
    requires: tuple[MigrationTree, ...] = field(default=())
    create_schema: bool = False
    # The revision a database made by someone else's tooling already matches (better-auth's
    # schema for the platform): `stamp` with no revision records it, then migrates the rest.
    baseline: str | None = None
    # The tables the baseline holds (adoption requires them); None: every owned table.
    baseline_tables: frozenset[str] | None = None
    # (table, trigger) pairs the migrations create and autogenerate cannot see; `check`
    # verifies them, so a database stamped past them is not taken for complete.
    triggers: tuple[tuple[str, str], ...] = ()

    @property
    def lock_key(self) -> int:
        # The key's text is a contract: replicas of an older release (when this module was
        # platform_db.migrate) must still exclude new ones.
        digest = hashlib.sha256(f"platform_db.migrate:{self.name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    @property
    def metadata(self) -> MetaData:
        module = importlib.import_module(self.models_module)
        md: MetaData = module.metadata
        return md

    def owns(self, table: Table) -> bool:
        schema = table.schema or "public"
        if schema != self.schema:
            return False
        return self.owned_tables is None or table.name in self.owned_tables

    def config(self, connection: Connection | None = None, **attributes: Any) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", self.script_location)
        cfg.set_main_option("path_separator", "os")
        # Descriptive file names: 0002_add_todo_priority.py
        cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
        cfg.set_main_option("truncate_slug_length", "60")
        cfg.attributes["tree"] = self
        cfg.attributes["connection"] = connection
        cfg.attributes.update(attributes)
        return cfg

    def script(self) -> ScriptDirectory:
        return ScriptDirectory.from_config(self.config())

    def heads(self) -> tuple[str, ...]:
        return tuple(sorted(self.script().get_heads()))

    def graph(self) -> dict[str, tuple[str, ...]]:
        """revision -> parents, as this installation's migration files declare them."""
        return history.script_graph(self.script())


# Version tables of every tree, so that no tree's reflection ever looks at another's.
_VERSION_TABLE_RE = re.compile(r"(^|_)alembic_version(_history)?$")

# Seconds a migration's statement may wait for a table lock before the run is retried.
DDL_LOCK_TIMEOUT = 5.0
LOCK_NOT_AVAILABLE = "55P03"  # Postgres: lock_timeout expired


# --------------------------------------------------------------------------------------
# env.py: every tree's env.py is `run_env()`.
# --------------------------------------------------------------------------------------
def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations should not depend on our Python types: UTCDateTime is a plain timestamp.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def configure_context(
    context: EnvironmentContext,
    tree: MigrationTree,
    connection: Connection | None,
    **options: Any,
) -> None:
    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        if type_ == "schema":
            return (name or "public") == tree.schema
        if type_ == "table":
            if name is not None and _VERSION_TABLE_RE.search(name):
                return False
            return tree.owned_tables is None or name in tree.owned_tables
        return True

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        table = obj if type_ == "table" else getattr(obj, "table", None)
        if isinstance(table, Table):
            return tree.owns(table)
        return True

    context.configure(
        connection=connection,
        target_metadata=tree.metadata,
        version_table=tree.version_table,
        version_table_schema=tree.schema,
        include_schemas=True,
        include_name=include_name,
        include_object=include_object,
        compare_type=True,
        compare_server_default=True,
        render_item=_render_item,
        # One transaction for the whole run: a failed step leaves the previous revision.
        transaction_per_migration=False,
        **options,
    )


def run_env() -> None:
    """Body of every tree's env.py: online through the runner's connection, or offline
    (`lint`) into the buffer the runner gives."""
    from alembic import context

    env = cast(EnvironmentContext, context)
    cfg = context.config
    tree: MigrationTree = cfg.attributes["tree"]
    ddl_lock_timeout: float = cfg.attributes.get("ddl_lock_timeout", DDL_LOCK_TIMEOUT)
    graph = history.script_graph(context.script)
    record = history.recorder(tree, graph)
    if context.is_offline_mode():
        configure_context(
            env, tree, None, dialect_name="postgresql", literal_binds=True,
            transactional_ddl=True, output_buffer=cfg.attributes["output"],
            on_version_apply=record,
        )  # fmt: skip
    else:
        connection: Connection | None = cfg.attributes.get("connection")
        if connection is None:
            raise MigrationError(
                f"run migrations through the `{tree.name}` command, not the alembic command"
            )
        configure_context(env, tree, connection, on_version_apply=record)
    with context.begin_transaction():
        # A step waiting for a table's lock queues every query of the live services behind
        # it: give up after a bound, and the runner tries the whole run again.
        context.execute(f"SET LOCAL lock_timeout = '{int(ddl_lock_timeout * 1000)}ms'")
        history.start(env.get_context(), tree, graph)
        context.run_migrations()


# --------------------------------------------------------------------------------------
# Connections and the advisory lock.
# --------------------------------------------------------------------------------------
def _engine(url: str) -> AsyncEngine:
    return create_async_engine(async_url(url), poolclass=NullPool)


async def _run_alembic(
    engine: AsyncEngine,
    tree: MigrationTree,
    fn: Callable[[Config], T],
    *,
    retry_until: float | None = None,
    ddl_lock_timeout: float = DDL_LOCK_TIMEOUT,
) -> T:
    """Run a sync Alembic command on a fresh connection that has not begun a transaction.

    Alembic begins and commits its own transaction only when the connection is not
    already in one; anything executed on this connection first would autobegin one and
    Alembic's DDL would be rolled back at close. So the connection is used for nothing else.
    With `retry_until` (a monotonic deadline), a run that gave up waiting for a table's
    lock (rolled back whole) is tried again until then.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            async with engine.connect() as conn:

                def call(sync_conn: Connection) -> T:
                    return fn(tree.config(sync_conn, ddl_lock_timeout=ddl_lock_timeout))

                result = await conn.run_sync(call)
                if conn.in_transaction():
                    await conn.commit()
                return result
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE or retry_until is None:
                raise
            if time.monotonic() >= retry_until:
                raise MigrationError(
                    f"{tree.name}: a migration could not lock a table within "
                    f"{ddl_lock_timeout:g}s in {attempt} attempts: a long transaction holds "
                    f"it (see pg_locks). Nothing was applied; run `{tree.name} migrate` again."
                ) from None
            log.warning(
                "%s: a migration waited %gs for a table lock (attempt %d); rolled back, retrying",
                tree.name, ddl_lock_timeout, attempt,
            )  # fmt: skip
            await asyncio.sleep(min(0.5 * attempt, 5.0))


class _AdvisoryLock:
    """A session-level advisory lock held on its own connection for the whole upgrade."""

    def __init__(self, engine: AsyncEngine, tree: MigrationTree, timeout: float) -> None:
        self.engine, self.tree, self.timeout = engine, tree, timeout
        self._conn: AsyncConnection | None = None

    async def _require_session(self, conn: AsyncConnection) -> None:
        """A session-level lock through a transaction pooler would stay behind on whichever
        server connection ran it: refuse such a connection, before taking the lock."""

        async def notify(channel: str) -> None:
            async with self.engine.connect() as other:
                await other.execute(text("SELECT pg_notify(:c, '')"), {"c": channel})
                await other.commit()

        raw = await conn.get_raw_connection()
        try:
            kept = await hears_notify(raw.driver_connection, notify)
        except DBAPIError:  # e.g. a prepared statement clashing inside a pooler
            kept = False
        if not kept:
            raise MigrationError(
                f"{self.tree.name}: the database connection does not keep a session (a NOTIFY "
                "did not reach a LISTEN on it): it goes through a transaction pooler such as "
                "PgBouncer in transaction mode, and the migration lock needs a direct "
                "connection. Set DATABASE_DIRECT_URL to the database's direct URL."
            )

    async def __aenter__(self) -> AsyncConnection:
        conn = await self.engine.connect()
        deadline = time.monotonic() + self.timeout
        waited = False
        try:
            await self._require_session(conn)
            while True:
                got = (
                    await conn.execute(
                        text("SELECT pg_try_advisory_lock(:k)"), {"k": self.tree.lock_key}
                    )
                ).scalar_one()
                await conn.commit()  # session-level lock: it outlives this transaction
                if got:
                    break
                if not waited:
                    log.info(
                        "%s: another process is migrating; waiting for its lock", self.tree.name
                    )
                    waited = True
                if time.monotonic() > deadline:
                    raise MigrationError(
                        f"{self.tree.name}: another process held the migration lock for more "
                        f"than {self.timeout:.0f}s (MIGRATION_LOCK_TIMEOUT); is a migration stuck?"
                    )
                await asyncio.sleep(0.2)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    async def __aexit__(self, *exc: object) -> None:
        assert self._conn is not None
        try:
            await self._conn.execute(
                text("SELECT pg_advisory_unlock(:k)"), {"k": self.tree.lock_key}
            )
            await self._conn.commit()
        finally:
            await self._conn.close()


# --------------------------------------------------------------------------------------
# Commands.
# --------------------------------------------------------------------------------------
async def current_heads(conn: AsyncConnection, tree: MigrationTree) -> tuple[str, ...]:
    """The revisions recorded in the tree's version table (empty if it has none)."""

    def read(sync_conn: Connection) -> tuple[str, ...]:
        ctx = MigrationContext.configure(
            sync_conn,
            opts={"version_table": tree.version_table, "version_table_schema": tree.schema},
        )
        return tuple(sorted(ctx.get_current_heads()))

    return await conn.run_sync(read)


async def _on_own_connection(url: str, read: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            return await read(conn)
    finally:
        await engine.dispose()


async def current(tree: MigrationTree, url: str) -> tuple[str, ...]:
    return await _on_own_connection(url, lambda conn: current_heads(conn, tree))


async def status(
    conn: AsyncConnection,
    tree: MigrationTree,
    expected: tuple[str, ...] | None = None,
    known: history.Graph | None = None,
) -> TreeStatus:
    """Where the database's copy of `tree` stands against `expected` (default: its heads);
    `known` is the tree's graph (default: read from its files), given by callers that poll."""
    expected = tree.heads() if expected is None else expected
    found = await current_heads(conn, tree)
    if found == expected:
        return TreeStatus(tree.name, found, expected, Relation.AT_HEAD)
    recorded = await history.recorded_graph(conn, tree)
    graph = tree.graph() if known is None else known
    relation, ahead = history.classify(found, expected, graph, recorded)
    return TreeStatus(tree.name, found, expected, relation, ahead)


async def tree_status(tree: MigrationTree, url: str) -> TreeStatus:
    return await _on_own_connection(url, lambda conn: status(conn, tree))


async def wait_for_required(
    engine: AsyncEngine, tree: MigrationTree, wait_seconds: float, poll: float = 0.5
) -> None:
    """Wait, at most `wait_seconds` seconds, until every tree `tree` requires is at its head
    or ahead of it (a newer release of that tree migrated it)."""
    for required in tree.requires:
        expected, known = required.heads(), required.graph()
        deadline = time.monotonic() + wait_seconds
        announced = unreachable = False
        while True:
            try:
                async with engine.connect() as conn:
                    found = await status(conn, required, expected, known)
            except (OSError, DBAPIError) as exc:
                if not unreachable:
                    log.warning(
                        "%s: cannot reach the database (%s); waiting up to %.0fs for it",
                        tree.name, type(exc).__name__, wait_seconds,
                    )  # fmt: skip
                    unreachable = True
                # The database may still be starting: keep trying within the same bound.
                if time.monotonic() >= deadline:
                    raise MigrationError(
                        f"{tree.name}: cannot reach the database after {wait_seconds:.0f}s: "
                        f"{type(exc).__name__}"
                    ) from None
                await asyncio.sleep(poll)
                continue
            if found.satisfied:
                if found.relation is Relation.AHEAD:
                    log.info("%s: %s", tree.name, found.describe())
                break
            if not announced:
                log.warning(
                    "%s: waiting up to %.0fs for the %s tree to reach %s (%s)",
                    tree.name, wait_seconds, required.name, ", ".join(expected),
                    found.describe(),
                )  # fmt: skip
                announced = True
            if time.monotonic() >= deadline:
                hint = (
                    f"Run `{required.name} migrate` first"
                    if found.relation is Relation.BEHIND
                    else f"Install the release of {required.name} that made this database"
                )
                raise MigrationError(
                    f"{tree.name}: {found.describe()}. {hint} (waited {wait_seconds:.0f}s; "
                    f"PLATFORM_WAIT_TIMEOUT sets how long)."
                )
            await asyncio.sleep(poll)


async def _ensure_schema(conn: AsyncConnection, tree: MigrationTree) -> None:
    if tree.create_schema:
        await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{tree.schema}"'))
        await conn.commit()


async def upgrade(
    tree: MigrationTree,
    url: str,
    revision: str = "head",
    *,
    wait_timeout: float = 60.0,
    lock_timeout: float = 300.0,
    ddl_lock_timeout: float = DDL_LOCK_TIMEOUT,
) -> tuple[str, ...]:
    """Upgrade `tree` to `revision` under its advisory lock; return the heads afterwards.

    To "head" when the database is already ahead of this release (a newer one migrated
    it), there is nothing to do: the heads are returned as they are.
    """
    engine = _engine(url)
    try:
        await wait_for_required(engine, tree, wait_timeout)
        deadline = time.monotonic() + lock_timeout
        async with _AdvisoryLock(engine, tree, lock_timeout) as lock_conn:
            await _ensure_schema(lock_conn, tree)
            if revision == "head":
                found = await status(lock_conn, tree)
                await lock_conn.commit()
                if found.relation is Relation.AHEAD:
                    log.warning("%s: %s; nothing to migrate", tree.name, found.describe())
                    return found.found
                if found.relation is Relation.UNRELATED:
                    raise MigrationError(f"{tree.name}: {found.describe()}; not migrating")
            await _run_alembic(
                engine, tree, lambda cfg: command.upgrade(cfg, revision),
                retry_until=deadline, ddl_lock_timeout=ddl_lock_timeout,
            )  # fmt: skip
            async with engine.connect() as conn:
                return await current_heads(conn, tree)
    finally:
        await engine.dispose()


async def downgrade(
    tree: MigrationTree,
    url: str,
    revision: str,
    *,
    lock_timeout: float = 300.0,
    ddl_lock_timeout: float = DDL_LOCK_TIMEOUT,
) -> tuple[str, ...]:
    engine = _engine(url)
    try:
        deadline = time.monotonic() + lock_timeout
        async with _AdvisoryLock(engine, tree, lock_timeout):
            await _run_alembic(
                engine, tree, lambda cfg: command.downgrade(cfg, revision),
                retry_until=deadline, ddl_lock_timeout=ddl_lock_timeout,
            )  # fmt: skip
            async with engine.connect() as conn:
                return await current_heads(conn, tree)
    finally:
        await engine.dispose()


async def stamp(tree: MigrationTree, url: str, revision: str = "head") -> tuple[str, ...]:
    """Record `revision` without running it (to adopt a database made by better-auth's tools)."""
    engine = _engine(url)
    try:
        async with _AdvisoryLock(engine, tree, 300.0) as lock_conn:
            await _ensure_schema(lock_conn, tree)
            await _run_alembic(engine, tree, lambda cfg: command.stamp(cfg, revision))
            async with engine.connect() as conn:
                return await current_heads(conn, tree)
    finally:
        await engine.dispose()


async def adopt(tree: MigrationTree, url: str, *, lock_timeout: float = 300.0) -> tuple[str, ...]:
    """Take over a database whose tables another tool created: stamp the baseline, migrate on.

    The database must have every table of the baseline and no revision recorded yet.
    """
    if tree.baseline is None:
        raise MigrationError(f"{tree.name}: no baseline to adopt; give a revision to stamp")
    engine = _engine(url)
    try:
        async with _AdvisoryLock(engine, tree, lock_timeout) as conn:
            found = await current_heads(conn, tree)
            await conn.commit()
            if found:
                raise MigrationError(
                    f"{tree.name}: the database is already at {' '.join(found)}; "
                    f"run `{tree.name} migrate` instead"
                )
            names = sorted(tree.baseline_tables or tree.owned_tables or ())
            present = (
                (
                    await conn.execute(
                        text(
                            "SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = :schema AND table_name = ANY(:names)"
                        ),
                        {"schema": tree.schema, "names": names},
                    )
                )
                .scalars()
                .all()
            )
            await conn.commit()
            missing = sorted(set(names) - set(present))
            if missing:
                raise MigrationError(
                    f"{tree.name}: cannot adopt: table(s) {', '.join(missing)} do not exist. "
                    f"For an empty database run `{tree.name} migrate`."
                )
            baseline = tree.baseline
            await _run_alembic(engine, tree, lambda cfg: command.stamp(cfg, baseline))
            await _run_alembic(engine, tree, lambda cfg: command.upgrade(cfg, "head"))
            async with engine.connect() as check_conn:
                return await current_heads(check_conn, tree)
    finally:
        await engine.dispose()


async def missing_triggers(conn: AsyncConnection, tree: MigrationTree) -> list[str]:
    """The tree's triggers that are not in the database."""
    if not tree.triggers:
        return []
    rows = await conn.execute(
        text(
            "SELECT c.relname, t.tgname FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND NOT t.tgisinternal"
        ),
        {"schema": tree.schema},
    )
    present = {(r[0], r[1]) for r in rows}
    return [
        f"{table}.{trigger}" for table, trigger in tree.triggers if (table, trigger) not in present
    ]


def diff(tree: MigrationTree, sync_conn: Connection) -> list[Any]:
    """The operations autogenerate would emit for `tree` against this connection's database."""
    from alembic.autogenerate import compare_metadata

    env = EnvironmentContext(tree.config(sync_conn), tree.script())
    configure_context(env, tree, sync_conn)
    ctx = env.get_context()
    return list(compare_metadata(ctx, tree.metadata))


async def check(tree: MigrationTree, url: str) -> None:
    """Fail when the models, the migrations and the live database disagree.

    The database must be at the tree's head (so it is what the migrations build);
    then any difference between it and the models is a model change with no migration.
    """
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            found = await status(conn, tree)
            if found.relation is Relation.AHEAD:
                raise MigrationError(
                    f"{tree.name}: the database is ahead of these migrations: "
                    f"{found.describe()}. A newer release migrated it, so there is nothing "
                    f"this release can compare its models with; run `{tree.name} check` "
                    f"with the release at {', '.join(found.found)}"
                )
            if found.relation is not Relation.AT_HEAD:
                hint = f"; run `{tree.name} migrate`" if found.relation is Relation.BEHIND else ""
                raise MigrationError(f"{tree.name}: {found.describe()}{hint}")
            ops = await conn.run_sync(lambda c: diff(tree, c))
            absent = await missing_triggers(conn, tree)
            await conn.rollback()
        if absent:
            hint = (
                f"`{tree.name} stamp {tree.baseline}` then `{tree.name} migrate`"
                if tree.baseline
                else f"`{tree.name} downgrade` and `{tree.name} migrate`"
            )
            raise MigrationError(
                f"{tree.name}: the database is stamped at head but lacks trigger(s) "
                f"{', '.join(absent)} that the migrations create (was it stamped past them?). "
                f"Run {hint}."
            )
        if ops:
            lines = "\n".join(f"  {op!r}" for op in ops)
            raise MigrationError(
                f"{tree.name}: the models differ from the migrations:\n{lines}\n"
                f"Run `{tree.name} revision -m '<what changed>'` to generate a migration."
            )
    finally:
        await engine.dispose()


def _next_rev_id(tree: MigrationTree) -> str:
    numbers = [
        int(m.group(1))
        for rev in tree.script().walk_revisions()
        if (m := re.match(r"^(\d+)$", rev.revision))
    ]
    return f"{max(numbers, default=0) + 1:04d}"


async def revision(
    tree: MigrationTree, url: str | None, message: str, *, autogenerate: bool = True
) -> Script | None:
    """Write a new migration; with autogenerate, against a database at the current head."""
    rev_id = _next_rev_id(tree)
    if not autogenerate:
        result = command.revision(tree.config(), message=message, rev_id=rev_id)
        return result if isinstance(result, Script) else None
    if url is None:
        raise MigrationError("autogenerate needs DATABASE_URL (a database at the current head)")
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            await _ensure_schema(conn, tree)
            found = await status(conn, tree)
        if found.relation is not Relation.AT_HEAD:
            raise MigrationError(
                f"{tree.name}: autogenerate needs the database at this release's head, and "
                f"{found.describe()}"
                + (f"; run `{tree.name} migrate`" if found.relation is Relation.BEHIND else "")
            )
        result = await _run_alembic(
            engine,
            tree,
            lambda cfg: command.revision(cfg, message=message, autogenerate=True, rev_id=rev_id),
        )
        return result if isinstance(result, Script) else None
    finally:
        await engine.dispose()
