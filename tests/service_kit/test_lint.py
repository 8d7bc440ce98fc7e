"""`lint`: squawk over each migration's offline SQL; destructive steps only as contract steps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from service_kit.cli import run_lint
from service_kit.lint import lint, render
from service_kit.migrate import MigrationError, MigrationTree
from tests.e2e.conftest import command
from tests.platform_db.migration_helpers import copy_tree
from web.app import TREE as WEB_TREE

NEXT = f"{int(WEB_TREE.heads()[0]) + 1:04d}"


def web_with(tmp_path: Path, upgrade: str, contract: str | None = None) -> MigrationTree:
    """Web's tree with one more migration whose upgrade() is `upgrade` (indented source)."""
    mark = f"contract = {contract!r}\n" if contract is not None else ""
    source = f'''
import sqlalchemy as sa
from alembic import op

revision = "{NEXT}"
down_revision = "{WEB_TREE.heads()[0]}"
branch_labels = None
depends_on = None
{mark}

def upgrade() -> None:
{upgrade}


def downgrade() -> None:
    pass
'''
    return copy_tree(WEB_TREE, tmp_path, {f"{NEXT}_change.py": source})


@pytest.mark.parametrize("tree", ["platform-db", "web", "trading"])
def test_every_tree_lints_clean(tree: str) -> None:
    result = subprocess.run(
        [command(tree), "lint"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "linted with squawk: no problems" in result.stdout


def test_the_rendered_sql_is_what_the_runner_sends() -> None:
    (first,) = render(WEB_TREE)
    assert first.name == "0001_create_todos"
    assert first.sql.startswith("BEGIN;")
    assert "SET LOCAL lock_timeout = '5000ms';" in first.sql
    assert "CREATE TABLE web.todos" in first.sql
    assert "INSERT INTO web.alembic_version_history" in first.sql
    assert "CREATE TABLE web.alembic_version (" not in first.sql  # Alembic's, not the step's
    assert first.sql.rstrip().endswith("COMMIT;")


DESTRUCTIVE = {
    "ban-drop-column": '    op.drop_column("todos", "description", schema="web")',
    "renaming-column": (
        '    op.alter_column("todos", "title", new_column_name="name", schema="web")'
    ),
    "renaming-table": '    op.rename_table("todos", "tasks", schema="web")',
    "ban-drop-table": '    op.drop_table("todos", schema="web")',
    "changing-column-type": (
        '    op.alter_column("todos", "completed", type_=sa.Text(), schema="web")'
    ),
    "adding-required-field": (
        '    op.add_column("todos", sa.Column("n", sa.Text(), nullable=False), schema="web")'
    ),
    "adding-not-nullable-field": (
        '    op.alter_column("todos", "description", nullable=False, schema="web")'
    ),
    "require-concurrent-index-creation": (
        '    op.create_index("todos_title_idx", "todos", ["title"], schema="web")'
    ),
}


@pytest.mark.parametrize("rule", sorted(DESTRUCTIVE))
def test_a_destructive_step_needs_a_contract_mark(tmp_path: Path, rule: str) -> None:
    report = lint(web_with(tmp_path / "plain", DESTRUCTIVE[rule]))
    assert any(f" {rule} " in line for line in report.findings), report.findings
    assert all(line.startswith(f"{NEXT}_change.sql:") for line in report.findings)
    assert report.needs_contract_mark

    marked = lint(web_with(tmp_path / "marked", DESTRUCTIVE[rule], "unused since web 0001"))
    assert marked.findings == []
    assert [m.contract for m in marked.migrations] == [None, "unused since web 0001"]


@pytest.mark.parametrize(
    "upgrade",
    [
        '    op.add_column("todos", sa.Column("note", sa.Text(), nullable=True), schema="web")',
        '    op.add_column("todos", sa.Column("rank", sa.Integer(), server_default="0",'
        ' nullable=False), schema="web")',
        '    op.create_table("labels", sa.Column("id", sa.Text(), primary_key=True),'
        ' schema="web")\n'
        '    op.create_index("labels_id_idx", "labels", ["id"], schema="web")',
    ],
    ids=["nullable-column", "column-with-constant-default", "new-table-and-its-index"],
)
def test_expand_steps_pass(tmp_path: Path, upgrade: str) -> None:
    assert lint(web_with(tmp_path, upgrade)).findings == []


def test_what_stalls_a_live_table_is_refused_even_in_a_contract_step(tmp_path: Path) -> None:
    # A volatile default rewrites the table under an exclusive lock: no mark makes it safe.
    upgrade = (
        '    op.add_column("todos", sa.Column("token", sa.Text(),'
        ' server_default=sa.text("gen_random_uuid()::text")), schema="web")'
    )
    report = lint(web_with(tmp_path, upgrade, "drops nothing"))
    assert any(" adding-field-with-default " in line for line in report.findings)
    assert not report.needs_contract_mark


def test_an_empty_contract_mark_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="sets `contract` but not to a sentence"):
        lint(web_with(tmp_path, DESTRUCTIVE["ban-drop-column"], "  "))


def test_a_migration_that_queries_cannot_be_linted(tmp_path: Path) -> None:
    upgrade = '    op.get_bind().execute(sa.text("SELECT 1")).scalar_one()'
    with pytest.raises(MigrationError, match="must work offline"):
        lint(web_with(tmp_path, upgrade))


def test_lint_command_explains_the_contract_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_lint(web_with(tmp_path, DESTRUCTIVE["ban-drop-column"])) == 1
    out, err = capsys.readouterr()
    assert f"web: {NEXT}_change.sql:" in out
    assert "ban-drop-column" in out
    assert "error: web: 1 problem(s)" in err
    assert 'set `contract = "' in err
    assert "Shipping a schema change" in err
