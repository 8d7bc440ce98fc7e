"""Validated sessions cached in process, evicted at once through Postgres LISTEN/NOTIFY.

The platform's migration 0002 puts triggers on `session` and `user` that NOTIFY the id of
every changed or deleted row. Each process keeps one dedicated connection LISTENing; a
notification evicts the matching entries. The cache only serves while that connection is
up: when it drops, the cache is emptied and bypassed (every request goes to the database)
until the listener is back, because notifications sent meanwhile are lost.

The listener proves that it hears before the cache serves: at start and after each reconnect
it sends itself a NOTIFY through the normal pool (DATABASE_URL) and waits for it on its own
connection (DATABASE_DIRECT_URL). A LISTEN misrouted through a transaction pooler hears
nothing, so the cache then stays off, and the log says why and what to set.

A request that read a session from the database only caches it if no notification arrived
since it started reading (`generation`), so a sign-out racing a read cannot leave a revoked
session cached. Expiry is checked on every hit, and entries also age out after `ttl`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from platform_db.models import Session, User
from service_kit.db import PROBE_TIMEOUT, hears_notify

log = logging.getLogger(__name__)

SESSION_CHANNEL = "platform_session_changed"
USER_CHANNEL = "platform_user_changed"
TRIGGERS = (
    "session_notify_change",
    "session_notify_truncate",
    "user_notify_change",
    "user_notify_truncate",
)


@dataclass(frozen=True)
class CachedSession:
    session: Session
    user: User
    stored_at: float


def _copy_session(session: Session) -> Session:
    return Session(**session.model_dump())


def _copy_user(user: User) -> User:
    return User(**user.model_dump())


class SessionCache:
    """token -> (session, user), bounded (least recently used go first), off until enabled."""

    def __init__(
        self, max_size: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_size, self.ttl, self._clock = max_size, ttl, clock
        self.enabled = False
        self.generation = 0
        # Since the process started, for the metrics: answered from memory, looked up in the
        # database (while enabled), dropped (evicted, expired, displaced).
        self.hits = self.misses = self.evictions = 0
        self._entries: OrderedDict[str, CachedSession] = OrderedDict()
        self._token_by_session: dict[str, str] = {}
        self._tokens_by_user: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> CachedSession | None:
        if not self.enabled:
            return None
        entry = self._entries.get(token)
        if entry is None:
            self.misses += 1
            return None
        if self._clock() - entry.stored_at > self.ttl:
            self.evict_token(token)
            self.misses += 1
            return None
        self._entries.move_to_end(token)
        self.hits += 1
        return entry

    def put(self, token: str, session: Session, user: User, generation: int) -> None:
        """Cache a session read from the database when no eviction happened since `generation`."""
        if not self.enabled or generation != self.generation or self.max_size <= 0:
            return
        self.evict_token(token)
        self._entries[token] = CachedSession(
            _copy_session(session), _copy_user(user), self._clock()
        )
        self._token_by_session[session.id] = token
        self._tokens_by_user.setdefault(user.id, set()).add(token)
        while len(self._entries) > self.max_size:
            self.evict_token(next(iter(self._entries)))

    def evict_token(self, token: str) -> None:
        entry = self._entries.pop(token, None)
        if entry is None:
            return
        self.evictions += 1
        self._token_by_session.pop(entry.session.id, None)
        tokens = self._tokens_by_user.get(entry.user.id)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self._tokens_by_user[entry.user.id]

    def evict_session(self, session_id: str) -> None:
        self.generation += 1
        if session_id == "*":
            self.clear()
            return
        token = self._token_by_session.get(session_id)
        if token is not None:
            self.evict_token(token)

    def evict_user(self, user_id: str) -> None:
        self.generation += 1
        if user_id == "*":
            self.clear()
            return
        for token in list(self._tokens_by_user.get(user_id, ())):
            self.evict_token(token)

    def clear(self) -> None:
        self.generation += 1
        self.evictions += len(self._entries)
        self._entries.clear()
        self._token_by_session.clear()
        self._tokens_by_user.clear()

    def enable(self) -> None:
        self.clear()
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False
        self.clear()


class DeafListener(Exception):
    """The listening connection did not hear its own NOTIFY sent through the pool."""


UNPROVEN_RETRY = 30.0  # seconds between two proofs that failed
LISTENER_NAME = "session-cache-listener"  # its application_name, for pg_stat_activity


class SessionListener:
    """Keeps one connection LISTENing for session and user changes; reconnects when it drops.

    `probe(channel)` sends a NOTIFY on `channel` the way the service's own writes go (its
    pool); the cache serves only once this connection has heard one.
    """

    def __init__(
        self,
        dsn: str,
        cache: SessionCache,
        *,
        probe: Callable[[str], Awaitable[object]],
        connect_kwargs: dict[str, Any] | None = None,
        retry_interval: float = 1.0,
        keepalive: float = 10.0,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self.dsn, self.cache, self.probe = dsn, cache, probe
        self.probe_timeout = probe_timeout
        self._deaf_logged = False
        self.connect_kwargs = connect_kwargs or {}
        self.retry_interval, self.keepalive = retry_interval, keepalive
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="session-cache-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        # Cancel until it is done: a library awaited inside may swallow one cancellation.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        self.cache.disable()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: str) -> None:
        if channel == SESSION_CHANNEL:
            self.cache.evict_session(payload)
        elif channel == USER_CHANNEL:
            self.cache.evict_user(payload)

    async def _missing_triggers(self, conn: asyncpg.Connection) -> list[str]:
        found = await conn.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgname = ANY($1::text[]) AND NOT tgisinternal"
            " AND tgenabled <> 'D'"
            " AND tgrelid IN (to_regclass('public.session'), to_regclass('public.\"user\"'))",
            list(TRIGGERS),
        )
        return sorted(set(TRIGGERS) - {r["tgname"] for r in found})

    async def _listen(self, conn: asyncpg.Connection) -> None:
        """Serve from the cache while `conn` is listening; return when it is gone."""
        lost = asyncio.Event()

        def on_lost(_conn: object) -> None:
            self.cache.disable()  # at once, before another request reads the cache
            lost.set()

        conn.add_termination_listener(on_lost)
        await conn.add_listener(SESSION_CHANNEL, self._on_notify)
        await conn.add_listener(USER_CHANNEL, self._on_notify)
        if not await hears_notify(conn, self.probe, self.probe_timeout):
            raise DeafListener()
        self.cache.enable()
        self.connected.set()
        self._deaf_logged = False
        log.info("session cache on: listening for session changes (heard its own NOTIFY)")
        while not lost.is_set():
            try:
                async with asyncio.timeout(self.keepalive):  # not wait_for: see hears_notify
                    await lost.wait()
            except TimeoutError:
                # A connection can die without a word (a network cut): ask it.
                await conn.fetchval("SELECT 1", timeout=5)

    async def _run(self) -> None:
        warned = False
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.dsn,
                    timeout=10,
                    server_settings={"application_name": LISTENER_NAME},
                    # A few statements a minute: none is worth a named, cached statement,
                    # which a misrouted DATABASE_DIRECT_URL would leave on a pooler's server.
                    statement_cache_size=0,
                    **self.connect_kwargs,
                )
                missing = await self._missing_triggers(conn)
                if missing:
                    # Without the triggers nobody would evict: never serve from the cache.
                    if not warned:
                        log.warning(
                            "session cache off: triggers %s are missing; run `platform-db migrate`",
                            ", ".join(missing),
                        )
                        warned = True
                    await conn.close()
                    await asyncio.sleep(max(self.retry_interval, 30.0))
                    continue
                await self._listen(conn)
                raise ConnectionError("the listening connection was closed")
            except DeafListener:
                self.cache.disable()
                self.connected.clear()
                if not self._deaf_logged:
                    log.error(
                        "session cache off: a NOTIFY sent through DATABASE_URL did not reach "
                        "this process's LISTEN within %gs, so revocations would not be heard. "
                        "If DATABASE_URL is a transaction pooler (such as PgBouncer in "
                        "transaction mode), set DATABASE_DIRECT_URL to the database's direct "
                        "URL (LISTEN needs a session); retrying every %gs",
                        self.probe_timeout,
                        UNPROVEN_RETRY,
                    )
                    self._deaf_logged = True
                if conn is not None and not conn.is_closed():
                    conn.terminate()
                await asyncio.sleep(max(self.retry_interval, UNPROVEN_RETRY))
            except asyncio.CancelledError:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
                raise
            except Exception as exc:
                if self.connected.is_set():
                    log.warning(
                        "session cache off: lost the listening connection (%s); retrying",
                        type(exc).__name__,
                    )
                self.cache.disable()
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
                await asyncio.sleep(self.retry_interval)
