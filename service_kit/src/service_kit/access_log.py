"""The request id and the access log, in plain ASGI: one line per request, cheap.

The request id is the client's `X-Request-ID` when it is sane (1 to 128 visible ASCII
characters), otherwise a new one; it is echoed on every response and put on every log record
made while the request runs (`request_id`, through a context variable and `RequestIdFilter`).

The access line names the route template (`/todos/{todo_id}`), never the raw path, so no id
or token in a URL reaches the log; a request no route matched logs its path with single-use
tokens redacted. The line is built only when the access logger is enabled.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ACCESS_LOGGER = "service_kit.access"
HEADER = b"x-request-id"
_SANE = re.compile(rb"[!-~]{1,128}")

request_id: ContextVar[str] = ContextVar("request_id", default="-")

# What the metrics get for a request: method, route template (UNMATCHED when none), status,
# seconds.
Observe = Callable[[str, str, int, float], None]
UNMATCHED = "(unmatched)"


class RequestIdFilter(logging.Filter):
    """Puts the running request's id on every record (`-` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class PathRedactor:
    """A path with what follows each named segment (`/reset-password/<token>`) and any
    `token=` query value replaced by `[redacted]`."""

    def __init__(self, secret_path_segments: Sequence[str] = ()) -> None:
        paths = "|".join(re.escape(f"/{segment}/") for segment in secret_path_segments)
        pattern = (
            rf"({paths})[^/?#\s]+|([?&]token=)[^&#\s]+" if paths else r"()([?&]token=)[^&#\s]+"
        )
        self._secret = re.compile(pattern)

    def __call__(self, path: str) -> str:
        return self._secret.sub(lambda m: f"{m.group(1) or m.group(2)}[redacted]", path)


def new_request_id() -> str:
    return secrets.token_hex(8)


class AccessLogMiddleware:
    """Assigns the request id, echoes it, and logs `client "METHOD route" status duration`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        enabled: bool = True,
        secret_path_segments: Sequence[str] = (),
        logger: logging.Logger | None = None,
        observe: Observe | None = None,
    ) -> None:
        self.app, self.enabled, self.observe = app, enabled, observe
        self.log = logger or logging.getLogger(ACCESS_LOGGER)
        self.redact = PathRedactor(secret_path_segments)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope["headers"]:
            if name == HEADER:
                if _SANE.fullmatch(value):
                    rid = value.decode("ascii")
                break
        rid = rid or new_request_id()
        echoed = (HEADER, rid.encode("ascii"))
        # Not reset afterwards: each request runs in a task of its own (uvicorn's, and any
        # test client's), whose context ends with it; left set, the server's own report of
        # an exception the app raised carries the id too.
        request_id.set(rid)
        started = time.perf_counter()
        status = 500  # unless the app starts an answer: it raised before it could

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            template: str | None = getattr(scope.get("route"), "path", None)
            if self.observe is not None:
                # A path no route matched is not a label: any client could mint one.
                self.observe(scope["method"], template or UNMATCHED, status, seconds)
            if self.enabled and self.log.isEnabledFor(logging.INFO):
                self._line(scope, template, status, seconds)

    def _line(self, scope: Scope, template: str | None, status: int, seconds: float) -> None:
        client = scope.get("client")
        address = client[0] if client else "-"
        method = scope["method"]
        path = template if template is not None else self.redact(scope["path"])
        ms = seconds * 1000
        self.log.info(
            '%s "%s %s" %d %.1fms',
            address,
            method,
            path,
            status,
            ms,
            extra={
                "client": address,
                "method": method,
                "route": path,
                "status": status,
                "duration_ms": round(ms, 2),
            },
        )
