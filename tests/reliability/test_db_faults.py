"""Database faults against real `serve` processes: Postgres restarted or crashed under load,
Postgres unreachable at start, and a schema change while a service is under traffic.

Each test records its figures for docs/reliability.md (tests/reliability/report.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from platform_db.trees import PLATFORM
from platform_dev.embedded import EmbeddedPostgres, free_port
from service_kit import migrate
from tests.e2e.conftest import command, run, service_env
from tests.pg import create_database, sql
from tests.reliability.fault_helpers import (
    DURABLE_SETTINGS,
    Load,
    Outcome,
    is_clean_unavailable,
    own_server,
    poll,
    sign_up,
    start_server,
    started_processes,
    stop_server,
)
from tests.reliability.record import record

RECOVERY_BOUND = 30.0  # seconds within which requests must succeed again after a restart
LISTENER_UP = "session cache on: listening"  # logged each time the LISTEN connection is up


MODES = {"fast": "a clean shutdown", "immediate": "a crash: no checkpoint, WAL replay at start"}


def created(o: Outcome) -> bool:
    return o.status == 201


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_postgres_restart_under_load(tmp_path: Path, mode: str) -> None:
    """8 clients POST /todos without pause while Postgres is shut down (`fast`) or crashed
    (`immediate`, then WAL replay) and started again on the same port."""
    async with (
        own_server(tmp_path / "pg") as server,
        started_processes(tmp_path / "logs") as procs,
    ):
        url = await create_database(server.url(), prefix="faults")
        await migrate.upgrade(PLATFORM, url)
        proc = await procs.serve("web", url)
        await proc.wait_ready()
        assert proc.base_url is not None
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=30) as client:
            token = await sign_up(client, f"restart-{mode}@example.com")
            client.headers["authorization"] = f"Bearer {token}"

            async def post_todo(load: Load, worker: int, n: int) -> Outcome:
                title = f"{mode}-{worker}-{n}"
                return await load.request("POST", "/todos", title=title, json={"title": title})

            load = Load(client, post_todo, workers=8)
            load.start()
            try:
                await load.until("201 before the fault", created, 40, within=60)

                load.phase = "down"
                await stop_server(server, mode)
                # While the database is away the process is alive but not ready ...
                healthz = await client.get("/healthz")
                readyz = await client.get("/readyz")
                # ... and requests get a clean 503 (wait until several did, bounded).
                await load.until(
                    "503 while down",
                    lambda o: o.phase == "down" and o.status == 503,
                    5,
                    within=30,
                )
                await start_server(server)
                load.phase = "after"
                await load.until(
                    "201 after the restart",
                    lambda o: o.phase == "after" and o.status == 201,
                    40,
                    within=RECOVERY_BOUND,
                )
            finally:
                await load.stop()

            after_get = await client.get("/todos", params={"limit": 5})
        await proc.wait_ready(within=RECOVERY_BOUND)

        # The session cache's LISTEN connection died with the server; it reconnects by itself.
        listener_back = await poll(
            lambda: proc.output().count(LISTENER_UP) >= 2, within=RECOVERY_BOUND
        )

        rows = await sql(url, "SELECT title FROM web.todos")
        stored = {r["title"] for r in rows}
        acked = {o.title for o in load.outcomes if o.status == 201 and o.title is not None}
        lost = sorted(t for t in acked if t not in stored)
        # A request whose connection died after Postgres committed but before the answer:
        # a 503 for a row that exists (the client retries; at-least-once). Reported, not lost.
        in_doubt = sum(1 for o in load.outcomes if o.status != 201 and o.title in stored)
        unavailable = load.count(is_clean_unavailable)
        bad = [o for o in load.outcomes if o.status != 201 and not is_clean_unavailable(o)]
        log = proc.output()
        record(
            f"Postgres restart under load (pg_ctl stop -m {mode})",
            how=(
                "8 concurrent clients POST /todos to a real `web serve` process while its "
                f"Postgres (fsync on) is stopped with `pg_ctl stop -m {mode}` ({MODES[mode]})"
                " and started again on the same port; every acknowledged (201) title is then "
                "looked up in web.todos"
            ),
            requests=len(load.outcomes),
            errors=len(load.outcomes) - len(acked),
            lost=len(lost),
            notes=(
                f"{len(acked)} acknowledged; {unavailable} clean 503 SERVICE_UNAVAILABLE; "
                f"{len(bad)} other errors; {in_doubt} answered 503 but committed (in doubt); "
                f"session listener {'reconnected' if listener_back else 'did NOT reconnect'}"
            ),
        )

        assert not bad, f"answers other than 201 or a clean 503: {load.summary()}"
        assert lost == [], f"{len(lost)} acknowledged rows are missing: {lost[:10]}"
        assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})
        assert readyz.status_code == 503, readyz.text
        assert readyz.json()["code"] == "NOT_READY", readyz.text
        assert after_get.status_code == 200, after_get.text
        assert proc.returncode is None, proc.describe()
        assert listener_back, f"the session listener did not reconnect: {proc.describe(tail=40)}"
        assert "Traceback" not in log, proc.describe(tail=200)


async def test_postgres_unreachable_at_start_fails_after_its_bound() -> None:
    """`web serve` with nothing listening on its database's port and PLATFORM_WAIT_TIMEOUT=5:
    it says that it waits for the database, then exits 1 with one line, no traceback."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    serve = [command("web"), "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    code, out, err = await run(serve, service_env(url, PLATFORM_WAIT_TIMEOUT="5"), within=60)
    # While it retries, the operator sees why it does not start (not 5 or 60 silent seconds).
    before_giving_up = [line.lower() for line in err.splitlines() if not line.startswith("error:")]
    said_it_waits = any("database" in line and "wait" in line for line in before_giving_up)
    clean_exit = code == 1 and "cannot reach the database after 5s" in err
    no_traceback = "Traceback" not in out + err
    record(
        "Postgres unreachable at start (short bound)",
        how=(
            "`web serve` with DATABASE_URL on a closed port and PLATFORM_WAIT_TIMEOUT=5: it must "
            "log that it waits for the database, then exit 1 with one line and no traceback"
        ),
        requests=1,
        errors=[clean_exit, no_traceback, said_it_waits].count(False),
        notes=(
            f"exit {code}; said that it waits: {'yes' if said_it_waits else 'no'}; last line: "
            + (err.strip().splitlines()[-1] if err.strip() else "(no output)")
        ),
    )
    assert clean_exit, (code, out, err)
    assert no_traceback, err
    assert said_it_waits, (
        f"nothing said that it waits for the database before giving up: {err.strip()!r}"
    )


async def test_serve_comes_up_when_postgres_starts_late(tmp_path: Path) -> None:
    """`web serve` started 3 s before its Postgres, with PLATFORM_WAIT_TIMEOUT=60: it keeps
    retrying and serves once the server is up and the platform tree migrated."""
    port = free_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    server = EmbeddedPostgres(tmp_path / "pg", port=port, settings=DURABLE_SETTINGS)
    async with started_processes(tmp_path / "logs") as procs:
        proc = await procs.serve("web", url, PLATFORM_WAIT_TIMEOUT="60")
        await asyncio.sleep(3)  # let it try (and fail to connect) for a while first
        assert proc.returncode is None, proc.describe()
        try:
            await asyncio.to_thread(server.start)
            await migrate.upgrade(PLATFORM, url)
            await proc.wait_ready(within=60)
            assert proc.base_url is not None
            async with httpx.AsyncClient(base_url=proc.base_url, timeout=30) as client:
                token = await sign_up(client, "late@example.com")
                r = await client.post(
                    "/todos",
                    json={"title": "after a late start"},
                    headers={"authorization": f"Bearer {token}"},
                )
        finally:
            await procs.stop_all()
            await asyncio.to_thread(server.stop)
    output = proc.output()
    record(
        "Postgres starts after the service",
        how=(
            "`web serve` (PLATFORM_WAIT_TIMEOUT=60) started 3 s before its Postgres; once the "
            "server is up and the platform migrated it must be ready and serve a POST /todos"
        ),
        requests=2,
        errors=int(r.status_code != 201) + int("Traceback" in output),
    )
    assert r.status_code == 201, r.text
    assert "Traceback" not in output, proc.describe()


# DDL another process runs on the service's own table while it serves, like a migration of
# its tree. An added column leaves the statements the service prepared and cached on its
# pooled connections valid; a column type change alters their result type, and Postgres then
# refuses to run them ("cached plan must not change result type").
SCHEMA_CHANGES: tuple[tuple[str, str], ...] = (
    ("add a column", "ALTER TABLE trading.todos ADD COLUMN priority integer"),
    ("change a column type", "ALTER TABLE trading.todos ALTER COLUMN title TYPE varchar(200)"),
    ("change it back", "ALTER TABLE trading.todos ALTER COLUMN title TYPE text"),
)


async def test_schema_change_while_serving(full_db: str, tmp_path: Path) -> None:
    """`trading serve` under steady GET/POST/PATCH load while another connection alters
    trading.todos: no request may fail, during or after the change."""
    async with started_processes(tmp_path / "logs") as procs:
        proc = await procs.serve("trading", full_db)
        await proc.wait_ready()
        assert proc.base_url is not None
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=30) as client:
            token = await sign_up(client, "ddl@example.com")
            client.headers["authorization"] = f"Bearer {token}"
            workers = 8
            mine: list[str] = []
            for i in range(workers):
                r = await client.post("/todos", json={"title": f"seed {i}"})
                assert r.status_code == 201, r.text
                mine.append(r.json()["id"])

            async def mixed(load: Load, worker: int, n: int) -> Outcome:
                todo = f"/todos/{mine[worker]}"
                kind = n % 4
                if kind == 0:
                    title = f"ddl-{worker}-{n}"
                    return await load.request("POST", "/todos", title=title, json={"title": title})
                if kind == 1:
                    return await load.request("GET", "/todos", params={"limit": 10})
                if kind == 2:
                    return await load.request("GET", todo)
                body = {"title": f"patched {n}", "completed": n % 2 == 0}
                return await load.request("PATCH", todo, json=body)

            def ok(o: Outcome) -> bool:
                return o.status in (200, 201)

            load = Load(client, mixed, workers=workers)
            # Where each change began in the list of answers (in the order they came back).
            marks: list[int] = []
            load.start()
            try:
                # Every statement is prepared (and cached) on the pooled connections first.
                await load.until("successful requests before the change", ok, 200, within=60)
                for name, ddl in SCHEMA_CHANGES:
                    marks.append(len(load.outcomes))
                    await sql(full_db, ddl)
                    load.phase = name
                    await load.until(
                        f"successful requests after {name}",
                        lambda o, name=name: o.phase == name and ok(o),  # type: ignore[misc]
                        200,
                        within=60,
                    )
            finally:
                await load.stop()

        failed = [o for o in load.outcomes if not ok(o)]
        bounds = [*marks, len(load.outcomes)]
        per_change = [
            f"{name}: {sum(1 for o in load.outcomes[start:end] if not ok(o))} failed"
            for (name, _), start, end in zip(SCHEMA_CHANGES, bounds, bounds[1:], strict=False)
        ]
        log = proc.output()
        record(
            "Schema change while serving (stale prepared statements)",
            how=(
                "8 clients GET/POST/PATCH /todos on a real `trading serve` process while another "
                "connection runs ALTER TABLE trading.todos: ADD COLUMN, then ALTER COLUMN title "
                "TYPE varchar(200), then back to text"
            ),
            requests=len(load.outcomes),
            errors=len(failed),
            notes="; ".join(per_change),
        )
        # Reads are retried inside the service; a write whose transaction a stale statement
        # aborted answers a clean 503 (the client may retry at once). Nothing else fails, and
        # once the last change has settled (its first 20 successes back), nothing fails at all.
        # (A failure during one change can be labelled with the phase before it: the label moves
        # only when the ALTER returns.)
        assert all(is_clean_unavailable(o) for o in failed), load.summary()
        assert not [o for o in failed if o.method == "GET"], load.summary()
        last = [o for o in load.outcomes if o.phase == SCHEMA_CHANGES[-1][0]]
        settled = [i for i, o in enumerate(last) if ok(o)][19]
        late = [o for o in last[settled:] if not ok(o)]
        assert not late, f"{len(late)} failed after the last change settled: {load.summary()}"
        assert "Traceback" not in log, proc.describe(tail=200)
