"""Password hashes in better-auth's format, checked against an independent scrypt (Node's)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable

import pytest

from platform_auth import passwords
from platform_auth.passwords import (
    PasswordHasher,
    hash_password_sync,
    verify_password_sync,
)

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(
    NODE is None,
    reason="node is not installed, so the live cross-check with Node's crypto.scrypt cannot run "
    "(CI installs node); the committed known-answer vectors still run",
)

# Derived once with Node 20's crypto, independently of this code base:
#   crypto.scryptSync(password.normalize("NFKC"), saltHex, 64,
#                     {N: 16384, r: 16, p: 1, maxmem: 128 * 16384 * 16 * 2})
#   stored = saltHex + ":" + key.toString("hex")
# (the salt passed to scrypt is the 32-character hex *string*, as better-auth does).
KNOWN_ANSWERS = [
    (
        "correct horse battery staple",
        "00112233445566778899aabbccddeeff:"
        "f5b22309b28fe412c82a4b2cab57498b8f8a42c849af16cb908974048f61c139"
        "33421858db3a8f111430bdc493c7cef90f61f904061c77206e3820a2e8b11bc2",
    ),
    (
        "\ufb01nancial \ufb01le",  # "ﬁnancial ﬁle" with the U+FB01 ligature
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0:"
        "3c05d4a2545000c795ec785e8f39b613197dcbe1556886388881b4d3566bf63f"
        "412ce3f19d370b30ad9e841960d56f2904f6303962a9ee7657c1cb5476afa545",
    ),
    (
        "p\u00e4ssw\u00f6rd-\u00dcn\u00efcode",  # "pässwörd-Ünïcode", precomposed
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf:"
        "5bbf265800ee07bda9d54ab7658e080892fdbceaee1a63eeae74bbbaa41b9f70"
        "c409cd9a0f0a1f7a738c9b49eae620f3907b546b86dec32007079b08071ec2e7",
    ),
]

_NODE_SCRYPT = """
const crypto = require("crypto");
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = input.map(([password, salt]) =>
  salt + ":" + crypto.scryptSync(password.normalize("NFKC"), salt, 64,
    {N: 16384, r: 16, p: 1, maxmem: 128 * 16384 * 16 * 2}).toString("hex"));
process.stdout.write(JSON.stringify(out));
"""


def node_scrypt(pairs: list[tuple[str, str]]) -> list[str]:
    """`saltHex:keyHex` computed by Node for each (password, saltHex)."""
    assert NODE is not None
    proc = subprocess.run(
        [NODE, "-e", _NODE_SCRYPT],
        input=json.dumps(pairs),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: list[str] = json.loads(proc.stdout)
    return result


# --- format and known answers -------------------------------------------------------------


@pytest.mark.parametrize(("password", "stored"), KNOWN_ANSWERS)
def test_known_answer_vectors(password: str, stored: str) -> None:
    salt = stored.split(":")[0]
    assert hash_password_sync(password, salt) == stored
    assert verify_password_sync(stored, password)


def test_format_is_salt_hex_colon_key_hex() -> None:
    stored = hash_password_sync("correct horse battery staple")
    assert len(stored) == 161
    assert re.fullmatch(r"[0-9a-f]{32}:[0-9a-f]{128}", stored)
    # A fresh random salt each time.
    again = hash_password_sync("correct horse battery staple")
    assert again.split(":")[0] != stored.split(":")[0]
    assert again != stored


def test_nfkc_normalisation() -> None:
    ligature = "\ufb01nancial \ufb01le"
    stored = hash_password_sync(ligature)
    assert verify_password_sync(stored, "financial file")
    assert verify_password_sync(hash_password_sync("financial file"), ligature)
    # Decomposed (NFD) input verifies against the precomposed vector.
    password, vector = KNOWN_ANSWERS[2]
    decomposed = "pa\u0308sswo\u0308rd-U\u0308ni\u0308code"
    assert decomposed != password
    assert verify_password_sync(vector, decomposed)


def test_wrong_password_fails() -> None:
    _, stored = KNOWN_ANSWERS[0]
    assert not verify_password_sync(stored, "correct horse battery stapler")
    assert not verify_password_sync(stored, "Correct horse battery staple")
    assert not verify_password_sync(stored, "")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        ":",
        "nocolon",
        "00112233445566778899aabbccddeeff",
        "00112233445566778899aabbccddeeff:",
        ":" + "ab" * 64,
        "00112233445566778899aabbccddeeff:" + "zz" * 64,  # not hex
        "00112233445566778899aabbccddeeff:" + "ab" * 63,  # key too short
        "00112233445566778899aabbccddeeff:" + "ab" * 65,  # key too long
        "00112233445566778899aabbccddeeff:" + "\u00e9" * 128,  # non-ASCII
        KNOWN_ANSWERS[0][1] + ":extra",
        "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy",  # bcrypt
    ],
)
def test_malformed_stored_value_fails_without_raising(stored: str) -> None:
    assert verify_password_sync(stored, "correct horse battery staple") is False


# --- the live cross-check with Node --------------------------------------------------------


@needs_node
def test_python_hash_verifies_in_node() -> None:
    pwds = [
        "correct horse battery staple",
        "\ufb01 ligature \u2460 \u00bd",
        "\u65e5\u672c\u8a9e\U0001f511",
    ]
    stored = [hash_password_sync(p) for p in pwds]
    recomputed = node_scrypt([(p, s.split(":")[0]) for p, s in zip(pwds, stored, strict=True)])
    assert recomputed == stored


@needs_node
def test_node_hash_verifies_in_python() -> None:
    pwds = [
        "correct horse battery staple",
        "\ufb01 ligature \u2460 \u00bd",
        "\u65e5\u672c\u8a9e\U0001f511",
    ]
    salts = ["5f4dcc3b5aa765d61d8327deb882cf99", "0123456789abcdef0123456789abcdef", "f" * 32]
    stored = node_scrypt(list(zip(pwds, salts, strict=True)))
    for password, value in zip(pwds, stored, strict=True):
        assert len(value) == 161
        assert verify_password_sync(value, password)
        assert not verify_password_sync(value, password + "x")


@needs_node
def test_known_answer_vectors_still_match_node() -> None:
    assert node_scrypt([(p, s.split(":")[0]) for p, s in KNOWN_ANSWERS]) == [
        s for _, s in KNOWN_ANSWERS
    ]


# --- PasswordHasher: off the event loop, bounded --------------------------------------------


def _instrument(monkeypatch: pytest.MonkeyPatch, before: Callable[[], None]) -> list[int]:
    """Wrap the real scrypt call: run `before` in the calling thread first; return thread ids."""
    real = passwords._derive
    threads: list[int] = []

    def derive(password: str, salt_hex: str) -> bytes:
        threads.append(threading.get_ident())
        before()
        return real(password, salt_hex)

    monkeypatch.setattr(passwords, "_derive", derive)
    return threads


async def test_hasher_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash cannot finish unless the loop runs another task while the hash is in progress."""
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    loop_progressed = threading.Event()

    def wait_for_loop() -> None:
        loop.call_soon_threadsafe(started.set)
        # On the loop's own thread this would block the loop, so nothing could set it.
        assert loop_progressed.wait(timeout=10), "the event loop made no progress during a hash"

    threads = _instrument(monkeypatch, wait_for_loop)

    async def other_task() -> None:
        await started.wait()
        loop_progressed.set()

    hasher = PasswordHasher(concurrency=1)
    try:
        stored, _ = await asyncio.gather(hasher.hash("correct horse battery staple"), other_task())
        assert await hasher.verify(stored, "correct horse battery staple")
    finally:
        hasher.close()
    assert threads
    assert threading.get_ident() not in threads


class OverlapTracker:
    """Counts the hashes running at once, from inside the worker threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.cond = threading.Condition()
        self.active = 0
        self.peak = 0

    def enter(self) -> None:
        with self.cond:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.cond.notify_all()
            # Give another hash the chance to start alongside this one: if the pool allowed
            # more than `limit` at once, the overlap is then certain to be observed.
            self.cond.wait_for(lambda: self.active > self.limit, timeout=0.2)

    def leave(self) -> None:
        with self.cond:
            self.active -= 1


@pytest.mark.parametrize(("concurrency", "jobs"), [(1, 3), (2, 4)])
async def test_hasher_bounds_concurrency(
    monkeypatch: pytest.MonkeyPatch, concurrency: int, jobs: int
) -> None:
    tracker = OverlapTracker(concurrency)
    real = passwords._derive

    def derive(password: str, salt_hex: str) -> bytes:
        tracker.enter()
        try:
            return real(password, salt_hex)
        finally:
            tracker.leave()

    monkeypatch.setattr(passwords, "_derive", derive)
    hasher = PasswordHasher(concurrency=concurrency)
    try:
        results = await asyncio.gather(*(hasher.hash(f"password number {i}") for i in range(jobs)))
    finally:
        hasher.close()
    assert len(set(results)) == jobs
    assert tracker.peak == concurrency


async def test_hasher_verify() -> None:
    hasher = PasswordHasher(concurrency=2)
    try:
        stored = await hasher.hash("\ufb01nancial \ufb01le")
        assert await hasher.verify(stored, "financial file")
        assert not await hasher.verify(stored, "financial files")
        assert not await hasher.verify("not a hash", "financial file")
        # No stored hash (unknown user): still False, without raising.
        assert not await hasher.verify(None, "dummy password for timing")
    finally:
        hasher.close()
