"""Who is calling: the session cookie or `Authorization: Bearer`, resolved once per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from platform_db.auth import cookies
from platform_db.auth.cache import SessionCache
from platform_db.auth.http import set_session_cookie
from platform_db.auth.mail import Mailer
from platform_db.auth.passwords import PasswordHasher
from platform_db.auth.sessions import AuthContext, SessionPolicy, validate_session
from platform_db.db import DbSession
from platform_db.errors import Unauthorized
from platform_db.models import User
from platform_db.settings import AuthSettings
from platform_db.types import utcnow


async def _settings(request: Request) -> AuthSettings:
    settings: AuthSettings = request.app.state.settings
    return settings


async def _hasher(request: Request) -> PasswordHasher:
    hasher: PasswordHasher = request.app.state.hasher
    return hasher


Settings = Annotated[AuthSettings, Depends(_settings)]
Hasher = Annotated[PasswordHasher, Depends(_hasher)]

# Declared for OpenAPI (the Authorize button); the cookie is read by hand because its name
# depends on settings (`__Secure-` prefix).
_bearer = HTTPBearer(auto_error=False, description="A session token from sign-in or sign-up")


def session_token(
    request: Request,
    settings: AuthSettings,
    bearer: HTTPAuthorizationCredentials | None,
) -> str | None:
    """The session token the request carries, if any and if its signature (when signed) holds."""
    secret = settings.auth_secret.get_secret_value()
    if bearer is not None and bearer.credentials:
        value = bearer.credentials
        # better-auth's bearer plugin accepts the raw token or the signed `token.sig` form,
        # URL-encoded (the cookie's own value) or not.
        return cookies.decode_cookie_value(value, secret) if "." in value else value
    raw = cookies.read_cookies(request.scope["headers"]).get(settings.session_cookie_name)
    if raw:
        return cookies.decode_cookie_value(raw, secret)
    return None


async def authenticate(
    request: Request,
    response: Response,
    db: AsyncSession,
    bearer: HTTPAuthorizationCredentials | None,
) -> AuthContext | None:
    """The caller's live session, from the process cache when it can, else one query."""
    settings: AuthSettings = request.app.state.settings
    token = session_token(request, settings, bearer)
    if token is None:
        return None
    policy: SessionPolicy = request.app.state.session_policy
    cache: SessionCache = request.app.state.session_cache
    hit = cache.get(token)
    if hit is not None:
        # Steady state: no query at all. Expiry and the sliding refresh are still checked.
        now = utcnow()
        if hit.session.expires_at > now and not policy.needs_refresh(hit.session, now):
            return AuthContext(session=hit.session, user=hit.user)
        cache.evict_token(token)
    generation = cache.generation
    ctx = await validate_session(db, token, policy)
    if ctx is None:
        # Persist the deletion of an expired session even though the request will fail.
        await db.commit()
        return None
    if not ctx.refreshed:  # a refresh is not committed yet; its NOTIFY evicts anyway
        cache.put(token, ctx.session, ctx.user, generation)
    else:
        # The session slid: so must the cookie, whatever route was called (as better-auth,
        # bearer callers get it too, with the token in set-auth-token).
        set_session_cookie(response, settings, ctx.session, request=request)
    return ctx


# One dependency per alias, not a chain: each level of FastAPI's dependency solving costs
# more than the cache hit it wraps.
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def _optional_auth(
    request: Request, response: Response, db: DbSession, bearer: Bearer
) -> AuthContext | None:
    return await authenticate(request, response, db, bearer)


async def _required_auth(
    request: Request, response: Response, db: DbSession, bearer: Bearer
) -> AuthContext:
    ctx = await authenticate(request, response, db, bearer)
    if ctx is None:
        raise Unauthorized()
    return ctx


async def _current_user(
    request: Request, response: Response, db: DbSession, bearer: Bearer
) -> User:
    return (await _required_auth(request, response, db, bearer)).user


OptionalAuth = Annotated[AuthContext | None, Depends(_optional_auth)]
CurrentSession = Annotated[AuthContext, Depends(_required_auth)]
CurrentUser = Annotated[User, Depends(_current_user)]


async def _session_cache(request: Request) -> SessionCache:
    cache: SessionCache = request.app.state.session_cache
    return cache


# For routes that end sessions: evict in this process at once, before the NOTIFY comes back.
Cache = Annotated[SessionCache, Depends(_session_cache)]


async def _mailer(request: Request) -> Mailer:
    mailer: Mailer = request.app.state.mailer
    return mailer


MailerDep = Annotated[Mailer, Depends(_mailer)]
