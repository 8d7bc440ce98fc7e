"""The `platform-db` console command, run as the installed script in real processes."""

from __future__ import annotations

import asyncio

from platform_db.trees import PLATFORM
from platform_dev.embedded import free_port
from service_kit import migrate
from tests.pg import with_database
from tests.platform_db.migration_helpers import (
    AUTH_TABLES,
    CLI,
    ProcessResult,
    existing_tables,
    run_cli,
    version_rows,
)

HEAD = " ".join(PLATFORM.heads())


def assert_clean_failure(result: ProcessResult, *phrases: str) -> None:
    """Exit 1 with a one-line explanation on stderr, not a traceback."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result
    assert any(line.startswith("error: ") for line in result.stderr.splitlines()), result
    for phrase in phrases:
        assert phrase in result.stderr, result


def test_console_script_is_installed() -> None:
    assert CLI.is_file(), CLI


async def test_current_prints_none_then_head(empty_db: str) -> None:
    assert await migrate.current(PLATFORM, empty_db) == ()
    result = await run_cli("current", database_url=empty_db)
    assert result.returncode == 0, result
    assert result.stdout.strip() == "(none)"

    migrated = await run_cli("migrate", database_url=empty_db)
    assert migrated.returncode == 0, migrated
    assert migrated.stdout.strip() == f"platform-db: at {HEAD} (head)"
    assert await migrate.current(PLATFORM, empty_db) == PLATFORM.heads()

    result = await run_cli("current", database_url=empty_db)
    assert result.returncode == 0, result
    assert result.stdout.strip() == HEAD


async def test_heads_needs_no_database() -> None:
    result = await run_cli("heads", database_url=None)
    assert result.returncode == 0, result
    assert result.stdout.strip() == HEAD
    assert HEAD  # the tree has a head at all


async def test_downgrade_base_then_migrate_again(db_url: str) -> None:
    down = await run_cli("downgrade", "base", database_url=db_url)
    assert down.returncode == 0, down
    assert down.stdout.strip() == "platform-db: at (none)"
    assert not set(AUTH_TABLES) & await existing_tables(db_url)
    assert await version_rows(db_url) in (None, [])
    assert await migrate.upgrade(PLATFORM, db_url) == PLATFORM.heads()


async def test_missing_database_url() -> None:
    commands = (["migrate"], ["check"], ["current"])
    results = await asyncio.gather(*(run_cli(*c, database_url=None) for c in commands))
    for result in results:
        assert_clean_failure(result, "DATABASE_URL")


async def test_unreachable_database() -> None:
    # Nothing listens on this port: the connection is refused.
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    commands = (["migrate"], ["current"], ["downgrade", "base"])
    results = await asyncio.gather(
        *(run_cli(*c, database_url=url, MIGRATION_LOCK_TIMEOUT="2") for c in commands)
    )
    for result in results:
        assert_clean_failure(result, "cannot reach the database")


async def test_database_that_does_not_exist(admin_url: str) -> None:
    # A reachable server, a wrong database name: an operator's typo, not a crash.
    url = with_database(admin_url, "no_such_database_here")
    result = await run_cli("current", database_url=url)
    assert_clean_failure(result, "no_such_database_here")


async def test_database_url_with_wrong_scheme() -> None:
    result = await run_cli("current", database_url="mysql://user@127.0.0.1:3306/app")
    assert_clean_failure(result, "DATABASE_URL")
