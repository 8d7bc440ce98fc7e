"""Shared fixtures of the reliability tests: one service app (in process) on its own database,
and users signed up through the API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi import FastAPI

from platform_auth.settings import AuthSettings
from platform_auth.state import auth_state
from platform_auth.tokens import generate_id, generate_token
from service_kit.service import ServiceDefinition
from tests.conftest import auth_settings, running
from tests.factories import PASSWORD
from tests.pg import sql


async def mint_session(db_url: str, user_id: str) -> str:
    """A live 7-day session for `user_id` written straight to the table (as another process
    or a better-auth app would, and without hashing a password); its token."""
    token = generate_token()
    await sql(
        db_url,
        "INSERT INTO session (id, token, user_id, expires_at, created_at, updated_at)"
        " SELECT $1, $2, $3, t + interval '7 days', t, t"
        " FROM (SELECT now() AT TIME ZONE 'utc' AS t) AS clock",
        generate_id(),
        token,
        user_id,
    )
    return token


@dataclass(frozen=True)
class SignedUp:
    """A user made by `POST /api/auth/sign-up/email`, and the session it got."""

    user_id: str
    email: str
    password: str
    token: str  # the raw session token (the `token` of the answer)
    cookie: str  # the session cookie's value as set (signed, URL-encoded)

    @property
    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    @property
    def signed_token(self) -> str:
        """`token.signature`, the decoded cookie value."""
        return unquote(self.cookie)


@dataclass
class Api:
    """One service's app, a client talking to it in process, and its database."""

    app: FastAPI
    client: httpx.AsyncClient
    db_url: str

    @property
    def settings(self) -> AuthSettings:
        settings: AuthSettings = auth_state(self.app).settings.auth
        return settings

    @property
    def cookie_name(self) -> str:
        return self.settings.session_cookie_name

    def cookie_header(self, value: str) -> dict[str, str]:
        return {"cookie": f"{self.cookie_name}={value}"}

    async def sign_up(self, *, name: str = "Ada", password: str = PASSWORD) -> SignedUp:
        """A new user with a live session; the client's cookie jar is left empty."""
        email = f"u-{uuid.uuid4().hex[:12]}@example.com"
        r = await self.client.post(
            "/api/auth/sign-up/email", json={"name": name, "email": email, "password": password}
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        cookie = r.cookies.get(self.cookie_name)
        assert cookie, r.headers
        self.client.cookies.clear()
        return SignedUp(body["user"]["id"], email, password, body["token"], cookie)

    async def mint_session(self, user_id: str) -> str:
        return await mint_session(self.db_url, user_id)


@asynccontextmanager
async def serving(
    service: ServiceDefinition, db_url: str, **overrides: object
) -> AsyncIterator[Api]:
    """`service`'s app on `db_url` (test settings plus `overrides`), lifespan running."""
    app = service.create_app(auth_settings(db_url, **overrides))
    async with running(app) as client:
        yield Api(app, client, db_url)


@pytest.fixture
async def api(service: ServiceDefinition, full_db: str) -> AsyncIterator[Api]:
    """Each test using this runs once per service, on its own database."""
    async with serving(service, full_db) as a:
        yield a
