"""The /api/auth routes: better-auth's paths, shapes, codes, cookies, and the CSRF check."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from platform_auth import cookies
from platform_auth.app import create_app
from platform_auth.passwords import verify_password_sync
from tests.conftest import ORIGIN, TEST_SECRET, auth_settings, running
from tests.factories import PASSWORD, make_user, sign_up
from tests.pg import sql

SIGN_UP = "/api/auth/sign-up/email"
SIGN_IN = "/api/auth/sign-in/email"
SIGN_OUT = "/api/auth/sign-out"
GET_SESSION = "/api/auth/get-session"
SECURE_COOKIE = "__Secure-better-auth.session_token"
USER_KEYS = {"id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt"}
SESSION_KEYS = {
    "id", "token", "userId", "expiresAt", "ipAddress", "userAgent", "createdAt", "updatedAt",
}  # fmt: skip
EVIL = "https://evil.example"


@asynccontextmanager
async def app_client(db_url: str, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(title="auth test", settings=auth_settings(db_url, **overrides))
    async with running(app) as client:
        yield client


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


def set_cookies(r: httpx.Response) -> dict[str, dict[str, str]]:
    """Each Set-Cookie header: name -> {"value": ..., attribute (lower case): value or ""}."""
    out: dict[str, dict[str, str]] = {}
    for header in r.headers.get_list("set-cookie"):
        first, *attrs = (part.strip() for part in header.split(";"))
        name, _, value = first.partition("=")
        parsed = {"value": value}
        for attr in attrs:
            key, _, val = attr.partition("=")
            parsed[key.lower()] = val
        out[name] = parsed
    return out


async def count(db_url: str, table: str) -> int:
    rows = await sql(db_url, f'SELECT count(*) FROM "{table}"')
    result: int = rows[0][0]
    return result


async def session_rows(db_url: str, token: str) -> list[Any]:
    return await sql(db_url, "SELECT * FROM session WHERE token = $1", token)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def as_sent(stored: datetime) -> datetime:
    """A stored timestamp as the API sends it: UTC, milliseconds (what JavaScript reads)."""
    return stored.replace(tzinfo=UTC, microsecond=stored.microsecond // 1000 * 1000)


# --- sign-up -------------------------------------------------------------------------------


async def test_sign_up(platform_client: httpx.AsyncClient, db_url: str) -> None:
    r = await platform_client.post(
        SIGN_UP,
        json={"name": "Ada Lovelace", "email": "  Ada@Example.COM ", "password": PASSWORD},
        headers={"user-agent": "test-agent/1.0"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"token", "user"}
    token, user = body["token"], body["user"]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", token)
    assert set(user) == USER_KEYS
    assert re.fullmatch(r"[A-Za-z0-9]{32}", user["id"])
    assert user["email"] == "ada@example.com"
    assert user["name"] == "Ada Lovelace"
    assert user["emailVerified"] is False
    assert user["image"] is None
    assert abs(parse_time(user["createdAt"]) - datetime.now(UTC)) < timedelta(minutes=5)

    [account] = await sql(db_url, "SELECT * FROM account WHERE user_id = $1", user["id"])
    assert account["provider_id"] == "credential"
    assert account["account_id"] == user["id"]
    assert len(account["password"]) == 161
    assert verify_password_sync(account["password"], PASSWORD)
    [session] = await session_rows(db_url, token)
    assert session["user_id"] == user["id"]
    assert session["ip_address"] == "127.0.0.1"
    assert session["user_agent"] == "test-agent/1.0"
    assert session["expires_at"] - session["created_at"] == timedelta(days=7)
    [row] = await sql(db_url, 'SELECT email, name FROM "user" WHERE id = $1', user["id"])
    assert tuple(row) == ("ada@example.com", "Ada Lovelace")


async def test_sign_up_sets_session_cookie(platform_client: httpx.AsyncClient) -> None:
    r = await platform_client.post(
        SIGN_UP, json={"name": "Ada", "email": "ada@example.com", "password": PASSWORD}
    )
    token = r.json()["token"]
    cookie = set_cookies(r)[SECURE_COOKIE]
    assert cookies.unsign(unquote(cookie["value"]), TEST_SECRET) == token
    assert unquote(cookie["value"]) == cookies.sign(token, TEST_SECRET)
    assert cookie["max-age"] == "604800"
    assert cookie["path"] == "/"
    assert cookie["samesite"].lower() == "lax"
    assert "httponly" in cookie
    assert "secure" in cookie


async def test_sign_up_duplicate_email(platform_client: httpx.AsyncClient, db_url: str) -> None:
    await sign_up(platform_client, email="ada@example.com")
    for second in ["ada@example.com", "ADA@Example.com", " ada@EXAMPLE.COM"]:
        r = await platform_client.post(
            SIGN_UP, json={"name": "Eve", "email": second, "password": "another password"}
        )
        assert_error(r, 422, "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL")
        assert "set-cookie" not in r.headers
    assert (await count(db_url, "user"), await count(db_url, "account")) == (1, 1)
    assert await count(db_url, "session") == 1


async def test_sign_up_invalid_email(platform_client: httpx.AsyncClient, db_url: str) -> None:
    for email in [
        "not-an-email", "ada@example", "@example.com", "ada@", "a b@example.com", "", "a@b@c.com",
    ]:  # fmt: skip
        r = await platform_client.post(
            SIGN_UP, json={"name": "A", "email": email, "password": PASSWORD}
        )
        assert_error(r, 400, "INVALID_EMAIL")
    assert await count(db_url, "user") == 0


async def test_sign_up_password_length(platform_client: httpx.AsyncClient, db_url: str) -> None:
    for password, code in [
        ("x" * 7, "PASSWORD_TOO_SHORT"),
        ("", "PASSWORD_TOO_SHORT"),
        ("x" * 129, "PASSWORD_TOO_LONG"),
        ("\u00e9" * 129, "PASSWORD_TOO_LONG"),
    ]:
        r = await platform_client.post(
            SIGN_UP, json={"name": "A", "email": "a@example.com", "password": password}
        )
        assert_error(r, 400, code)
    # A failed sign-up writes nothing.
    assert (await count(db_url, "user"), await count(db_url, "account")) == (0, 0)
    assert await count(db_url, "session") == 0
    # The bounds themselves are allowed.
    for n in (8, 128):
        await sign_up(platform_client, password="p" * n)
    assert await count(db_url, "account") == 2


async def test_sign_up_missing_field(platform_client: httpx.AsyncClient, db_url: str) -> None:
    secret = "my-very-secret-pass"
    r = await platform_client.post(SIGN_UP, json={"email": "a@example.com", "password": secret})
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == "VALIDATION_ERROR"
    assert ["body", "name"] in [d["loc"] for d in body["details"]]
    assert secret not in r.text
    assert await count(db_url, "user") == 0


async def test_validation_error_never_echoes_the_password(
    platform_client: httpx.AsyncClient,
) -> None:
    secret = "secret-inside-a-list"
    r = await platform_client.post(
        SIGN_UP, json={"name": "A", "email": "a@example.com", "password": [secret]}
    )
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "VALIDATION_ERROR"
    assert ["body", "password"] in [d["loc"] for d in r.json()["details"]]
    assert secret not in r.text
    r = await platform_client.post(SIGN_IN, json={"email": {"x": secret}, "password": secret})
    assert r.status_code == 422, r.text
    assert secret not in r.text


async def test_sign_up_body_not_json(platform_client: httpx.AsyncClient) -> None:
    for content in [b"{not json", b'{"name": "A",', b"\xff\xfe"]:
        r = await platform_client.post(
            SIGN_UP, content=content, headers={"content-type": "application/json"}
        )
        assert_error(r, 400, "INVALID_JSON")


async def test_nul_character_is_a_client_error(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    """Postgres text cannot hold U+0000: such a request is a 4xx, never a 500; in what the
    user row stores it is a documented validation error (so schema-valid input is storable)."""
    for body in [
        {"name": "Ada\x00", "email": "ada@example.com", "password": PASSWORD},
        {"name": "Ada", "email": "ada@example.com", "password": PASSWORD, "image": "a\x00"},
    ]:
        r = await platform_client.post(SIGN_UP, json=body)
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "VALIDATION_ERROR"
        field = next(k for k, v in body.items() if "\x00" in v)
        assert ["body", field] in [d["loc"] for d in r.json()["details"]]
    r = await platform_client.post(
        SIGN_UP, json={"name": "Ada", "email": "ada\x00@example.com", "password": PASSWORD}
    )
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()) - {"details"} == {"code", "message"}
    assert await count(db_url, "user") == 0
    r = await platform_client.post(
        SIGN_IN, json={"email": "ada\x00@example.com", "password": PASSWORD}
    )
    assert 400 <= r.status_code < 500, r.text


# --- sign-in -------------------------------------------------------------------------------


async def test_sign_in(platform_client: httpx.AsyncClient, db_url: str) -> None:
    first_token, user = await sign_up(platform_client, email="ada@example.com")
    platform_client.cookies.clear()
    r = await platform_client.post(SIGN_IN, json={"email": "ADA@example.com", "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"redirect", "token", "user"}  # better-auth omits a null url
    assert body["redirect"] is False
    assert body["user"] == user
    token = body["token"]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", token)
    assert token != first_token
    assert len(await session_rows(db_url, token)) == 1
    assert await count(db_url, "session") == 2
    cookie = set_cookies(r)[SECURE_COOKIE]
    assert cookies.decode_cookie_value(cookie["value"], TEST_SECRET) == token
    assert cookie["max-age"] == "604800"
    # The cookie the response set authenticates the next request.
    r = await platform_client.get(GET_SESSION)
    assert r.json()["session"]["token"] == token


async def test_sign_in_with_callback_url(platform_client: httpx.AsyncClient) -> None:
    await sign_up(platform_client, email="ada@example.com")
    r = await platform_client.post(
        SIGN_IN,
        json={"email": "ada@example.com", "password": PASSWORD, "callbackURL": "/dashboard"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["redirect"], r.json()["url"]) == (True, "/dashboard")


async def test_sign_in_failures_look_the_same(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    await sign_up(platform_client, email="ada@example.com")
    platform_client.cookies.clear()
    wrong_password = await platform_client.post(
        SIGN_IN, json={"email": "ada@example.com", "password": PASSWORD + "!"}
    )
    unknown_email = await platform_client.post(
        SIGN_IN, json={"email": "nobody@example.com", "password": PASSWORD}
    )
    assert_error(wrong_password, 401, "INVALID_EMAIL_OR_PASSWORD")
    assert_error(unknown_email, 401, "INVALID_EMAIL_OR_PASSWORD")
    assert wrong_password.content == unknown_email.content
    assert "set-cookie" not in wrong_password.headers
    assert "set-cookie" not in unknown_email.headers
    assert await count(db_url, "session") == 1  # only sign-up's


async def test_sign_in_user_without_password(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    from service_kit.db import create_engine

    engine = create_engine(auth_settings(db_url).database)
    try:
        async with AsyncSession(engine) as db:
            await make_user(db, email="social@example.com")
            await db.commit()
    finally:
        await engine.dispose()
    r = await platform_client.post(
        SIGN_IN, json={"email": "social@example.com", "password": PASSWORD}
    )
    assert_error(r, 401, "INVALID_EMAIL_OR_PASSWORD")


async def test_sign_in_invalid_email(platform_client: httpx.AsyncClient) -> None:
    r = await platform_client.post(SIGN_IN, json={"email": "nope", "password": PASSWORD})
    assert_error(r, 400, "INVALID_EMAIL")


async def test_remember_me_false(platform_client: httpx.AsyncClient, db_url: str) -> None:
    await sign_up(platform_client, email="ada@example.com", rememberMe=False)
    platform_client.cookies.clear()
    r = await platform_client.post(
        SIGN_IN, json={"email": "ada@example.com", "password": PASSWORD, "rememberMe": False}
    )
    assert r.status_code == 200, r.text
    cookie = set_cookies(r)[SECURE_COOKIE]
    assert "max-age" not in cookie
    assert "expires" not in cookie
    [row] = await session_rows(db_url, r.json()["token"])
    assert row["expires_at"] - row["created_at"] == timedelta(days=1)
    # Using it does not slide a browser-session login out to seven days.
    r = await platform_client.get(GET_SESSION)
    assert r.status_code == 200
    assert SECURE_COOKIE not in set_cookies(r)
    [after] = await session_rows(db_url, r.json()["session"]["token"])
    assert after["expires_at"] == row["expires_at"]


# --- sign-out ------------------------------------------------------------------------------


async def test_sign_out_with_cookie(platform_client: httpx.AsyncClient, db_url: str) -> None:
    kept, _ = await sign_up(platform_client, email="ada@example.com")
    platform_client.cookies.clear()
    r = await platform_client.post(SIGN_IN, json={"email": "ada@example.com", "password": PASSWORD})
    token = r.json()["token"]
    r = await platform_client.post(SIGN_OUT)
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    assert await session_rows(db_url, token) == []
    assert len(await session_rows(db_url, kept)) == 1  # only the session that signed out
    cleared = set_cookies(r)[SECURE_COOKIE]
    assert cleared["max-age"] == "0"
    assert cleared["value"] in ("", '""')
    assert SECURE_COOKIE not in platform_client.cookies
    r = await platform_client.get(GET_SESSION, headers={"authorization": f"Bearer {token}"})
    assert r.json() is None
    r = await platform_client.get(GET_SESSION, headers={"authorization": f"Bearer {kept}"})
    assert r.json()["session"]["token"] == kept


async def test_sign_out_with_bearer(platform_client: httpx.AsyncClient, db_url: str) -> None:
    raw, _ = await sign_up(platform_client)
    signed, _ = await sign_up(platform_client)
    platform_client.cookies.clear()
    del platform_client.headers["origin"]
    for token, credential in [(raw, raw), (signed, cookies.sign(signed, TEST_SECRET))]:
        r = await platform_client.post(SIGN_OUT, headers={"authorization": f"Bearer {credential}"})
        assert r.status_code == 200, r.text
        assert r.json() == {"success": True}
        assert await session_rows(db_url, token) == []


async def test_sign_out_without_session(platform_client: httpx.AsyncClient, db_url: str) -> None:
    token, _ = await sign_up(platform_client)
    platform_client.cookies.clear()
    assert_error(await platform_client.post(SIGN_OUT), 400, "FAILED_TO_GET_SESSION")
    forged = cookies.sign(token, "not-the-secret-" * 3)
    r = await platform_client.post(SIGN_OUT, headers={"authorization": f"Bearer {forged}"})
    assert_error(r, 400, "FAILED_TO_GET_SESSION")
    assert len(await session_rows(db_url, token)) == 1


# --- get-session ---------------------------------------------------------------------------


async def test_get_session_without_session(platform_client: httpx.AsyncClient) -> None:
    r = await platform_client.get(GET_SESSION)
    assert r.status_code == 200
    assert r.content == b"null"


async def test_get_session_with_cookie(platform_client: httpx.AsyncClient, db_url: str) -> None:
    token, user = await sign_up(platform_client, name="Grace")
    r = await platform_client.get(GET_SESSION)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"session", "user"}
    assert set(body["session"]) == SESSION_KEYS
    assert body["user"] == user
    session = body["session"]
    [row] = await session_rows(db_url, token)
    assert session["token"] == token
    assert session["id"] == row["id"]
    assert session["userId"] == user["id"]
    assert session["ipAddress"] == "127.0.0.1"
    assert session["userAgent"] == row["user_agent"]
    assert parse_time(session["expiresAt"]) == as_sent(row["expires_at"])
    assert "set-cookie" not in r.headers  # fresh: nothing to refresh


async def test_get_session_with_bearer(platform_client: httpx.AsyncClient) -> None:
    token, user = await sign_up(platform_client)
    platform_client.cookies.clear()
    for credential in [token, cookies.sign(token, TEST_SECRET)]:
        r = await platform_client.get(
            GET_SESSION, headers={"authorization": f"Bearer {credential}"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["session"]["token"] == token
        assert r.json()["user"]["id"] == user["id"]


async def test_get_session_rejects_forgeries(platform_client: httpx.AsyncClient) -> None:
    token, _ = await sign_up(platform_client)
    platform_client.cookies.clear()
    signature = cookies.sign(token, TEST_SECRET).split(".")[1]
    wrong_secret = cookies.sign(token, TEST_SECRET + "-other")
    other_token = "A" * 32 if token != "A" * 32 else "B" * 32
    for credential in [
        wrong_secret,
        f"{other_token}.{signature}",  # a signature lifted from another token
        f"{token}.{signature[:-1]}",
        f"{token}.",
        other_token,  # unknown raw token
    ]:
        r = await platform_client.get(
            GET_SESSION, headers={"authorization": f"Bearer {credential}"}
        )
        assert r.status_code == 200
        assert r.json() is None, credential
    for cookie in [cookies.encode_cookie_value(token, TEST_SECRET + "-other"), token, "garbage"]:
        r = await platform_client.get(GET_SESSION, headers={"cookie": f"{SECURE_COOKIE}={cookie}"})
        assert r.json() is None, cookie
    # The genuine article, for contrast.
    r = await platform_client.get(
        GET_SESSION,
        headers={"cookie": f"{SECURE_COOKIE}={cookies.encode_cookie_value(token, TEST_SECRET)}"},
    )
    assert r.json()["session"]["token"] == token


async def test_get_session_expired(platform_client: httpx.AsyncClient, db_url: str) -> None:
    token, _ = await sign_up(platform_client)
    await sql(
        db_url,
        "UPDATE session SET expires_at = (now() AT TIME ZONE 'UTC') - interval '1 second'"
        " WHERE token = $1",
        token,
    )
    r = await platform_client.get(GET_SESSION)
    assert r.status_code == 200
    assert r.json() is None
    assert await session_rows(db_url, token) == []


async def test_get_session_slides_a_due_session(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    token, _ = await sign_up(platform_client)
    # Last set more than a day ago: due for a refresh.
    await sql(
        db_url,
        "UPDATE session SET expires_at = (now() AT TIME ZONE 'UTC') + interval '5 days',"
        " updated_at = (now() AT TIME ZONE 'UTC') - interval '2 days' WHERE token = $1",
        token,
    )
    r = await platform_client.get(GET_SESSION)
    assert r.status_code == 200, r.text
    [row] = await session_rows(db_url, token)
    assert row["expires_at"] - row["updated_at"] == timedelta(days=7)
    assert parse_time(r.json()["session"]["expiresAt"]) == as_sent(row["expires_at"])
    cookie = set_cookies(r)[SECURE_COOKIE]
    assert cookie["max-age"] == "604800"
    assert cookies.decode_cookie_value(cookie["value"], TEST_SECRET) == token
    # Fresh now: the next request writes nothing and sets no cookie.
    r = await platform_client.get(GET_SESSION)
    assert "set-cookie" not in r.headers
    [again] = await session_rows(db_url, token)
    assert again["updated_at"] == row["updated_at"]


# --- cookie name and attributes per environment ------------------------------------------


@pytest.mark.parametrize(
    ("environment", "name", "secure"),
    [
        ("development", "better-auth.session_token", False),
        ("production", SECURE_COOKIE, True),
    ],
)
async def test_cookie_per_environment(
    db_url: str, environment: str, name: str, secure: bool
) -> None:
    async with app_client(db_url, ENVIRONMENT=environment, RATE_LIMIT_ENABLED=False) as client:
        r = await client.post(
            SIGN_UP, json={"name": "Ada", "email": "ada@example.com", "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        jar = set_cookies(r)
        assert set(jar) == {name}
        cookie = jar[name]
        assert ("secure" in cookie) is secure
        assert "httponly" in cookie
        assert cookie["samesite"].lower() == "lax"
        assert cookie["path"] == "/"
        assert cookie["max-age"] == "604800"
        assert cookies.decode_cookie_value(cookie["value"], TEST_SECRET) == r.json()["token"]
        # And that is the name the server reads back.
        client.cookies.clear()
        r2 = await client.get(GET_SESSION, headers={"cookie": f"{name}={cookie['value']}"})
        assert r2.json()["session"]["token"] == r.json()["token"]
        other = SECURE_COOKIE if name != SECURE_COOKIE else "better-auth.session_token"
        r3 = await client.get(GET_SESSION, headers={"cookie": f"{other}={cookie['value']}"})
        assert r3.json() is None


# --- CSRF: cookie-authenticated state changes need a trusted origin ------------------------


async def _signed_in_without_origin(client: httpx.AsyncClient) -> str:
    token, _ = await sign_up(client)
    del client.headers["origin"]
    return token


async def test_csrf_untrusted_origin(platform_client: httpx.AsyncClient, db_url: str) -> None:
    token = await _signed_in_without_origin(platform_client)
    for origin in [EVIL, "https://testserver.evil.example", "http://testserver"]:
        r = await platform_client.post(SIGN_OUT, headers={"origin": origin})
        assert_error(r, 403, "INVALID_ORIGIN")
    r = await platform_client.post(SIGN_OUT, headers={"referer": f"{EVIL}/page"})
    assert_error(r, 403, "INVALID_ORIGIN")
    assert len(await session_rows(db_url, token)) == 1


async def test_csrf_missing_origin(platform_client: httpx.AsyncClient, db_url: str) -> None:
    token = await _signed_in_without_origin(platform_client)
    assert_error(await platform_client.post(SIGN_OUT), 403, "MISSING_OR_NULL_ORIGIN")
    r = await platform_client.post(SIGN_OUT, headers={"origin": "null"})
    assert_error(r, 403, "MISSING_OR_NULL_ORIGIN")
    assert len(await session_rows(db_url, token)) == 1


async def test_csrf_own_origin_or_referer_allowed(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    token = await _signed_in_without_origin(platform_client)
    r = await platform_client.post(SIGN_OUT, headers={"referer": f"{ORIGIN}/settings"})
    assert r.status_code == 200, r.text
    assert await session_rows(db_url, token) == []


async def test_csrf_trusted_origin_allowed(db_url: str) -> None:
    trusted = "https://app.example.com"
    async with app_client(db_url, TRUSTED_ORIGINS=f"{trusted}/, https://other.example") as client:
        token = await _signed_in_without_origin(client)
        assert_error(await client.post(SIGN_OUT, headers={"origin": EVIL}), 403, "INVALID_ORIGIN")
        r = await client.post(SIGN_OUT, headers={"origin": trusted})
        assert r.status_code == 200, r.text
        assert await session_rows(db_url, token) == []


async def test_csrf_does_not_apply_to_bearer_or_safe_requests(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    token = await _signed_in_without_origin(platform_client)
    r = await platform_client.get(GET_SESSION, headers={"origin": EVIL})  # cookie, but a GET
    assert r.json()["session"]["token"] == token
    platform_client.cookies.clear()
    r = await platform_client.post(SIGN_OUT, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert await session_rows(db_url, token) == []


async def test_csrf_cannot_be_dodged_with_a_malformed_cookie(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    """Another cookie the middleware's parser chokes on must not hide the session cookie."""
    token = await _signed_in_without_origin(platform_client)
    value = cookies.encode_cookie_value(token, TEST_SECRET)
    platform_client.cookies.clear()
    # Browsers send such cookies: a quote, UTF-8 bytes, a space in the name.
    for junk in ['theme="dark', "note=caf\u00e9", "a b=c"]:
        header = f"{junk}; {SECURE_COOKIE}={value}".encode()
        r = await platform_client.post(
            SIGN_OUT, headers={b"origin": EVIL.encode(), b"cookie": header}
        )
        assert_error(r, 403, "INVALID_ORIGIN")
    assert len(await session_rows(db_url, token)) == 1
