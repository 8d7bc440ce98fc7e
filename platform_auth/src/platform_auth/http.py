"""What the auth routes share: input checks, the session cookies, links back to this server."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request, Response

from platform_auth import cookies
from platform_auth.errors import (
    InvalidCallbackUrl,
    InvalidEmail,
    PasswordTooLong,
    PasswordTooShort,
)
from platform_auth.passwords import MAX_LENGTH, MIN_LENGTH
from platform_auth.settings import AuthSettings
from platform_db.models import Session
from service_kit.urls import RedirectTarget, UnsafeTarget, origin_of, parse_target

_WS = " \t\n\r\f\v"  # ASCII whitespace only, as the pattern OpenAPI documents
_EMAIL = re.compile(r"^[^\s@\x00]+@[^\s@\x00]+\.[^\s@\x00]+$", re.ASCII)


def normalize_email(email: str) -> str:
    if len(email) > 254:
        raise InvalidEmail()
    email = email.strip(_WS).lower()
    if not _EMAIL.match(email):
        raise InvalidEmail()
    return email


def check_password_length(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordTooShort()
    if len(password) > MAX_LENGTH:
        raise PasswordTooLong()


def _cookie_options(settings: AuthSettings) -> dict[str, Any]:
    return {
        "path": "/",
        "domain": settings.cookie_domain,
        "secure": settings.secure_cookies,
        "httponly": True,
        "samesite": "lax",
    }


def set_session_cookie(
    response: Response,
    settings: AuthSettings,
    session: Session,
    *,
    remember_me: bool = True,
    request: Request | None = None,
) -> None:
    """better-auth's cookies; `remember_me=False` makes them end with the browser session.

    The signed token also goes out in `set-auth-token`, where better-auth's bearer clients
    (no cookie jar) pick it up.
    """
    secret = settings.auth_secret.get_secret_value()
    options = _cookie_options(settings)
    response.set_cookie(
        settings.session_cookie_name,
        cookies.encode_cookie_value(session.token, secret),
        max_age=settings.session_expires_in if remember_me else None,
        **options,
    )
    response.headers["set-auth-token"] = cookies.sign(session.token, secret)
    response.headers["access-control-expose-headers"] = "set-auth-token"
    if not remember_me:
        # better-auth reads this to keep a browser-session login from sliding to 7 days.
        response.set_cookie(
            settings.dont_remember_cookie_name,
            cookies.encode_cookie_value("true", secret),
            **options,
        )
    elif request is not None and settings.dont_remember_cookie_name in cookies.read_cookies(
        request.scope["headers"]
    ):
        # Left over from an earlier "remember me" off sign-in: it would stop this one sliding.
        response.delete_cookie(settings.dont_remember_cookie_name, **options)


def clear_session_cookie(response: Response, settings: AuthSettings) -> None:
    # session_data: better-auth's optional cookie cache; a better-auth app beside us would
    # otherwise keep trusting a signed-out browser for its cache's lifetime.
    for name in (
        settings.session_cookie_name,
        settings.dont_remember_cookie_name,
        settings.cookie_name("session_data"),
    ):
        response.delete_cookie(name, **_cookie_options(settings))


def client_info(request: Request) -> tuple[str | None, str | None]:
    """The caller's address (as uvicorn's trusted proxy headers give it) and user agent."""
    ip = request.client.host if request.client else None
    return ip, request.headers.get("user-agent")


def base_url(request: Request, settings: AuthSettings) -> str:
    """Where this server's /api/auth lives, for links in mails.

    From AUTH_URL; the request's own Host is used only in development (settings refuse to
    start with mail configured and no AUTH_URL elsewhere), so a forged Host header can never
    put its own address into a mailed link.
    """
    if settings.auth_url:
        root = settings.auth_url
    elif settings.environment == "development":
        root = str(request.base_url)
    else:
        raise RuntimeError("AUTH_URL is required to build links outside development")
    return root.rstrip("/") + "/api/auth"


def callback_target(
    url: str | None, request: Request, settings: AuthSettings
) -> RedirectTarget | None:
    """A redirect target: a path on this site or a trusted origin (no open redirect)."""
    if not url:
        return None
    own = origin_of(str(request.base_url))
    allowed = settings.redirect_origins if own is None else settings.redirect_origins | {own}
    try:
        return parse_target(url, allowed)
    except UnsafeTarget:
        raise InvalidCallbackUrl() from None
