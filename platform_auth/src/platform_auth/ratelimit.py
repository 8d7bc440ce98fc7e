"""Rate limits on the auth routes that invite guessing or mail-bombing, per client and route.

Counters live in each process's memory: with N replicas (or N workers) a client can make N
times the configured number of requests. The client is the connection's address, or the
forwarded one when uvicorn trusts the proxy (FORWARDED_ALLOW_IPS).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from platform_auth.errors import TooManyRequests
from platform_auth.settings import RateLimitSettings, parse_rate
from service_kit.errors import AppError, send_error

AUTH_PREFIX = "/api/auth"
MAX_KEYS = 100_000  # memory bound: beyond it, the oldest windows are forgotten


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


class FixedWindowCounter:
    """At most `limit` hits per key in a window that starts with the key's first hit."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}
        self._clock = clock

    def hit(self, key: tuple[str, str], limit: int, window: float) -> float | None:
        """Count one hit; None if allowed, else the seconds until the window ends."""
        now = self._clock()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= window:
            start, count = now, 0
        if count >= limit:
            return start + window - now
        self._windows[key] = (start, count + 1)
        if len(self._windows) > MAX_KEYS:
            self._prune(now, window)
        return None

    def _prune(self, now: float, window: float) -> None:
        self._windows = {k: v for k, v in self._windows.items() if now - v[0] < window}
        while len(self._windows) > MAX_KEYS // 2:
            del self._windows[next(iter(self._windows))]


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, rules: list[Rule]) -> None:
        self.app = app
        self.rules = rules
        self.counter = FixedWindowCounter()

    @staticmethod
    def rule_for(path: str, rules: Iterable[Rule]) -> Rule | None:
        if not path.startswith(AUTH_PREFIX + "/"):
            return None
        sub = path[len(AUTH_PREFIX) :]
        return next((r for r in rules if r.matches(sub)), None)

    @classmethod
    def openapi_errors(
        cls, method: str, path: str, *, rules: list[Rule]
    ) -> Iterable[type[AppError]]:
        return [TooManyRequests] if cls.rule_for(path, rules) is not None else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = self.rule_for(scope.get("path", ""), self.rules) if scope["type"] == "http" else None
        if rule is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        wait = self.counter.hit((address, rule.name), rule.limit, rule.window)
        if wait is None:
            await self.app(scope, receive, send)
            return
        retry_after = str(max(1, math.ceil(wait))).encode()
        await send_error(
            send, TooManyRequests, [(b"retry-after", retry_after), (b"x-retry-after", retry_after)]
        )
