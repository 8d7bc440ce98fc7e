"""Abuse and access, on each service in process: every /todos and /api/auth route with bad
credentials, another user's ids, cookies without a trusted origin, oversized and malformed
bodies, unicode edge cases, SQL and HTML injection strings, secrets in logs, security headers.

Each case collects what went wrong instead of stopping at the first, records its figures for
docs/reliability.md (requests sent, unexpected outcomes), then asserts there were none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import pytest

from platform_auth import cookies
from platform_auth.cache import SessionCache
from platform_auth.state import auth_state
from platform_auth.tokens import generate_token
from service_kit.owned import encode_cursor
from service_kit.service import ServiceDefinition
from service_kit.types import utcnow
from tests.conftest import ORIGIN, TEST_SECRET
from tests.pg import sql
from tests.polling import poll
from tests.reliability.conftest import Api, SignedUp, serving
from tests.reliability.record import record

if TYPE_CHECKING:
    from tests.smtp import SmtpServer

pytest_plugins = ("tests.smtp",)

AUTH = "/api/auth"
EVIL = "https://evil.example"
OTHER_SECRET = "another-secret-0123456789abcdef0123456789abcdef"
MAX_BODY = 1024 * 1024  # MAX_BODY_BYTES' default, which these apps run with
NOT_A_TOKEN = "not-a-token-0123456789abcdefghij"


@pytest.fixture
async def api(
    service: ServiceDefinition, full_db: str, smtp_server: SmtpServer
) -> AsyncIterator[Api]:
    """One service on its own database, its mail going to a real SMTP server."""
    async with serving(service, full_db, **smtp_server.settings()) as a:
        listener = auth_state(a.app).listener
        assert listener is not None
        await asyncio.wait_for(listener.connected.wait(), 10)  # the session cache is on
        yield a


@dataclass
class Tally:
    """Requests sent and unexpected outcomes seen by one case."""

    service: str
    requests: int = 0
    problems: list[str] = field(default_factory=list)

    async def send(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        **kwargs: Any,
    ) -> httpx.Response:
        self.requests += 1
        r = await client.request(method, url, **kwargs)
        if r.status_code >= 500:
            self.problems.append(f"{method} {url}: {r.status_code} {r.text[:200]}")
        return r

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)

    def expect_created(self, r: httpx.Response, what: str, status: int = 201) -> bool:
        self.expect(r.status_code == status, f"{what}: {describe(r)}")
        return r.status_code == status

    def done(self, case: str, how: str, notes: str = "") -> None:
        record(
            f"{self.service}: {case}",
            how=how,
            requests=self.requests,
            errors=len(self.problems),
            notes=notes,
        )
        assert self.problems == [], "\n".join(self.problems)


def code_of(r: httpx.Response) -> str | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def describe(r: httpx.Response) -> str:
    return f"{r.status_code} {r.text[:160]}"


# --- the routes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a route acts on: a victim with a live session and a todo."""

    victim: SignedUp
    todo_id: str
    fresh_email: Callable[[], str]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as in OpenAPI
    # With a bad credential: "401" (UNAUTHORIZED), "null" (get-session's signed-out answer),
    # "sign-out" (200 success as a no-op, or 400 FAILED_TO_GET_SESSION: better-auth's answers),
    # or (status, code): the route is public and answers as it does to anyone.
    expect: str | tuple[int, str | None]
    body: Callable[[Target], dict[str, Any]] | None = None
    params: Mapping[str, str] = field(default_factory=dict)

    def url(self, t: Target) -> str:
        return self.path.replace("{todo_id}", t.todo_id).replace("{token}", NOT_A_TOKEN)


ROUTES: dict[str, Route] = {
    r.method + " " + r.path: r
    for r in [
        Route("POST", "/todos", "401", lambda t: {"title": "planted"}),
        Route("GET", "/todos", "401"),
        Route("GET", "/todos/{todo_id}", "401"),
        Route("PATCH", "/todos/{todo_id}", "401", lambda t: {"title": "hijacked"}),
        Route("DELETE", "/todos/{todo_id}", "401"),
        Route(
            "POST",
            f"{AUTH}/sign-up/email",
            (200, None),
            lambda t: {"name": "X", "email": t.fresh_email(), "password": "another password"},
        ),
        Route(
            "POST",
            f"{AUTH}/sign-in/email",
            (200, None),
            lambda t: {"email": t.victim.email, "password": t.victim.password},
        ),
        Route("POST", f"{AUTH}/sign-out", "sign-out"),
        Route("GET", f"{AUTH}/get-session", "null"),
        Route("GET", f"{AUTH}/list-sessions", "401"),
        Route("POST", f"{AUTH}/revoke-session", "401", lambda t: {"token": t.victim.token}),
        Route("POST", f"{AUTH}/revoke-sessions", "401"),
        Route("POST", f"{AUTH}/revoke-other-sessions", "401"),
        Route(
            "POST",
            f"{AUTH}/change-password",
            "401",
            lambda t: {"currentPassword": t.victim.password, "newPassword": "hijacked password"},
        ),
        Route(
            "POST",
            f"{AUTH}/send-verification-email",
            (200, None),
            lambda t: {"email": t.victim.email},
        ),
        Route(
            "GET",
            f"{AUTH}/verify-email",
            (400, "INVALID_TOKEN"),
            params={"token": NOT_A_TOKEN},
        ),
        Route(
            "POST",
            f"{AUTH}/request-password-reset",
            (200, None),
            lambda t: {"email": t.victim.email},
        ),
        Route("GET", f"{AUTH}/reset-password/{{token}}", (400, "INVALID_TOKEN")),
        Route(
            "POST",
            f"{AUTH}/reset-password",
            (400, "INVALID_TOKEN"),
            lambda t: {"token": NOT_A_TOKEN, "newPassword": "hijacked password"},
        ),
    ]
}


async def documented_routes(api: Api) -> set[str]:
    r = await api.client.get("/openapi.json")
    assert r.status_code == 200
    return {
        f"{method.upper()} {path}"
        for path, item in r.json()["paths"].items()
        if path.startswith(("/todos", AUTH))
        for method in item
    }


async def make_target(api: Api) -> Target:
    victim = await api.sign_up(name="Victim")
    r = await api.client.post("/todos", json={"title": "mine"}, headers=victim.bearer)
    assert r.status_code == 201, r.text
    counter = iter(range(1_000_000))
    return Target(victim, r.json()["id"], lambda: f"new-{next(counter)}-{victim.email}")


async def victim_intact(api: Api, t: Target, tally: Tally) -> None:
    """The victim's session, todo and password are as they were."""
    r = await tally.send(api.client, "GET", f"{AUTH}/get-session", headers=t.victim.bearer)
    tally.expect(
        r.status_code == 200 and (r.json() or {}).get("user", {}).get("id") == t.victim.user_id,
        f"the victim's session is gone: {describe(r)}",
    )
    r = await tally.send(api.client, "GET", f"/todos/{t.todo_id}", headers=t.victim.bearer)
    tally.expect(
        r.status_code == 200 and r.json()["title"] == "mine", f"todo changed: {describe(r)}"
    )
    r = await tally.send(
        api.client,
        "POST",
        f"{AUTH}/sign-in/email",
        json={"email": t.victim.email, "password": t.victim.password},
    )
    tally.expect(r.status_code == 200, f"the victim's password changed: {describe(r)}")
    api.client.cookies.clear()


# --- bad credentials -----------------------------------------------------------------------


def cache_of(api: Api) -> SessionCache:
    cache: SessionCache = auth_state(api.app).cache
    return cache


async def used_sessions(api: Api, t: Target, n: int) -> list[str]:
    """`n` live sessions of the victim, each used once (so this process has it cached)."""
    tokens = [await api.mint_session(t.victim.user_id) for _ in range(n)]
    for token in tokens:
        r = await api.client.get(
            f"{AUTH}/get-session", headers={"authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200, r.text
        assert r.json() is not None, r.text
        assert cache_of(api).get(token) is not None, "not cached: the test would prove less"
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def expired(api: Api, t: Target, n: int) -> list[dict[str, str]]:
    """Sessions that expired (in the table, as time would do it) after being used and cached:
    NOTIFY must evict them."""
    tokens = await used_sessions(api, t, n)
    await sql(
        api.db_url,
        "UPDATE session SET expires_at = now() AT TIME ZONE 'utc' - interval '1 minute'"
        " WHERE token = ANY($1::text[])",
        tokens,
    )

    async def evicted() -> bool:
        return all(cache_of(api).get(token) is None for token in tokens)

    await poll(evicted, "the session cache evicts expired sessions (NOTIFY)", within=10)
    return [bearer(token) for token in tokens]


async def revoked(api: Api, t: Target, n: int) -> list[dict[str, str]]:
    """Sessions the victim revoked through the API after they were used and cached."""
    tokens = await used_sessions(api, t, n)
    for token in tokens:
        r = await api.client.post(
            f"{AUTH}/revoke-session", json={"token": token}, headers=t.victim.bearer
        )
        assert r.status_code == 200, r.text
    rows = await sql(api.db_url, "SELECT 1 FROM session WHERE token = ANY($1::text[])", tokens)
    assert rows == []
    return [bearer(token) for token in tokens]


async def forged(api: Api, t: Target, n: int) -> list[dict[str, str]]:
    """Well-formed tokens that were never issued."""
    return [bearer(generate_token()) for _ in range(n)]


def cookie(api: Api, value: str) -> dict[str, str]:
    return api.cookie_header(value)


async def other_secret_cookie(api: Api, t: Target, n: int) -> list[dict[str, str]]:
    """Live sessions' tokens in a cookie signed with another secret."""
    tokens = [await api.mint_session(t.victim.user_id) for _ in range(n)]
    return [cookie(api, cookies.encode_cookie_value(tok, OTHER_SECRET)) for tok in tokens]


async def other_secret_bearer(api: Api, t: Target, n: int) -> list[dict[str, str]]:
    """Live sessions' tokens in the signed bearer form, signed with another secret."""
    tokens = [await api.mint_session(t.victim.user_id) for _ in range(n)]
    return [bearer(cookies.sign(tok, OTHER_SECRET)) for tok in tokens]


async def tampered_cookie(api: Api, t: Target, n: int) -> list[dict[str, str]]:
    """A live session's signed cookie with its token changed (the signature kept); the
    changed token is also live, so only the signature stands in the way."""
    out = []
    for _ in range(n):
        token = await api.mint_session(t.victim.user_id)
        other = await api.mint_session(t.victim.user_id)
        signature = cookies.sign(token, TEST_SECRET).rpartition(".")[2]
        out.append(cookie(api, quote(f"{other}.{signature}", safe="")))
    return out


async def no_credential(api: Api, t: Target, n: int) -> list[dict[str, str]]:
    return [{} for _ in range(n)]


CREDENTIALS: dict[str, Callable[[Api, Target, int], Awaitable[list[dict[str, str]]]]] = {
    "none": no_credential,
    "expired": expired,
    "revoked": revoked,
    "forged token": forged,
    "cookie signed with another secret": other_secret_cookie,
    "bearer signed with another secret": other_secret_bearer,
    "signed cookie, token tampered": tampered_cookie,
}


def judge(route: Route, r: httpx.Response) -> str | None:
    """What is wrong with `r` as an answer to `route` with a bad credential (None: fine)."""
    if route.expect == "401":
        ok = (
            r.status_code == 401
            and code_of(r) == "UNAUTHORIZED"
            and r.headers.get("www-authenticate", "").startswith("Bearer")
        )
    elif route.expect == "null":
        ok = r.status_code == 200 and r.json() is None
    elif route.expect == "sign-out":
        ok = (r.status_code == 200 and r.json() == {"success": True}) or (
            r.status_code == 400 and code_of(r) == "FAILED_TO_GET_SESSION"
        )
    else:
        assert isinstance(route.expect, tuple)
        status, code = route.expect
        ok = r.status_code == status and (code is None or code_of(r) == code)
    return None if ok else f"expected {route.expect}, got {describe(r)}"


@pytest.mark.parametrize("kind", list(CREDENTIALS))
async def test_bad_credentials(api: Api, kind: str) -> None:
    """Every /todos and /api/auth route with a missing, expired, revoked, forged or wrongly
    signed credential: treated as no session at all (401 where one is required, null from
    get-session, the public answer elsewhere); the victim loses nothing."""
    assert await documented_routes(api) == set(ROUTES), "the table must cover the API"
    t = await make_target(api)
    tally = Tally(api.app.title)
    credentials = await CREDENTIALS[kind](api, t, len(ROUTES))
    for (label, route), headers in zip(ROUTES.items(), credentials, strict=True):
        body = route.body(t) if route.body else None
        r = await tally.send(
            api.client,
            route.method,
            route.url(t),
            headers=headers,
            json=body,
            params=dict(route.params),
        )
        api.client.cookies.clear()  # sign-in and sign-up answers set a cookie
        problem = judge(route, r)
        if problem:
            tally.problems.append(f"{label} with {kind}: {problem}")
    await victim_intact(api, t, tally)
    tally.done(
        f"bad credential: {kind}",
        f"each of the {len(ROUTES)} /todos and /api/auth routes once, in process",
    )


# --- another user's ids --------------------------------------------------------------------


async def test_another_users_ids_are_missing_ones(api: Api) -> None:
    """Bob reaching Alice's todo by id gets exactly what a missing id gets; her todo, her
    session and her page are untouched; a crafted cursor does not leak her rows."""
    tally = Tally(api.app.title)
    alice, bob = await api.sign_up(name="Alice"), await api.sign_up(name="Bob")
    r = await api.client.post("/todos", json={"title": "alice's"}, headers=alice.bearer)
    assert r.status_code == 201
    alice_todo = r.json()
    r = await api.client.post("/todos", json={"title": "bob's"}, headers=bob.bearer)
    assert r.status_code == 201
    missing = "x" * 32
    for method, body in [("GET", None), ("PATCH", {"title": "bob was here"}), ("DELETE", None)]:
        theirs = await tally.send(
            api.client, method, f"/todos/{alice_todo['id']}", headers=bob.bearer, json=body
        )
        absent = await tally.send(
            api.client, method, f"/todos/{missing}", headers=bob.bearer, json=body
        )
        same = (theirs.status_code, theirs.content, theirs.headers.get("content-type")) == (
            absent.status_code,
            absent.content,
            absent.headers.get("content-type"),
        )
        tally.expect(
            same and theirs.status_code == 404 and code_of(theirs) == "TODO_NOT_FOUND",
            f"{method} another user's todo: {describe(theirs)} vs missing: {describe(absent)}",
        )
    # Bob's list: his only, also from a cursor pointing just after Alice's todo.
    r = await tally.send(api.client, "GET", "/todos", headers=bob.bearer)
    tally.expect([i["title"] for i in r.json()["items"]] == ["bob's"], f"list: {r.text}")
    created = utcnow().replace(year=utcnow().year + 1)
    r = await tally.send(
        api.client,
        "GET",
        "/todos",
        params={"cursor": encode_cursor(created, alice_todo["id"])},
        headers=bob.bearer,
    )
    tally.expect(
        r.status_code == 200 and [i["title"] for i in r.json()["items"]] == ["bob's"],
        f"crafted cursor: {describe(r)}",
    )
    # Bob revoking Alice's session: ignored (documented), her session lives.
    r = await tally.send(
        api.client,
        "POST",
        f"{AUTH}/revoke-session",
        json={"token": alice.token},
        headers=bob.bearer,
    )
    tally.expect(r.status_code == 200, f"revoke another's session: {describe(r)}")
    r = await tally.send(api.client, "GET", f"/todos/{alice_todo['id']}", headers=alice.bearer)
    tally.expect(r.status_code == 200 and r.json() == alice_todo, f"alice's todo: {describe(r)}")
    tally.done(
        "another user's ids",
        "GET/PATCH/DELETE another user's todo vs a missing id, a crafted cursor, "
        "revoke-session with another user's token",
    )


# --- CSRF: cookie requests without a trusted origin -----------------------------------------

UNTRUSTED_ORIGINS: dict[str, tuple[dict[str, str], str]] = {
    "no Origin, no Referer": ({}, "MISSING_OR_NULL_ORIGIN"),
    "Origin: null": ({"origin": "null"}, "MISSING_OR_NULL_ORIGIN"),
    "another site": ({"origin": EVIL}, "INVALID_ORIGIN"),
    "another site's Referer": ({"referer": f"{EVIL}/page"}, "INVALID_ORIGIN"),
    "this host over http": ({"origin": "http://testserver"}, "INVALID_ORIGIN"),
    "a look-alike host": ({"origin": "https://testserver.evil.example"}, "INVALID_ORIGIN"),
}


async def test_cookie_requests_need_a_trusted_origin(api: Api) -> None:
    """Every state-changing route with the victim's valid session cookie but no trusted
    Origin: 403, nothing done. With the trusted origin, or a bearer token, it works."""
    tally = Tally(api.app.title)
    t = await make_target(api)
    changing = [r for r in ROUTES.values() if r.method not in ("GET", "HEAD")]
    transport = httpx.ASGITransport(app=api.app)
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as bare:
        for name, (headers, code) in UNTRUSTED_ORIGINS.items():
            for route in changing:
                r = await tally.send(
                    bare,
                    route.method,
                    route.url(t),
                    headers={**api.cookie_header(t.victim.cookie), **headers},
                    json=route.body(t) if route.body else None,
                )
                bare.cookies.clear()
                tally.expect(
                    r.status_code == 403 and code_of(r) == code,
                    f"{route.method} {route.path}, {name}: {describe(r)}",
                )
        await victim_intact(api, t, tally)
        # Controls: the same cookie from the trusted origin, and a bearer token with no origin.
        r = await tally.send(
            bare,
            "POST",
            "/todos",
            json={"title": "from my page"},
            headers={**api.cookie_header(t.victim.cookie), "origin": ORIGIN},
        )
        tally.expect(r.status_code == 201, f"trusted origin refused: {describe(r)}")
        r = await tally.send(
            bare, "POST", "/todos", json={"title": "from my app"}, headers=t.victim.bearer
        )
        tally.expect(r.status_code == 201, f"bearer without origin refused: {describe(r)}")
    tally.done(
        "cookie without a trusted origin",
        f"{len(changing)} state-changing routes x {len(UNTRUSTED_ORIGINS)} origins, valid cookie",
    )


# --- oversized and malformed bodies ---------------------------------------------------------


async def body_routes(api: Api, t: Target) -> list[tuple[str, str]]:
    """(method, url) of every documented operation that takes a body."""
    r = await api.client.get("/openapi.json")
    out, labels = [], []
    for path, item in r.json()["paths"].items():
        for method, operation in item.items():
            if "requestBody" in operation:
                labels.append((method.upper(), path))
                url = path.replace("{todo_id}", t.todo_id).replace("{token}", NOT_A_TOKEN)
                out.append((method.upper(), url))
    with_body = {label for label, route in ROUTES.items() if route.body is not None}
    assert {f"{m} {p}" for m, p in labels} == with_body, "the table must cover the API"
    return out


async def raw_asgi(
    api: Api, method: str, url: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, dict[str, str], bytes]:
    """One request straight through ASGI: exact headers (a lying Content-Length, none at
    all) and the body in `chunks`, as a server streams it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": url,
        "raw_path": url.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 443),
        "state": {},
    }
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks or [b""])
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # a client that sends nothing more
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await asyncio.wait_for(api.app(scope, receive, send), 30)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    heads = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
    return start["status"], heads, body


async def test_oversized_bodies_get_413(api: Api) -> None:
    """Bodies over MAX_BODY_BYTES on every route that takes one: 413 PAYLOAD_TOO_LARGE whether
    the size is declared (Content-Length, even a lying one) or only streamed (chunked)."""
    tally = Tally(api.app.title)
    t = await make_target(api)
    auth = [(b"authorization", f"Bearer {t.victim.token}".encode())]
    json_type = [(b"content-type", b"application/json")]
    big = b'{"title": "' + b"a" * MAX_BODY + b'"}'
    chunk = 64 * 1024
    cases: dict[str, tuple[list[tuple[bytes, bytes]], list[bytes]]] = {
        "Content-Length": ([(b"content-length", str(len(big)).encode())], [big]),
        "chunked": (
            [(b"transfer-encoding", b"chunked")],
            [big[i : i + chunk] for i in range(0, len(big), chunk)],
        ),
        "declared huge, sent small": ([(b"content-length", b"99999999999")], [b"{}"]),
        "declared nonsense": ([(b"content-length", b"12abc")], [b"{}"]),
    }
    routes = await body_routes(api, t)
    for method, url in routes:
        for name, (headers, chunks) in cases.items():
            tally.requests += 1
            status, heads, body = await raw_asgi(
                api, method, url, [*auth, *json_type, *headers], chunks
            )
            ok = status == 413 and json.loads(body).get("code") == "PAYLOAD_TOO_LARGE"
            tally.expect(ok, f"{method} {url} {name}: {status} {body[:120]!r}")
            tally.expect(heads.get("x-content-type-options") == "nosniff", f"{name}: headers")
    # Just under the limit is not refused for its size.
    under = b'{"title": "' + b"a" * (MAX_BODY - 20) + b'"}'
    r = await tally.send(
        api.client,
        "POST",
        "/todos",
        content=under,
        headers={**t.victim.bearer, "content-type": "application/json"},
    )
    tally.expect(r.status_code == 422, f"a body under the limit: {describe(r)}")
    await victim_intact(api, t, tally)
    tally.done(
        "oversized bodies",
        f"{len(routes)} body routes x (Content-Length, chunked, lying and invalid length), "
        f"over {MAX_BODY} bytes",
    )


MALFORMED: dict[str, bytes] = {
    "truncated": b'{"title": "x"',
    "not JSON": b"title=x",
    "trailing garbage": b'{"title": "x"}}',
    "trailing comma": b'{"title": "x",}',
    "single quotes": b"{'title': 'x'}",
    "unterminated string": b'{"title": "x}',
    "bare word": b"nope",
    "not UTF-8": b'{"title": "\xff\xfe"}',
    "overlong UTF-8": b'{"title": "\xc0\xaf"}',
    "truncated UTF-8": b'{"title": "\xe2\x82"}',
}


async def test_malformed_json_is_400_invalid_json(api: Api) -> None:
    tally = Tally(api.app.title)
    t = await make_target(api)
    routes = await body_routes(api, t)
    for method, url in routes:
        for name, payload in MALFORMED.items():
            r = await tally.send(
                api.client,
                method,
                url,
                content=payload,
                headers={**t.victim.bearer, "content-type": "application/json"},
            )
            tally.expect(
                r.status_code == 400 and code_of(r) == "INVALID_JSON",
                f"{method} {url} {name}: {describe(r)}",
            )
    await victim_intact(api, t, tally)
    tally.done(
        "malformed JSON",
        f"{len(routes)} body routes x {len(MALFORMED)} malformed bodies",
    )


# --- unicode ---------------------------------------------------------------------------------

UNICODE: dict[str, str] = {
    "emoji and ZWJ sequences": "🙂 👩‍👩‍👧 🏳️‍🌈",
    "right-to-left": "\u202eevil\u202c שלום مرحبا",
    "combining marks": "e\u0301 a\u0308\u0308\u0308 Z\u0351\u0352\u0353",
    "decomposed (not NFC)": "Cafe\u0301",
    "zero-width and BOM": "a\u200bb\u200cc\u200dd\ufeffe",
    "astral and the last code point": "\U0001d54f \U0001f600 \U0010ffff",
    "noncharacters": "\ufdd0\ufffe\uffff",
    "controls": "\x01\x1b[31m\x7f\x9f",
    "line separators": "one\u2028two\u2029three\r\nfour",
}

# Raw JSON bodies for POST /todos whose text cannot be stored as it is: refused, never a 5xx.
UNSTORABLE: dict[str, bytes] = {
    "lone high surrogate": b'{"title": "a\\ud800b"}',
    "lone low surrogate": b'{"title": "a\\udc00b"}',
    "reversed pair": b'{"title": "\\udc00\\ud800"}',
    "NUL in title": b'{"title": "a\\u0000b"}',
    "NUL in description": b'{"title": "a", "description": "\\u0000"}',
    # Python's JSON decoder lets a UTF-8-encoded surrogate through (surrogatepass)
    "UTF-8-encoded surrogate": b'{"title": "\xed\xa0\x80"}',
}
UNSTORABLE_AUTH: dict[str, dict[str, str]] = {
    "lone surrogate in name": {"name": "\ud800"},
    "lone surrogate in email": {"email": "a\ud800@example.com"},
    "lone surrogate in password": {"password": "password\ud800"},
    "NUL in name": {"name": "a\x00b"},
    "NUL in email": {"email": "a\x00b@example.com"},
}


def raw_json(value: dict[str, Any]) -> bytes:
    """JSON with lone surrogates escaped, as a client may send them."""
    return json.dumps(value).encode()


async def test_unicode_is_stored_verbatim_or_refused(api: Api, service: ServiceDefinition) -> None:
    """Odd but valid text is stored and returned exactly; text Postgres cannot hold (lone
    surrogates, NUL) is a 4xx, never a 5xx. The same for names, emails and passwords."""
    tally = Tally(api.app.title)
    t = await make_target(api)
    headers = {**t.victim.bearer, "content-type": "application/json"}
    for name, text in UNICODE.items():
        title = f"[{text}]"  # titles are stripped of surrounding whitespace; keep it inside
        r = await tally.send(
            api.client,
            "POST",
            "/todos",
            json={"title": title, "description": text},
            headers=headers,
        )
        if not tally.expect_created(r, f"POST {name}"):
            continue
        todo_id = r.json()["id"]
        got = await tally.send(api.client, "GET", f"/todos/{todo_id}", headers=headers)
        rows = await sql(
            api.db_url,
            f"SELECT title, description FROM {service.name}.todos WHERE id = $1",
            todo_id,
        )
        tally.expect(
            (r.json()["title"], r.json()["description"]) == (title, text)
            and (got.json()["title"], got.json()["description"]) == (title, text)
            and (rows[0]["title"], rows[0]["description"]) == (title, text),
            f"{name}: not verbatim: {r.json()!r} / {got.json()!r} / {dict(rows[0])!r}",
        )
        r = await tally.send(
            api.client, "PATCH", f"/todos/{todo_id}", json={"title": f"<{text}>"}, headers=headers
        )
        tally.expect(
            r.status_code == 200 and r.json()["title"] == f"<{text}>", f"PATCH {name}: {r.text}"
        )
    for name, payload in UNSTORABLE.items():
        r = await tally.send(api.client, "POST", "/todos", content=payload, headers=headers)
        tally.expect(400 <= r.status_code < 500, f"POST /todos {name}: {describe(r)}")
    # Names and passwords: the name verbatim, and the password signs in.
    for name, text in UNICODE.items():
        email = t.fresh_email()
        password = f"password {text}"
        r = await tally.send(
            api.client,
            "POST",
            f"{AUTH}/sign-up/email",
            json={"name": f"[{text}]", "email": email, "password": password},
        )
        if tally.expect_created(r, f"sign-up {name}", status=200):
            tally.expect(r.json()["user"]["name"] == f"[{text}]", f"name {name}: {r.text}")
            r = await tally.send(
                api.client,
                "POST",
                f"{AUTH}/sign-in/email",
                json={"email": email, "password": password},
            )
            tally.expect(r.status_code == 200, f"sign-in with a {name} password: {describe(r)}")
        api.client.cookies.clear()
    # A non-ASCII address: kept (lowercased), and signing in with it in other case works.
    email = f"Ünï-{generate_token()[:6]}@Exämple.Com"
    r = await tally.send(
        api.client,
        "POST",
        f"{AUTH}/sign-up/email",
        json={"name": "U", "email": email, "password": "long enough"},
    )
    if tally.expect_created(r, "sign-up with a non-ASCII address", status=200):
        tally.expect(r.json()["user"]["email"] == email.lower(), f"address: {r.text}")
        r = await tally.send(
            api.client,
            "POST",
            f"{AUTH}/sign-in/email",
            json={"email": email.upper(), "password": "long enough"},
        )
        tally.expect(r.status_code == 200, f"sign-in with a non-ASCII address: {describe(r)}")
    api.client.cookies.clear()
    for name, fields in UNSTORABLE_AUTH.items():
        body = {"name": "X", "email": t.fresh_email(), "password": "long enough", **fields}
        r = await tally.send(
            api.client,
            "POST",
            f"{AUTH}/sign-up/email",
            content=raw_json(body),
            headers={"content-type": "application/json"},
        )
        tally.expect(400 <= r.status_code < 500, f"sign-up {name}: {describe(r)}")
        sign_in = {"email": fields.get("email", t.victim.email), "password": "long enough"}
        if "password" in fields:
            sign_in["password"] = fields["password"]
        r = await tally.send(
            api.client,
            "POST",
            f"{AUTH}/sign-in/email",
            content=raw_json(sign_in),
            headers={"content-type": "application/json"},
        )
        tally.expect(400 <= r.status_code < 500, f"sign-in {name}: {describe(r)}")
        api.client.cookies.clear()
    # In the URL: a path parameter and the cursor.
    for text in ["🙂", "\u202e", "%ED%A0%80", "%00", "e\u0301"]:
        r = await tally.send(api.client, "GET", f"/todos/{quote(text)}", headers=headers)
        tally.expect(r.status_code == 404, f"GET /todos/{text!r}: {describe(r)}")
        r = await tally.send(api.client, "GET", "/todos", params={"cursor": text}, headers=headers)
        tally.expect(r.status_code == 400, f"cursor {text!r}: {describe(r)}")
    await victim_intact(api, t, tally)
    tally.done(
        "unicode edge cases",
        f"{len(UNICODE)} kinds of text in todos, names, passwords; {len(UNSTORABLE)} + "
        f"{len(UNSTORABLE_AUTH)} unstorable ones; odd path parameters and cursors",
    )


# --- injection strings --------------------------------------------------------------------------

INJECTIONS = [
    "'; DROP TABLE {schema}.todos; --",
    'Robert\'); DROP TABLE "user"; --',
    "' OR '1'='1",
    "' OR 1=1 --",
    "1; DELETE FROM session; --",
    "$$; TRUNCATE session CASCADE; $$",
    "\\'; UPDATE \"user\" SET email = 'x'; --",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(document.cookie)>",
    '"><svg/onload=alert(1)>',
    "javascript:alert(1)",
    "{{7*7}} ${7*7} <%= 7*7 %>",
    "%27%20OR%201%3D1--",
]


async def test_injection_strings_are_data(api: Api, service: ServiceDefinition) -> None:
    """SQL and HTML/script strings in titles, descriptions and names are stored and returned
    byte for byte, as JSON; where they are lookups (sign-in email, cursor, id) they match
    nothing. Afterwards every table and row is still there."""
    tally = Tally(api.app.title)
    t = await make_target(api)
    headers = t.victim.bearer
    strings = [s.replace("{schema}", service.name) for s in INJECTIONS]
    created = []
    for s in strings:
        r = await tally.send(
            api.client, "POST", "/todos", json={"title": s, "description": s}, headers=headers
        )
        if not tally.expect_created(r, f"POST {s!r}"):
            continue
        created.append(r.json()["id"])
        got = await tally.send(api.client, "GET", f"/todos/{r.json()['id']}", headers=headers)
        rows = await sql(
            api.db_url,
            f"SELECT title, description FROM {service.name}.todos WHERE id = $1",
            r.json()["id"],
        )
        tally.expect(
            r.json()["title"] == r.json()["description"] == s
            and got.json()["title"] == got.json()["description"] == s
            and rows[0]["title"] == rows[0]["description"] == s,
            f"{s!r} not verbatim",
        )
        # Returned as data a browser will not render or run.
        tally.expect(
            got.headers["content-type"] == "application/json"
            and got.headers["x-content-type-options"] == "nosniff"
            and got.headers["content-security-policy"].startswith("default-src 'none'"),
            f"{s!r} returned with {dict(got.headers)}",
        )
        r = await tally.send(
            api.client,
            "POST",
            f"{AUTH}/sign-up/email",
            json={"name": s, "email": t.fresh_email(), "password": "long enough"},
        )
        api.client.cookies.clear()
        if tally.expect_created(r, f"sign-up named {s!r}", status=200):
            stored = await sql(
                api.db_url, 'SELECT name FROM "user" WHERE id = $1', r.json()["user"]["id"]
            )
            tally.expect(r.json()["user"]["name"] == s and stored[0]["name"] == s, f"name {s!r}")
        for email in [s, f"{s}@example.com".replace(" ", ""), f"x{s}".replace(" ", "") + "@a.io"]:
            r = await tally.send(
                api.client,
                "POST",
                f"{AUTH}/sign-in/email",
                json={"email": email, "password": s},
            )
            tally.expect(r.status_code in (400, 401), f"sign-in as {email!r}: {describe(r)}")
        r = await tally.send(api.client, "GET", "/todos", params={"cursor": s}, headers=headers)
        tally.expect(r.status_code == 400, f"cursor {s!r}: {describe(r)}")
        r = await tally.send(api.client, "GET", f"/todos/{quote(s, safe='')}", headers=headers)
        tally.expect(r.status_code == 404, f"GET /todos/{s!r}: {describe(r)}")
    # Everything is still there: the tables, every todo, the victim's session.
    tables = await sql(
        api.db_url,
        "SELECT count(*) AS n FROM information_schema.tables WHERE (table_schema, table_name)"
        " IN (('public', 'user'), ('public', 'session'), ('public', 'account'),"
        " ('public', 'verification'), ($1, 'todos'))",
        service.name,
    )
    tally.expect(tables[0]["n"] == 5, f"tables: {tables[0]['n']} of 5")
    page = await tally.send(api.client, "GET", "/todos?limit=100", headers=headers)
    tally.expect(
        len(page.json()["items"]) == len(created) + 1, f"{len(page.json()['items'])} todos"
    )
    await victim_intact(api, t, tally)
    tally.done(
        "SQL and HTML injection strings",
        f"{len(strings)} strings as title, description, name, email, password, cursor, id",
    )


# --- secrets in logs ------------------------------------------------------------------------


@dataclass
class Secrets:
    """Every password, token, cookie value and Authorization value a flow handled."""

    values: set[str] = field(default_factory=set)

    def add(self, *values: str | None) -> None:
        for v in values:
            if v:
                self.values.add(v)
                self.values.add(quote(v, safe=""))

    def from_response(self, r: httpx.Response) -> None:
        """Tokens an answer hands out: `token` fields, cookies, set-auth-token."""
        try:
            body = r.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            self.add(body.get("token"))
            session = body.get("session")
            if isinstance(session, dict):
                self.add(session.get("token"))
        self.add(r.headers.get("set-auth-token"))
        for raw in r.headers.get_list("set-cookie"):
            value = raw.split(";", 1)[0].partition("=")[2]
            self.add(value)

    def found_in(self, text: str) -> list[str]:
        return sorted(v for v in self.values if len(v) >= 8 and v in text)


LINK_TOKEN = r"(?:reset-password/|token=)([^\s&?]+)"


async def auth_flow(
    client: httpx.AsyncClient, smtp_server: SmtpServer, secrets: Secrets, tally: Tally
) -> None:
    """Sign-up, sign-in (also failed), sessions by bearer, signed bearer and cookie, a password
    reset from the mailed link, a change of password, email verification, sign-out, and
    requests with revoked and forged credentials."""
    email = f"logs-{generate_token()[:8].lower()}@example.com"
    first, wrong, reset, changed = (
        "first password 1",
        "wrong password 2",
        "reset password 3",
        "changed password 4",
    )
    secrets.add(first, wrong, reset, changed)

    async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = kwargs.get("headers") or {}
        secrets.add(headers.get("authorization"), headers.get("cookie"))
        if "authorization" in headers:
            secrets.add(headers["authorization"].removeprefix("Bearer "))
        r = await tally.send(client, method, url, **kwargs)
        secrets.from_response(r)
        return r

    r = await call(
        "POST", f"{AUTH}/sign-up/email", json={"name": "Logs", "email": email, "password": first}
    )
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    signed = r.headers["set-auth-token"]
    cookie_name, _, cookie_value = r.headers["set-cookie"].split(";", 1)[0].partition("=")
    client.cookies.clear()  # sent by hand below: the jar keeps a Secure cookie off http
    for headers in [
        {"authorization": f"Bearer {token}"},
        {"authorization": f"Bearer {signed}"},
        {"authorization": f"Bearer {quote(signed, safe='')}"},
        {"cookie": f"{cookie_name}={cookie_value}"},
    ]:
        r = await call("GET", f"{AUTH}/get-session", headers=headers)
        tally.expect(r.status_code == 200 and r.json() is not None, f"session: {describe(r)}")
    for body in [
        {"email": email, "password": wrong},
        {"email": f"nobody-{email}", "password": wrong},
        {"email": email, "password": ""},
    ]:
        r = await call("POST", f"{AUTH}/sign-in/email", json=body)
        tally.expect(r.status_code in (400, 401), f"failed sign-in: {describe(r)}")
    r = await call("POST", f"{AUTH}/sign-in/email", json={"email": email, "password": first})
    tally.expect(r.status_code == 200, f"sign-in: {describe(r)}")
    client.cookies.clear()
    r = await call("POST", f"{AUTH}/request-password-reset", json={"email": email})
    tally.expect(r.status_code == 200, f"reset request: {describe(r)}")
    text = await smtp_server.next_text(email)
    (reset_token,) = re.findall(LINK_TOKEN, text)
    secrets.add(reset_token)
    r = await call("GET", f"{AUTH}/reset-password/{reset_token}")
    tally.expect(r.status_code == 200, f"reset link: {describe(r)}")
    r = await call(
        "POST", f"{AUTH}/reset-password", json={"token": reset_token, "newPassword": reset}
    )
    tally.expect(r.status_code == 200, f"reset: {describe(r)}")
    r = await call("POST", f"{AUTH}/sign-in/email", json={"email": email, "password": reset})
    tally.expect(r.status_code == 200, f"sign-in after reset: {describe(r)}")
    client.cookies.clear()
    session = {"authorization": f"Bearer {r.json()['token']}"}
    r = await call(
        "POST",
        f"{AUTH}/change-password",
        json={"currentPassword": wrong, "newPassword": changed},
        headers=session,
    )
    tally.expect(r.status_code == 400, f"change with a wrong password: {describe(r)}")
    r = await call(
        "POST",
        f"{AUTH}/change-password",
        json={"currentPassword": reset, "newPassword": changed},
        headers=session,
    )
    tally.expect(r.status_code == 200, f"change password: {describe(r)}")
    client.cookies.clear()
    new_session = {"authorization": f"Bearer {r.json()['token']}"}
    r = await call("GET", f"{AUTH}/list-sessions", headers=session)  # revoked by the change
    tally.expect(r.status_code == 401, f"revoked session: {describe(r)}")
    r = await call(
        "POST", f"{AUTH}/send-verification-email", json={"email": email}, headers=new_session
    )
    tally.expect(r.status_code == 200, f"verification mail: {describe(r)}")
    text = await smtp_server.next_text(email)
    (verify_token,) = re.findall(LINK_TOKEN, text)
    secrets.add(verify_token)
    r = await call("GET", f"{AUTH}/verify-email", params={"token": verify_token})
    tally.expect(r.status_code == 200, f"verify: {describe(r)}")
    r = await call("GET", f"{AUTH}/verify-email", params={"token": verify_token})
    tally.expect(r.status_code == 400, f"verify twice: {describe(r)}")
    forged = generate_token()
    r = await call("GET", "/todos", headers={"authorization": f"Bearer {forged}"})
    tally.expect(r.status_code == 401, f"forged: {describe(r)}")
    r = await call("GET", "/todos", headers={"cookie": f"junk={forged}; x=y"})
    tally.expect(r.status_code == 401, f"junk cookie: {describe(r)}")
    r = await call("POST", f"{AUTH}/sign-out", headers=new_session)
    tally.expect(r.status_code == 200, f"sign-out: {describe(r)}")
    r = await call("POST", f"{AUTH}/sign-out", headers=new_session)
    tally.expect(r.status_code == 200, f"sign-out again: {describe(r)}")


# Loggers of the test's own tools, not of the service: the client (it logs the URLs it
# requests, mailed tokens included) and the SMTP server (it logs the mail it receives).
NOT_THE_SERVICE = ("httpx", "httpcore", "mail.log")


async def test_no_secret_in_logs(
    api: Api, smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every log record of every logger, at DEBUG, during the whole auth flow: no password,
    token, cookie value or Authorization value in any of them."""
    # Every logger at DEBUG: the root and each named one (sqlalchemy, for one, sets its own
    # level to WARNING, so the root's level alone would not reach it).
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            caplog.set_level(logging.DEBUG, logger=name)
    secrets, tally = Secrets(), Tally(api.app.title)
    await auth_flow(api.client, smtp_server, secrets, tally)
    await asyncio.sleep(0.2)  # background mail tasks log after the answer
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    records = [r for r in caplog.records if not r.name.startswith(NOT_THE_SERVICE)]
    assert records, "nothing was logged: the test would prove nothing"
    for rec in records:
        text = formatter.format(rec) + repr(rec.args) + repr(getattr(rec, "extra", ""))
        leaked = secrets.found_in(text)
        tally.expect(not leaked, f"{rec.name} {rec.levelname} logged {leaked}: {text[:300]}")
    tally.done(
        "secrets in logs (in process)",
        f"the auth flow with all loggers at DEBUG; {len(records)} records checked against "
        f"{len(secrets.values)} secret values",
    )


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_no_secret_in_a_served_process_logs(
    log_format: str, full_db: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    """The same flow against a real `web serve` process at LOG_LEVEL=debug with the access
    log on, in either log format: nothing secret in its output. Also a chunked oversized body
    over a real socket: 413."""
    from platform_dev.embedded import free_port
    from tests.e2e.conftest import Processes

    secrets, tally = Secrets(), Tally("web")
    procs = Processes(tmp_path)
    smtp = {k: str(v) for k, v in smtp_server.settings().items()}
    port = free_port()
    try:
        proc = await procs.serve(
            "web",
            full_db,
            port=port,
            AUTH_URL=f"http://127.0.0.1:{port}",
            ACCESS_LOG="1",
            LOG_LEVEL="debug",
            LOG_FORMAT=log_format,
            SMTP_HOST=smtp["SMTP_HOST"],
            SMTP_PORT=smtp["SMTP_PORT"],
            SMTP_SECURITY=smtp["SMTP_SECURITY"],
            MAIL_FROM=smtp["MAIL_FROM"],
        )
        await proc.wait_ready()
        assert proc.base_url is not None
        async with httpx.AsyncClient(
            base_url=proc.base_url, headers={"origin": proc.base_url}, timeout=30
        ) as client:
            await auth_flow(client, smtp_server, secrets, tally)

            async def big() -> AsyncIterator[bytes]:
                yield b'{"title": "'
                for _ in range(MAX_BODY // 65536 + 1):
                    yield b"a" * 65536
                yield b'"}'

            r = await tally.send(
                client,
                "POST",
                f"{AUTH}/sign-up/email",
                content=big(),
                headers={"content-type": "application/json"},
            )
            tally.expect(
                r.status_code == 413 and code_of(r) == "PAYLOAD_TOO_LARGE",
                f"chunked oversized body: {describe(r)}",
            )
    finally:
        await procs.stop_all()
    output = proc.output()
    assert "GET /api/auth/get-session" in output, "no access log: the test would prove less"
    for line in output.splitlines():
        leaked = secrets.found_in(line)
        tally.expect(not leaked, f"logged {leaked}: {line[:300]}")
    tally.done(
        "secrets in logs (served process)",
        "the auth flow against `web serve` with LOG_LEVEL=debug and the access log on",
    )


# --- security headers -----------------------------------------------------------------------

COMMON = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "strict-transport-security": "max-age=31536000",  # the test client speaks https
}


async def test_security_headers_on_every_kind_of_answer(api: Api) -> None:
    tally = Tally(api.app.title)
    t = await make_target(api)
    json_type = {"content-type": "application/json"}
    answers: dict[str, tuple[int, Mapping[str, str], str]] = {}

    async def get(name: str, method: str, url: str, **kwargs: Any) -> None:
        r = await tally.send(api.client, method, url, **kwargs)
        api.client.cookies.clear()
        answers[name] = (r.status_code, r.headers, url)

    await get("JSON 200", "GET", "/todos", headers=t.victim.bearer)
    await get("JSON 201", "POST", "/todos", json={"title": "x"}, headers=t.victim.bearer)
    await get("204", "DELETE", f"/todos/{t.todo_id}", headers=t.victim.bearer)
    await get("401", "GET", "/todos")
    await get("404", "GET", "/todos/missing", headers=t.victim.bearer)
    await get("404 no route", "GET", "/nowhere")
    await get("405", "PUT", "/todos")
    await get("400", "POST", "/todos", content=b"{", headers={**t.victim.bearer, **json_type})
    await get("422", "POST", "/todos", json={}, headers=t.victim.bearer)
    await get(
        "403 origin",
        "POST",
        "/todos",
        json={"title": "x"},
        headers={**api.cookie_header(t.victim.cookie), "origin": EVIL},
    )
    await get("auth 200", "GET", f"{AUTH}/get-session", headers=t.victim.bearer)
    await get(
        "auth sign-in",
        "POST",
        f"{AUTH}/sign-in/email",
        json={"email": t.victim.email, "password": t.victim.password},
    )
    await get(
        "auth 401",
        "POST",
        f"{AUTH}/sign-in/email",
        json={"email": t.victim.email, "password": "wrong password"},
    )
    await get("docs", "GET", "/docs")
    await get("openapi", "GET", "/openapi.json")
    await get("healthz", "GET", "/healthz")
    tally.requests += 1
    status, heads, _ = await raw_asgi(
        api, "POST", "/todos", [(b"content-length", str(MAX_BODY + 1).encode())], [b"{}"]
    )
    answers["413"] = (status, heads, "/todos")
    for name, (status, headers, url) in answers.items():
        for header, value in COMMON.items():
            tally.expect(headers.get(header) == value, f"{name} ({status}): {header}")
        csp = headers.get("content-security-policy", "")
        want = "default-src 'self'" if url.startswith("/docs") else "default-src 'none'"
        tally.expect(
            csp.startswith(want) and "frame-ancestors 'none'" in csp, f"{name}: CSP {csp!r}"
        )
        if url.startswith(AUTH) or name in ("JSON 200", "JSON 201", "204", "404", "400", "422"):
            tally.expect(
                headers.get("cache-control") == "private, no-store", f"{name}: cache-control"
            )
    expected_statuses = {
        "JSON 200": 200, "JSON 201": 201, "204": 204, "401": 401, "404": 404,
        "404 no route": 404, "405": 405, "400": 400, "422": 422, "403 origin": 403,
        "auth 200": 200, "auth sign-in": 200, "auth 401": 401, "docs": 200, "openapi": 200,
        "healthz": 200, "413": 413,
    }  # fmt: skip
    got_statuses = {name: a[0] for name, a in answers.items()}
    tally.expect(got_statuses == expected_statuses, f"statuses: {got_statuses}")
    tally.done(
        "security headers",
        f"{len(answers)} kinds of answer (JSON, errors from handlers and middleware, docs)",
    )
