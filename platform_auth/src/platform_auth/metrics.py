"""The login's metrics, on the kit's (service_kit.metrics), when METRICS_PORT is set.

- `auth_events_total{event, outcome}`: sign_in, sign_up, sign_out, password_reset (the new
  password set) and password_reset_request, each `ok` or `failed`, counted from the answers
  of their routes (a refusal by the rate limits is a `rate_limit_refusals_total` instead);
- `rate_limit_refusals_total{rule}`: 429s, by rate-limit rule (sign-in, sign-up, password,
  email);
- the session cache: `session_cache_hits_total`, `session_cache_misses_total`,
  `session_cache_evictions_total`, `session_cache_size`, and `session_listener_up` (1 when
  every worker's LISTEN is up and its cache on, 0 otherwise: sessions then come from the
  database on every request).
"""

from __future__ import annotations

from platform_auth.cache import SessionCache, SessionListener
from service_kit.metrics import Metrics

AUTH_PREFIX = "/api/auth"
EVENTS = {
    ("POST", f"{AUTH_PREFIX}/sign-in/email"): "sign_in",
    ("POST", f"{AUTH_PREFIX}/sign-up/email"): "sign_up",
    ("POST", f"{AUTH_PREFIX}/sign-out"): "sign_out",
    ("POST", f"{AUTH_PREFIX}/reset-password"): "password_reset",
    ("POST", f"{AUTH_PREFIX}/request-password-reset"): "password_reset_request",
}


class AuthMetrics:
    def __init__(
        self, metrics: Metrics, cache: SessionCache, listener: SessionListener | None
    ) -> None:
        self.events = metrics.counter(
            "auth_events", "Answers of the login's routes, ok or failed", ["event", "outcome"]
        )
        self.refusals = metrics.counter(
            "rate_limit_refusals", "Requests refused by the auth rate limits (429)", ["rule"]
        )
        hits = metrics.counter("session_cache_hits", "Sessions answered from memory")
        misses = metrics.counter("session_cache_misses", "Sessions looked up in the database")
        evictions = metrics.counter("session_cache_evictions", "Sessions dropped from memory")
        size = metrics.gauge("session_cache_size", "Sessions held in memory")
        up = metrics.gauge(
            "session_listener_up",
            "1 when the session cache's LISTEN is up and the cache on",
            across="livemin",
        )
        seen = [0, 0, 0]

        def read() -> None:
            now = (cache.hits, cache.misses, cache.evictions)
            for counter, before, after in zip((hits, misses, evictions), seen, now, strict=True):
                if after > before:
                    counter.inc(after - before)
            seen[:] = now
            size.set(len(cache))
            up.set(int(listener is not None and listener.connected.is_set() and cache.enabled))

        metrics.on_refresh(read)
        metrics.on_request(self._answered)

    def _answered(self, method: str, route: str, status: int, seconds: float) -> None:
        event = EVENTS.get((method, route))
        if event is not None:
            self.events.labels(event, "ok" if status < 400 else "failed").inc()

    def refused(self, rule: str) -> None:
        self.refusals.labels(rule).inc()
