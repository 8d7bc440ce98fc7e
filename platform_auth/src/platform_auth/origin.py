"""CSRF: a state-changing request authenticated by the session cookie must come from a
trusted origin. Bearer-only clients are not exposed to CSRF and are not checked."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from platform_auth.cookies import read_cookies
from platform_auth.errors import InvalidOrigin, MissingOrigin
from service_kit.errors import AppError, send_error

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


class TrustedOriginMiddleware:
    def __init__(
        self, app: ASGIApp, *, cookie_names: Iterable[str], trusted_origins: Iterable[str]
    ) -> None:
        self.app = app
        self.cookie_names = frozenset(cookie_names)
        self.trusted = frozenset(o.lower().rstrip("/") for o in trusted_origins)

    @classmethod
    def openapi_errors(
        cls,
        method: str,
        path: str,
        *,
        cookie_names: Iterable[str],
        trusted_origins: Iterable[str],
    ) -> Iterable[type[AppError]]:
        # Only when the session cookie authenticates the request; a bearer never meets it.
        return [] if method in SAFE_METHODS else [InvalidOrigin, MissingOrigin]

    def _has_session_cookie(self, scope: Scope) -> bool:
        jar = read_cookies(scope["headers"])
        return any(name in jar for name in self.cookie_names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        if not self._has_session_cookie(scope):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if not origin or origin == "null":
            referer = headers.get("referer")
            origin = _origin_of(referer) if referer else None
        error: type[InvalidOrigin | MissingOrigin] | None = None
        if origin is None:
            error = MissingOrigin
        else:
            origin = origin.lower().rstrip("/")
            scheme = scope.get("scheme", "http")
            own = f"{scheme}://{headers.get('host', '')}".lower()
            if origin != own and origin not in self.trusted:
                error = InvalidOrigin
        if error is None:
            await self.app(scope, receive, send)
            return
        await send_error(send, error)
