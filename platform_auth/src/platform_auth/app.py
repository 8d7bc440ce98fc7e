"""A service app with the shared login: the kit's app plus /api/auth, CSRF, rate limits and
the session cache."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from sqlalchemy import text
from starlette.middleware import Middleware

from platform_auth.cache import SessionCache, SessionListener
from platform_auth.housekeeping import Sweeper
from platform_auth.mail import create_mailer
from platform_auth.metrics import AuthMetrics
from platform_auth.origin import TrustedOriginMiddleware
from platform_auth.passwords import PasswordHasher
from platform_auth.ratelimit import RateLimitMiddleware, rules_from
from platform_auth.router import router as auth_router
from platform_auth.sessions import SessionPolicy
from platform_auth.settings import ServiceSettings, load_settings
from platform_auth.state import AuthState
from platform_db.trees import PLATFORM
from service_kit.app import create_app as create_kit_app
from service_kit.db import asyncpg_dsn
from service_kit.migrate import MigrationTree
from service_kit.service import ServiceDefinition
from service_kit.state import kit_state

# The mailed reset link, /api/auth/reset-password/<token>: the access log redacts the token
# where no route template stands in for the path.
SECRET_PATH_SEGMENTS = ("reset-password",)


def create_app(
    *,
    title: str,
    settings: ServiceSettings,
    routers: Sequence[APIRouter] = (),
    trees: Sequence[MigrationTree] = (),
    description: str = "",
    version: str = "0.1.0",
) -> FastAPI:
    """A service: its own routers, the auth routes, health and one error shape.

    `trees` are the migration trees `/readyz` requires at head besides the platform's.
    """
    auth = settings.auth

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cache = SessionCache(auth.session_cache_size, auth.session_cache_ttl)
        state = AuthState(
            settings=settings,
            hasher=PasswordHasher(auth.password_hash_concurrency),
            mailer=create_mailer(settings.mail, auth.environment),
            policy=SessionPolicy.from_settings(auth),
            cache=cache,
        )
        if auth.session_cache_size > 0:
            # LISTEN needs a session of its own: the direct URL, never a transaction pooler.
            dsn, connect_kwargs = asyncpg_dsn(settings.database.direct_url)
            database = kit_state(app).database

            async def notify_through_pool(channel: str) -> None:
                async with database.write_sessionmaker() as db, db.begin():
                    await db.execute(text("SELECT pg_notify(:c, '')"), {"c": channel})

            state.listener = SessionListener(
                dsn, cache, probe=notify_through_pool, connect_kwargs=connect_kwargs
            )
            state.listener.start()
        sweeper = None
        if auth.sweep_interval > 0:
            sweeper = Sweeper(kit_state(app).database.engine, auth.sweep_interval)
            sweeper.start()
        state.sweeper = sweeper
        metrics = kit_state(app).metrics
        if metrics is not None:
            state.metrics = AuthMetrics(metrics, cache, state.listener)
        app.state.auth = state
        try:
            yield
        finally:
            if sweeper is not None:
                await sweeper.stop()
            if state.listener is not None:
                await state.listener.stop()
            state.hasher.close()

    middleware = [
        Middleware(
            TrustedOriginMiddleware,
            cookie_names=[auth.session_cookie_name],
            trusted_origins=auth.trusted_origins,
        )
    ]
    if settings.rate_limits_on:
        middleware.insert(
            0,
            Middleware(
                RateLimitMiddleware,
                rules=rules_from(settings.rate_limits),
                storage=settings.rate_limit_storage,
            ),
        )
    return create_kit_app(
        title=title,
        description=description,
        version=version,
        settings=settings,
        trees=(PLATFORM, *trees),
        # The service's own routes first: routing tries routes in order, and they are busy.
        routers=(*routers, auth_router),
        middleware=middleware,
        lifespan=lifespan,
        host_patterns=auth.host_patterns,
        private_paths=("/api/auth",),
        secret_path_segments=SECRET_PATH_SEGMENTS,
    )


def auth_service(
    *,
    name: str,
    tree: MigrationTree,
    create_app: Callable[[ServiceSettings | None], FastAPI],
    default_port: int,
    description: str = "",
) -> ServiceDefinition:
    """A service that signs its users in with the shared login."""
    return ServiceDefinition(
        name=name,
        tree=tree,
        create_app=create_app,
        load_settings=load_settings,
        default_port=default_port,
        description=description,
    )
