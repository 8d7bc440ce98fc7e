"""The applied history: older code tells a database ahead of it from behind or unrelated.

"Newer code" is a copy of a tree with more revision files (what the next release ships);
the installed tree is the release before it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg
import pytest

from platform_db.trees import PLATFORM
from service_kit import migrate
from service_kit.history import Relation, classify
from service_kit.migrate import MigrationError, MigrationTree
from tests.conftest import auth_settings, running
from tests.platform_db.migration_helpers import connect, copy_tree, fetch, run_cli
from web.app import SERVICE as WEB
from web.app import TREE as WEB_TREE

PLATFORM_HEAD = PLATFORM.heads()
WEB_HEAD = WEB_TREE.heads()


def add_column(revision: str, down: str, table: str, column: str, schema: str | None) -> str:
    """A next-release migration: one column with a constant default (an expand step)."""
    return f'''
        import sqlalchemy as sa
        from alembic import op

        revision = "{revision}"
        down_revision = "{down}"
        branch_labels = None
        depends_on = None


        def upgrade() -> None:
            op.add_column(
                "{table}",
                sa.Column("{column}", sa.Text(), server_default="x", nullable=False),
                schema={schema!r},
            )


        def downgrade() -> None:
            op.drop_column("{table}", "{column}", schema={schema!r})
    '''


def next_platform(tmp_path: Path, steps: int = 1) -> MigrationTree:
    """The platform tree of a later release: `steps` more migrations on `user`."""
    revisions, down = {}, PLATFORM_HEAD[0]
    for i in range(steps):
        rev = f"{int(down) + 1:04d}"
        revisions[f"{rev}_add_user_extra_{i}.py"] = add_column(rev, down, "user", f"x{i}", None)
        down = rev
    return copy_tree(PLATFORM, tmp_path, revisions)


def next_web(tmp_path: Path) -> MigrationTree:
    rev = f"{int(WEB_HEAD[0]) + 1:04d}"
    migration = add_column(rev, WEB_HEAD[0], "todos", "label", "web")
    return copy_tree(WEB_TREE, tmp_path, {f"{rev}_add_todo_label.py": migration})


async def history(url: str, tree: MigrationTree = PLATFORM) -> list[tuple[str, str, str]]:
    table = f'"{tree.schema}"."{tree.version_table}_history"'
    rows = await fetch(url, f"SELECT revision, down_revisions, operation FROM {table} ORDER BY id")
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


# --------------------------------------------------------------------------------------
# The relation itself, on small graphs.
# --------------------------------------------------------------------------------------
KNOWN = {"a": (), "b": ("a",), "c": ("b",)}


@pytest.mark.parametrize(
    ("found", "recorded", "relation", "ahead"),
    [
        (("c",), {}, Relation.AT_HEAD, ()),
        ((), {}, Relation.BEHIND, ()),
        (("b",), {}, Relation.BEHIND, ()),
        (("e",), {"d": ("c",), "e": ("d",)}, Relation.AHEAD, ("d", "e")),
        (("e",), {}, Relation.UNRELATED, ()),  # unknown, and nothing recorded
        (("x",), {"x": ("b",)}, Relation.UNRELATED, ()),  # a branch off b, not past c
        (("m",), {"d": ("c",), "x": ("a",), "m": ("d", "x")}, Relation.AHEAD, ("d", "m", "x")),
    ],
    ids=["at-head", "empty", "behind", "ahead", "unknown", "diverged", "merge"],
)
def test_classify(
    found: tuple[str, ...],
    recorded: dict[str, tuple[str, ...]],
    relation: Relation,
    ahead: tuple[str, ...],
) -> None:
    assert classify(found, ("c",), KNOWN, recorded) == (relation, ahead)


# --------------------------------------------------------------------------------------
# What the runner records.
# --------------------------------------------------------------------------------------
async def test_every_upgrade_downgrade_and_stamp_is_recorded(empty_db: str) -> None:
    await migrate.upgrade(PLATFORM, empty_db)
    assert await history(empty_db) == [
        ("0001", "", "upgrade"),
        ("0002", "0001", "upgrade"),
        ("0003", "0002", "upgrade"),
    ]
    await migrate.downgrade(PLATFORM, empty_db, "0001")
    assert (await history(empty_db))[-2:] == [
        ("0003", "0002", "downgrade"),
        ("0002", "0001", "downgrade"),
    ]
    await migrate.stamp(PLATFORM, empty_db, "0002")
    assert (await history(empty_db))[-2:] == [("0001", "", "stamp"), ("0002", "0001", "stamp")]


async def test_a_failed_run_records_nothing(db_url: str, tmp_path: Path) -> None:
    broken = f'''
        from alembic import op

        revision = "broken"
        down_revision = "{PLATFORM_HEAD[0]}"
        branch_labels = None
        depends_on = None


        def upgrade() -> None:
            op.execute("SELECT * FROM table_that_does_not_exist")


        def downgrade() -> None:
            pass
    '''
    tree = copy_tree(PLATFORM, tmp_path, {"9999_broken.py": broken})
    before = await history(db_url)
    with pytest.raises(Exception, match="table_that_does_not_exist"):
        await migrate.upgrade(tree, db_url)
    assert await history(db_url) == before  # same transaction as the version table


async def test_a_database_from_before_the_history_is_back_filled(
    db_url: str, tmp_path: Path
) -> None:
    # What a release that predates the history left: the version table alone.
    table = f'"{PLATFORM.schema}"."{PLATFORM.version_table}_history"'
    conn = await connect(db_url)
    await conn.execute(f"DROP TABLE {table}")
    await conn.close()
    assert (await run_cli("migrate", database_url=db_url)).returncode == 0
    assert await history(db_url) == [
        ("0001", "", "backfill"),
        ("0002", "0001", "backfill"),
        ("0003", "0002", "backfill"),
    ]

    # ...so that once the next release has migrated it, this one sees it ahead.
    conn = await connect(db_url)
    await conn.execute(f"DROP TABLE {table}")
    await conn.close()
    await migrate.upgrade(next_platform(tmp_path), db_url)
    assert [row[2] for row in await history(db_url)] == [*["backfill"] * 3, "upgrade"]
    status = await migrate.tree_status(PLATFORM, db_url)
    assert status.relation is Relation.AHEAD
    assert status.ahead == (f"{int(PLATFORM_HEAD[0]) + 1:04d}",)


# --------------------------------------------------------------------------------------
# Older code against a newer database.
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2])
async def test_older_code_sees_a_newer_platform_as_ahead(
    full_db: str, tmp_path: Path, steps: int
) -> None:
    newer = next_platform(tmp_path, steps)
    heads = await migrate.upgrade(newer, full_db)
    assert heads == newer.heads() != PLATFORM_HEAD
    expected_ahead = tuple(f"{int(PLATFORM_HEAD[0]) + i + 1:04d}" for i in range(steps))

    status = await migrate.tree_status(PLATFORM, full_db)
    assert (status.relation, status.ahead) == (Relation.AHEAD, expected_ahead)
    assert status.satisfied

    # `migrate` of the older release: nothing to do, no error, the database untouched.
    assert await migrate.upgrade(PLATFORM, full_db) == heads
    result = await run_cli("migrate", database_url=full_db)
    assert result.returncode == 0, result
    assert "ahead of this release's head" in result.stdout
    assert await migrate.current(PLATFORM, full_db) == heads

    # A service of the older release starts: the platform it requires is ahead, which is enough.
    assert await migrate.upgrade(WEB_TREE, full_db, wait_timeout=0) == WEB_HEAD

    # `check` says plainly that the database is ahead, not that the models differ.
    result = await run_cli("check", database_url=full_db)
    assert result.returncode == 1
    assert "the database is ahead of these migrations" in result.stderr
    assert "models differ" not in result.stderr
    assert "Traceback" not in result.stderr

    # Ready, and saying which tree is ahead and by what.
    async with running(WEB.create_app(auth_settings(full_db))) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert body["trees"] == {"platform-db": " ".join(heads), "web": " ".join(WEB_HEAD)}
    assert body["ahead"] == {"platform-db": list(expected_ahead)}


async def test_older_code_restarts_beside_a_newer_release_of_its_own_tree(
    full_db: str, tmp_path: Path
) -> None:
    newer = next_web(tmp_path)
    await migrate.upgrade(newer, full_db)
    # The old replica's `serve` migrates its own tree first: a no-op now.
    assert await migrate.upgrade(WEB_TREE, full_db) == newer.heads()
    async with running(WEB.create_app(auth_settings(full_db))) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["ahead"] == {"web": list(newer.heads())}
    # Rolled back: the newer release's downgrade brings it to this release's head again.
    assert await migrate.downgrade(newer, full_db, WEB_HEAD[0]) == WEB_HEAD
    async with running(WEB.create_app(auth_settings(full_db))) as client:
        ready = await client.get("/readyz")
    assert ready.json() == {"status": "ready", "trees": ready.json()["trees"], "ahead": {}}


async def test_an_unrelated_revision_is_refused_everywhere(full_db: str) -> None:
    # A revision neither this code nor the recorded history knows (another installation's).
    conn = await connect(full_db)
    await conn.execute(f"UPDATE \"{PLATFORM.version_table}\" SET version_num = 'ffff'")
    await conn.close()
    status = await migrate.tree_status(PLATFORM, full_db)
    assert status.relation is Relation.UNRELATED
    with pytest.raises(MigrationError, match="neither this release's head"):
        await migrate.upgrade(PLATFORM, full_db)
    with pytest.raises(MigrationError, match=r"neither this release's head .*\(waited 1s"):
        await migrate.upgrade(WEB_TREE, full_db, wait_timeout=1)
    async with running(WEB.create_app(auth_settings(full_db))) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["code"] == "NOT_READY"
    assert "ffff" in ready.json()["message"]


async def test_a_tree_behind_is_not_ready(db_url: str) -> None:
    async with running(WEB.create_app(auth_settings(db_url))) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["message"] == (
        f"the web tree is at no revision (empty), behind this release's head {WEB_HEAD[0]}"
    )


# --------------------------------------------------------------------------------------
# A migration never queues live queries behind it for long.
# --------------------------------------------------------------------------------------
async def test_a_migration_waiting_for_a_table_lock_is_retried(
    full_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    newer = next_web(tmp_path)
    holder: asyncpg.Connection = await connect(full_db)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT count(*) FROM web.todos")  # holds ACCESS SHARE until commit

    async def release_later() -> None:
        await asyncio.sleep(1.5)
        await tx.commit()

    caplog.set_level(logging.WARNING, logger="service_kit.migrate")
    release = asyncio.create_task(release_later())
    heads = await migrate.upgrade(newer, full_db, ddl_lock_timeout=0.2, lock_timeout=60)
    await release
    await holder.close()
    assert heads == newer.heads()
    assert "waited 0.2s for a table lock (attempt 1); rolled back, retrying" in caplog.text


async def test_a_table_lock_never_released_fails_cleanly(full_db: str, tmp_path: Path) -> None:
    newer = next_web(tmp_path)
    holder: asyncpg.Connection = await connect(full_db)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT count(*) FROM web.todos")
    try:
        with pytest.raises(MigrationError, match=r"could not lock a table within 0\.2s"):
            await migrate.upgrade(newer, full_db, ddl_lock_timeout=0.2, lock_timeout=1.5)
    finally:
        await tx.rollback()
        await holder.close()
    assert await migrate.current(WEB_TREE, full_db) == WEB_HEAD
    columns = await fetch(
        full_db,
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = 'web' AND table_name = 'todos' AND column_name = 'label'",
    )
    assert columns == []
