"""Password hashing in better-auth's format: scrypt N=16384 r=16 p=1 dkLen=64, `saltHex:keyHex`.

The password is NFKC-normalised; the salt is 16 random bytes written as 32 hex characters,
and that hex *string* is what scrypt gets as salt. One hash costs tens of milliseconds and
32 MiB, so it runs in a bounded thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import unicodedata
from concurrent.futures import ThreadPoolExecutor

N, R, P, DKLEN = 16384, 16, 1, 64
MIN_LENGTH, MAX_LENGTH = 8, 128
_MAXMEM = 128 * R * N * P + 16 * 1024 * 1024  # scrypt's working set plus headroom


def _derive(password: str, salt_hex: str) -> bytes:
    return hashlib.scrypt(
        unicodedata.normalize("NFKC", password).encode(),
        salt=salt_hex.encode(),
        n=N,
        r=R,
        p=P,
        dklen=DKLEN,
        maxmem=_MAXMEM,
    )


def hash_password_sync(password: str, salt_hex: str | None = None) -> str:
    salt_hex = salt_hex or secrets.token_hex(16)
    return f"{salt_hex}:{_derive(password, salt_hex).hex()}"


def verify_password_sync(stored: str, password: str) -> bool:
    salt_hex, sep, key_hex = stored.partition(":")
    if not sep or not salt_hex or len(key_hex) != DKLEN * 2:
        return False
    try:
        expected = bytes.fromhex(key_hex)
    except ValueError:
        return False
    return hmac.compare_digest(_derive(password, salt_hex), expected)


# Verified when the email is unknown, so that sign-in costs the same either way.
DUMMY_HASH = hash_password_sync("dummy password for timing", "0" * 32)


class PasswordHasher:
    """Runs scrypt off the event loop, at most `concurrency` at a time (memory is bounded)."""

    def __init__(self, concurrency: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="scrypt")

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, hash_password_sync, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        loop = asyncio.get_running_loop()
        if stored is None:
            await loop.run_in_executor(self._executor, verify_password_sync, DUMMY_HASH, password)
            return False
        return await loop.run_in_executor(self._executor, verify_password_sync, stored, password)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
