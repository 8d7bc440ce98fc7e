"""The application factory every service uses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline

from platform_db.auth.cache import SessionCache, SessionListener
from platform_db.auth.mail import create_mailer
from platform_db.auth.origin import TrustedOriginMiddleware
from platform_db.auth.passwords import PasswordHasher
from platform_db.auth.ratelimit import RateLimitMiddleware, rules_from
from platform_db.auth.router import router as auth_router
from platform_db.auth.sessions import SessionPolicy
from platform_db.db import Database, asyncpg_dsn, create_engine
from platform_db.errors import install_error_handlers
from platform_db.health import router as health_router
from platform_db.middleware import (
    AllowedHostsMiddleware,
    BodySizeLimitMiddleware,
    SecurityHeadersMiddleware,
)
from platform_db.migrate import MigrationTree
from platform_db.settings import AuthSettings
from platform_db.trees import PLATFORM


def _add_response(operation: dict[str, Any], status: str, code: str) -> None:
    """Document that `operation` may answer `status` with ErrorBody `code`."""
    response = operation.setdefault("responses", {}).setdefault(
        status,
        {
            "description": "",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        },
    )
    codes = [c for c in response.get("description", "").split(", ") if c]
    if code not in codes:
        response["description"] = ", ".join([*codes, code])


def _document_error_shape(app: FastAPI) -> None:
    """FastAPI documents every 422 as its own `{"detail": [...]}`; our handler answers ErrorBody."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                if "requestBody" in operation:  # any body may be malformed or too large
                    _add_response(operation, "400", "INVALID_JSON")
                    _add_response(operation, "413", "PAYLOAD_TOO_LARGE")
                response = operation.get("responses", {}).get("422", {})
                media = response.get("content", {}).get("application/json", {})
                if media.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                    media["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
                    response["description"] = "VALIDATION_ERROR"
        for unused in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(unused, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    *,
    title: str,
    settings: AuthSettings,
    routers: Sequence[APIRouter] = (),
    trees: Sequence[MigrationTree] = (),
    description: str = "",
    version: str = "0.1.0",
) -> FastAPI:
    """A service: the auth routes, health, one error shape, and the service's own routers.

    `trees` are the migration trees `/readyz` requires at head besides the platform's.
    """
    all_trees = (PLATFORM, *trees)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.db = Database(create_engine(settings))
        app.state.hasher = PasswordHasher(settings.password_hash_concurrency)
        app.state.mailer = create_mailer(settings)
        app.state.session_policy = SessionPolicy.from_settings(settings)
        app.state.session_cache = cache = SessionCache(
            settings.session_cache_size, settings.session_cache_ttl
        )
        listener: SessionListener | None = None
        if settings.session_cache_size > 0:
            dsn, connect_kwargs = asyncpg_dsn(settings.database_url)
            listener = SessionListener(dsn, cache, connect_kwargs=connect_kwargs)
            listener.start()
        app.state.session_listener = listener
        try:
            yield
        finally:
            if listener is not None:
                await listener.stop()
            app.state.hasher.close()
            await app.state.db.dispose()

    # Swagger UI's files are served by the service itself: no CDN, works offline.
    app = FastAPIOffline(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        redoc_url=None,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    app.state.settings = settings
    app.state.trees = all_trees
    app.state.tree_heads = {tree.name: tree.heads() for tree in all_trees}
    install_error_handlers(app)
    app.add_middleware(
        TrustedOriginMiddleware,
        cookie_names=[settings.session_cookie_name],
        trusted_origins=settings.trusted_origins,
    )
    if settings.rate_limits_on:
        app.add_middleware(RateLimitMiddleware, rules=rules_from(settings))
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        AllowedHostsMiddleware,
        patterns=settings.host_patterns,
        exempt_paths=frozenset({"/healthz", "/readyz"}),
    )
    # Added last, so outermost: the answers of the middleware above get the headers too.
    app.add_middleware(SecurityHeadersMiddleware, docs_paths=("/docs", "/static-offline-docs"))
    # The service's own routes first: routing tries routes in order, and they are the busy ones.
    for router in routers:
        app.include_router(router)
    app.include_router(auth_router)
    app.include_router(health_router)
    _document_error_shape(app)
    return app
