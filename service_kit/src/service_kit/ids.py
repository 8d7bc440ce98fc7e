"""Row ids: 32 characters from [A-Za-z0-9], from a CSPRNG (better-auth's format)."""

from __future__ import annotations

import secrets
import string

ALPHABET = string.ascii_letters + string.digits
# 248 = 4 * 62: bytes below it map onto the alphabet evenly; the rest are drawn again.
_UNBIASED = 256 - 256 % len(ALPHABET)


def generate_id(length: int = 32) -> str:
    out: list[str] = []
    while len(out) < length:
        # One urandom call for the whole id (secrets.choice per character costs ~10x more).
        for byte in secrets.token_bytes(length + length // 4):
            if byte < _UNBIASED:
                out.append(ALPHABET[byte % len(ALPHABET)])
    return "".join(out[:length])
