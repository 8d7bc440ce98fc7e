"""The `check` console commands of the three trees, run as a user runs them."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.services.helpers import connect

BIN = Path(sys.executable).parent
COMMANDS = ("platform-db", "web", "trading")


async def run(command: str, url: str, *args: str) -> tuple[int, str]:
    """Run a console command with DATABASE_URL set; return its exit code and its output."""
    env = {**os.environ, "DATABASE_URL": url}
    proc = await asyncio.create_subprocess_exec(
        str(BIN / command),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def check_all(url: str) -> dict[str, tuple[int, str]]:
    results = await asyncio.gather(*(run(c, url, "check") for c in COMMANDS))
    return dict(zip(COMMANDS, results, strict=True))


async def test_every_check_passes_on_a_fully_migrated_database(full_db: str) -> None:
    for command, (code, out) in (await check_all(full_db)).items():
        assert code == 0, (command, out)
        assert f"{command}: models, migrations and database agree" in out


async def test_check_fails_only_for_the_tree_whose_tables_drifted(full_db: str) -> None:
    async with connect(full_db) as conn:
        await conn.execute("ALTER TABLE web.todos ADD COLUMN stray integer")
    results = await check_all(full_db)
    code, out = results.pop("web")
    assert code == 1, out
    assert "web: the models differ from the migrations" in out
    assert "stray" in out
    assert "web revision" in out
    for command, (code, out) in results.items():
        assert code == 0, (command, out)


async def test_check_fails_when_a_tree_is_not_at_head(db_url: str) -> None:
    """Only the platform is migrated: the services' checks fail and say what to run."""
    results = await check_all(db_url)
    code, out = results.pop("platform-db")
    assert code == 0, out
    for command, (code, out) in results.items():
        assert code == 1, (command, out)
        assert f"run `{command} migrate`" in out
        assert "Traceback" not in out
