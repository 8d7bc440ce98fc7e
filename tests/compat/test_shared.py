"""A better-auth server (Drizzle adapter, node/server.mjs) and our services on one database
with one secret share users and sessions both ways."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
import pytest

from platform_auth.passwords import verify_password_sync
from tests.compat.conftest import StartStack
from tests.compat.helpers import (
    APP_ORIGIN,
    ID,
    NODE_MISSING,
    PASSWORD_HASH,
    Stack,
    as_ms,
    cookie_value,
    date,
    run_client,
    set_cookies,
    signed,
    step,
)
from tests.npm import node_missing

if node_missing():
    pytest.skip(NODE_MISSING, allow_module_level=True)

# NFKC matters: "ﬁ" (U+FB01) must hash as "fi" on both sides.
PASSWORD = "Ünïcode ﬁsh 1234"
SAME_PASSWORD_OTHER_FORM = "Ünïcode fish 1234"


async def check_rows(stack: Stack, email: str, password: str) -> str:
    """The user's rows have better-auth's formats; returns the user id."""
    [user] = await stack.fetch(
        "SELECT id, email, email_verified, created_at, now() AT TIME ZONE 'UTC' AS now"
        ' FROM "user" WHERE email = $1',
        email,
    )
    assert ID.match(user["id"])
    assert user["email_verified"] is False
    # timestamp without time zone holding UTC, whatever the writer's local zone
    assert abs(user["now"] - user["created_at"]) < timedelta(minutes=1)
    [account] = await stack.fetch(
        "SELECT id, account_id, provider_id, password FROM account WHERE user_id = $1",
        user["id"],
    )
    assert ID.match(account["id"])
    assert (account["provider_id"], account["account_id"]) == ("credential", user["id"])
    assert len(account["password"]) == 161
    assert PASSWORD_HASH.match(account["password"])
    assert verify_password_sync(account["password"], password)
    sessions = await stack.fetch(
        'SELECT id, token, created_at, expires_at FROM "session" WHERE user_id = $1', user["id"]
    )
    assert sessions
    for session in sessions:
        assert ID.match(session["id"])
        assert ID.match(session["token"])
        lifetime = session["expires_at"] - session["created_at"]
        assert abs(lifetime - timedelta(days=7)) < timedelta(seconds=1)
        assert abs(user["now"] - session["created_at"]) < timedelta(minutes=1)
    return str(user["id"])


async def sign_in(http: httpx.AsyncClient, base: str, email: str, password: str) -> httpx.Response:
    return await http.post(
        f"{base}/api/auth/sign-in/email",
        json={"email": email, "password": password},
        headers={"origin": APP_ORIGIN},
    )


async def test_user_signed_up_with_better_auth_signs_in_with_us(start_stack: StartStack) -> None:
    stack = await start_stack(services=("web",))
    email = "grace@example.com"
    [up] = await run_client(
        [step(stack.ba, "signUp.email", {"name": "Grace", "email": email, "password": PASSWORD})]
    )
    assert up["error"] is None
    user_id = await check_rows(stack, email, PASSWORD)
    assert up["data"]["user"]["id"] == user_id

    async with httpx.AsyncClient(timeout=10) as http:
        for base in (stack.web,):
            r = await sign_in(http, base, "Grace@Example.com", SAME_PASSWORD_OTHER_FORM)
            assert r.status_code == 200, r.text
            assert r.json()["user"]["id"] == user_id
            assert r.cookies[stack.cookie_name] is not None
            r = await sign_in(http, base, email, "Ünïcode ﬁsh 12345")
            assert r.status_code == 401
            assert r.json()["code"] == "INVALID_EMAIL_OR_PASSWORD"
            r = await http.post(
                f"{base}/api/auth/sign-up/email",
                json={"name": "G", "email": email, "password": PASSWORD},
                headers={"origin": APP_ORIGIN},
            )
            assert r.status_code == 422
            assert r.json()["code"] == "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL"
    await check_rows(stack, email, PASSWORD)  # the sessions we wrote have the same formats


async def test_user_signed_up_with_us_signs_in_with_better_auth(start_stack: StartStack) -> None:
    stack = await start_stack(services=("trading",))
    email = "hopper@example.com"
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            f"{stack.trading}/api/auth/sign-up/email",
            json={"name": "Grace Hopper", "email": email, "password": PASSWORD},
            headers={"origin": APP_ORIGIN},
        )
    assert r.status_code == 200, r.text
    user_id = await check_rows(stack, email, PASSWORD)

    sign_up = {"name": "G", "email": email, "password": PASSWORD}
    right = {"email": "HOPPER@example.com", "password": SAME_PASSWORD_OTHER_FORM}
    again, wrong, signed_in, session = await run_client(
        [
            step(stack.ba, "signUp.email", sign_up),
            step(stack.ba, "signIn.email", {"email": email, "password": PASSWORD + "!"}),
            step(stack.ba, "signIn.email", right),
            step(stack.ba, "getSession"),
        ]
    )
    assert again["error"] is not None
    assert again["error"]["code"] == "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL"
    assert wrong["error"] is not None
    assert wrong["error"]["status"] == 401
    assert signed_in["error"] is None, signed_in["error"]
    assert signed_in["data"]["user"]["id"] == user_id
    assert signed_in["data"]["user"]["name"] == "Grace Hopper"
    assert session["data"]["user"]["id"] == user_id
    await check_rows(stack, email, PASSWORD)


async def test_session_cookies_are_accepted_both_ways(start_stack: StartStack) -> None:
    stack = await start_stack()
    account = {"name": "Ada", "email": "ada@example.com", "password": PASSWORD}
    login = {"email": "ada@example.com", "password": PASSWORD}
    # One browser: signs up with better-auth, then its cookie is used by our two services.
    up, at_web, at_trading, at_ba = await run_client(
        [
            step(stack.ba, "signUp.email", account),
            step(stack.web, "getSession"),
            step(stack.trading, "getSession"),
            step(stack.ba, "getSession"),
        ]
    )
    token = up["data"]["token"]
    assert set_cookies(up)[stack.cookie_name]["value"] == signed(token)
    session_id = at_ba["data"]["session"]["id"]
    for seen in (at_web, at_trading):
        assert seen["error"] is None
        assert seen["data"] is not None, "our service refused better-auth's session cookie"
        assert seen["data"]["session"]["id"] == session_id
        assert seen["data"]["session"]["token"] == token
        assert seen["data"]["user"]["id"] == up["data"]["user"]["id"]

    cookie = {"cookie": f"{stack.cookie_name}={cookie_value(token)}", "origin": APP_ORIGIN}
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{stack.web}/todos", json={"title": "from a better-auth login"},
                            headers=cookie)  # fmt: skip
        assert r.status_code == 201, r.text
        r = await http.get(f"{stack.web}/todos", headers=cookie)
        assert [t["title"] for t in r.json()["items"]] == ["from a better-auth login"]
        r = await http.get(f"{stack.trading}/todos", headers=cookie)
        assert r.status_code == 200
        assert r.json()["items"] == []

    # Another browser: signs in with us, then better-auth accepts our cookie.
    for base in (stack.web, stack.trading):
        signed_in, at_ba, here = await run_client(
            [
                step(base, "signIn.email", login),
                step(stack.ba, "getSession"),
                step(base, "getSession"),
            ]
        )
        ours = signed_in["data"]["token"]
        assert set_cookies(signed_in)[stack.cookie_name]["value"] == signed(ours)
        assert at_ba["data"] is not None, "better-auth refused our session cookie"
        assert at_ba["data"]["session"]["token"] == ours
        assert at_ba["data"]["session"]["id"] == here["data"]["session"]["id"]
        assert at_ba["data"]["user"]["id"] == up["data"]["user"]["id"]
        [row] = await stack.fetch('SELECT expires_at FROM "session" WHERE token = $1', ours)
        assert date(at_ba["data"]["session"]["expiresAt"]) == as_ms(row["expires_at"])


async def poll_signed_out(http: httpx.AsyncClient, base: str, headers: dict[str, str]) -> None:
    """Within a few seconds the session is gone here (our services may cache sessions)."""
    deadline = time.monotonic() + 5
    while True:
        r = await http.get(f"{base}/api/auth/get-session", headers=headers)
        assert r.status_code == 200
        if r.json() is None:
            return
        assert time.monotonic() < deadline, f"{base} still accepts a signed-out session"
        await asyncio.sleep(0.1)


async def test_sign_out_in_either_is_seen_by_both(start_stack: StartStack) -> None:
    stack = await start_stack()
    await run_client(
        [
            step(
                stack.ba,
                "signUp.email",
                {"name": "A", "email": "a@example.com", "password": PASSWORD},
            )
        ]
    )
    login = {"email": "a@example.com", "password": PASSWORD}

    # Signed in with better-auth, used at both services, signed out at ours (web).
    signed_in, web_before, trading_before, out = await run_client(
        [
            step(stack.ba, "signIn.email", login),
            step(stack.web, "getSession"),
            step(stack.trading, "getSession"),
            step(stack.web, "signOut"),
        ]
    )
    token = signed_in["data"]["token"]
    assert web_before["data"]["session"]["token"] == token
    assert trading_before["data"]["session"]["token"] == token
    assert out["data"] == {"success": True}
    headers = {"cookie": f"{stack.cookie_name}={cookie_value(token)}"}
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"{stack.ba}/api/auth/get-session", headers=headers)
        assert r.status_code == 200
        assert r.json() is None
        await poll_signed_out(http, stack.trading, headers)
    assert await stack.fetch('SELECT 1 FROM "session" WHERE token = $1', token) == []

    # Signed in with us, used by better-auth, signed out with better-auth.
    signed_in, at_ba, out = await run_client(
        [
            step(stack.trading, "signIn.email", login),
            step(stack.ba, "getSession"),
            step(stack.ba, "signOut"),
        ]
    )
    token = signed_in["data"]["token"]
    assert at_ba["data"]["session"]["token"] == token
    assert out["data"] == {"success": True}
    headers = {"cookie": f"{stack.cookie_name}={cookie_value(token)}"}
    async with httpx.AsyncClient(timeout=10) as http:
        for base in (stack.web, stack.trading):
            await poll_signed_out(http, base, headers)
            r = await http.get(f"{base}/todos", headers=headers)
            assert r.status_code == 401
    assert await stack.fetch('SELECT 1 FROM "session" WHERE token = $1', token) == []


async def test_secure_cookies_are_shared_too(start_stack: StartStack) -> None:
    """With Secure cookies (`__Secure-` prefix) on both sides, the same holds."""
    stack = await start_stack(services=("web",), secure=True)
    assert stack.cookie_name == "__Secure-better-auth.session_token"
    account = {"name": "S", "email": "s@example.com", "password": PASSWORD}
    up, at_web, signed_in, at_ba = await run_client(
        [
            step(stack.ba, "signUp.email", account),
            step(stack.web, "getSession"),
            step(stack.web, "signIn.email", {"email": "s@example.com", "password": PASSWORD}),
            step(stack.ba, "getSession"),
        ]
    )
    for result in (up, signed_in):
        cookie = set_cookies(result)[stack.cookie_name]
        assert cookie["value"] == signed(result["data"]["token"])
        assert "secure" in cookie
        assert "httponly" in cookie
    assert at_web["data"] is not None, "our service refused better-auth's __Secure- cookie"
    assert at_web["data"]["session"]["token"] == up["data"]["token"]
    assert at_ba["data"] is not None, "better-auth refused our __Secure- cookie"
    assert at_ba["data"]["session"]["token"] == signed_in["data"]["token"]


async def test_sessions_without_remember_me_stay_short_on_both_sides(
    start_stack: StartStack,
) -> None:
    """A `rememberMe: false` sign-in makes a one-day session and a `dont_remember` cookie;
    the other side must see it as such and not slide it to seven days when it is used
    (better-auth slides any session it meets without a valid `dont_remember` cookie)."""
    stack = await start_stack(services=("web",))
    await run_client(
        [
            step(
                stack.ba,
                "signUp.email",
                {"name": "A", "email": "a@example.com", "password": PASSWORD},
            )
        ]
    )
    login = {"email": "a@example.com", "password": PASSWORD, "rememberMe": False}
    for issuer, other in ((stack.ba, stack.web), (stack.web, stack.ba)):
        signed_in, at_other, at_issuer = await run_client(
            [
                step(issuer, "signIn.email", login),
                step(other, "getSession"),
                step(issuer, "getSession"),
            ]
        )
        token = signed_in["data"]["token"]
        issued = set_cookies(signed_in)
        assert "max-age" not in issued[stack.cookie_name]  # ends with the browser session
        assert "better-auth.dont_remember" in signed_in["jar"], f"{issuer} set no dont_remember"
        for seen in (at_other, at_issuer):
            assert seen["data"] is not None
            assert seen["data"]["session"]["token"] == token
            refreshed = set_cookies(seen).get(stack.cookie_name, {})
            assert "max-age" not in refreshed, f"a short session got a 7-day cookie: {seen}"
        [row] = await stack.fetch(
            'SELECT expires_at - created_at AS lifetime FROM "session" WHERE token = $1', token
        )
        assert abs(row["lifetime"] - timedelta(days=1)) < timedelta(seconds=1), (
            f"signed in at {issuer}, slid to {row['lifetime']} by a get-session"
        )


async def test_a_client_is_counted_together_by_better_auth_and_us(start_stack: StartStack) -> None:
    """Both with database rate limits on one database: one counter per client and path, in
    the rate_limit table, so 3 wrong sign-ins spread over both apps use up the 3 per 10 s."""
    stack = await start_stack(services=("web",), rate_limits=True)
    client = {"origin": APP_ORIGIN, "x-forwarded-for": "203.0.113.7"}  # as a proxy names it
    wrong = {"email": "nobody@example.com", "password": "not the password"}
    path = "/api/auth/sign-in/email"
    async with httpx.AsyncClient(timeout=10, headers=client) as http:
        codes = [
            (await http.post(f"{base}{path}", json=wrong)).status_code
            for base in (stack.web, stack.ba, stack.web)
        ]
        assert codes == [401, 401, 401], codes
        # (better-auth counts every path, its readiness route /ok included.)
        rows = await stack.fetch(
            "SELECT key, count, last_request FROM rate_limit WHERE key LIKE '%|/sign-in/%'"
        )
        assert [(r["key"], r["count"]) for r in rows] == [("203.0.113.7|/sign-in/email", 3)]
        now_ms = time.time() * 1000
        assert abs(rows[0]["last_request"] - now_ms) < 60_000  # epoch milliseconds, as theirs
        # The fourth, at either app, is refused the way better-auth refuses it.
        for base in (stack.ba, stack.web):
            r = await http.post(f"{base}{path}", json=wrong)
            assert r.status_code == 429, (base, r.text)
            assert 1 <= int(r.headers["x-retry-after"]) <= 10
        # Another client is not affected.
        other = {"x-forwarded-for": "203.0.113.8"}
        r = await http.post(f"{stack.ba}{path}", json=wrong, headers=other)
        assert r.status_code == 401, r.text
