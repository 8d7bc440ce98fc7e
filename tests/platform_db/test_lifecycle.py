"""Sessions as users see them: remember me, list and revoke, sliding refresh, expiry, cookie
domain, and a sign-out that reaches every service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from http.cookies import Morsel, SimpleCookie
from typing import Any

import httpx

from platform_auth import cookies
from platform_auth.app import create_app
from tests.conftest import TEST_SECRET, auth_settings, running
from tests.factories import PASSWORD, sign_up, unique_email
from tests.pg import sql

AUTH = "/api/auth"
SECURE_COOKIE = "__Secure-better-auth.session_token"
DONT_REMEMBER = "__Secure-better-auth.dont_remember"
EVIL = "https://evil.example"
DAY = timedelta(days=1)
WEEK = timedelta(days=7)


@asynccontextmanager
async def app_client(db_url: str, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(title="lifecycle test", settings=auth_settings(db_url, **overrides))
    async with running(app) as client:
        yield client


def set_cookies(r: httpx.Response) -> dict[str, Morsel[str]]:
    jar: SimpleCookie = SimpleCookie()
    for header in r.headers.get_list("set-cookie"):
        jar.load(header)
    return dict(jar)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def cookie(token: str) -> dict[str, str]:
    """A Cookie header carrying `token` as the signed session cookie."""
    return {"cookie": f"{SECURE_COOKIE}={cookies.encode_cookie_value(token, TEST_SECRET)}"}


async def sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, **extra: Any
) -> httpx.Response:
    r = await client.post(
        f"{AUTH}/sign-in/email", json={"email": email, "password": password, **extra}
    )
    assert r.status_code == 200, r.text
    return r


async def new_user_sessions(client: httpx.AsyncClient, count: int) -> tuple[str, list[str]]:
    """A new user with `count` sessions (oldest first); the client keeps no cookie."""
    email = unique_email()
    first, user = await sign_up(client, email=email)
    tokens = [first]
    for i in range(1, count):
        r = await client.post(
            f"{AUTH}/sign-in/email",
            json={"email": email, "password": PASSWORD},
            headers={"user-agent": f"device-{i}"},
        )
        assert r.status_code == 200, r.text
        tokens.append(r.json()["token"])
    client.cookies.clear()
    return user["id"], tokens


async def session_row(db_url: str, token: str) -> dict[str, Any] | None:
    rows = await sql(db_url, "SELECT * FROM session WHERE token = $1", token)
    return dict(rows[0]) if rows else None


async def session_of(client: httpx.AsyncClient, token: str) -> Any:
    r = await client.get(f"{AUTH}/get-session", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()


async def is_live(client: httpx.AsyncClient, token: str) -> bool:
    return await session_of(client, token) is not None


async def poll_session(
    client: httpx.AsyncClient, token: str, until: Callable[[Any], bool]
) -> httpx.Response:
    """Bounded poll of get-session until its body satisfies `until`.

    For edits made straight in the database: they reach a process that has the session
    cached through Postgres NOTIFY, that is within moments but not at once.
    """
    for _ in range(100):
        r = await client.get(f"{AUTH}/get-session", headers=bearer(token))
        assert r.status_code == 200, r.text
        if until(r.json()):
            return r
        await asyncio.sleep(0.05)
    raise AssertionError(f"get-session never changed: {r.json()}")


def expiry_changed(previous: str) -> Callable[[Any], bool]:
    return lambda body: body is None or body["session"]["expiresAt"] != previous


# --- remember me ---------------------------------------------------------------------------


async def test_remember_me_on_is_a_persistent_seven_day_cookie(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    email = unique_email()
    await sign_up(platform_client, email=email)
    platform_client.cookies.clear()
    r = await sign_in(platform_client, email)
    jar = set_cookies(r)
    assert set(jar) == {SECURE_COOKIE}  # no dont_remember cookie
    cookie = jar[SECURE_COOKIE]
    assert cookie["max-age"] == str(int(WEEK.total_seconds()))
    assert cookie["httponly"]
    assert cookie["secure"]
    assert cookie["samesite"].lower() == "lax"
    row = await session_row(db_url, r.json()["token"])
    assert row is not None
    assert row["expires_at"] - row["created_at"] == WEEK


async def test_remember_me_off_is_a_browser_session_and_one_day(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    email = unique_email()
    await sign_up(platform_client, email=email)
    platform_client.cookies.clear()
    r = await sign_in(platform_client, email, rememberMe=False)
    token = r.json()["token"]
    jar = set_cookies(r)
    session_cookie, dont_remember = jar[SECURE_COOKIE], jar[DONT_REMEMBER]
    for c in (session_cookie, dont_remember):
        assert not c["max-age"]  # no Max-Age, no Expires: gone when the browser closes
        assert not c["expires"]
        assert c["httponly"]
        assert c["secure"]
        assert c["samesite"].lower() == "lax"
        assert c["path"] == "/"
    assert cookies.decode_cookie_value(dont_remember.value, TEST_SECRET) == "true"
    row = await session_row(db_url, token)
    assert row is not None
    assert row["expires_at"] - row["created_at"] == DAY

    # 23 hours later it is still valid but never slides, even for a bearer client that
    # sends no dont_remember cookie.
    platform_client.cookies.clear()
    await sql(
        db_url,
        "UPDATE session SET expires_at = expires_at - interval '23 hours',"
        " updated_at = updated_at - interval '23 hours',"
        " created_at = created_at - interval '23 hours' WHERE token = $1",
        token,
    )
    before = await session_row(db_url, token)
    assert before is not None
    assert await is_live(platform_client, token)
    after = await session_row(db_url, token)
    assert after == before

    # A day after sign-in it is over, and its row is gone.
    await sql(
        db_url, "UPDATE session SET expires_at = expires_at - interval '2 hours' WHERE token = $1",
        token,
    )  # fmt: skip
    await poll_session(platform_client, token, lambda body: body is None)
    assert await session_row(db_url, token) is None


async def test_change_password_keeps_a_browser_session_login_short(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    """Changing the password replaces the session; a remember-me-off login must stay one."""
    email = unique_email()
    await sign_up(platform_client, email=email)
    platform_client.cookies.clear()
    await sign_in(platform_client, email, rememberMe=False)
    r = await platform_client.post(
        f"{AUTH}/change-password",
        json={"currentPassword": PASSWORD, "newPassword": "a brand new password"},
    )
    assert r.status_code == 200, r.text
    new_cookie = set_cookies(r)[SECURE_COOKIE]
    assert not new_cookie["max-age"], "the new cookie outlives the browser session"
    row = await session_row(db_url, r.json()["token"])
    assert row is not None
    assert row["expires_at"] - row["created_at"] == DAY


# --- list and revoke -----------------------------------------------------------------------


async def test_list_sessions(platform_client: httpx.AsyncClient, db_url: str) -> None:
    user_id, tokens = await new_user_sessions(platform_client, 3)
    _, other_tokens = await new_user_sessions(platform_client, 1)
    r = await platform_client.get(f"{AUTH}/list-sessions", headers=bearer(tokens[0]))
    assert r.status_code == 200, r.text
    listed = r.json()
    assert [s["token"] for s in listed] == tokens[::-1]  # newest first
    assert {s["userId"] for s in listed} == {user_id}
    assert not set(other_tokens) & {s["token"] for s in listed}
    assert {s["userAgent"] for s in listed} >= {"device-1", "device-2"}
    assert set(listed[0]) == {
        "id", "token", "userId", "expiresAt", "ipAddress", "userAgent", "createdAt", "updatedAt",
    }  # fmt: skip

    # An expired session is not listed.
    await sql(
        db_url,
        "UPDATE session SET expires_at = (now() AT TIME ZONE 'UTC') - interval '1 minute'"
        " WHERE token = $1",
        tokens[1],
    )
    r = await platform_client.get(f"{AUTH}/list-sessions", headers=bearer(tokens[0]))
    assert [s["token"] for s in r.json()] == [tokens[2], tokens[0]]


async def test_session_routes_need_a_session(platform_client: httpx.AsyncClient) -> None:
    platform_client.cookies.clear()
    for method, path, body in [
        ("GET", "/list-sessions", None),
        ("POST", "/revoke-session", {"token": "x" * 32}),
        ("POST", "/revoke-sessions", {}),
        ("POST", "/revoke-other-sessions", {}),
        ("POST", "/change-password", {"currentPassword": PASSWORD, "newPassword": PASSWORD}),
    ]:
        r = await platform_client.request(method, AUTH + path, json=body)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["code"] == "UNAUTHORIZED"


async def test_revoke_one_session(platform_client: httpx.AsyncClient, db_url: str) -> None:
    _, (first, second) = await new_user_sessions(platform_client, 2)
    r = await platform_client.post(
        f"{AUTH}/revoke-session", json={"token": second}, headers=bearer(first)
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"status": True}
    assert await session_row(db_url, second) is None
    assert not await is_live(platform_client, second)
    assert await is_live(platform_client, first)
    assert "set-cookie" not in r.headers  # another device's session: this cookie stays


async def test_revoke_own_session_by_cookie_clears_the_cookie(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    email = unique_email()
    await sign_up(platform_client, email=email)
    platform_client.cookies.clear()
    token = (await sign_in(platform_client, email)).json()["token"]
    r = await platform_client.post(f"{AUTH}/revoke-session", json={"token": token})
    assert r.status_code == 200, r.text
    assert set_cookies(r)[SECURE_COOKIE]["max-age"] == "0"
    assert SECURE_COOKIE not in platform_client.cookies
    assert await session_row(db_url, token) is None


async def test_another_users_session_cannot_be_revoked(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    _, (mine,) = await new_user_sessions(platform_client, 1)
    _, (theirs,) = await new_user_sessions(platform_client, 1)
    r = await platform_client.post(
        f"{AUTH}/revoke-session", json={"token": theirs}, headers=bearer(mine)
    )
    assert r.status_code == 200, r.text  # as better-auth: no hint whether the token exists
    assert await session_row(db_url, theirs) is not None
    assert await is_live(platform_client, theirs)
    assert await is_live(platform_client, mine)


async def test_revoke_other_sessions(platform_client: httpx.AsyncClient, db_url: str) -> None:
    user_id, tokens = await new_user_sessions(platform_client, 3)
    _, (bystander,) = await new_user_sessions(platform_client, 1)
    r = await platform_client.post(f"{AUTH}/revoke-other-sessions", headers=bearer(tokens[1]))
    assert r.status_code == 200, r.text
    assert r.json() == {"status": True}
    rows = await sql(db_url, "SELECT token FROM session WHERE user_id = $1", user_id)
    assert [row["token"] for row in rows] == [tokens[1]]
    assert await is_live(platform_client, tokens[1])
    for gone in (tokens[0], tokens[2]):
        assert not await is_live(platform_client, gone)
    assert await is_live(platform_client, bystander)


async def test_revoke_all_sessions(platform_client: httpx.AsyncClient, db_url: str) -> None:
    email = unique_email()
    other, user = await sign_up(platform_client, email=email)
    platform_client.cookies.clear()
    current = (await sign_in(platform_client, email)).json()["token"]
    _, (bystander,) = await new_user_sessions(platform_client, 1)
    r = await platform_client.post(f"{AUTH}/revoke-sessions", headers=bearer(current))
    assert r.status_code == 200, r.text
    assert r.json() == {"status": True}
    assert set_cookies(r)[SECURE_COOKIE]["max-age"] == "0"
    assert await sql(db_url, "SELECT 1 FROM session WHERE user_id = $1", user["id"]) == []
    assert not await is_live(platform_client, current)
    assert not await is_live(platform_client, other)
    assert await is_live(platform_client, bystander)


# --- sliding refresh and expiry ------------------------------------------------------------


async def _age_session(db_url: str, token: str, age: timedelta) -> None:
    """Pretend the session's expiry was last set `age` ago."""
    await sql(
        db_url,
        "UPDATE session SET expires_at = expires_at - $2::interval,"
        " updated_at = updated_at - $2::interval WHERE token = $1",
        token,
        age,
    )


async def test_sliding_refresh_at_most_once_per_update_age(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    _, (token,) = await new_user_sessions(platform_client, 1)

    # Set 23 hours ago: not due, nothing is written.
    await _age_session(db_url, token, timedelta(hours=23))
    before = await session_row(db_url, token)
    assert before is not None
    r = await platform_client.get(f"{AUTH}/get-session", headers=bearer(token))
    assert r.json() is not None
    assert "set-cookie" not in r.headers
    assert await session_row(db_url, token) == before

    # Set a day and a bit ago: due, the expiry moves to seven days from now, once.
    await _age_session(db_url, token, timedelta(hours=2))
    aged = await session_row(db_url, token)
    assert aged is not None
    r = await poll_session(platform_client, token, expiry_changed(r.json()["session"]["expiresAt"]))
    refreshed = await session_row(db_url, token)
    assert refreshed is not None
    assert refreshed["expires_at"] - refreshed["updated_at"] == WEEK
    assert refreshed["expires_at"] - aged["expires_at"] > DAY
    cookie = set_cookies(r)[SECURE_COOKIE]
    assert cookie["max-age"] == str(int(WEEK.total_seconds()))
    for _ in range(3):
        r = await platform_client.get(f"{AUTH}/get-session", headers=bearer(token))
        assert r.json()["session"]["token"] == token
        assert "set-cookie" not in r.headers
    assert await session_row(db_url, token) == refreshed


async def test_session_lifetime_and_update_age_are_settings(db_url: str) -> None:
    async with app_client(db_url, SESSION_EXPIRES_IN=3600, SESSION_UPDATE_AGE=600) as client:
        _, (token,) = await new_user_sessions(client, 1)
        row = await session_row(db_url, token)
        assert row is not None
        assert row["expires_at"] - row["created_at"] == timedelta(hours=1)
        await _age_session(db_url, token, timedelta(minutes=9))
        before = await session_row(db_url, token)
        previous = (await session_of(client, token))["session"]["expiresAt"]
        assert await session_row(db_url, token) == before
        await _age_session(db_url, token, timedelta(minutes=2))
        r = await poll_session(client, token, expiry_changed(previous))
        assert set_cookies(r)[SECURE_COOKIE]["max-age"] == "3600"
        after = await session_row(db_url, token)
        assert after is not None
        assert after["expires_at"] - after["updated_at"] == timedelta(hours=1)
        assert before is not None
        assert after["expires_at"] > before["expires_at"]


async def test_expired_session_is_rejected_and_deleted(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    _, (token, other) = await new_user_sessions(platform_client, 2)
    await sql(
        db_url,
        "UPDATE session SET expires_at = (now() AT TIME ZONE 'UTC') - interval '1 second'"
        " WHERE token = $1",
        token,
    )
    r = await platform_client.get(f"{AUTH}/list-sessions", headers=bearer(token))
    assert r.status_code == 401
    assert r.json()["code"] == "UNAUTHORIZED"
    assert await session_row(db_url, token) is None  # deleted although the request failed
    assert await is_live(platform_client, other)


# --- cookie domain -------------------------------------------------------------------------


async def test_cookie_domain(db_url: str) -> None:
    async with app_client(db_url, COOKIE_DOMAIN="example.com") as client:
        email = unique_email()
        r = await client.post(
            f"{AUTH}/sign-up/email",
            json={"name": "Ada", "email": email, "password": PASSWORD, "rememberMe": False},
        )
        assert r.status_code == 200, r.text
        jar = set_cookies(r)
        assert jar[SECURE_COOKIE]["domain"].lstrip(".") == "example.com"
        assert jar[DONT_REMEMBER]["domain"].lstrip(".") == "example.com"
        r = await client.post(f"{AUTH}/sign-out", headers=bearer(r.json()["token"]))
        assert r.status_code == 200, r.text
        cleared = set_cookies(r)
        # A deletion only reaches the browser's cookie when it names the same domain.
        for name in (SECURE_COOKIE, DONT_REMEMBER):
            assert cleared[name]["max-age"] == "0"
            assert cleared[name]["domain"].lstrip(".") == "example.com"


async def test_no_cookie_domain_by_default(platform_client: httpx.AsyncClient) -> None:
    r = await platform_client.post(
        f"{AUTH}/sign-up/email",
        json={"name": "Ada", "email": unique_email(), "password": PASSWORD},
    )
    assert not set_cookies(r)[SECURE_COOKIE]["domain"]  # host-only


# --- CSRF on the new state-changing routes -------------------------------------------------


async def test_cookie_session_changes_need_a_trusted_origin(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    email = unique_email()
    token, _ = await sign_up(platform_client, email=email)
    _, (bystander,) = await new_user_sessions(platform_client, 1)
    del platform_client.headers["origin"]
    attacks = [
        ("/revoke-sessions", {}),
        ("/revoke-other-sessions", {}),
        ("/revoke-session", {"token": token}),
        ("/change-password", {"currentPassword": PASSWORD, "newPassword": "attacker password"}),
    ]
    for path, body in attacks:
        r = await platform_client.post(
            AUTH + path, json=body, headers={**cookie(token), "origin": EVIL}
        )
        assert r.status_code == 403, (path, r.text)
        assert r.json()["code"] == "INVALID_ORIGIN"
        r = await platform_client.post(AUTH + path, json=body, headers=cookie(token))
        assert r.status_code == 403, (path, r.text)
        assert r.json()["code"] == "MISSING_OR_NULL_ORIGIN"
    assert await session_row(db_url, token) is not None
    platform_client.cookies.clear()
    current = (await sign_in(platform_client, email)).json()["token"]  # password unchanged
    # From the site itself it works.
    r = await platform_client.post(
        f"{AUTH}/revoke-other-sessions",
        headers={**cookie(current), "origin": "https://testserver"},
    )
    assert r.status_code == 200, r.text
    assert await session_row(db_url, token) is None
    assert await is_live(platform_client, current)
    assert await is_live(platform_client, bystander)


async def test_trusted_origins_setting(db_url: str) -> None:
    app_origin = "https://app.example.com"
    async with app_client(db_url, TRUSTED_ORIGINS=f"{app_origin}, https://admin.example.com/") as c:
        token, _ = await sign_up(c)
        _, (other,) = await new_user_sessions(c, 1)
        r = await c.post(f"{AUTH}/revoke-sessions", headers={**cookie(token), "origin": EVIL})
        assert r.status_code == 403
        assert await session_row(db_url, token) is not None
        r = await c.post(
            f"{AUTH}/revoke-sessions",
            headers={**cookie(token), "origin": "https://admin.example.com"},
        )
        assert r.status_code == 200, r.text
        assert await session_row(db_url, token) is None
        assert await is_live(c, other)


async def test_bearer_requests_are_not_origin_checked(
    platform_client: httpx.AsyncClient, db_url: str
) -> None:
    _, (token, other) = await new_user_sessions(platform_client, 2)
    r = await platform_client.post(
        f"{AUTH}/revoke-other-sessions", headers={**bearer(token), "origin": EVIL}
    )
    assert r.status_code == 200, r.text
    assert await session_row(db_url, other) is None


# --- across services -----------------------------------------------------------------------


async def _eventually_unauthorized(client: httpx.AsyncClient, token: str) -> None:
    """Bounded poll: `token` stops working on `client` within a few seconds."""
    for _ in range(100):
        r = await client.get("/todos", headers=bearer(token))
        if r.status_code == 401:
            return
        assert r.status_code == 200, r.text
        await asyncio.sleep(0.05)
    raise AssertionError("the session still works in the other service")


async def test_sign_out_in_web_ends_the_session_in_trading(
    both_clients: tuple[httpx.AsyncClient, httpx.AsyncClient], full_db: str
) -> None:
    web, trading = both_clients
    token, _ = await sign_up(web)
    other, _ = await sign_up(web)
    web.cookies.clear()
    for _ in range(2):  # used in trading (and cached there, if it caches)
        r = await trading.get("/todos", headers=bearer(token))
        assert r.status_code == 200, r.text
    r = await trading.get("/todos", headers=bearer(other))
    assert r.status_code == 200
    r = await web.post(f"{AUTH}/sign-out", headers=cookie(token))
    assert r.status_code == 200, r.text
    await _eventually_unauthorized(trading, token)
    r = await trading.get(f"{AUTH}/get-session", headers=bearer(token))
    assert r.json() is None
    assert await sql(full_db, "SELECT 1 FROM session WHERE token = $1", token) == []
    r = await trading.get("/todos", headers=bearer(other))  # someone else's session lives on
    assert r.status_code == 200


async def test_revoke_other_sessions_in_trading_reaches_web(
    both_clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    web, trading = both_clients
    email = unique_email()
    on_web, _ = await sign_up(web, email=email)
    web.cookies.clear()
    on_trading = (await sign_in(trading, email)).json()["token"]
    trading.cookies.clear()
    r = await web.get("/todos", headers=bearer(on_web))
    assert r.status_code == 200
    r = await trading.post(f"{AUTH}/revoke-other-sessions", headers=bearer(on_trading))
    assert r.status_code == 200, r.text
    await _eventually_unauthorized(web, on_web)
    r = await web.get("/todos", headers=bearer(on_trading))
    assert r.status_code == 200
