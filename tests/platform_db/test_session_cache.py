"""The per-process session cache and its instant revocation through LISTEN/NOTIFY.

`SessionCache` is driven alone with an injected clock. Everything else runs real apps on the
real Postgres: in process, where `app.state` is visible and every SQL statement the app's
engine sends is recorded, and as real uvicorn processes (`web serve`, `trading serve`),
where a session is revoked through the API or by raw SQL as a better-auth app would.

Proof that a real process answers from its cache: while the test holds an ACCESS EXCLUSIVE
lock on `session`, any lookup in that table blocks (seen in pg_stat_activity as a lock
wait), so a request that answers anyway was served from memory.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from platform_auth.app import create_app
from platform_auth.cache import LISTENER_NAME, SessionCache, SessionListener
from platform_auth.sessions import find_session
from platform_auth.state import auth_state
from platform_auth.tokens import generate_id, generate_token
from platform_db.models import Session, User
from service_kit.db import Database
from service_kit.service import ServiceDefinition
from service_kit.state import kit_state
from service_kit.types import utcnow
from tests.conftest import auth_settings, running
from tests.e2e.conftest import Proc, Processes
from tests.factories import sign_up, unique_email
from tests.pg import plain_url, sql
from tests.polling import poll
from trading.app import SERVICE as TRADING

POLL = 5.0  # seconds an eventual effect (a NOTIFY, a reconnect) may take
SESSION_SQL = re.compile(r"\bsession\b", re.IGNORECASE)
ALL_TRIGGERS = (
    ("session", "session_notify_change"),
    ("session", "session_notify_truncate"),
    ("user", "user_notify_change"),
    ("user", "user_notify_truncate"),
)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def session_rows(db_url: str, token: str) -> int:
    rows = await sql(db_url, "SELECT count(*) AS n FROM session WHERE token = $1", token)
    return int(rows[0]["n"])


async def listener_pids(db_url: str) -> list[int]:
    """Backends of this database that a SessionListener holds (LISTEN, or its keepalive)."""
    rows = await sql(
        db_url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND application_name = $1",
        LISTENER_NAME,
    )
    return [int(r["pid"]) for r in rows]


async def kill_listener(db_url: str) -> int:
    """pg_terminate_backend the one listening connection and wait until it is gone."""
    pids = await listener_pids(db_url)
    assert len(pids) == 1, f"expected one listening connection, found {pids}"
    rows = await sql(db_url, "SELECT pg_terminate_backend($1, 5000) AS done", pids[0])
    assert rows[0]["done"] is True
    return pids[0]


# --- SessionCache alone ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pair(user_id: str | None = None, *, expires_in: float = 3600) -> tuple[Session, User]:
    now = utcnow()
    user = User(id=user_id or generate_id(), name="Ada", email=unique_email())
    session = Session(
        id=generate_id(),
        token=generate_token(),
        user_id=user.id,
        expires_at=now + timedelta(seconds=expires_in),
        created_at=now,
        updated_at=now,
    )
    return session, user


def enabled_cache(
    max_size: int = 10, ttl: float = 60.0, clock: Clock | None = None
) -> SessionCache:
    cache = SessionCache(max_size, ttl, clock=clock or Clock())
    cache.enable()
    return cache


def put(cache: SessionCache, pair: tuple[Session, User]) -> str:
    session, user = pair
    cache.put(session.token, session, user, cache.generation)
    return session.token


def test_put_then_get_serves_a_copy() -> None:
    cache = enabled_cache()
    session, user = pair = make_pair()
    expires_at = session.expires_at
    token = put(cache, pair)
    hit = cache.get(token)
    assert hit is not None
    assert hit.session.model_dump() == session.model_dump()
    assert hit.user.model_dump() == user.model_dump()
    # The request's ORM objects are not the cached ones: changing them changes nothing here.
    user.name, session.expires_at = "Mallory", expires_at - timedelta(days=1)
    hit = cache.get(token)
    assert hit is not None
    assert (hit.user.name, hit.session.expires_at) == ("Ada", expires_at)
    assert cache.get("some-other-token") is None


def test_evict_token_session_and_user() -> None:
    cache = enabled_cache()
    alice = make_pair()
    alice_2 = make_pair(alice[1].id)
    bob = make_pair()
    a1, a2, b = put(cache, alice), put(cache, alice_2), put(cache, bob)
    assert len(cache) == 3

    cache.evict_token(a1)
    assert (cache.get(a1), len(cache)) == (None, 2)
    cache.evict_token(a1)  # already gone: nothing happens
    assert len(cache) == 2

    cache.evict_session(bob[0].id)
    assert cache.get(b) is None
    assert cache.get(a2) is not None
    cache.evict_session("no-such-session")
    assert len(cache) == 1

    a1 = put(cache, alice)
    b = put(cache, bob)
    cache.evict_user(alice[1].id)  # every session of that user, and only those
    assert (cache.get(a1), cache.get(a2)) == (None, None)
    assert cache.get(b) is not None
    cache.evict_user("no-such-user")
    assert len(cache) == 1

    # After a token's eviction its indexes are gone too: a new entry is evicted correctly.
    put(cache, bob)
    cache.evict_user(bob[1].id)
    assert len(cache) == 0


@pytest.mark.parametrize("evict", ["session", "user", "clear"])
def test_wildcard_and_clear_empty_everything(evict: str) -> None:
    cache = enabled_cache()
    tokens = [put(cache, make_pair()) for _ in range(3)]
    if evict == "session":
        cache.evict_session("*")  # TRUNCATE session
    elif evict == "user":
        cache.evict_user("*")  # TRUNCATE "user"
    else:
        cache.clear()
    assert len(cache) == 0
    assert all(cache.get(t) is None for t in tokens)
    assert cache.enabled  # emptied, still on


def test_least_recently_used_go_first_at_max_size() -> None:
    cache = enabled_cache(max_size=2)
    a, b, c = make_pair(), make_pair(), make_pair()
    put(cache, a)
    put(cache, b)
    assert cache.get(a[0].token) is not None  # a is now the most recently used
    put(cache, c)
    assert len(cache) == 2
    assert cache.get(b[0].token) is None
    assert cache.get(a[0].token) is not None
    assert cache.get(c[0].token) is not None
    # The evicted entry left no index behind: evicting its session or user is harmless.
    cache.evict_session(b[0].id)
    cache.evict_user(b[1].id)
    assert len(cache) == 2
    # Putting a token again replaces its entry rather than adding one.
    put(cache, a)
    put(cache, a)
    assert len(cache) == 2


def test_entries_age_out_after_ttl() -> None:
    clock = Clock()
    cache = enabled_cache(ttl=30.0, clock=clock)
    token = put(cache, make_pair())
    clock.now += 30.0
    assert cache.get(token) is not None  # exactly ttl: still served
    clock.now += 0.5
    assert cache.get(token) is None
    assert len(cache) == 0  # and dropped, not only hidden


def test_a_disabled_cache_never_serves_and_never_stores() -> None:
    cache = SessionCache(10, 60.0, clock=Clock())
    assert not cache.enabled  # off until a listener turns it on
    pair = make_pair()
    token = put(cache, pair)
    assert (cache.get(token), len(cache)) == (None, 0)

    cache.enable()
    put(cache, pair)
    assert cache.get(token) is not None
    cache.disable()
    assert (cache.enabled, cache.get(token), len(cache)) == (False, None, 0)
    put(cache, pair)
    assert len(cache) == 0
    cache.enable()  # back on: what was there before is not
    assert cache.get(token) is None


def test_enable_starts_empty() -> None:
    cache = enabled_cache()
    token = put(cache, make_pair())
    cache.enable()  # a (re)connected listener: notifications may have been missed
    assert (cache.get(token), len(cache)) == (None, 0)


def test_size_zero_stores_nothing() -> None:
    cache = enabled_cache(max_size=0)
    token = put(cache, make_pair())
    assert (cache.get(token), len(cache)) == (None, 0)


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.evict_session("another-session"),
        lambda c: c.evict_session("*"),
        lambda c: c.evict_user("another-user"),
        lambda c: c.evict_user("*"),
        lambda c: c.clear(),
        lambda c: c.enable(),
        lambda c: (c.disable(), c.enable()),
    ],
    ids=["session", "session*", "user", "user*", "clear", "enable", "reconnect"],
)
def test_put_with_a_stale_generation_is_refused(change: Callable[[SessionCache], object]) -> None:
    """A notification while a request read the database: that read may be stale, not cached."""
    cache = enabled_cache()
    session, user = make_pair()
    read_at = cache.generation  # the request starts reading
    change(cache)  # a notification (any) arrives meanwhile
    cache.put(session.token, session, user, read_at)
    assert (cache.get(session.token), len(cache)) == (None, 0)
    cache.put(session.token, session, user, cache.generation)  # a fresh read is cached
    assert cache.get(session.token) is not None


def test_evicting_one_token_does_not_refuse_other_reads() -> None:
    """Only notifications move the generation; a local eviction (sign-out) does not."""
    cache = enabled_cache()
    other = make_pair()
    put(cache, other)
    session, user = make_pair()
    read_at = cache.generation
    cache.evict_token(other[0].token)
    cache.put(session.token, session, user, read_at)
    assert cache.get(session.token) is not None


# --- in process: app.state and the engine's statements visible ------------------------------


class Statements:
    """Every SQL statement the app's engine sends.

    SQLAlchemy's own statements pass `before_cursor_execute`; the kit's compiled ones run on
    the asyncpg connection underneath, so each checked-out connection also gets a query logger.
    """

    def __init__(self, app: FastAPI) -> None:
        self.seen: list[str] = []
        engine = kit_state(app).database.engine.sync_engine
        event.listen(engine, "before_cursor_execute", self._record)
        event.listen(engine.pool, "checkout", self._log_driver)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(statement)

    def _log_driver(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        # A set of callbacks: adding the same bound method again is a no-op.
        dbapi_connection.driver_connection.add_query_logger(self._logged)

    def _logged(self, query: Any) -> None:
        self.seen.append(query.query)

    async def settle(self) -> None:
        """Let asyncpg's query loggers run: it calls them with `loop.call_soon`, so a statement
        the request ran is recorded only once this task yields to the loop once."""
        await asyncio.sleep(0)

    def clear(self) -> None:
        self.seen.clear()

    def touching_session(self) -> list[str]:
        return [s for s in self.seen if SESSION_SQL.search(s)]


@dataclass
class Live:
    """An app served in process on `db_url`."""

    app: FastAPI
    client: httpx.AsyncClient
    db_url: str
    statements: Statements

    @property
    def cache(self) -> SessionCache:
        cache: SessionCache = auth_state(self.app).cache
        return cache

    @property
    def listener(self) -> SessionListener:
        listener: SessionListener | None = auth_state(self.app).listener
        assert listener is not None, "no session listener in this app"
        return listener

    async def listening(self) -> None:
        """Wait until the listener is up and the cache on."""
        await poll(
            lambda: _true(self.listener.connected.is_set() and self.cache.enabled),
            "the session listener connects",
        )

    async def sign_up(self, name: str = "Ada") -> tuple[str, str]:
        """A new user and session (token, user id); the client keeps no cookie."""
        token, user = await sign_up(self.client, name=name)
        self.client.cookies.clear()
        return token, str(user["id"])

    async def todos(self, token: str) -> httpx.Response:
        return await self.client.get("/todos", headers=bearer(token))

    async def session_of(self, token: str) -> Any:
        r = await self.client.get("/api/auth/get-session", headers=bearer(token))
        assert r.status_code == 200, r.text
        return r.json()

    async def cached_without_query(self, token: str) -> None:
        """`token` is served (GET /todos) and no statement touched `session` to do it."""
        self.statements.clear()
        r = await self.todos(token)
        assert r.status_code == 200, r.text
        await self.statements.settle()
        assert self.statements.touching_session() == [], self.statements.seen
        assert any("todos" in s for s in self.statements.seen), self.statements.seen

    async def warm(self, token: str) -> None:
        """Use `token` once (it is looked up and cached), then prove it is served from memory."""
        r = await self.todos(token)
        assert r.status_code == 200, r.text
        await self.cached_without_query(token)

    async def rejected(self, token: str) -> bool:
        r = await self.todos(token)
        if r.status_code == 200:
            return False
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED"), r.text
        return True


async def _true(value: bool) -> bool:
    return value


@asynccontextmanager
async def live_app(app: FastAPI, db_url: str) -> AsyncIterator[Live]:
    async with running(app) as client:
        yield Live(app=app, client=client, db_url=db_url, statements=Statements(app))


@pytest.fixture
async def trading(full_db: str) -> AsyncIterator[Live]:
    """trading in process with its session cache on (the listener connected)."""
    async with live_app(TRADING.create_app(auth_settings(full_db)), full_db) as live:
        await live.listening()
        yield live


async def test_steady_state_costs_no_session_query(
    service: ServiceDefinition, full_db: str
) -> None:
    async with live_app(service.create_app(auth_settings(full_db)), full_db) as live:
        await live.listening()
        token, user_id = await live.sign_up()
        r = await live.client.post("/todos", headers=bearer(token), json={"title": "milk"})
        assert r.status_code == 201, r.text

        # Emptied (as a reconnect would), the first use looks the session up ...
        live.cache.clear()
        live.statements.clear()
        r = await live.todos(token)
        assert r.status_code == 200, r.text
        await live.statements.settle()
        assert len(live.statements.touching_session()) == 1, live.statements.seen

        # ... and no later one does.
        live.statements.clear()
        for _ in range(5):
            r = await live.todos(token)
            assert r.status_code == 200, r.text
            assert [t["title"] for t in r.json()["items"]] == ["milk"]
            body = await live.session_of(token)
            assert (body["user"]["id"], body["session"]["token"]) == (user_id, token)
        await live.statements.settle()
        assert live.statements.touching_session() == [], live.statements.seen
        # GET /todos still ran its own query every time.
        assert sum("todos" in s for s in live.statements.seen) == 5, live.statements.seen


async def test_get_session_on_a_platform_app_is_served_from_the_cache(db_url: str) -> None:
    app = create_app(title="platform", settings=auth_settings(db_url))
    async with live_app(app, db_url) as live:
        await live.listening()
        token, user_id = await live.sign_up()
        assert (await live.session_of(token))["user"]["id"] == user_id
        live.statements.clear()
        for _ in range(5):
            assert (await live.session_of(token))["user"]["id"] == user_id
        assert live.statements.seen == []  # get-session on a hit: no statement at all


async def test_a_notification_during_the_lookup_keeps_the_read_out_of_the_cache(
    trading: Live,
) -> None:
    """The generation guard in `_optional_auth`: a read that raced a change is not cached."""
    token, _ = await trading.sign_up()
    cache = trading.cache
    engine = kit_state(trading.app).database.engine.sync_engine
    notified: list[str] = []

    def notify_meanwhile(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if SESSION_SQL.search(statement):
            cache.evict_session("a-session-changed-elsewhere")  # what the listener does
            notified.append(statement)

    event.listen(engine, "before_cursor_execute", notify_meanwhile)
    try:
        r = await trading.todos(token)
        assert r.status_code == 200, r.text  # the request itself is answered from its read
    finally:
        event.remove(engine, "before_cursor_execute", notify_meanwhile)
    assert len(notified) == 1
    assert cache.get(token) is None
    # Without a notification the next read is cached as usual.
    await trading.warm(token)


async def test_revocation_by_sql_while_the_listener_is_down_is_honoured(trading: Live) -> None:
    token, _ = await trading.sign_up()
    await trading.warm(token)
    old_pid = await kill_listener(trading.db_url)
    # At once, no waiting: nobody would tell this process about the DELETE.
    await sql(trading.db_url, "DELETE FROM session WHERE token = $1", token)
    trading.statements.clear()
    assert await trading.rejected(token)
    await trading.statements.settle()
    assert len(trading.statements.touching_session()) == 1, trading.statements.seen

    # It reconnects by itself (a new backend), and caching resumes.
    async def reconnected() -> bool:
        pids = await listener_pids(trading.db_url)
        return bool(pids) and old_pid not in pids and trading.cache.enabled

    await poll(reconnected, "the listener reconnects after pg_terminate_backend")
    assert trading.listener.connected.is_set()
    token_2, _ = await trading.sign_up("Bo")
    await trading.warm(token_2)
    # ... and a later revocation reaches it through NOTIFY again.
    await sql(trading.db_url, "DELETE FROM session WHERE token = $1", token_2)
    await poll(lambda: trading.rejected(token_2), "a revocation after the reconnect")
    assert trading.cache.get(token_2) is None


async def load(live: Live, token: str) -> tuple[Session, User]:
    """The session row and its user, as the app reads them (aware UTC datetimes)."""
    database: Database = kit_state(live.app).database
    async with database.write_sessionmaker() as db:
        found = await find_session(db, token)
    assert found is not None
    return found


async def test_an_expired_cached_session_is_not_served(trading: Live) -> None:
    """Expiry is checked on every hit: the cache's copy decides, not the entry's age."""
    token, _ = await trading.sign_up()
    await trading.warm(token)
    # The row expires (the UPDATE evicts through NOTIFY; wait for that, then cache it again).
    await sql(
        trading.db_url,
        "UPDATE session SET expires_at = now() at time zone 'utc' - interval '1 minute'"
        " WHERE token = $1",
        token,
    )
    await poll(lambda: _true(trading.cache.get(token) is None), "the UPDATE evicts")
    expired, user = await load(trading, token)
    assert expired.expires_at < utcnow()
    cache = trading.cache

    # Control: the same token cached with a future expiry is served from the cache alone.
    alive = Session(**{**expired.model_dump(), "expires_at": utcnow() + timedelta(hours=1)})
    cache.put(token, alive, user, cache.generation)
    await trading.cached_without_query(token)

    # Cached with its real, past expiry: rejected, evicted, and the row deleted.
    cache.put(token, expired, user, cache.generation)
    assert cache.get(token) is not None
    assert await trading.rejected(token)
    assert cache.get(token) is None
    assert await session_rows(trading.db_url, token) == 0


async def test_a_cached_session_stops_working_when_it_expires(full_db: str) -> None:
    """A session lasting 3 s, cached: rejected once it expires, long before the cache's TTL."""
    settings = auth_settings(full_db, SESSION_EXPIRES_IN=3, SESSION_UPDATE_AGE=0)
    async with live_app(TRADING.create_app(settings), full_db) as live:
        await live.listening()
        assert live.cache.ttl > 60
        token, _ = await live.sign_up()
        r = await live.todos(token)
        assert r.status_code == 200, r.text
        assert live.cache.get(token) is not None  # cached
        await poll(lambda: live.rejected(token), "the session expires", within=10)
        assert live.cache.get(token) is None
        assert await session_rows(full_db, token) == 0  # went to the database, which deleted it
        assert await live.rejected(token)


async def test_a_session_due_for_refresh_is_not_served_from_the_cache(trading: Live) -> None:
    """A hit that needs the sliding refresh goes to the database instead."""
    token, _ = await trading.sign_up()
    session, user = await load(trading, token)
    in_db = session.expires_at
    # Cached as if its expiry had been set two days ago (the refresh is due after one).
    stale = Session(**{**session.model_dump(), "expires_at": in_db - timedelta(days=2)})
    trading.cache.put(token, stale, user, trading.cache.generation)
    trading.statements.clear()
    body = await trading.session_of(token)
    assert body["session"]["token"] == token
    await trading.statements.settle()
    assert len(trading.statements.touching_session()) == 1, trading.statements.seen
    hit = trading.cache.get(token)  # replaced by what the database says
    assert hit is not None
    assert hit.session.expires_at == in_db


@pytest.mark.parametrize(
    "dropped",
    [
        [name for _, name in ALL_TRIGGERS],
        ["session_notify_change"],
        ["session_notify_truncate", "user_notify_truncate"],
    ],
    ids=["all", "session-row", "truncate"],
)
async def test_without_the_triggers_the_cache_stays_off(
    full_db: str, dropped: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Stamped at head but some trigger missing: nobody would evict, so never serve a copy."""
    caplog.set_level(logging.WARNING, logger="platform_auth.cache")
    for table, name in ALL_TRIGGERS:
        if name in dropped:
            await sql(full_db, f'DROP TRIGGER {name} ON "{table}"')
    async with live_app(TRADING.create_app(auth_settings(full_db)), full_db) as live:
        listener = live.listener

        async def decided() -> bool:
            warned = any("triggers" in r.getMessage() for r in caplog.records)
            return warned or listener.connected.is_set()

        await poll(decided, "the listener checks the triggers")
        assert not live.cache.enabled, "the cache was turned on without every trigger"
        assert not listener.connected.is_set()
        warnings = [r.getMessage() for r in caplog.records if "triggers" in r.getMessage()]
        assert any(name in w for w in warnings for name in dropped), warnings

        # Requests still authenticate, each from the database.
        token, _ = await live.sign_up()
        live.statements.clear()
        for _ in range(3):
            r = await live.todos(token)
            assert r.status_code == 200, r.text
        await live.statements.settle()
        assert len(live.statements.touching_session()) == 3, live.statements.seen
        assert len(live.cache) == 0
        # And a revocation any way at all is honoured at once.
        other, _ = await live.sign_up("Bo")
        assert (await live.todos(other)).status_code == 200
        await sql(full_db, "TRUNCATE session")
        assert await live.rejected(token)
        assert await live.rejected(other)


async def test_cache_size_zero_means_no_listener_and_no_cache(full_db: str) -> None:
    settings = auth_settings(full_db, SESSION_CACHE_SIZE=0)
    async with live_app(TRADING.create_app(settings), full_db) as live:
        assert auth_state(live.app).listener is None
        token, _ = await live.sign_up()
        live.statements.clear()
        for _ in range(3):
            r = await live.todos(token)
            assert r.status_code == 200, r.text
        await live.statements.settle()
        assert len(live.statements.touching_session()) == 3, live.statements.seen
        assert (live.cache.enabled, len(live.cache)) == (False, 0)
        assert await listener_pids(full_db) == []  # no LISTEN connection at all
        await sql(full_db, "DELETE FROM session WHERE token = $1", token)
        assert await live.rejected(token)  # at once


async def test_stop_ends_the_listener_even_if_a_cancellation_is_swallowed(full_db: str) -> None:
    """An await inside the listener that swallows one cancellation (as asyncio.wait_for does
    on 3.11 when its future completes at that moment) must not keep it running after stop."""
    entered, swallowed = asyncio.Event(), asyncio.Event()

    async def probe(channel: str) -> None:
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()  # and carry on, as a buggy library would
        await asyncio.Event().wait()  # forever, unless cancelled again

    dsn = plain_url(full_db)
    listener = SessionListener(dsn, SessionCache(10, 60.0), probe=probe, probe_timeout=0.5)
    listener.start()
    task = listener._task
    assert task is not None

    async def probing() -> bool:
        return entered.is_set()

    await poll(probing, "the listener runs its probe")
    assert len(await listener_pids(full_db)) == 1
    stopping = asyncio.create_task(listener.stop())
    try:
        # Not asyncio.timeout: cancelling a stop that awaits the task would cancel it again.
        await asyncio.wait({stopping}, timeout=POLL)
        assert stopping.done(), "stop() waits for a listener that swallowed its cancellation"
    finally:
        task.cancel()
        stopping.cancel()
    assert swallowed.is_set()
    assert task.done()
    assert not listener.cache.enabled
    await poll(lambda: _no_listener(full_db), "the listening connection is closed")


async def _no_listener(db_url: str) -> bool:
    return await listener_pids(db_url) == []


# --- real processes ---------------------------------------------------------------------------


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Processes]:
    """Started processes, all stopped at teardown (request after the database fixture)."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    started = Processes(log_dir)
    try:
        yield started
    finally:
        await started.stop_all()


class Remote:
    """A client for one served process; only the bearer token named is sent."""

    def __init__(self, proc: Proc, client: httpx.AsyncClient, db_url: str) -> None:
        self.proc, self.client, self.db_url = proc, client, db_url

    async def sign_up(self, name: str = "Ada") -> tuple[str, str]:
        body = {"name": name, "email": unique_email(), "password": "correct horse battery"}
        r = await self.client.post("/api/auth/sign-up/email", json=body)
        assert r.status_code == 200, r.text
        self.client.cookies.clear()
        return r.json()["token"], r.json()["user"]["id"]

    async def get_session(self, token: str) -> httpx.Response:
        self.client.cookies.clear()
        return await self.client.get("/api/auth/get-session", headers=bearer(token))

    async def session_of(self, token: str) -> Any:
        r = await self.get_session(token)
        assert r.status_code == 200, r.text
        return r.json()

    async def rejected(self, token: str) -> bool:
        self.client.cookies.clear()
        r = await self.client.get("/todos", headers=bearer(token))
        if r.status_code == 200:
            return False
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED"), r.text
        return True

    async def served_from_cache(self, token: str) -> bool:
        """Whether get-session answers for `token` while `session` is locked (see the top)."""
        conn = await asyncpg.connect(plain_url(self.db_url))
        request: asyncio.Task[httpx.Response] | None = None
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("LOCK TABLE session IN ACCESS EXCLUSIVE MODE")
            request = asyncio.create_task(self.get_session(token))
            blocked = False
            deadline = time.monotonic() + POLL
            while not request.done():
                blocked = await conn.fetchval(
                    "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
                )
                if blocked:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"get-session neither answered nor waited: {self.proc.describe()}")
                await asyncio.sleep(0.02)
            await tx.rollback()  # a blocked lookup goes on now
            r = await request
        finally:
            if request is not None and not request.done():
                request.cancel()
            await conn.close()
        assert r.status_code == 200, r.text
        assert r.json() is not None, "the session is unknown"
        return not blocked

    async def warm(self, token: str) -> None:
        """Use `token` until this process serves it from its cache (bounded)."""
        await poll(lambda: self.served_from_cache(token), f"{self.proc.name} caches the session")


@asynccontextmanager
async def serving(procs: Processes, db_url: str, *names: str) -> AsyncIterator[list[Remote]]:
    started = [await procs.serve(name, db_url) for name in names]
    await asyncio.gather(*(p.wait_ready() for p in started))
    async with clients_for(started) as clients:
        yield [Remote(p, c, db_url) for p, c in zip(started, clients, strict=True)]
    for p in started:
        assert p.returncode is None, p.describe()
        assert "Traceback" not in p.output(), p.describe()


@asynccontextmanager
async def clients_for(started: list[Proc]) -> AsyncIterator[list[httpx.AsyncClient]]:
    clients = [httpx.AsyncClient(base_url=str(p.base_url), timeout=30) for p in started]
    try:
        yield clients
    finally:
        for c in clients:
            await c.aclose()


async def test_sign_out_through_web_ends_the_session_in_trading(
    full_db: str, procs: Processes
) -> None:
    async with serving(procs, full_db, "web", "trading") as (web, trading):
        token, _ = await web.sign_up()
        other, _ = await web.sign_up("Bo")
        await trading.warm(token)
        await trading.warm(other)
        r = await web.client.post("/api/auth/sign-out", headers=bearer(token))
        assert (r.status_code, r.json()) == (200, {"success": True}), r.text
        await poll(lambda: trading.rejected(token), "trading rejects the signed-out session")
        assert (await trading.session_of(token)) is None
        assert await web.rejected(token)
        # Only that session ended; the other is still served from trading's cache.
        assert await trading.served_from_cache(other)


def _revocations() -> Iterator[Any]:
    yield pytest.param("DELETE FROM session WHERE token = $1", "token", id="delete-session")
    yield pytest.param('DELETE FROM "user" WHERE id = $1', "user", id="delete-user")
    yield pytest.param("TRUNCATE session", None, id="truncate-session")
    yield pytest.param('TRUNCATE "user" CASCADE', None, id="truncate-user")
    yield pytest.param(
        "UPDATE session SET expires_at = now() at time zone 'utc' - interval '1 second'"
        " WHERE token = $1",
        "token",
        id="expire-session",
    )


@pytest.mark.parametrize(("statement", "arg"), list(_revocations()))
async def test_a_revocation_by_raw_sql_reaches_a_running_service(
    full_db: str, procs: Processes, statement: str, arg: str | None
) -> None:
    """What a better-auth app (or an operator) does to the table: trading honours it."""
    async with serving(procs, full_db, "trading") as (trading,):
        token, user_id = await trading.sign_up()
        other, _ = await trading.sign_up("Bo")
        await trading.warm(token)
        await trading.warm(other)
        args = {"token": [token], "user": [user_id], None: []}[arg]
        await sql(full_db, statement, *args)
        await poll(lambda: trading.rejected(token), f"trading honours {statement!r}")
        assert (await trading.session_of(token)) is None
        if arg is None:  # TRUNCATE: everyone's sessions end
            assert await trading.rejected(other)
        else:  # only that one: the other is still cached
            assert await trading.served_from_cache(other)


async def test_a_user_change_by_raw_sql_reaches_a_running_service(
    full_db: str, procs: Processes
) -> None:
    async with serving(procs, full_db, "web", "trading") as (web, trading):
        token, user_id = await web.sign_up("Ada")
        await trading.warm(token)
        assert (await trading.session_of(token))["user"]["name"] == "Ada"
        await sql(
            full_db,
            "UPDATE \"user\" SET name = 'Ada Lovelace', email_verified = true WHERE id = $1",
            user_id,
        )

        async def renamed() -> bool:
            user = (await trading.session_of(token))["user"]
            return bool(user["name"] == "Ada Lovelace" and user["emailVerified"] is True)

        await poll(renamed, "trading sees the user's new name")
        assert (await web.session_of(token))["user"]["name"] == "Ada Lovelace"
        await trading.warm(token)  # cached again, with the new data


async def test_a_killed_listener_in_a_running_service_bypasses_the_cache(
    full_db: str, procs: Processes
) -> None:
    async with serving(procs, full_db, "trading") as (trading,):
        token, _ = await trading.sign_up()
        await trading.warm(token)
        old_pid = await kill_listener(full_db)
        await sql(full_db, "DELETE FROM session WHERE token = $1", token)
        assert await trading.rejected(token)  # at once: the copy is not served

        # It reconnects and caches again; a revocation then arrives through NOTIFY.
        async def reconnected() -> bool:
            pids = await listener_pids(full_db)
            return bool(pids) and old_pid not in pids

        await poll(reconnected, "trading's listener reconnects")
        token_2, _ = await trading.sign_up("Bo")
        await trading.warm(token_2)
        await sql(full_db, "DELETE FROM session WHERE token = $1", token_2)
        await poll(lambda: trading.rejected(token_2), "a revocation after the reconnect")
        assert "lost the listening connection" in trading.proc.output()
