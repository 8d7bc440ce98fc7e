"""Abuse protection: per-address, per-route-group rate limits on the auth routes, and sign-in
that costs the same hash work whether or not the email has an account."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from platform_auth import passwords
from platform_auth.app import create_app
from platform_auth.ratelimit import rate_limit_key
from tests.conftest import ORIGIN, auth_settings
from tests.factories import PASSWORD, sign_up, unique_email
from tests.pg import sql
from tests.polling import poll

AUTH = "/api/auth"
SIGN_IN = f"{AUTH}/sign-in/email"
SIGN_UP = f"{AUTH}/sign-up/email"

Clients = Callable[[str], httpx.AsyncClient]


@asynccontextmanager
async def limited_app(db_url: str, **overrides: object) -> AsyncIterator[tuple[FastAPI, Clients]]:
    """An app (production settings unless overridden) and a maker of clients, one per address."""
    settings: dict[str, object] = {"ENVIRONMENT": "production", **overrides}
    app = create_app(title="rate limit test", settings=auth_settings(db_url, **settings))
    made: list[httpx.AsyncClient] = []

    def client_from(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000 + len(made)))
        c = httpx.AsyncClient(transport=transport, base_url=ORIGIN, headers={"origin": ORIGIN})
        made.append(c)
        return c

    async with app.router.lifespan_context(app):
        try:
            yield app, client_from
        finally:
            for c in made:
                await c.aclose()


def assert_limited(r: httpx.Response, window: float) -> int:
    """A 429 in better-auth's shape; returns its Retry-After (seconds)."""
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == "TOO_MANY_REQUESTS"
    assert isinstance(body["message"], str)
    assert body["message"]
    retry_after = int(r.headers["retry-after"])
    assert r.headers["x-retry-after"] == r.headers["retry-after"]
    assert 1 <= retry_after <= window
    return retry_after


async def wrong_sign_in(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post(SIGN_IN, json={"email": email, "password": "not the password"})


# Requests that each group counts; bodies the route rejects cheaply (no hashing, no mail).
GROUPS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sign-in": ("RATE_LIMIT_SIGN_IN", SIGN_IN, {}),
    "sign-up": ("RATE_LIMIT_SIGN_UP", SIGN_UP, {}),
    "password": ("RATE_LIMIT_PASSWORD", f"{AUTH}/reset-password", {"newPassword": "x"}),
    "email": ("RATE_LIMIT_EMAIL", f"{AUTH}/request-password-reset", {"email": "not an email"}),
}


# --- the limit -----------------------------------------------------------------------------


async def test_fourth_sign_in_within_the_window_is_refused(db_url: str) -> None:
    """On by default in production: 3 sign-ins per 10 s per address, then 429."""
    async with limited_app(db_url) as (_, client_from):
        client = client_from("10.0.0.1")
        email = unique_email()
        await sign_up(client, email=email)
        client.cookies.clear()
        for _ in range(3):
            r = await wrong_sign_in(client, email)
            assert r.status_code == 401, r.text
        r = await client.post(SIGN_IN, json={"email": email, "password": PASSWORD})
        assert_limited(r, 10)  # even the right password, until the window ends
        assert "set-cookie" not in r.headers
        # Other auth routes are not limited.
        for _ in range(5):
            r = await client.get(f"{AUTH}/get-session")
            assert r.status_code == 200


async def test_limits_are_per_address(db_url: str) -> None:
    async with limited_app(db_url) as (_, client_from):
        a, b = client_from("10.0.0.1"), client_from("10.0.0.2")
        email = unique_email()
        await sign_up(a, email=email)
        a.cookies.clear()
        for _ in range(3):
            await wrong_sign_in(a, email)
        assert_limited(await wrong_sign_in(a, email), 10)
        # Another address is not affected, and can sign in.
        r = await b.post(SIGN_IN, json={"email": email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        # A header the client makes up does not make it someone else (uvicorn decides,
        # through FORWARDED_ALLOW_IPS, which proxies may name the client).
        r = await a.post(
            SIGN_IN,
            json={"email": email, "password": PASSWORD},
            headers={"x-forwarded-for": "10.9.9.9", "x-real-ip": "10.9.9.9"},
        )
        assert_limited(r, 10)


async def test_limits_are_per_path_with_the_group_s_limit(db_url: str) -> None:
    """better-auth's key: `<ip>|<path>`; the route group only sets the limit and window."""
    async with limited_app(db_url) as (_, client_from):
        client = client_from("10.0.0.1")
        for _ in range(3):
            r = await client.post(SIGN_IN, json={})
            assert r.status_code == 422
        assert_limited(await client.post(SIGN_IN, json={}), 10)
        # A trailing slash is the same path (better-auth strips it too).
        assert_limited(await client.post(SIGN_IN + "/", json={}), 10)
        # Sign-up has its own counter.
        token, _ = await sign_up(client)
        # reset-password is limited on its own path; change-password counts apart.
        for _ in range(3):
            r = await client.post(f"{AUTH}/reset-password", json={"newPassword": "x"})
            assert r.status_code == 400, r.text
        assert_limited(await client.post(f"{AUTH}/reset-password", json={"newPassword": "x"}), 10)
        r = await client.post(
            f"{AUTH}/change-password",
            json={"currentPassword": PASSWORD, "newPassword": "a new password"},
            headers={"authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        # The mail routes: 3 per 60 s each; the limit stands in front of the route (which,
        # without SMTP in production, answers 400).
        for _ in range(3):
            r = await client.post(f"{AUTH}/request-password-reset", json={"email": "nope"})
            assert r.status_code == 400, r.text
        r = await client.post(f"{AUTH}/request-password-reset", json={"email": "nope"})
        assert_limited(r, 60)
        r = await client.post(f"{AUTH}/send-verification-email", json={"email": "nope"})
        assert r.status_code == 400, r.text


@pytest.mark.parametrize("group", sorted(GROUPS))
async def test_limits_are_configurable(db_url: str, group: str) -> None:
    setting, path, body = GROUPS[group]
    async with limited_app(db_url, **{setting: "5/120"}) as (_, client_from):
        client = client_from("10.0.0.1")
        for _ in range(5):
            r = await client.post(path, json=body)
            assert r.status_code != 429, r.text
        retry_after = assert_limited(await client.post(path, json=body), 120)
        assert retry_after > 60  # the configured window, not the default one
        # The other groups keep their defaults (3 per window).
        for other, (_, other_path, other_body) in GROUPS.items():
            if other == group:
                continue
            codes = [(await client.post(other_path, json=other_body)).status_code for _ in range(4)]
            assert 429 not in codes[:3], (other, codes)
            assert codes[3] == 429, (other, codes)


@pytest.mark.parametrize("rate", ["3", "0/10", "3/0", "x/10", "3/-1", ""])
def test_invalid_rate_setting_is_refused(db_url: str, rate: str) -> None:
    with pytest.raises(ValidationError, match="RATE_LIMIT_SIGN_IN"):
        auth_settings(db_url, RATE_LIMIT_SIGN_IN=rate)


@pytest.mark.parametrize(
    "overrides",
    [
        {"RATE_LIMIT_ENABLED": False},  # switched off in production
        {"ENVIRONMENT": "test"},  # off by default outside production
        {"ENVIRONMENT": "development"},
    ],
)
async def test_limits_can_be_disabled(db_url: str, overrides: dict[str, object]) -> None:
    async with limited_app(db_url, RATE_LIMIT_SIGN_IN="1/60", **overrides) as (_, client_from):
        client = client_from("10.0.0.1")
        for _ in range(6):
            r = await client.post(SIGN_IN, json={})
            assert r.status_code == 422, r.text


async def test_limits_can_be_enabled_outside_production(db_url: str) -> None:
    async with limited_app(
        db_url, ENVIRONMENT="development", RATE_LIMIT_ENABLED=True, RATE_LIMIT_SIGN_IN="1/60"
    ) as (_, client_from):
        client = client_from("10.0.0.1")
        assert (await client.post(SIGN_IN, json={})).status_code == 422
        assert_limited(await client.post(SIGN_IN, json={}), 60)
        assert await counters(db_url) == {}  # development counts in memory


async def test_the_window_resets(db_url: str) -> None:
    async with limited_app(db_url, RATE_LIMIT_SIGN_IN="2/1") as (_, client_from):
        client = client_from("10.0.0.1")
        for _ in range(2):
            assert (await client.post(SIGN_IN, json={})).status_code == 422
        assert assert_limited(await client.post(SIGN_IN, json={}), 1) == 1
        # Bounded poll: within a few seconds the window is over (refused polls do not count).
        for _ in range(100):
            r = await client.post(SIGN_IN, json={})
            if r.status_code != 429:
                break
            await asyncio.sleep(0.05)
        assert r.status_code == 422, "the window never reset"
        # A fresh window: one more allowed, then refused again.
        assert (await client.post(SIGN_IN, json={})).status_code == 422
        assert_limited(await client.post(SIGN_IN, json={}), 1)


# --- where the counters live ------------------------------------------------------------


async def counters(db_url: str) -> dict[str, int]:
    rows = await sql(db_url, "SELECT key, count FROM rate_limit")
    return {r["key"]: r["count"] for r in rows}


async def test_outside_development_the_counters_are_in_the_database(db_url: str) -> None:
    async with limited_app(db_url) as (_, client_from):
        client = client_from("10.0.0.1")
        for _ in range(2):
            await client.post(SIGN_IN, json={})
        await client.post(SIGN_UP, json={})
        assert await counters(db_url) == {
            "10.0.0.1|/sign-in/email": 2,
            "10.0.0.1|/sign-up/email": 1,
        }
        before = await sql(db_url, "SELECT (extract(epoch FROM now()) * 1000)::bigint AS ms")
        rows = await sql(db_url, "SELECT last_request FROM rate_limit")
        assert all(abs(r["last_request"] - before[0]["ms"]) < 60_000 for r in rows)  # epoch ms


async def test_replicas_count_a_client_together(db_url: str) -> None:
    """Two apps on one database (two replicas): a client alternating between them gets its
    429 on the 4th wrong sign-in, not the 7th."""
    async with limited_app(db_url) as (_, one), limited_app(db_url) as (_, other):
        replicas = [one("10.0.0.1"), other("10.0.0.1")]
        codes = [
            (await wrong_sign_in(replicas[i % 2], "a@example.com")).status_code for i in range(4)
        ]
        assert codes == [401, 401, 401, 429], codes


async def test_memory_storage_is_per_process(db_url: str) -> None:
    async with (
        limited_app(db_url, RATE_LIMIT_STORAGE="memory") as (_, one),
        limited_app(db_url, RATE_LIMIT_STORAGE="memory") as (_, other),
    ):
        replicas = [one("10.0.0.1"), other("10.0.0.1")]
        codes = [
            (await wrong_sign_in(replicas[i % 2], "a@example.com")).status_code for i in range(7)
        ]
        assert codes == [401] * 6 + [429], codes
        assert await counters(db_url) == {}


def test_invalid_storage_is_refused(db_url: str) -> None:
    with pytest.raises(ValidationError, match="RATE_LIMIT_STORAGE"):
        auth_settings(db_url, RATE_LIMIT_STORAGE="redis")


async def test_concurrent_requests_are_counted_exactly(db_url: str) -> None:
    """One upsert per counted request: of 12 requests at once, exactly 3 get through."""
    async with limited_app(db_url) as (_, one), limited_app(db_url) as (_, other):
        clients = [one("10.0.0.1"), other("10.0.0.1")]
        answers = await asyncio.gather(*(clients[i % 2].post(SIGN_IN, json={}) for i in range(12)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [422] * 3 + [429] * 9, codes
        assert await counters(db_url) == {"10.0.0.1|/sign-in/email": 3}


async def test_the_window_runs_from_the_last_counted_request(db_url: str) -> None:
    """better-auth's rule: a counted request moves `last_request`; a refused one does not,
    and a row a window old starts again at 1."""
    async with limited_app(db_url) as (_, client_from):
        client = client_from("10.0.0.1")
        for _ in range(3):
            await client.post(SIGN_IN, json={})
        key = "10.0.0.1|/sign-in/email"
        (row,) = await sql(db_url, "SELECT last_request FROM rate_limit WHERE key = $1", key)
        assert_limited(await client.post(SIGN_IN, json={}), 10)
        (same,) = await sql(
            db_url, "SELECT last_request, count FROM rate_limit WHERE key = $1", key
        )
        assert (same["last_request"], same["count"]) == (row["last_request"], 3)
        # As if the last counted request were 10 s ago: the window is over.
        await sql(db_url, "UPDATE rate_limit SET last_request = last_request - 10000")
        assert (await client.post(SIGN_IN, json={})).status_code == 422
        assert await counters(db_url) == {key: 1}
        # A row written by better-auth (its own id, a count at the limit) is honoured.
        await sql(
            db_url,
            "INSERT INTO rate_limit (id, key, count, last_request) VALUES"
            " ('ba-row', '10.0.0.9|/sign-in/email', 3, (extract(epoch FROM now()) * 1000)::bigint)",
        )
        assert assert_limited(await client_from("10.0.0.9").post(SIGN_IN, json={}), 10) >= 9


async def test_old_counters_are_swept(db_url: str) -> None:
    async with limited_app(db_url) as (_, client_from):
        now = "(extract(epoch FROM now()) * 1000)::bigint"
        await sql(
            db_url,
            "INSERT INTO rate_limit (id, key, count, last_request) VALUES"
            f" ('old', '10.0.0.5|/sign-in/email', 3, {now} - 61000),"
            f" ('recent', '10.0.0.6|/sign-in/email', 3, {now} - 30000)",
        )
        # The first counted request of a process starts a sweep (then one a minute at most).
        await client_from("10.0.0.1").post(SIGN_IN, json={})

        async def swept() -> bool:
            return "10.0.0.5|/sign-in/email" not in await counters(db_url)

        await poll(swept, "the old counter is swept")
        assert set(await counters(db_url)) == {"10.0.0.6|/sign-in/email", "10.0.0.1|/sign-in/email"}


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # IPv4-mapped: the IPv4 address
        ("2001:DB8::1", "2001:0db8:0000:0000:0000:0000:0000:0000"),  # its /64, in full
        ("2001:db8:0:0:ffff:1:2:3", "2001:0db8:0000:0000:0000:0000:0000:0000"),
        ("2001:db8:0:1::1", "2001:0db8:0000:0001:0000:0000:0000:0000"),
        (None, "no-trusted-ip"),
        ("testclient", "testclient"),
    ],
)
def test_client_key_is_better_auths(address: str | None, key: str) -> None:
    assert rate_limit_key(address, "/sign-in/email/") == f"{key}|/sign-in/email"


async def test_an_ipv6_client_is_its_64(db_url: str) -> None:
    async with limited_app(db_url) as (_, client_from):
        codes = [
            (await client_from(f"2001:db8::{i}").post(SIGN_IN, json={})).status_code
            for i in range(1, 5)
        ]
        assert codes == [422, 422, 422, 429]
        r = await client_from("2001:db8:0:1::1").post(SIGN_IN, json={})
        assert r.status_code == 422  # another /64


# --- the same hash work for known and unknown emails ---------------------------------------


async def test_sign_in_costs_one_scrypt_whoever_asks(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every sign-in attempt with a well-formed email runs scrypt exactly once, so the
    answer's timing does not tell whether the email has an account (or a password)."""
    calls: list[str] = []
    real_derive = passwords._derive

    def counting_derive(password: str, salt_hex: str) -> bytes:
        calls.append(salt_hex)
        return real_derive(password, salt_hex)

    monkeypatch.setattr(passwords, "_derive", counting_derive)
    async with limited_app(db_url, ENVIRONMENT="test") as (_, client_from):
        client = client_from("10.0.0.1")
        known = unique_email("known")
        await sign_up(client, email=known)
        client.cookies.clear()
        # A user without a password (as a social sign-in would leave).
        no_password = unique_email("social")
        await sql(
            db_url,
            'INSERT INTO "user" (id, name, email) VALUES ($1, $2, $3)',
            "u" * 32,
            "Social",
            no_password,
        )
        [row] = await sql(db_url, "SELECT password FROM account WHERE provider_id = 'credential'")
        known_salt = row["password"].split(":")[0]

        cases = [
            ("unknown email", unique_email("unknown"), PASSWORD, 401),
            ("known email, wrong password", known, "not the password", 401),
            ("known email, right password", known, PASSWORD, 200),
            ("user without a password", no_password, PASSWORD, 401),
        ]
        salts: dict[str, str] = {}
        for label, email, password, status in cases:
            calls.clear()
            r = await client.post(SIGN_IN, json={"email": email, "password": password})
            assert r.status_code == status, (label, r.text)
            assert len(calls) == 1, (label, calls)
            salts[label] = calls[0]
            client.cookies.clear()
        # The known account is checked against its own hash; the others against a dummy
        # of the same cost (same function, same parameters).
        assert salts["known email, wrong password"] == known_salt
        assert salts["unknown email"] != known_salt
        assert salts["unknown email"] == salts["user without a password"]
        assert len(salts["unknown email"]) == len(known_salt) == 32
