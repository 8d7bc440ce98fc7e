"""Each tree's applied history, so that code can tell a database *ahead* of it from an unrelated.

Alembic's version table holds only the current heads, so code that does not know a newer
revision cannot tell "later" from "unrelated" by itself. Every upgrade, downgrade and stamp
therefore also appends, in the same transaction as the version table, one row per step to
`<version_table>_history`: the revision and the parents its migration file declares. The
union of those rows is the revision graph as every release that ever migrated the database
knew it. Older code walks that graph down from the database's heads: if it meets its own
head, the database is ahead of it (and, with expand/contract migrations, still serves it).

Databases migrated before the history existed are back-filled, from the migrations of the
release that first writes it, when that release next migrates, stamps or downgrades them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    MetaData,
    Table,
    Text,
    exists,
    func,
    insert,
    literal,
    select,
    text,
    values,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.schema import CreateTable


class Versioned(Protocol):
    """What the history needs of a tree (service_kit.migrate.MigrationTree has it)."""

    @property
    def schema(self) -> str: ...

    @property
    def version_table(self) -> str: ...


Graph = Mapping[str, tuple[str, ...]]
# Alembic's on_version_apply: (ctx, step, heads, run_args), passed by keyword.
VersionApplied = Callable[
    [MigrationContext, MigrationInfo, Collection[Any], Mapping[str, Any]], None
]


class Relation(enum.Enum):
    AT_HEAD = "at head"
    AHEAD = "ahead"
    BEHIND = "behind"
    UNRELATED = "unrelated"


@dataclass(frozen=True)
class TreeStatus:
    """Where the database's copy of one tree stands against the code's head."""

    tree: str
    found: tuple[str, ...]
    expected: tuple[str, ...]
    relation: Relation
    ahead: tuple[str, ...] = ()  # revisions the database has beyond `expected`

    @property
    def satisfied(self) -> bool:
        """The code can serve: the database is at its head or at a later revision."""
        return self.relation in (Relation.AT_HEAD, Relation.AHEAD)

    def describe(self) -> str:
        at = ", ".join(self.found) or "no revision (empty)"
        head = ", ".join(self.expected)
        if self.relation is Relation.AT_HEAD:
            return f"the {self.tree} tree is at {at} (head)"
        if self.relation is Relation.AHEAD:
            return (
                f"the {self.tree} tree is at {at}, ahead of this release's head {head} "
                f"by {len(self.ahead)} revision(s) that a newer release applied"
            )
        if self.relation is Relation.BEHIND:
            return f"the {self.tree} tree is at {at}, behind this release's head {head}"
        return (
            f"the {self.tree} tree is at {at}, which is neither this release's head {head} "
            f"nor recorded as descending from it: a revision from another branch or another "
            f"installation of {self.tree}"
        )


def parents(down_revision: str | Iterable[str] | None) -> tuple[str, ...]:
    if down_revision is None:
        return ()
    if isinstance(down_revision, str):
        return (down_revision,)
    return tuple(down_revision)


def script_graph(script: ScriptDirectory) -> dict[str, tuple[str, ...]]:
    """revision -> parents, as the installed migration files declare them."""
    return {rev.revision: parents(rev.down_revision) for rev in script.walk_revisions()}


def _ancestry(graph: Graph, heads: Iterable[str]) -> set[str]:
    """`heads` and everything below them in `graph`."""
    seen: set[str] = set()
    stack = list(heads)
    while stack:
        rev = stack.pop()
        if rev in seen:
            continue
        seen.add(rev)
        stack.extend(graph.get(rev, ()))
    return seen


def classify(
    found: tuple[str, ...], expected: tuple[str, ...], known: Graph, recorded: Graph
) -> tuple[Relation, tuple[str, ...]]:
    """How `found` (the database's heads) relates to `expected` (the code's heads).

    `known` is the code's own graph, `recorded` the database's history. Ahead: every head
    of the code lies below the database's heads. Behind: the database's heads are all
    revisions the code knows, below its heads. Anything else is unrelated.
    """
    if found == expected:
        return Relation.AT_HEAD, ()
    graph = {**recorded, **known}  # the installed files win for the revisions they declare
    below_found = _ancestry(graph, found)
    if found and all(head in below_found for head in expected):
        ahead = below_found - _ancestry(graph, expected)
        return Relation.AHEAD, tuple(sorted(ahead))
    below_expected = _ancestry(known, expected)
    if all(rev in below_expected for rev in found):
        return Relation.BEHIND, ()
    return Relation.UNRELATED, ()


# --------------------------------------------------------------------------------------
# The table and the rows the runner writes.
# --------------------------------------------------------------------------------------
def history_table(tree: Versioned) -> Table:
    return Table(
        f"{tree.version_table}_history",
        MetaData(),
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("revision", Text, nullable=False),
        Column("down_revisions", Text, nullable=False),  # space-separated, as declared
        Column("operation", Text, nullable=False),  # upgrade, downgrade, stamp, backfill
        Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        schema=tree.schema,
    )


def _rows(graph: Graph, revisions: Iterable[str]) -> list[tuple[str, str]]:
    return [(rev, " ".join(graph.get(rev, ()))) for rev in sorted(revisions)]


def _insert(table: Table, rows: list[tuple[str, str]], operation: str, only_if_empty: bool) -> Any:
    data = values(Column("revision", Text), Column("down_revisions", Text), name="steps").data(rows)
    chosen = select(data.c.revision, data.c.down_revisions, literal(operation, Text))
    if only_if_empty:
        chosen = chosen.where(~exists(select(table.c.id)))
    return insert(table).from_select(["revision", "down_revisions", "operation"], chosen)


def start(ctx: MigrationContext, tree: Versioned, graph: Graph) -> None:
    """Before a run's first step, in its transaction: create the history if need be, and
    back-fill it from the database's current heads when it holds nothing yet. `graph` is
    the running release's (`script_graph`)."""
    table = history_table(tree)
    ctx.execute(CreateTable(table, if_not_exists=True))
    current = [rev for rev in ctx.get_current_heads() if rev in graph]
    if current:
        ctx.execute(_insert(table, _rows(graph, _ancestry(graph, current)), "backfill", True))


def recorder(tree: Versioned, graph: Graph) -> VersionApplied:
    """Alembic's `on_version_apply` callback: one row per step, in the step's transaction."""
    table = history_table(tree)

    def record(
        ctx: MigrationContext,
        step: MigrationInfo,
        heads: Collection[Any],
        run_args: Mapping[str, Any],
    ) -> None:
        if step.is_stamp:
            # A stamp jumps: record everything below where it lands (or where it left).
            landed = step.destination_revision_ids or step.source_revision_ids
            revisions: Iterable[str] = _ancestry(graph, landed)
            operation = "stamp"
        else:
            # The migration's own revision, on the way up or down.
            revisions = step.up_revision_ids
            operation = "upgrade" if step.is_upgrade else "downgrade"
        rows = _rows(graph, revisions)
        if rows:
            ctx.execute(_insert(table, rows, operation, False))

    return record


# --------------------------------------------------------------------------------------
# Reading it.
# --------------------------------------------------------------------------------------
async def recorded_graph(conn: AsyncConnection, tree: Versioned) -> dict[str, tuple[str, ...]]:
    """revision -> parents, as the database's history holds them (empty when it has none)."""
    table = history_table(tree)
    name = f'"{tree.schema}"."{table.name}"'
    if (await conn.execute(text("SELECT to_regclass(:name)"), {"name": name})).scalar() is None:
        return {}
    rows = await conn.execute(select(table.c.revision, table.c.down_revisions).order_by(table.c.id))
    # The latest row wins, should a revision id ever have been reused with other parents.
    return {rev: tuple(down.split()) for rev, down in rows}
