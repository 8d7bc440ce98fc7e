"""Plain ASGI middleware every service runs: allowed hosts, a request size limit, security
headers."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service_kit.errors import AppError, send_error


class PayloadTooLarge(AppError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"
    message = "The request body is too large"


class InvalidHost(AppError):
    status_code = 400
    code = "INVALID_HOST"
    message = "Invalid host header"


def _host_allowed(host: str, patterns: frozenset[str]) -> bool:
    if host in patterns:
        return True
    return any(p.startswith("*.") and host.endswith(p[1:]) for p in patterns)


class AllowedHostsMiddleware:
    """Answer only requests whose Host is an allowed host (Starlette's TrustedHostMiddleware,
    without its per-request header parsing, and with the probes' paths exempt: Kubernetes
    sends the pod's address as Host)."""

    def __init__(
        self, app: ASGIApp, *, patterns: frozenset[str], exempt_paths: frozenset[str]
    ) -> None:
        self.app, self.exempt = app, exempt_paths
        self.any = "*" in patterns
        self.patterns = frozenset(p.lower() for p in patterns)
        self.known: set[bytes] = set()  # Host values already found allowed

    @classmethod
    def openapi_errors(
        cls, method: str, path: str, *, patterns: frozenset[str], exempt_paths: frozenset[str]
    ) -> Iterable[type[AppError]]:
        return [] if "*" in patterns or path in exempt_paths else [InvalidHost]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = b""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
                break
        if host in self.known or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        text = host.decode("latin-1").lower()
        name = text.rsplit(":", 1)[0] if not text.endswith("]") else text
        if name and _host_allowed(name, self.patterns):
            if len(self.known) < 1024:
                self.known.add(host)
            await self.app(scope, receive, send)
            return
        await send_error(send, InvalidHost)


class BodySizeLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    @classmethod
    def openapi_errors(cls, method: str, path: str, *, max_bytes: int) -> Iterable[type[AppError]]:
        return [PayloadTooLarge]  # by Content-Length, whatever the method

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await send_error(send, PayloadTooLarge, [(b"connection", b"close")])
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body reading; the handler renders it.
                    raise HTTPException(413, PayloadTooLarge.message)
            return message

        await self.app(scope, limited, send)


_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_HSTS = [(b"strict-transport-security", b"max-age=31536000")]
_NO_STORE = (b"cache-control", b"private, no-store")
# JSON never needs to run or embed anything.
_API_CSP = b"default-src 'none'; frame-ancestors 'none'"
# Swagger UI: its files come from this service; its bootstrap script is inline.
_DOCS_CSP = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; frame-ancestors 'none'"
)


class SecurityHeadersMiddleware:
    def __init__(
        self, app: ASGIApp, *, docs_paths: tuple[str, ...], private_paths: tuple[str, ...] = ()
    ) -> None:
        self.app, self.docs_paths, self.private_paths = app, docs_paths, private_paths
        # Built once: every answer gets one of these lists appended as it is.
        api = [*_HEADERS, (b"content-security-policy", _API_CSP)]
        docs = [*_HEADERS, (b"content-security-policy", _DOCS_CSP)]
        self._added = {
            (csp_docs, https): [*(docs if csp_docs else api), *(_HSTS if https else [])]
            for csp_docs in (False, True)
            for https in (False, True)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        added = self._added[path.startswith(self.docs_paths), scope.get("scheme") == "https"]
        # Answers to a request carrying credentials are the user's own: no shared cache may
        # keep them, and no cache at all may keep what `private_paths` answer (tokens).
        private = path.startswith(self.private_paths) or any(
            name in (b"authorization", b"cookie") for name, _ in scope["headers"]
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if private:
                    headers = [h for h in headers if h[0].lower() != b"cache-control"]
                    headers.append(_NO_STORE)
                headers.extend(added)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
