"""The platform's migration tree and the runner, against a real Postgres.

Upgrade and downgrade, adoption of a database better-auth's tooling created (stamp +
check), drift detection, replicas migrating at once, the advisory lock and its
autobegin trap, and the rollback of a failed migration.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from platform_db.trees import PLATFORM
from service_kit import migrate
from service_kit.migrate import MigrationError
from tests.platform_db.migration_helpers import (
    AUTH_TABLES,
    REFERENCE_SQL,
    advisory_lock_ids,
    build_reference,
    connect,
    copy_platform_tree,
    describe_schema,
    execute,
    existing_tables,
    fetch,
    run_cli,
    run_python,
    version_rows,
)

HEAD = PLATFORM.heads()
HISTORY = f"{PLATFORM.version_table}_history"
TS = "timestamp without time zone"

# (column, type, NOT NULL, default) in table order: better-auth 1.7.25's Drizzle schema.
EXPECTED_COLUMNS: dict[str, list[tuple[str, str, bool, str | None]]] = {
    "user": [
        ("id", "text", True, None),
        ("name", "text", True, None),
        ("email", "text", True, None),
        ("email_verified", "boolean", True, "false"),
        ("image", "text", False, None),
        ("created_at", TS, True, "now()"),
        ("updated_at", TS, True, "now()"),
    ],
    "session": [
        ("id", "text", True, None),
        ("expires_at", TS, True, None),
        ("token", "text", True, None),
        ("created_at", TS, True, "now()"),
        ("updated_at", TS, True, None),
        ("ip_address", "text", False, None),
        ("user_agent", "text", False, None),
        ("user_id", "text", True, None),
    ],
    "account": [
        ("id", "text", True, None),
        ("account_id", "text", True, None),
        ("provider_id", "text", True, None),
        ("user_id", "text", True, None),
        ("access_token", "text", False, None),
        ("refresh_token", "text", False, None),
        ("id_token", "text", False, None),
        ("access_token_expires_at", TS, False, None),
        ("refresh_token_expires_at", TS, False, None),
        ("scope", "text", False, None),
        ("password", "text", False, None),
        ("created_at", TS, True, "now()"),
        ("updated_at", TS, True, None),
    ],
    "verification": [
        ("id", "text", True, None),
        ("identifier", "text", True, None),
        ("value", "text", True, None),
        ("expires_at", TS, True, None),
        ("created_at", TS, True, "now()"),
        ("updated_at", TS, True, "now()"),
    ],
}

# Primary key, unique and foreign key constraints with Drizzle's names.
EXPECTED_CONSTRAINTS = {
    ("user", "user_pkey", "p", "PRIMARY KEY (id)"),
    ("user", "user_email_unique", "u", "UNIQUE (email)"),
    ("session", "session_pkey", "p", "PRIMARY KEY (id)"),
    ("session", "session_token_unique", "u", "UNIQUE (token)"),
    (
        "session",
        "session_user_id_user_id_fk",
        "f",
        'FOREIGN KEY (user_id) REFERENCES "user"(id) ON DELETE CASCADE',
    ),
    ("account", "account_pkey", "p", "PRIMARY KEY (id)"),
    (
        "account",
        "account_user_id_user_id_fk",
        "f",
        'FOREIGN KEY (user_id) REFERENCES "user"(id) ON DELETE CASCADE',
    ),
    ("verification", "verification_pkey", "p", "PRIMARY KEY (id)"),
}

EXPECTED_INDEXES = {
    ("user", "user_pkey", 'CREATE UNIQUE INDEX user_pkey ON public."user" USING btree (id)'),
    (
        "user",
        "user_email_unique",
        'CREATE UNIQUE INDEX user_email_unique ON public."user" USING btree (email)',
    ),
    (
        "session",
        "session_pkey",
        "CREATE UNIQUE INDEX session_pkey ON public.session USING btree (id)",
    ),
    (
        "session",
        "session_token_unique",
        "CREATE UNIQUE INDEX session_token_unique ON public.session USING btree (token)",
    ),
    (
        "session",
        "session_userId_idx",
        'CREATE INDEX "session_userId_idx" ON public.session USING btree (user_id)',
    ),
    (
        "account",
        "account_pkey",
        "CREATE UNIQUE INDEX account_pkey ON public.account USING btree (id)",
    ),
    (
        "account",
        "account_userId_idx",
        'CREATE INDEX "account_userId_idx" ON public.account USING btree (user_id)',
    ),
    (
        "verification",
        "verification_pkey",
        "CREATE UNIQUE INDEX verification_pkey ON public.verification USING btree (id)",
    ),
    (
        "verification",
        "verification_identifier_idx",
        "CREATE INDEX verification_identifier_idx ON public.verification USING btree (identifier)",
    ),
}


async def assert_auth_schema(url: str) -> None:
    """The four tables are exactly better-auth's: columns, constraints, indexes."""
    d = await describe_schema(url)
    for table, expected in EXPECTED_COLUMNS.items():
        found = [(r[2], r[3], r[4], r[5]) for r in sorted(d["columns"]) if r[0] == table]
        assert found == expected, table
    auth = set(AUTH_TABLES)
    constraints = {r[:4] for r in d["constraints"] if r[0] in auth and r[2] in "pufcx"}
    assert constraints == EXPECTED_CONSTRAINTS
    assert {r for r in d["indexes"] if r[0] in auth} == EXPECTED_INDEXES


# --------------------------------------------------------------------------------------
# 1. Empty database -> head -> base.
# --------------------------------------------------------------------------------------
async def test_upgrade_from_empty_builds_better_auth_schema(empty_db: str) -> None:
    assert await existing_tables(empty_db) == set()
    assert await migrate.upgrade(PLATFORM, empty_db) == HEAD
    expected = {*AUTH_TABLES, "rate_limit", PLATFORM.version_table, HISTORY}
    assert await existing_tables(empty_db) == expected
    assert await version_rows(empty_db) == list(HEAD)
    await assert_auth_schema(empty_db)


async def test_foreign_keys_cascade_on_user_delete(db_url: str) -> None:
    await execute(
        db_url,
        """
        INSERT INTO "user" (id, name, email)
            VALUES ('u1', 'A', 'a@x.test'), ('u2', 'B', 'b@x.test');
        INSERT INTO session (id, expires_at, token, updated_at, user_id)
            VALUES ('s1', now(), 't1', now(), 'u1'), ('s2', now(), 't2', now(), 'u2');
        INSERT INTO account (id, account_id, provider_id, user_id, updated_at)
            VALUES ('a1', 'u1', 'credential', 'u1', now()), ('a2', 'u2', 'credential', 'u2', now());
        DELETE FROM "user" WHERE id = 'u1';
        """,
    )
    assert await fetch(db_url, "SELECT id FROM session") == [("s2",)]
    assert await fetch(db_url, "SELECT id FROM account") == [("a2",)]


async def test_downgrade_base_leaves_nothing_and_upgrades_again(empty_db: str) -> None:
    await migrate.upgrade(PLATFORM, empty_db)
    assert await migrate.downgrade(PLATFORM, empty_db, "base") == ()
    assert await migrate.current(PLATFORM, empty_db) == ()
    # Nothing of the tree is left but its (empty) version table and its history.
    assert await existing_tables(empty_db) <= {PLATFORM.version_table, HISTORY}
    assert await version_rows(empty_db) in (None, [])
    left = await describe_schema(empty_db)
    assert {r[0] for r in left["relations"]} <= {
        PLATFORM.version_table,
        f"{PLATFORM.version_table}_pkc",
        HISTORY,
        f"{HISTORY}_pkey",
        f"{HISTORY}_id_seq",
    }
    assert left["triggers"] == []
    assert left["functions"] == []
    # And the round trip works.
    assert await migrate.upgrade(PLATFORM, empty_db) == HEAD
    await assert_auth_schema(empty_db)


# --------------------------------------------------------------------------------------
# 2. A database better-auth's tooling created is adopted with stamp and passes check.
# --------------------------------------------------------------------------------------
# The revision better-auth's schema matches; later revisions add the platform's triggers.
BASELINE = str(PLATFORM.baseline)


def test_reference_schema_is_available() -> None:
    # Locating the reference file is part of every test below; fail loudly, never skip.
    assert REFERENCE_SQL.is_file(), REFERENCE_SQL
    assert 'CREATE TABLE "user"' in REFERENCE_SQL.read_text()
    assert PLATFORM.script().get_base() == BASELINE


async def assert_same_catalog(url: str, expected_url: str) -> None:
    found, expected = await describe_schema(url), await describe_schema(expected_url)
    assert found.keys() == expected.keys()
    for aspect in expected:
        assert found[aspect] == expected[aspect], aspect
    assert expected["columns"]  # the comparison compared something


async def test_reference_database_adopted_passes_check(empty_db: str, db_url: str) -> None:
    await build_reference(empty_db)
    await assert_auth_schema(empty_db)
    with pytest.raises(MigrationError, match="no revision"):
        await migrate.check(PLATFORM, empty_db)
    assert await migrate.adopt(PLATFORM, empty_db) == HEAD
    assert await version_rows(empty_db) == list(HEAD)
    await migrate.check(PLATFORM, empty_db)
    await assert_same_catalog(empty_db, db_url)


async def test_reference_database_stamped_at_head_fails_check(empty_db: str) -> None:
    # Stamped past the trigger migration: the tables match, the triggers are missing.
    await build_reference(empty_db)
    assert await migrate.stamp(PLATFORM, empty_db) == HEAD
    with pytest.raises(MigrationError, match="lacks trigger") as info:
        await migrate.check(PLATFORM, empty_db)
    assert "session.session_notify_change" in str(info.value)
    assert f"platform-db stamp {BASELINE}" in str(info.value)


async def test_adopt_refuses_an_empty_or_versioned_database(empty_db: str, db_url: str) -> None:
    with pytest.raises(MigrationError, match="do not exist"):
        await migrate.adopt(PLATFORM, empty_db)
    assert await existing_tables(empty_db) == set()
    assert await version_rows(empty_db) in (None, [])
    with pytest.raises(MigrationError, match="already at"):
        await migrate.adopt(PLATFORM, db_url)


async def test_baseline_revision_builds_exactly_the_reference_schema(
    db_url: str, empty_db: str
) -> None:
    # Migrated (down to the baseline) and built by better-auth's DDL: the same catalog.
    assert await migrate.downgrade(PLATFORM, db_url, BASELINE) == (BASELINE,)
    await build_reference(empty_db)
    assert await migrate.stamp(PLATFORM, empty_db, BASELINE) == (BASELINE,)
    await assert_same_catalog(empty_db, db_url)


async def test_reference_database_adopted_with_commands(db_url: str, empty_db: str) -> None:
    await build_reference(empty_db)
    stamped = await run_cli("stamp", BASELINE, database_url=empty_db)
    assert stamped.returncode == 0, stamped
    assert f"stamped {BASELINE}" in stamped.stdout
    migrated = await run_cli("migrate", database_url=empty_db)
    assert migrated.returncode == 0, migrated
    checked = await run_cli("check", database_url=empty_db)
    assert checked.returncode == 0, checked
    assert "agree" in checked.stdout
    # Identical to a database the migrations built from nothing: tables, triggers, functions.
    await assert_same_catalog(empty_db, db_url)


async def test_documented_adoption_gives_a_complete_database(db_url: str, empty_db: str) -> None:
    # README: "`platform-db stamp` adopts a database whose auth tables better-auth's own
    # tooling created". Adopted that way, it is exactly what the migrations build.
    await build_reference(empty_db)
    stamped = await run_cli("stamp", database_url=empty_db)
    assert stamped.returncode == 0, stamped
    assert f"adopted at {BASELINE}, migrated to {' '.join(HEAD)}" in stamped.stdout
    checked = await run_cli("check", database_url=empty_db)
    assert checked.returncode == 0, checked
    await assert_same_catalog(empty_db, db_url)


# --------------------------------------------------------------------------------------
# 3. check: passes on the committed tree, fails on drift and when not at head.
# --------------------------------------------------------------------------------------
async def test_check_passes_on_committed_tree(db_url: str) -> None:
    await migrate.check(PLATFORM, db_url)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "User.__table__.append_column(Column('nickname', Text, nullable=True))",
            ("add_column", "nickname"),
        ),
        ("User.__table__.c.image.nullable = False", ("modify_nullable", "image")),
    ],
    ids=["new-column", "nullability"],
)
async def test_check_fails_after_model_change(
    db_url: str, change: str, expected: tuple[str, ...]
) -> None:
    # The model is changed in another process so this process's metadata stays clean.
    script = f"""
        import asyncio, os, sys
        from sqlalchemy import Column, Text
        from service_kit import migrate
        from platform_db.models import User
        from platform_db.trees import PLATFORM
        {change}
        try:
            asyncio.run(migrate.check(PLATFORM, os.environ["DATABASE_URL"]))
        except migrate.MigrationError as exc:
            print(exc)
            sys.exit(3)
        print("no difference")
    """
    result = await run_python(script, database_url=db_url)
    assert result.returncode == 3, result
    assert "the models differ from the migrations" in result.stdout
    for word in expected:
        assert word in result.stdout, result
    assert "platform-db revision" in result.stdout


async def test_check_command_lists_the_difference(db_url: str) -> None:
    script = """
        from sqlalchemy import Column, Text
        from platform_db.cli import main
        from platform_db.models import Verification
        Verification.__table__.append_column(Column("attempts", Text, nullable=True))
        main(["check"])
    """
    result = await run_python(script, database_url=db_url)
    assert result.returncode == 1, result
    assert "add_column" in result.stderr
    assert "attempts" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("drift", "named"),
    [
        ('DROP INDEX "session_userId_idx"', "session_userId_idx"),
        ('DROP TRIGGER user_notify_change ON "user"', "user.user_notify_change"),
    ],
    ids=["index", "trigger"],
)
async def test_check_fails_when_database_drifts(db_url: str, drift: str, named: str) -> None:
    await migrate.check(PLATFORM, db_url)
    await execute(db_url, drift)
    with pytest.raises(MigrationError, match=named):
        await migrate.check(PLATFORM, db_url)


async def test_check_fails_clearly_when_not_at_head(empty_db: str) -> None:
    with pytest.raises(MigrationError) as info:
        await migrate.check(PLATFORM, empty_db)
    message = str(info.value)
    assert "no revision" in message
    assert f"behind this release's head {' '.join(HEAD)}" in message
    assert "platform-db migrate" in message
    result = await run_cli("check", database_url=empty_db)
    assert result.returncode == 1, result
    assert "platform-db migrate" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------
# 4. Replicas migrating at once: all succeed, the schema is created exactly once.
# --------------------------------------------------------------------------------------
DDL_LOG = """
CREATE TABLE ddl_log (
    id serial PRIMARY KEY, backend int NOT NULL, tag text NOT NULL, object text
);
CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        INSERT INTO public.ddl_log (backend, tag, object)
        VALUES (pg_backend_pid(), r.command_tag, r.object_identity);
    END LOOP;
END $$;
CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION log_ddl();
"""


ACTIVITY = """
SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock')
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> ALL($1::int[])
"""
ADVISORY_HOLDERS = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND classid = $1 AND objid = $2 AND objsubid = 1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


async def test_five_replicas_migrate_one_empty_database(empty_db: str) -> None:
    await execute(empty_db, DDL_LOG)
    gate, watcher = await connect(empty_db), await connect(empty_db)
    ours = [await c.fetchval("SELECT pg_backend_pid()") for c in (gate, watcher)]
    # The gate holds the DDL log, so the first DDL of any migration blocks until released:
    # all replicas are surely running at once while a migration is in flight.
    gate_tx = gate.transaction()
    await gate_tx.start()
    await gate.execute("LOCK TABLE ddl_log IN ACCESS EXCLUSIVE MODE")
    replicas = [asyncio.ensure_future(run_cli("migrate", database_url=empty_db)) for _ in range(5)]
    try:
        deadline = asyncio.get_running_loop().time() + 90
        while True:  # until (at least) four replicas are connected and one is in its DDL
            connected, in_ddl = await watcher.fetchrow(ACTIVITY, ours)
            if connected >= 5 and in_ddl >= 1:
                break
            finished = [r.result() for r in replicas if r.done()]
            assert not finished, finished[0]  # none can finish while a migration is held
            assert asyncio.get_running_loop().time() < deadline, (connected, in_ddl)
            await asyncio.sleep(0.1)
        # One replica migrates under the tree's lock; the others wait for that lock.
        assert in_ddl == 1
        classid, objid = advisory_lock_ids(PLATFORM.lock_key)
        assert await watcher.fetchval(ADVISORY_HOLDERS, classid, objid) == 1
    finally:
        await gate_tx.rollback()
        await gate.close()
        await watcher.close()
        results = await asyncio.gather(*replicas)
    for result in results:
        assert result.returncode == 0, result
        assert f"at {' '.join(HEAD)} (head)" in result.stdout
    log = await fetch(empty_db, "SELECT backend, tag, object FROM ddl_log")
    creates = Counter(str(obj) for _, tag, obj in log if tag == "CREATE TABLE")
    # The auth tables, the version table and its history, each created once, by one process.
    tables = ['public."user"', "public.session", "public.account", "public.verification"]
    tables.append("public.rate_limit")
    history = f"public.{HISTORY}"
    assert creates == Counter([*tables, f"public.{PLATFORM.version_table}", history])
    assert len({backend for backend, _, _ in log}) == 1
    assert await version_rows(empty_db) == list(HEAD)
    await assert_auth_schema(empty_db)


# --------------------------------------------------------------------------------------
# 5. The advisory lock, and DDL really committed (the autobegin trap).
# --------------------------------------------------------------------------------------
async def test_upgrade_commits_its_ddl(empty_db: str) -> None:
    await migrate.upgrade(PLATFORM, empty_db)
    conn = await connect(empty_db)  # a separate connection, after the runner is done
    try:
        for table in AUTH_TABLES:
            assert await conn.fetchval("SELECT to_regclass($1)", f'public."{table}"') is not None
        assert (
            await conn.fetchval(f"SELECT version_num FROM public.{PLATFORM.version_table}")
            == HEAD[0]
        )
    finally:
        await conn.close()


async def test_upgrade_holds_a_session_level_advisory_lock(empty_db: str, tmp_path: Path) -> None:
    classid, objid = advisory_lock_ids(PLATFORM.lock_key)
    # A revision that records, from inside the migration, who holds the tree's lock.
    tree = copy_platform_tree(
        tmp_path,
        {
            "9001_lock_probe.py": f'''
                from alembic import op

                revision = "9001"
                down_revision = "{HEAD[0]}"
                branch_labels = None
                depends_on = None


                def upgrade() -> None:
                    op.execute(
                        "CREATE TABLE lock_probe AS "
                        "SELECT l.pid, l.pid = pg_backend_pid() AS own, a.state "
                        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                        "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                        "AND l.classid = {classid} AND l.objid = {objid} AND l.objsubid = 1"
                    )


                def downgrade() -> None:
                    op.execute("DROP TABLE lock_probe")
            ''',
        },
    )
    assert tree.lock_key == PLATFORM.lock_key
    assert await migrate.upgrade(tree, empty_db) == ("9001",)
    probe = await fetch(empty_db, "SELECT own, state FROM lock_probe")
    # Held by exactly one other connection, idle (no open transaction): a session-level
    # lock on its own connection, not a transaction lock on the migrating one.
    assert probe == [(False, "idle")]
    # Released afterwards.
    conn = await connect(empty_db)
    try:
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", PLATFORM.lock_key)
        await conn.execute("SELECT pg_advisory_unlock($1)", PLATFORM.lock_key)
    finally:
        await conn.close()


async def test_migrate_waits_for_the_lock_then_times_out(empty_db: str) -> None:
    holder = await connect(empty_db)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", PLATFORM.lock_key)
        blocked = await run_cli("migrate", database_url=empty_db, MIGRATION_LOCK_TIMEOUT="2")
        assert blocked.returncode == 1, blocked
        assert "another process held the migration lock" in blocked.stderr
        assert "MIGRATION_LOCK_TIMEOUT" in blocked.stderr
        assert "Traceback" not in blocked.stderr
        assert await existing_tables(empty_db) == set()
        assert await version_rows(empty_db) is None
    finally:
        await holder.execute("SELECT pg_advisory_unlock($1)", PLATFORM.lock_key)
        await holder.close()
    done = await run_cli("migrate", database_url=empty_db, MIGRATION_LOCK_TIMEOUT="2")
    assert done.returncode == 0, done
    assert await version_rows(empty_db) == list(HEAD)
    await assert_auth_schema(empty_db)


# --------------------------------------------------------------------------------------
# 6. A failed migration leaves the database at the previous revision.
# --------------------------------------------------------------------------------------
BROKEN = """
    import sqlalchemy as sa
    from alembic import op

    revision = "9001"
    down_revision = "{down}"
    branch_labels = None
    depends_on = None


    def upgrade() -> None:
        op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))
        op.add_column("user", sa.Column("half_done_flag", sa.Boolean(), nullable=True))
        op.execute("SELECT * FROM table_that_does_not_exist")


    def downgrade() -> None:
        op.drop_column("user", "half_done_flag")
        op.drop_table("half_done")
"""


@pytest.mark.parametrize("start", [HEAD[0], None], ids=["from-head", "from-empty"])
async def test_failed_migration_leaves_previous_revision(
    empty_db: str, tmp_path: Path, start: str | None
) -> None:
    tree = copy_platform_tree(tmp_path, {"9001_broken.py": BROKEN.format(down=HEAD[0])})
    assert tree.heads() == ("9001",)
    if start is not None:
        assert await migrate.upgrade(tree, empty_db, start) == (start,)
    before = await describe_schema(empty_db)
    with pytest.raises(DBAPIError, match="table_that_does_not_exist"):
        await migrate.upgrade(tree, empty_db)
    assert await migrate.current(tree, empty_db) == ((start,) if start else ())
    assert "half_done" not in await existing_tables(empty_db)
    assert await describe_schema(empty_db) == before
    # The lock was released: the fixed tree can still migrate the database.
    assert await migrate.upgrade(PLATFORM, empty_db) == HEAD
