"""Session tokens: 32 characters from [A-Za-z0-9], from a CSPRNG (as better-auth)."""

from __future__ import annotations

from service_kit.ids import generate_id

__all__ = ["generate_id", "generate_token"]


def generate_token() -> str:
    return generate_id(32)
