"""Who is calling: the session cookie or `Authorization: Bearer`, resolved once per request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from platform_auth import cookies
from platform_auth.cache import SessionCache
from platform_auth.http import set_session_cookie
from platform_auth.mail import Mailer
from platform_auth.passwords import PasswordHasher
from platform_auth.sessions import AuthContext, validate_session
from platform_auth.settings import AuthSettings
from platform_auth.state import auth_state
from platform_db.models import User
from service_kit.errors import ServiceUnavailable, Unauthorized
from service_kit.openapi import raises
from service_kit.state import kit_state
from service_kit.types import utcnow


async def _settings(request: Request) -> AuthSettings:
    return auth_state(request.app).settings.auth


async def _hasher(request: Request) -> PasswordHasher:
    return auth_state(request.app).hasher


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


@raises(ServiceUnavailable)  # a cache miss reads the session from the database
async def authenticate(
    request: Request, response: Response, bearer: HTTPAuthorizationCredentials | None
) -> AuthContext | None:
    """The caller's live session, from the process cache when it can, else one query."""
    state = auth_state(request.app)
    settings, policy, cache = state.settings.auth, state.policy, state.cache
    token = session_token(request, settings, bearer)
    if token is None:
        return None
    hit = cache.get(token)
    if hit is not None:
        # Steady state: no query at all. Expiry and the sliding refresh are still checked.
        now = utcnow()
        if hit.session.expires_at > now and not policy.needs_refresh(hit.session, now):
            return AuthContext(session=hit.session, user=hit.user)
        cache.evict_token(token)
    generation = cache.generation
    # Not in the route's session: a short one of its own, closed (its connection back in the
    # pool) before the route's first statement, so a request never holds two connections.
    # Its writes (sliding the expiry, deleting an expired session) are single statements
    # that stand whatever the route then does.
    async with kit_state(request.app).database.read_sessionmaker() as db:
        ctx = await validate_session(db, token, policy)
    if ctx is None:
        return None
    if not ctx.refreshed:  # a refresh fires a NOTIFY that would evict it again
        cache.put(token, ctx.session, ctx.user, generation)
    else:
        # The session slid: so must the cookie, whatever route was called (as better-auth,
        # bearer callers get it too, with the token in set-auth-token).
        set_session_cookie(response, settings, ctx.session, request=request)
    return ctx


async def _optional_auth(
    request: Request, response: Response, bearer: HTTPAuthorizationCredentials | None
) -> AuthContext | None:
    return await authenticate(request, response, bearer)


async def _required_auth(
    request: Request, response: Response, bearer: HTTPAuthorizationCredentials | None
) -> AuthContext:
    ctx = await authenticate(request, response, bearer)
    if ctx is None:
        raise Unauthorized()
    return ctx


async def _current_user(
    request: Request, response: Response, bearer: HTTPAuthorizationCredentials | None
) -> User:
    return (await _required_auth(request, response, bearer)).user


class _Caller(HTTPBearer):
    """The bearer scheme as OpenAPI documents it (the same scheme as `_bearer`), whose call
    resolves the caller itself: one dependency per route instead of a chain of two, since
    each level of FastAPI's dependency solving costs more than the cache hit it wraps."""

    def __init__(self, resolve: Callable[..., Awaitable[Any]]) -> None:
        super().__init__(
            auto_error=False, description=_bearer.model.description, scheme_name="HTTPBearer"
        )
        self._resolve = resolve

    # FastAPI calls a dependency with what its signature asks for: here the response too.
    async def __call__(self, request: Request, response: Response) -> Any:  # type: ignore[override]
        return await self._resolve(request, response, await super().__call__(request))


OptionalAuth = Annotated[AuthContext | None, Depends(_Caller(_optional_auth))]
CurrentSession = Annotated[AuthContext, Depends(_Caller(_required_auth))]
CurrentUser = Annotated[User, Depends(_Caller(_current_user))]


async def _session_cache(request: Request) -> SessionCache:
    return auth_state(request.app).cache


# For routes that end sessions: evict in this process at once, before the NOTIFY comes back.
Cache = Annotated[SessionCache, Depends(_session_cache)]


async def _mailer(request: Request) -> Mailer:
    return auth_state(request.app).mailer


MailerDep = Annotated[Mailer, Depends(_mailer)]
