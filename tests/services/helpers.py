"""Small helpers for the service tests: a signed-up caller, todos, and direct SQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from tests.pg import plain_url

PASSWORD = "correct horse battery"
TODO_FIELDS = {"id", "userId", "title", "description", "completed", "createdAt", "updatedAt"}


@dataclass(frozen=True)
class Caller:
    """A signed-up user, authenticated by bearer token (the client keeps no cookie)."""

    user_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


async def sign_up(client: httpx.AsyncClient, name: str = "Ada") -> Caller:
    """Sign up a new user with a unique email; drop the cookie so only the bearer counts."""
    email = f"{name.lower()}-{uuid.uuid4().hex[:10]}@example.com"
    r = await client.post(
        "/api/auth/sign-up/email", json={"name": name, "email": email, "password": PASSWORD}
    )
    assert r.status_code == 200, r.text
    client.cookies.clear()
    body = r.json()
    return Caller(user_id=body["user"]["id"], token=body["token"])


async def create_todo(
    client: httpx.AsyncClient, caller: Caller, title: str, **fields: Any
) -> dict[str, Any]:
    r = await client.post("/todos", json={"title": title, **fields}, headers=caller.headers)
    assert r.status_code == 201, r.text
    todo: dict[str, Any] = r.json()
    return todo


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[Any]:
    """A raw asyncpg connection to the test database."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        yield conn
    finally:
        await conn.close()
