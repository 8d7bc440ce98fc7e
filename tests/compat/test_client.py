"""better-auth's own client library (`better-auth/client`, pinned in node/package.json)
against our running services: it must get what it gets from a better-auth server."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.compat.conftest import StartStack
from tests.compat.helpers import (
    APP_ORIGIN,
    ID,
    JSON,
    NODE_MISSING,
    SESSION_KEYS,
    USER_KEYS,
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

PASSWORD = "correct horse battery"
WELCOME = f"{APP_ORIGIN}/welcome"


def flow(base: str, email: str) -> list[JSON]:
    """Sign-up, get-session, the two common errors, sign-in, sign-out, get-session."""
    return [
        step(base, "signUp.email", {"name": "Ada Lovelace", "email": email, "password": PASSWORD}),
        step(base, "getSession"),
        step(base, "signUp.email", {"name": "Ada", "email": email, "password": PASSWORD}),
        step(base, "signIn.email", {"email": email, "password": "wrong horse battery"}),
        step(base, "signIn.email", {"email": email.upper(), "password": PASSWORD}),
        step(base, "getSession"),
        step(base, "signOut"),
        step(base, "getSession"),
    ]


def more(base: str, email: str) -> list[JSON]:
    """Sign-in without "remember me", sign-in with a callback URL, sign-out."""
    return [
        step(base, "signIn.email", {"email": email, "password": PASSWORD, "rememberMe": False}),
        step(base, "getSession"),
        step(base, "signIn.email", {"email": email, "password": PASSWORD, "callbackURL": WELCOME}),
        step(base, "signOut"),
    ]


def check_session_cookie(result: JSON, name: str, token: str) -> None:
    cookie = set_cookies(result)[name]
    assert cookie["value"] == signed(token)
    assert cookie["path"] == "/"
    assert "httponly" in cookie
    assert cookie["samesite"].lower() == "lax"
    assert cookie["max-age"] == "604800"
    assert "secure" not in cookie


async def test_client_flow_against_our_services(start_stack: StartStack) -> None:
    stack = await start_stack()
    for name in ("web", "trading"):
        email = f"ada@{name}.example.com"
        sign_up, session, again, wrong, sign_in, session2, sign_out, after = await run_client(
            flow(stack.ours[name].url, email.title())
        )

        assert sign_up["error"] is None
        assert sign_up["status"] == 200
        token, user = sign_up["data"]["token"], sign_up["data"]["user"]
        assert ID.match(token)
        assert ID.match(user["id"])
        assert set(user) == USER_KEYS
        assert user["email"] == email  # lower-cased, as better-auth does
        assert (user["name"], user["emailVerified"], user["image"]) == ("Ada Lovelace", False, None)
        date(user["createdAt"]), date(user["updatedAt"])  # the client parsed them as Dates
        check_session_cookie(sign_up, stack.cookie_name, token)

        assert session["error"] is None
        assert set(session["data"]) == {"session", "user"}
        assert set(session["data"]["session"]) == SESSION_KEYS
        assert session["data"]["session"]["token"] == token
        assert session["data"]["session"]["userId"] == user["id"]
        assert session["data"]["user"] == user
        got = session["data"]["session"]
        assert date(got["expiresAt"]) - date(got["createdAt"]) == timedelta(days=7)

        assert again["data"] is None
        assert again["error"] == {
            "status": 422,
            "statusText": "Unprocessable Entity",
            "code": "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL",
            "message": "User already exists. Use another email.",
        }
        assert wrong["data"] is None
        assert wrong["error"] == {
            "status": 401,
            "statusText": "Unauthorized",
            "code": "INVALID_EMAIL_OR_PASSWORD",
            "message": "Invalid email or password",
        }

        assert sign_in["error"] is None
        assert sign_in["data"]["redirect"] is False
        new_token = sign_in["data"]["token"]
        assert ID.match(new_token)
        assert new_token != token
        assert sign_in["data"]["user"] == user
        check_session_cookie(sign_in, stack.cookie_name, new_token)
        assert session2["data"]["session"]["token"] == new_token

        assert sign_out["error"] is None
        assert sign_out["data"] == {"success": True}
        cleared = set_cookies(sign_out)[stack.cookie_name]
        assert cleared["value"] == ""
        assert cleared["max-age"] == "0"
        assert stack.cookie_name not in sign_out["jar"]  # the client's jar dropped it
        assert after["error"] is None
        assert after["data"] is None

        rows = await stack.fetch(
            'SELECT token FROM "session" WHERE user_id = $1 ORDER BY created_at', user["id"]
        )
        assert [r["token"] for r in rows] == [token]  # sign-out ended the sign-in session only


def shape(value: Any) -> Any:
    """What a client can see of a JSON value without its data: keys and kinds."""
    if isinstance(value, dict):
        if set(value) == {"$date"}:
            return "Date"
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return "null" if value is None else type(value).__name__


def differences(theirs: Any, ours: Any, path: str) -> list[str]:
    """Where two shapes differ, one line per field: path, better-auth's, ours."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        out = []
        for key in sorted(set(theirs) | set(ours)):
            out += differences(theirs.get(key, "absent"), ours.get(key, "absent"), f"{path}.{key}")
        return out
    return [] if theirs == ours else [f"{path}: better-auth {theirs!r}, ours {ours!r}"]


def cookie_shapes(result: JSON) -> dict[str, dict[str, str]]:
    """The cookies a step set, each with its attributes and whether it has a value."""
    shapes = {}
    for name, cookie in set_cookies(result).items():
        kept = {k: v.lower() for k, v in cookie.items() if k not in ("value", "expires")}
        shapes[name] = {**kept, "value": "set" if cookie["value"] else "empty"}
    return shapes


async def test_responses_have_the_shapes_better_auth_gives(start_stack: StartStack) -> None:
    """The same calls against better-auth and against us: statuses, errors, the keys and
    kinds of every field (null and absent are different to a client), the cookies set."""
    stack = await start_stack(services=("web",))
    theirs = await run_client(flow(stack.ba, "ada@example.com") + more(stack.ba, "ada@example.com"))
    ours = await run_client(flow(stack.web, "bob@example.com") + more(stack.web, "bob@example.com"))
    assert theirs[0]["status"] == 200, theirs[0]  # the reference itself worked
    assert theirs[10]["data"]["url"] == WELCOME
    assert (ours[10]["data"]["redirect"], ours[10]["data"]["url"]) == (True, WELCOME)
    found: list[str] = []
    for i, (a, b) in enumerate(zip(theirs, ours, strict=True)):
        where = f"step {i} {b['call']}"
        found += differences(a["status"], b["status"], f"{where} status")
        found += differences(a["error"], b["error"], f"{where} error")
        found += differences(shape(a["data"]), shape(b["data"]), f"{where} data")
        found += differences(cookie_shapes(a), cookie_shapes(b), f"{where} cookie")
    assert not found, "\n".join(found)


async def test_client_reads_our_timestamps_as_stored(start_stack: StartStack) -> None:
    """Dates the client parses from our answers are the instants in the database (at the
    millisecond JavaScript keeps), as they are when better-auth serves the same rows."""
    stack = await start_stack(services=("web",))
    email = "ada@example.com"
    results = await run_client(
        [
            step(stack.web, "signUp.email", {"name": "Ada", "email": email, "password": PASSWORD}),
            step(stack.web, "getSession"),
            step(stack.ba, "getSession"),  # the same cookie, read by better-auth
        ]
    )
    [row] = await stack.fetch(
        'SELECT u.created_at AS user_created, s.created_at, s.expires_at FROM "session" s'
        ' JOIN "user" u ON u.id = s.user_id WHERE u.email = $1',
        email,
    )
    expected = {
        "user.createdAt": as_ms(row["user_created"]),
        "session.createdAt": as_ms(row["created_at"]),
        "session.expiresAt": as_ms(row["expires_at"]),
    }
    for server, result in (("better-auth", results[2]), ("ours", results[1])):
        data = result["data"]
        seen = {
            "user.createdAt": date(data["user"]["createdAt"]),
            "session.createdAt": date(data["session"]["createdAt"]),
            "session.expiresAt": date(data["session"]["expiresAt"]),
        }
        assert seen == expected, (
            f"the client misreads the dates {server} sent (it takes the fraction of a second"
            " as milliseconds: 3 digits, as JavaScript's Date.toJSON writes them)"
        )
    assert date(results[0]["data"]["user"]["createdAt"]) == expected["user.createdAt"]


async def test_bearer_client_flow(start_stack: StartStack) -> None:
    """better-auth's documented bearer usage: take `set-auth-token` from the sign-in answer,
    send it as `Authorization: Bearer`; no cookies at all."""
    stack = await start_stack(services=("web",))
    for server, base in (("better-auth", stack.ba), ("ours", stack.web)):
        email = f"bearer@{server}.example.com"
        sign_up = {"name": "B", "email": email, "password": PASSWORD}
        [up, sign_in] = await run_client(
            [
                step(base, "signUp.email", sign_up, jar=False),
                step(base, "signIn.email", {"email": email, "password": PASSWORD}, jar=False),
            ]
        )
        assert up["error"] is None
        auth_token = sign_in["setAuthToken"]
        assert auth_token is not None, f"{server}: no set-auth-token header on sign-in"
        assert auth_token == signed(sign_in["data"]["token"])
        [session, out, after] = await run_client(
            [
                step(base, "getSession", bearer=auth_token, jar=False),
                step(base, "signOut", bearer=auth_token, jar=False),
                step(base, "getSession", bearer=auth_token, jar=False),
            ]
        )
        assert session["data"]["session"]["token"] == sign_in["data"]["token"], server
        assert out["data"] == {"success": True}, server
        assert after["data"] is None, server


async def test_bearer_token_forms_accepted_as_better_auth_accepts_them(
    start_stack: StartStack,
) -> None:
    """The bearer plugin takes the raw token, the signed `token.signature`, and the signed
    form URL-encoded as it is in the cookie; a bad signature is no session anywhere."""
    stack = await start_stack(services=("web",))
    [up] = await run_client(
        [
            step(
                stack.ba,
                "signUp.email",
                {"name": "B", "email": "b@example.com", "password": PASSWORD},
            )
        ]
    )
    token = up["data"]["token"]
    forms = {
        "raw": token,
        "signed": signed(token),
        "url-encoded signed": cookie_value(token),
    }
    good = signed(token)
    at = len(token) + 5  # a character inside the signature
    tampered = good[:at] + ("A" if good[at] != "A" else "B") + good[at + 1 :]
    async with httpx.AsyncClient(timeout=10) as http:
        for form, value in forms.items():
            for server, base in (("better-auth", stack.ba), ("ours", stack.web)):
                r = await http.get(
                    f"{base}/api/auth/get-session", headers={"authorization": f"Bearer {value}"}
                )
                assert r.status_code == 200
                body = r.json()
                assert body is not None, f"{server} refused the {form} bearer token"
                assert body["session"]["token"] == token
        for server, base in (("better-auth", stack.ba), ("ours", stack.web)):
            r = await http.get(
                f"{base}/api/auth/get-session", headers={"authorization": f"Bearer {tampered}"}
            )
            assert r.json() is None, f"{server} accepted a bad signature"
