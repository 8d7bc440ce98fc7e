"""Concurrency: a storm of PATCHes and DELETEs on one todo, and a service's migration racing
the platform's on an empty database. Real `serve` / `migrate` processes; figures are recorded
for docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from platform_db.trees import PLATFORM
from tests.e2e.conftest import command, service_env, versions
from tests.pg import create_database, drop_database, plain_url, sql
from tests.reliability.fault_helpers import sign_up, started_processes
from tests.reliability.record import record
from web.app import TREE as WEB_TREE

STORM = 50  # requests per round, all sent at once


def payload(marker: int) -> dict[str, Any]:
    """A PATCH that sets every field at once, each carrying the same marker."""
    return {"title": f"title {marker}", "description": f"description {marker}",
            "completed": marker % 2 == 0}  # fmt: skip


def fields(todo: dict[str, Any]) -> dict[str, Any]:
    return {k: todo[k] for k in ("title", "description", "completed")}


async def storm(
    client: httpx.AsyncClient, todo_id: str, deletes: int, seed: int
) -> list[tuple[str, dict[str, Any] | None, httpx.Response]]:
    """STORM requests on one todo at once: PATCHes with distinct payloads and `deletes` DELETEs,
    in a shuffled order; returns (method, payload, response) for each."""
    plan: list[tuple[str, dict[str, Any] | None]] = [
        ("PATCH", payload(i)) for i in range(STORM - deletes)
    ]
    plan += [("DELETE", None)] * deletes
    random.Random(seed).shuffle(plan)
    go = asyncio.Event()

    async def one(method: str, body: dict[str, Any] | None) -> httpx.Response:
        await go.wait()
        return await client.request(method, f"/todos/{todo_id}", json=body)

    tasks = [asyncio.create_task(one(m, b)) for m, b in plan]
    await asyncio.sleep(0)  # every task is waiting at the barrier
    go.set()
    responses = await asyncio.gather(*tasks)
    return [(m, b, r) for (m, b), r in zip(plan, responses, strict=True)]


def error_code(resp: httpx.Response) -> object:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


async def storm_round(
    client: httpx.AsyncClient, db: str, deletes: int, seed: int, seen: Counter[str]
) -> list[str]:
    """One storm on a new todo; what went wrong (empty when everything held). `seen` counts
    the answers by method and status."""
    problems: list[str] = []
    r = await client.post("/todos", json={"title": "target", "description": "start"})
    assert r.status_code == 201, r.text
    todo_id = r.json()["id"]
    results = await storm(client, todo_id, deletes, seed)
    applied: list[dict[str, Any] | None] = []
    deleted = 0
    for method, body, resp in results:
        seen[f"{method} {resp.status_code}"] += 1
        if (method, resp.status_code) == ("PATCH", 200):
            applied.append(body)
            if fields(resp.json()) != body:  # a PATCH's answer is its own write, whole
                problems.append(f"PATCH {body} answered {fields(resp.json())}")
        elif (method, resp.status_code) == ("DELETE", 204):
            deleted += 1
        elif resp.status_code != 404 or error_code(resp) != "TODO_NOT_FOUND":
            problems.append(f"unexpected answer: {method} -> {resp.status_code} {resp.text[:200]}")
    rows = await sql(
        db, "SELECT title, description, completed FROM web.todos WHERE id = $1", todo_id
    )
    after = await client.get(f"/todos/{todo_id}")
    again = await client.patch(f"/todos/{todo_id}", json=payload(0)) if deletes else None
    where = f"(seed {seed}, {deletes} DELETEs)"
    if deletes:
        if deleted != 1:
            problems.append(f"{deleted} DELETEs answered 204 {where}")
        if rows or after.status_code != 404 or again is None or again.status_code != 404:
            problems.append(f"the todo outlived its DELETE {where}: {rows} {after.text}")
    else:
        if len(applied) != STORM:
            problems.append(f"{STORM - len(applied)} PATCHes did not answer 200 {where}")
        final = dict(rows[0]) if len(rows) == 1 else None
        # One PATCH's payload entirely, never fields of two different ones.
        if final is None or final not in applied:
            problems.append(f"the final row {rows} is no single PATCH's payload {where}")
        elif after.status_code != 200 or fields(after.json()) != final:
            problems.append(f"GET disagrees with the table {where}: {after.text}")
    return problems


async def test_concurrent_patches_and_deletes_on_one_todo(full_db: str, tmp_path: Path) -> None:
    """50 PATCHes and DELETEs at once on one todo, several rounds: every answer is 200, 204 or
    404; exactly one DELETE wins; the row ends deleted, or equal to one whole PATCH payload."""
    rounds = [(10, 1), (10, 2), (10, 3), (0, 4), (0, 5)]  # (DELETEs in the storm, seed)
    sent = 0
    problems: list[str] = []
    seen: Counter[str] = Counter()
    async with started_processes(tmp_path / "logs") as procs:
        proc = await procs.serve("web", full_db)
        await proc.wait_ready()
        assert proc.base_url is not None
        limits = httpx.Limits(max_connections=STORM, max_keepalive_connections=STORM)
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=60, limits=limits) as client:
            token = await sign_up(client, "storm@example.com")
            client.headers["authorization"] = f"Bearer {token}"
            for deletes, seed in rounds:
                problems += await storm_round(client, full_db, deletes, seed, seen)
                sent += STORM
    unexpected = sum(1 for p in problems if p.startswith("unexpected answer"))
    record(
        "Concurrent PATCH and DELETE on one todo",
        how=(
            f"{len(rounds)} rounds of {STORM} requests sent at once to a real `web serve` "
            "process on one todo (PATCHes setting title+description+completed with one marker; "
            "10 DELETEs in 3 of the rounds); final row checked in web.todos"
        ),
        requests=sent,
        errors=unexpected,
        notes=(
            ", ".join(f"{n} x {answer}" for answer, n in sorted(seen.items()))
            + f"; {len(problems)} consistency problems"
        ),
    )
    assert not problems, problems
    assert "Traceback" not in proc.output(), proc.describe()


# Every DDL command in the database, with the platform's version as seen by that command's
# own transaction (its statement snapshot: what was committed when it ran).
AUDIT_DDL = """
CREATE SCHEMA audit;
CREATE TABLE audit.ddl (
    seq bigserial PRIMARY KEY,
    command_tag text NOT NULL,
    object_type text,
    schema_name text,
    object_identity text,
    platform_version text
);
CREATE FUNCTION audit.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v text;
BEGIN
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        v := NULL;
        IF to_regclass('public.platform_alembic_version') IS NOT NULL THEN
            EXECUTE 'SELECT string_agg(version_num, '' '' ORDER BY version_num)'
                    ' FROM public.platform_alembic_version' INTO v;
        END IF;
        INSERT INTO audit.ddl (command_tag, object_type, schema_name, object_identity,
                               platform_version)
        VALUES (r.command_tag, r.object_type, r.schema_name, r.object_identity, v);
    END LOOP;
END $$;
CREATE EVENT TRIGGER audit_ddl ON ddl_command_end EXECUTE FUNCTION audit.log_ddl();
"""


async def execute(url: str, script: str) -> None:
    """Run a script of several SQL commands on its own connection."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        await conn.execute(script)
    finally:
        await conn.close()


async def test_service_migration_racing_platform_migration(admin_url: str, tmp_path: Path) -> None:
    """`web migrate` and `platform-db migrate` started together on an empty database, several
    times: both exit 0, and every DDL of the web tree ran when the platform was at its head."""
    rounds = 3
    head = " ".join(PLATFORM.heads())
    web_ddl = early_ddl = 0
    bad: list[str] = []
    for n in range(rounds):
        url = await create_database(admin_url, prefix="race")
        try:
            await execute(url, AUDIT_DDL)
            # A barrier: the test holds the platform tree's migration lock, so `platform-db
            # migrate` blocks on it while `web migrate` finds an empty platform and waits.
            # Released once both are blocked, the platform migrates while web keeps polling.
            barrier = await asyncpg.connect(plain_url(url))
            try:
                await barrier.execute("SELECT pg_advisory_lock($1)", PLATFORM.lock_key)
                async with started_processes(tmp_path / f"logs-{n}") as procs:
                    web, platform = await asyncio.gather(
                        procs.start(
                            "web-migrate",
                            [command("web"), "migrate"],
                            service_env(url, PLATFORM_WAIT_TIMEOUT="60"),
                        ),
                        procs.start("platform-migrate", [command("platform-db"), "migrate"],
                                    service_env(url)),
                    )  # fmt: skip
                    await web.wait_for_output("waiting up to 60s for the platform-db", within=60)
                    await platform.wait_for_output("another process is migrating", within=60)
                    await barrier.execute("SELECT pg_advisory_unlock($1)", PLATFORM.lock_key)
                    codes = await asyncio.gather(web.wait(within=120), platform.wait(within=120))
                    for proc, code in zip((web, platform), codes, strict=True):
                        if code != 0 or "Traceback" in proc.output():
                            bad.append(f"round {n}: {proc.describe()}")
            finally:
                await barrier.close()
            events = await sql(url, "SELECT * FROM audit.ddl ORDER BY seq")
            mine = [
                e
                for e in events
                if e["schema_name"] == WEB_TREE.schema
                or (e["object_type"] == "schema" and e["object_identity"] == WEB_TREE.schema)
            ]
            theirs = [e for e in events if e["schema_name"] == PLATFORM.schema]
            web_ddl += len(mine)
            if not any(e["object_identity"] == "web.todos" for e in mine):
                bad.append(f"round {n}: no CREATE TABLE web.todos was seen: {events}")
            early = [dict(e) for e in mine if e["platform_version"] != head]
            early_ddl += len(early)
            if early:
                bad.append(f"round {n}: web DDL before the platform was at {head}: {early}")
            if mine and theirs and max(e["seq"] for e in theirs) > min(e["seq"] for e in mine):
                bad.append(f"round {n}: platform and web DDL interleaved: {events}")
            if await versions(url, "web.alembic_version") != list(WEB_TREE.heads()):
                bad.append(f"round {n}: web.alembic_version is not at head")
            if await versions(url, "public.platform_alembic_version") != list(PLATFORM.heads()):
                bad.append(f"round {n}: the platform's version table is not at head")
        finally:
            await drop_database(admin_url, url)
    record(
        "Service migration racing the platform migration",
        how=(
            f"{rounds} times on an empty database: `web migrate` (PLATFORM_WAIT_TIMEOUT=60) and "
            "`platform-db migrate` started at the same moment (the platform held back by its "
            "migration lock until web says it waits); an event trigger logs every DDL with the "
            "platform version its transaction saw; both must exit 0"
        ),
        requests=rounds * 2,
        errors=len(bad),
        notes=(
            f"{web_ddl} web DDL commands, {early_ddl} of them before the platform was at "
            f"{head}; {len(bad)} problems"
        ),
    )
    assert not bad, "\n".join(bad)
