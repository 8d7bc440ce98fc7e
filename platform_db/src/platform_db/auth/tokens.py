"""Ids and session tokens: 32 characters from [A-Za-z0-9], from a CSPRNG (as better-auth)."""

from __future__ import annotations

import secrets
import string

ALPHABET = string.ascii_letters + string.digits


def generate_id(length: int = 32) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def generate_token() -> str:
    return generate_id(32)
