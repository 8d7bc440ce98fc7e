"""Rate limits on the auth routes that invite guessing or mail-bombing, per client and path.

The rule is better-auth 1.7.25's (`api/rate-limiter`): a counter per key `<ip>|<path>` (the
path below /api/auth) holds `count` and `lastRequest`, the epoch milliseconds of the last
counted request. A request is counted when `lastRequest` is a window or more ago (the count
starts again at 1) or while `count` is below the limit; otherwise it is refused, with the
seconds until `lastRequest` is a window old. Refused requests are not counted.

Counters live in the database (`rate_limit`, the platform's table, shared by every replica and
worker and by better-auth apps with `rateLimit.storage: "database"`), one atomic upsert per
counted request; or, with RATE_LIMIT_STORAGE=memory, in each process. The client is the
connection's address, or the forwarded one when uvicorn trusts the proxy (FORWARDED_ALLOW_IPS),
normalised as better-auth does (an IPv6 address stands for its /64).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from sqlalchemy import BigInteger, case, cast, extract, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import ASGIApp, Receive, Scope, Send

from platform_auth.errors import TooManyRequests
from platform_auth.settings import RateLimitSettings, parse_rate
from platform_db.models import RateLimit
from platform_db.sweep import sweep_rate_limits
from service_kit.db import Database
from service_kit.errors import AppError, ServiceUnavailable, is_unavailable, send_error
from service_kit.state import kit_state

log = logging.getLogger(__name__)

AUTH_PREFIX = "/api/auth"
NO_IP = "no-trusted-ip"  # better-auth's key part when it cannot tell the client
MAX_KEYS = 100_000  # memory bound: beyond it, the oldest counters are forgotten
SWEEP_INTERVAL = 60.0  # seconds between two sweeps of old rows, per process
# Rows idle this long are swept even if our own windows are shorter: better-auth's default
# rules go up to 60 s, and a better-auth app may count in this table too.
MIN_SWEEP_AGE = 60.0

Storage = Literal["memory", "database"]


@dataclass(frozen=True)
class Rule:
    name: str
    matches: Callable[[str], bool]
    limit: int
    window: float


def rules_from(settings: RateLimitSettings) -> list[Rule]:
    def rule(name: str, rate: str, *prefixes: str) -> Rule:
        limit, window = parse_rate(rate)
        return Rule(name, lambda path: path.startswith(prefixes), limit, window)

    return [
        rule("sign-in", settings.rate_limit_sign_in, "/sign-in"),
        rule("sign-up", settings.rate_limit_sign_up, "/sign-up"),
        rule("password", settings.rate_limit_password, "/change-password", "/reset-password"),
        rule(
            "email",
            settings.rate_limit_email,
            "/request-password-reset",
            "/send-verification-email",
        ),
    ]


def client_key(address: str | None) -> str:
    """The address as better-auth keys it: IPv4 as is, an IPv4-mapped IPv6 address as its IPv4
    address, other IPv6 addresses as their /64 network, written out in full."""
    if not address:
        return NO_IP
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address.lower()
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return ipaddress.IPv6Network((ip, 64), strict=False).network_address.exploded
    return str(ip)


def rate_limit_key(address: str | None, path: str) -> str:
    """better-auth's key: `<ip>|<path>`, the path below /api/auth without a trailing slash."""
    return f"{client_key(address)}|{path.rstrip('/') or '/'}"


class Counter(Protocol):
    async def consume(self, key: str, rule: Rule) -> int | None:
        """Count one request; None if allowed, else the seconds to wait (at least 1)."""


def _retry_after(last_request_ms: float, window: float, now_ms: float) -> int:
    return max(1, math.ceil((last_request_ms + window * 1000 - now_ms) / 1000))


class MemoryCounter:
    """better-auth's rule, kept in this process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, last request in ms)
        self._clock = clock

    async def consume(self, key: str, rule: Rule) -> int | None:
        now = self._clock() * 1000
        count, last = self._counts.get(key, (0, now))
        if now - last >= rule.window * 1000:
            count = 0
        elif count >= rule.limit:
            return _retry_after(last, rule.window, now)
        self._counts[key] = (count + 1, now)
        if len(self._counts) > MAX_KEYS:
            self._prune(now, rule.window)
        return None

    def _prune(self, now: float, window: float) -> None:
        self._counts = {k: v for k, v in self._counts.items() if now - v[1] < window * 1000}
        while len(self._counts) > MAX_KEYS // 2:
            del self._counts[next(iter(self._counts))]


_table = RateLimit.__table__  # type: ignore[attr-defined]
# The database's clock in epoch ms: one clock for every replica that counts.
_NOW_MS = cast(func.floor(extract("epoch", func.clock_timestamp()) * 1000), BigInteger)


class DatabaseCounter:
    """better-auth's rule on the `rate_limit` table: one upsert per counted request."""

    def __init__(self, database: Database, longest_window: float) -> None:
        self.database = database
        self.sweep_age_ms = int(max(longest_window, MIN_SWEEP_AGE) * 1000)
        self._next_sweep = 0.0
        self._sweeping: asyncio.Task[int] | None = None

    async def consume(self, key: str, rule: Rule) -> int | None:
        window_ms = int(rule.window * 1000)
        upsert = insert(_table).values(
            id=secrets.token_urlsafe(24), key=key, count=1, last_request=_NOW_MS
        )
        over = upsert.excluded.last_request - _table.c.last_request >= window_ms
        # Counted when the window is over (from 1 again) or the count is below the limit;
        # otherwise the row is left as it is and nothing is returned.
        counted = upsert.on_conflict_do_update(
            index_elements=[_table.c.key],
            set_={
                "count": case((over, 1), else_=_table.c.count + 1),
                "last_request": upsert.excluded.last_request,
            },
            where=or_(over, _table.c.count < rule.limit),
        ).returning(_table.c.count)
        async with self.database.statements() as conn:
            if (await conn.execute(counted)).first() is not None:
                self._maybe_sweep()
                return None
            row = (
                await conn.execute(
                    select(_table.c.last_request, _NOW_MS).where(_table.c.key == key)
                )
            ).first()
        if row is None:  # swept since: nothing left to wait for
            return 1
        return _retry_after(row[0], rule.window, row[1])

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep or (self._sweeping and not self._sweeping.done()):
            return
        self._next_sweep = now + SWEEP_INTERVAL
        self._sweeping = asyncio.create_task(self.sweep(), name="rate-limit-sweep")

    async def sweep(self) -> int:
        """Delete the counters whose last request is older than any window (the platform's
        sweep, in batches, leaving the round to a sweeper already at it); their number."""
        try:
            return await sweep_rate_limits(
                self.database.engine, self.sweep_age_ms / 1000, wait=False
            )
        except Exception as exc:  # a sweep can wait for the next one
            log.warning("rate limits: sweeping old counters failed (%s)", type(exc).__name__)
            return 0


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, rules: list[Rule], storage: Storage = "memory") -> None:
        self.app = app
        self.rules = rules
        self.storage = storage
        self.counter: Counter | None = MemoryCounter() if storage == "memory" else None

    @staticmethod
    def rule_for(path: str, rules: Iterable[Rule]) -> Rule | None:
        if not path.startswith(AUTH_PREFIX + "/"):
            return None
        sub = path[len(AUTH_PREFIX) :]
        return next((r for r in rules if r.matches(sub)), None)

    @classmethod
    def openapi_errors(
        cls, method: str, path: str, *, rules: list[Rule], storage: Storage = "memory"
    ) -> Iterable[type[AppError]]:
        if cls.rule_for(path, rules) is None:
            return []
        return [TooManyRequests, ServiceUnavailable] if storage == "database" else [TooManyRequests]

    def _counter(self, scope: Scope) -> Counter:
        if self.counter is None:
            # The database is the app's, opened by its lifespan before any request.
            longest = max(rule.window for rule in self.rules)
            self.counter = DatabaseCounter(kit_state(scope["app"]).database, longest)
        return self.counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = self.rule_for(scope.get("path", ""), self.rules) if scope["type"] == "http" else None
        if rule is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = rate_limit_key(client[0] if client else None, scope["path"][len(AUTH_PREFIX) :])
        try:
            wait = await self._counter(scope).consume(key, rule)
        except (DBAPIError, OSError, PoolTimeout) as exc:
            if isinstance(exc, DBAPIError) and not is_unavailable(exc):
                raise
            log.warning("rate limits: the database is unavailable (%s)", type(exc).__name__)
            await send_error(send, ServiceUnavailable, [(b"retry-after", b"1")])
            return
        if wait is None:
            await self.app(scope, receive, send)
            return
        login = getattr(scope["app"].state, "auth", None)  # AuthState, once the app started
        if login is not None and login.metrics is not None:
            login.metrics.refused(rule.name)
        retry_after = str(wait).encode()
        await send_error(
            send, TooManyRequests, [(b"retry-after", retry_after), (b"x-retry-after", retry_after)]
        )
