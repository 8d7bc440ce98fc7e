"""`lint`: the SQL each migration renders in Alembic's offline mode, checked with squawk.

A release's migrations run while the release before it still serves (expand/contract), so a
migration must not remove or rename what that release reads, nor hold a lock that stalls it.
squawk (PyPI `squawk-cli`) knows which Postgres statements do. A destructive step is allowed
only in a migration marked as a *contract step*, shipped one release after the code stopped
using what it removes:

    # A contract step: the release before this one no longer reads todos.title.
    contract = "todos.title: unused since web 0004 (the release that reads todos.name)"
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.script import Script

from service_kit.migrate import MigrationError, MigrationTree

# The oldest Postgres we run on: squawk judges what is cheap by version (a constant DEFAULT
# is instant from 11 on). Compose, the embedded server and CI run 18.
PG_VERSION = "15.0"

# Opt-in rules we turn on. The runner sets a lock_timeout in every migration's transaction,
# which this rule verifies in the rendered SQL (squawk 2.70 turns require-statement-timeout
# on with it; that one is excluded below).
INCLUDED = ("require-lock-timeout",)

# Default rules we turn off, and why.
EXCLUDED = (
    # A data back-fill may rightly run for minutes; a statement_timeout would abort it in
    # the middle of a deploy. What protects the live services is the lock timeout above.
    "require-statement-timeout",
    # better-auth's tables and every service's `_at` columns are `timestamp` holding UTC
    # (the kit's UTCDateTime), as better-auth creates them; a second convention in the same
    # database would be worse, and changing a column's type is itself a contract step.
    "prefer-timestamptz",
    # They guard keys and counters that may outgrow 2**31. Our keys are text ids, and a
    # small-range field (a todo's priority) is honestly an integer, as SQLModel maps `int`.
    "prefer-bigint-over-int",
    "prefer-bigint-over-smallint",
)

# Destructive for the release before, or blocking while it serves: allowed in a contract
# step only.
CONTRACT_ONLY = (
    "ban-drop-column",
    "ban-drop-table",
    "renaming-column",
    "renaming-table",
    "changing-column-type",
    "adding-required-field",  # NOT NULL without a default: the release before cannot insert
    "adding-not-nullable-field",  # SET NOT NULL: a full scan under an exclusive lock
    "ban-drop-not-null",
    "require-concurrent-index-creation",  # a blocking index build
    "require-concurrent-index-deletion",
)

_RUNNING = re.compile(r"^-- Running upgrade (.*) -> (\S+)\s*$", re.M)


@dataclass(frozen=True)
class RenderedMigration:
    revision: str
    name: str  # the migration file's stem: 0002_notify_session_changes
    sql: str
    contract: str | None  # why the contract step is safe, when it is one


def contract_reason(tree: MigrationTree, script: Script) -> str | None:
    """The migration's `contract = "..."`, if it has one (and it must say something)."""
    reason = getattr(script.module, "contract", None)
    if reason is None:
        return None
    if not isinstance(reason, str) or not reason.strip():
        raise MigrationError(
            f"{tree.name}: migration {script.revision} sets `contract` but not to a sentence: say "
            "what it removes and since which release the code no longer uses it"
        )
    return reason.strip()


def render(tree: MigrationTree) -> list[RenderedMigration]:
    """Every migration's upgrade as the runner would send it, from base to head.

    One offline run from base renders all of them; each file then gets the run's opening
    (BEGIN, the lock timeout, the history table) and its own steps. Alembic's own version
    table is not a migration's work, so its CREATE is left out.
    """
    buffer = io.StringIO()
    try:
        command.upgrade(tree.config(None, output=buffer), "head", sql=True)
    except Exception as exc:
        raise MigrationError(
            f"{tree.name}: the migrations do not render as SQL ({type(exc).__name__}: {exc}). "
            "A migration must work offline: no queries through op.get_bind(); back-fill "
            "with op.execute(...)"
        ) from None
    sql = buffer.getvalue()
    version_table = re.compile(
        rf"^CREATE TABLE {re.escape(tree.schema)}\.{re.escape(tree.version_table)} \(.*?\);\n",
        re.M | re.S,
    )
    marks = list(_RUNNING.finditer(sql))
    if not marks:
        return []
    opening = version_table.sub("", sql[: marks[0].start()])
    script = tree.script()
    rendered = []
    for i, mark in enumerate(marks):
        body = sql[mark.start() : marks[i + 1].start() if i + 1 < len(marks) else None]
        if not body.rstrip().endswith("COMMIT;"):
            body += "\nCOMMIT;\n"
        migration = script.get_revision(mark.group(2))
        assert migration is not None
        rendered.append(
            RenderedMigration(
                revision=migration.revision,
                name=Path(migration.path).stem,
                sql=opening + body,
                contract=contract_reason(tree, migration),
            )
        )
    return rendered


def squawk_command() -> str:
    found = shutil.which("squawk", path=str(Path(sys.executable).parent)) or shutil.which("squawk")
    if found is None:
        raise MigrationError(
            "squawk is not installed: `lint` runs squawk (PyPI `squawk-cli`), which comes with "
            "the workspace's dev dependencies (`uv sync`)"
        )
    return found


def squawk_args(contract: bool) -> list[str]:
    excluded = [*EXCLUDED, *(CONTRACT_ONLY if contract else ())]
    return [
        f"--pg-version={PG_VERSION}",
        f"--include={','.join(INCLUDED)}",
        f"--exclude={','.join(excluded)}",
    ]


@dataclass(frozen=True)
class LintReport:
    migrations: list[RenderedMigration]
    findings: list[str]  # squawk's lines: "<file>.sql:<line>:<col>: warning: <rule> <text>"

    @property
    def needs_contract_mark(self) -> bool:
        """Some finding would be allowed in a migration marked as a contract step."""
        return any(f" {rule} " in line for line in self.findings for rule in CONTRACT_ONLY)


def lint(tree: MigrationTree) -> LintReport:
    """Lint every migration of `tree` with squawk: contract steps without CONTRACT_ONLY."""
    squawk = squawk_command()
    migrations = render(tree)
    findings: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"{tree.name}-lint-") as folder:
        for contract in (False, True):
            files = []
            for migration in migrations:
                if (migration.contract is not None) == contract:
                    path = Path(folder) / f"{migration.name}.sql"
                    path.write_text(migration.sql)
                    files.append(path.name)
            if not files:
                continue
            result = subprocess.run(
                [squawk, *squawk_args(contract), "--reporter=gcc", *files],
                capture_output=True, text=True, check=False, cwd=folder,
            )  # fmt: skip
            if result.returncode not in (0, 1):
                raise MigrationError(f"squawk failed: {result.stderr.strip()}")
            findings += [
                line for line in result.stdout.splitlines() if re.search(r": (warning|error)", line)
            ]
    return LintReport(migrations=migrations, findings=findings)
