"""Small factories for tests: users made through the API, or straight in the database."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from platform_auth.passwords import hash_password_sync
from platform_auth.tokens import generate_id
from platform_db.models import Account, User

PASSWORD = "correct horse battery staple"


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


async def sign_up(
    client: httpx.AsyncClient,
    *,
    email: str | None = None,
    password: str = PASSWORD,
    name: str = "Ada",
    **extra: Any,
) -> tuple[str, dict[str, Any]]:
    """Sign up through `POST /api/auth/sign-up/email`; returns (session token, user JSON).

    The client keeps the session cookie the response sets; `client.cookies.clear()` drops it.
    """
    body = {"name": name, "email": email or unique_email(), "password": password, **extra}
    r = await client.post("/api/auth/sign-up/email", json=body)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    token: str = data["token"]
    user: dict[str, Any] = data["user"]
    return token, user


async def make_user(
    db: AsyncSession,
    *,
    email: str | None = None,
    name: str = "Ada",
    password: str | None = None,
) -> User:
    """Insert a user (and, given a password, its credential account); flushed, not committed."""
    user = User(id=generate_id(), name=name, email=email or unique_email())
    db.add(user)
    await db.flush()
    if password is not None:
        db.add(
            Account(
                id=generate_id(),
                account_id=user.id,
                provider_id="credential",
                user_id=user.id,
                password=hash_password_sync(password),
            )
        )
        await db.flush()
    return user
