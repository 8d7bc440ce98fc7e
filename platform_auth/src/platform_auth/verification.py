"""Single-use tokens kept in the `verification` table: email verification and password reset.

Rows are better-auth's: a reset is `identifier = "reset-password:<token>"`, `value = user id`,
valid one hour, deleted when used. Using a token deletes its row in the same statement that
reads it, so two requests racing with one token cannot both succeed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from platform_auth.tokens import generate_id
from platform_db.models import Verification
from service_kit.types import utcnow

RESET_PASSWORD = "reset-password"  # noqa: S105 (a name, not a password)
EMAIL_VERIFICATION = "email-verification"


@dataclass(frozen=True)
class Consumed:
    value: str
    expired: bool


async def issue(
    db: AsyncSession, purpose: str, value: str, expires_in: timedelta, *, length: int = 24
) -> str:
    """Store a new token for `purpose` (better-auth uses 24 characters for reset tokens)."""
    token = generate_id(length)
    now = utcnow()
    db.add(
        Verification(
            id=generate_id(),
            identifier=f"{purpose}:{token}",
            value=value,
            expires_at=now + expires_in,
            created_at=now,
            updated_at=now,
        )
    )
    await db.flush()
    return token


async def consume(db: AsyncSession, purpose: str, token: str) -> Consumed | None:
    """Delete the token's row and return what it held; None if there is no such token."""
    result = await db.execute(
        delete(Verification)
        .where(col(Verification.identifier) == f"{purpose}:{token}")
        .returning(col(Verification.value), col(Verification.expires_at))
    )
    row = result.first()
    if row is None:
        return None
    value, expires_at = row
    return Consumed(value=value, expired=expires_at <= utcnow())


async def peek(db: AsyncSession, purpose: str, token: str) -> bool:
    """Whether a live token exists, without using it (the reset link's redirect step)."""
    found = await db.execute(
        select(col(Verification.expires_at)).where(
            col(Verification.identifier) == f"{purpose}:{token}"
        )
    )
    expires_at = found.scalar_one_or_none()
    return expires_at is not None and expires_at > utcnow()


# -- better-auth's own email-verification links -------------------------------------------
# better-auth signs an HS256 JWT `{email, userId?}` with the shared secret instead of storing a
# row. Accepting it lets a link mailed by a better-auth app on the same database verify here.
class JwtExpired(Exception):
    pass


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def verify_better_auth_jwt(token: str, secret: str) -> dict[str, Any] | None:
    """The payload of a valid, unexpired HS256 JWT; None if it is not one. Raises JwtExpired."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    header_b64, payload_b64, signature_b64 = parts
    try:
        header = json.loads(_b64url(header_b64))
        payload = json.loads(_b64url(payload_b64))
        signature = _b64url(signature_b64)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return None
    expected = hmac.new(
        secret.encode(), f"{header_b64}.{payload_b64}".encode(), hashlib.sha256
    ).digest()
    if not hmac.compare_digest(expected, signature) or not isinstance(payload, dict):
        return None
    exp = payload.get("exp")
    if not isinstance(exp, int | float):
        return None
    if datetime.fromtimestamp(exp, UTC) <= datetime.now(UTC):
        raise JwtExpired
    return payload
