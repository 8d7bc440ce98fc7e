"""Regression tests for the account-takeover paths an outside review found (issue 12).

Each test fails on the code before the fix: the reset link's redirect read as a browser reads
it, mailed links from configuration only, one reader of cookies, sessions that cannot outlive
a password change, equal work on the mail routes, and private answers kept out of caches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, MutableMapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import event

from platform_auth.passwords import PasswordHasher
from platform_auth.state import auth_state
from service_kit.db import Database
from service_kit.state import kit_state
from tests.conftest import ORIGIN, app_client, auth_settings
from tests.factories import PASSWORD, sign_up, unique_email
from tests.pg import plain_url, sql

if TYPE_CHECKING:
    from tests.smtp import SmtpServer

pytest_plugins = ("tests.smtp",)

AUTH = "/api/auth"
MAX_NAME_IN_MAIL = 64  # as the README's Security section says
NEW_PASSWORD = "a much better password"
COOKIE = "__Secure-better-auth.session_token"

# Targets a naive check passes and a browser follows off-site: a path start, then a control
# character or backslash that the browser drops or turns into a slash.
OFF_SITE = [
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r/evil.example",
    "/\r\n/evil.example",
    "\t//evil.example",
    " //evil.example",
    "\x00//evil.example",
    "/\\evil.example",
    "\\/evil.example",
    "https:evil.example",
    "https:/evil.example",
    "https://testserver@evil.example",
    "https://evil.example\\@testserver",
]


@pytest.fixture
async def client(db_url: str, smtp_server: SmtpServer) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(db_url, **smtp_server.settings()) as c:
        yield c


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["code"] == code, r.text


def resolves_here(location: str) -> bool:
    """Whether a browser on ORIGIN following `location` stays on ORIGIN (for the tests'
    own plain Locations: the property tests check the builder against a real parser)."""
    if location.startswith("/") and not location.startswith("//"):
        return not any(c in location for c in "\t\r\n\\")
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}" == ORIGIN


async def reset_token(client: httpx.AsyncClient, smtp: SmtpServer, email: str) -> str:
    r = await client.post(f"{AUTH}/request-password-reset", json={"email": email})
    assert r.status_code == 200, r.text
    [link] = (await smtp.next_mail(email)).links()
    return urlsplit(link).path.rsplit("/", 1)[1]


# --- 1. redirect targets ---------------------------------------------------------------------


@pytest.mark.parametrize("target", OFF_SITE)
async def test_reset_link_never_redirects_off_site(
    client: httpx.AsyncClient, smtp_server: SmtpServer, target: str
) -> None:
    """The mailed reset link's callback is checked as a browser resolves it."""
    email = unique_email()
    await sign_up(client, email=email)
    r = await client.post(
        f"{AUTH}/request-password-reset", json={"email": email, "redirectTo": target}
    )
    assert_error(r, 403, "INVALID_CALLBACK_URL")
    token = await reset_token(client, smtp_server, email)
    r = await client.get(f"{AUTH}/reset-password/{token}", params={"callbackURL": target})
    assert_error(r, 403, "INVALID_CALLBACK_URL")
    assert "location" not in r.headers


@pytest.mark.parametrize("target", OFF_SITE)
async def test_verify_email_error_path_is_no_open_redirect(
    client: httpx.AsyncClient, target: str
) -> None:
    r = await client.get(
        f"{AUTH}/verify-email", params={"token": "not-a-token", "callbackURL": target}
    )
    assert_error(r, 403, "INVALID_CALLBACK_URL")


@pytest.mark.parametrize("target", OFF_SITE)
async def test_sign_in_never_returns_an_off_site_url(
    client: httpx.AsyncClient, target: str
) -> None:
    email = unique_email()
    await sign_up(client, email=email)
    r = await client.post(
        f"{AUTH}/sign-in/email", json={"email": email, "password": PASSWORD, "callbackURL": target}
    )
    assert_error(r, 403, "INVALID_CALLBACK_URL")


async def test_redirect_is_built_from_the_checked_target(
    client: httpx.AsyncClient, smtp_server: SmtpServer
) -> None:
    """Controls a browser would drop are dropped before the Location is built, not after."""
    email = unique_email()
    await sign_up(client, email=email)
    r = await client.post(
        f"{AUTH}/request-password-reset", json={"email": email, "redirectTo": " /re\tset\n"}
    )
    assert r.status_code == 200, r.text
    [link] = (await smtp_server.next_mail(email)).links()
    r = await client.get(link)
    assert r.status_code == 302, r.text
    token = urlsplit(link).path.rsplit("/", 1)[1]
    assert r.headers["location"] == f"/reset?token={token}"
    r = await client.post(
        f"{AUTH}/sign-in/email",
        json={"email": email, "password": PASSWORD, "callbackURL": "https://TESTSERVER:443/x"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["url"] == "https://testserver/x"
    assert resolves_here(r.json()["url"])


# --- 2. mailed links and the Host header ---------------------------------------------------


def test_mail_needs_auth_url_outside_development(db_url: str) -> None:
    smtp = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": 2525}
    for environment in ("production", "test"):
        with pytest.raises(ValidationError, match="AUTH_URL"):
            auth_settings(db_url, ENVIRONMENT=environment, AUTH_URL=None, **smtp)
    auth_settings(db_url, ENVIRONMENT="development", AUTH_URL=None, **smtp)  # allowed there


async def test_forged_host_is_refused(client: httpx.AsyncClient) -> None:
    """Only allowed hosts are answered (AUTH_URL's, TRUSTED_ORIGINS', loopback by default)."""
    email = unique_email()
    r = await client.post(
        f"{AUTH}/request-password-reset",
        json={"email": email},
        headers={"host": "attacker.example"},
    )
    assert_error(r, 400, "INVALID_HOST")
    for host in ("testserver", "TestServer:443", "127.0.0.1:8001", "localhost"):
        r = await client.get(f"{AUTH}/get-session", headers={"host": host})
        assert r.status_code == 200, (host, r.text)
    # Probes send the pod's address as Host: health answers whatever it is.
    r = await client.get("/healthz", headers={"host": "10.1.2.3:8001"})
    assert r.status_code == 200


async def test_mailed_links_ignore_the_host_header(db_url: str, smtp_server: SmtpServer) -> None:
    """With every host allowed, a forged Host still cannot reach a mailed link."""
    async with app_client(db_url, ALLOWED_HOSTS="*", **smtp_server.settings()) as client:
        email = unique_email()
        await sign_up(client, email=email)
        client.cookies.clear()
        r = await client.post(
            f"{AUTH}/request-password-reset",
            json={"email": email},
            headers={"host": "attacker.example"},
        )
        assert r.status_code == 200, r.text
        [link] = (await smtp_server.next_mail(email)).links()
        assert link.startswith(f"{ORIGIN}{AUTH}/reset-password/"), link


async def test_allowed_hosts_setting(db_url: str) -> None:
    async with app_client(db_url, ALLOWED_HOSTS="api.example.com,*.example.org") as client:
        for host, status in [
            ("api.example.com", 200),
            ("eu.example.org", 200),
            ("example.org", 400),
            ("testserver", 400),
            ("api.example.com.evil", 400),
        ]:
            r = await client.get(f"{AUTH}/get-session", headers={"host": host})
            assert r.status_code == status, (host, r.text)


# --- 4. one reader of cookies ----------------------------------------------------------------


async def test_csrf_check_reads_every_cookie_header(client: httpx.AsyncClient) -> None:
    """A session cookie in the first of two Cookie headers is still origin-checked."""
    token, _ = await sign_up(client)
    value = client.cookies[COOKIE]
    client.cookies.clear()
    headers = [
        ("cookie", f"{COOKIE}={value}"),
        ("cookie", "theme=dark"),
        ("origin", "https://evil.example"),
    ]
    r = await client.post(f"{AUTH}/revoke-sessions", headers=headers)
    assert_error(r, 403, "INVALID_ORIGIN")
    r = await client.get(f"{AUTH}/get-session", headers={"authorization": f"Bearer {token}"})
    assert r.json() is not None  # the session survived


# --- 5. sessions cannot outlive a password change --------------------------------------------


class GatedHasher:
    """The app's hasher, holding each verify until `release` is set (after it has run)."""

    def __init__(self, inner: PasswordHasher) -> None:
        self.inner = inner
        self.verifying = asyncio.Event()
        self.release = asyncio.Event()

    async def hash(self, password: str) -> str:
        return await self.inner.hash(password)

    async def verify(self, stored: str | None, password: str) -> bool:
        ok = await self.inner.verify(stored, password)
        self.verifying.set()
        await asyncio.wait_for(self.release.wait(), 30)
        return ok

    def close(self) -> None:
        self.inner.close()


@asynccontextmanager
async def gated(client: httpx.AsyncClient) -> AsyncIterator[GatedHasher]:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    state = auth_state(transport.app)  # type: ignore[arg-type]
    inner = state.hasher
    gate = GatedHasher(inner)
    state.hasher = gate  # type: ignore[assignment]
    try:
        yield gate
    finally:
        state.hasher = inner


async def session_count(db_url: str, user_id: str) -> int:
    rows = await sql(db_url, 'SELECT count(*) AS n FROM "session" WHERE user_id = $1', user_id)
    return int(rows[0]["n"])


async def reset_while_verifying(
    client: httpx.AsyncClient, smtp: SmtpServer, email: str, racer: Awaitable[httpx.Response]
) -> httpx.Response:
    """Run `racer` (a request that verifies the old password), commit a password reset while
    it is between its password check and its session, then let it finish."""
    token = await reset_token(client, smtp, email)
    async with gated(client) as gate:
        task = asyncio.ensure_future(racer)
        await asyncio.wait_for(gate.verifying.wait(), 30)
        r = await client.post(
            f"{AUTH}/reset-password", json={"newPassword": NEW_PASSWORD, "token": token}
        )
        assert r.status_code == 200, r.text
        gate.release.set()
        return await task


async def test_sign_in_racing_a_reset_gets_no_session(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    """A sign-in whose password was reset while it was being verified is refused."""
    email = unique_email()
    _, user = await sign_up(client, email=email)
    client.cookies.clear()
    sign_in = client.post(f"{AUTH}/sign-in/email", json={"email": email, "password": PASSWORD})
    r = await reset_while_verifying(client, smtp_server, email, sign_in)
    assert_error(r, 401, "INVALID_EMAIL_OR_PASSWORD")
    assert await session_count(db_url, user["id"]) == 0


async def test_change_password_racing_a_reset_loses(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    """A change verified against a password that a reset replaced meanwhile is refused."""
    email = unique_email()
    session_token, user = await sign_up(client, email=email)
    client.cookies.clear()
    change = client.post(
        f"{AUTH}/change-password",
        json={"currentPassword": PASSWORD, "newPassword": "the attacker's password"},
        headers={"authorization": f"Bearer {session_token}"},
    )
    r = await reset_while_verifying(client, smtp_server, email, change)
    assert_error(r, 400, "INVALID_PASSWORD")
    assert await session_count(db_url, user["id"]) == 0
    r = await client.post(f"{AUTH}/sign-in/email", json={"email": email, "password": NEW_PASSWORD})
    assert r.status_code == 200, r.text  # the reset's password stands


async def test_reset_waits_for_a_sign_in_holding_the_password(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    """The other order: a sign-in that checked the password first commits its session, and
    the reset, held back until then, ends it."""
    email = unique_email()
    _, user = await sign_up(client, email=email)
    client.cookies.clear()
    token = await reset_token(client, smtp_server, email)
    rows = await sql(db_url, "SELECT password FROM account WHERE user_id = $1", user["id"])
    stored = rows[0]["password"]
    conn = await asyncpg.connect(plain_url(db_url))
    try:
        # What a sign-in's transaction holds between its check and its commit.
        tr = conn.transaction()
        await tr.start()
        await conn.execute(
            "SELECT id FROM account WHERE user_id = $1 AND provider_id = 'credential' "
            "AND password = $2 FOR SHARE",
            user["id"],
            stored,
        )
        await conn.execute(
            "INSERT INTO session (id, token, user_id, expires_at, created_at, updated_at) "
            "VALUES ('racing', 'racing-token', $1, now() + interval '1 day', now(), now())",
            user["id"],
        )
        reset = asyncio.create_task(
            client.post(
                f"{AUTH}/reset-password", json={"newPassword": NEW_PASSWORD, "token": token}
            )
        )
        await asyncio.sleep(0.5)
        assert not reset.done()  # held back by the sign-in's lock
        await tr.commit()
        r = await asyncio.wait_for(reset, 30)
    finally:
        await conn.close()
    assert r.status_code == 200, r.text
    assert await session_count(db_url, user["id"]) == 0


# --- 6. equal work on the mail routes ------------------------------------------------------


class StatementLog:
    """The SQL statements an app runs before its response starts, per request."""

    def __init__(self) -> None:
        self.before: list[str] = []
        self.answered = False


@asynccontextmanager
async def recording(client: httpx.AsyncClient) -> AsyncIterator[StatementLog]:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    app = transport.app
    database: Database = kit_state(app).database  # type: ignore[arg-type]
    log = StatementLog()

    def on_execute(*args: Any) -> None:
        if not log.answered:
            log.before.append(" ".join(str(args[2]).split()))

    engine = database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_execute)

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        async def send_marked(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                log.answered = True
            await send(message)

        await app(scope, receive, send_marked)

    transport.app = watched
    try:
        yield log
    finally:
        transport.app = app
        event.remove(engine, "before_cursor_execute", on_execute)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("request-password-reset", {"redirectTo": "/reset"}),
        ("send-verification-email", {"callbackURL": "/welcome"}),
    ],
)
async def test_mail_routes_do_the_same_work_for_any_address(
    client: httpx.AsyncClient, smtp_server: SmtpServer, route: str, body: dict[str, str]
) -> None:
    """Nothing about the account is read or written before the answer."""
    known = unique_email()
    await sign_up(client, email=known)
    client.cookies.clear()
    seen: dict[str, list[str]] = {}
    for email in (known, unique_email()):
        async with recording(client) as log:
            r = await client.post(f"{AUTH}/{route}", json={"email": email, **body})
            assert r.status_code == 200, r.text
        seen[email] = log.before
    assert seen[known] == list(seen.values())[1]
    await smtp_server.next_mail(known)  # and the mail still goes out, after the answer


# --- 8. caches and mail text --------------------------------------------------------------


async def test_authenticated_answers_are_private(service_client: httpx.AsyncClient) -> None:
    token, _ = await sign_up(service_client)
    service_client.cookies.clear()
    bearer = {"authorization": f"Bearer {token}"}
    r = await service_client.post("/todos", json={"title": "x"}, headers=bearer)
    assert r.status_code == 201, r.text
    for response in (
        r,
        await service_client.get("/todos", headers=bearer),
        await service_client.get(f"/todos/{r.json()['id']}", headers=bearer),
        await service_client.get("/todos", headers={"cookie": "anything=1"}),
    ):
        assert response.headers["cache-control"] == "private, no-store", response.request.url


async def test_names_in_mail_are_plain_and_bounded(
    client: httpx.AsyncClient, smtp_server: SmtpServer
) -> None:
    email = unique_email()
    name = "Eve\r\nBcc: victim@example.com\u202e" + "x" * 150
    await sign_up(client, email=email, name=name)
    r = await client.post(f"{AUTH}/request-password-reset", json={"email": email})
    assert r.status_code == 200, r.text
    text = (await smtp_server.next_mail(email)).text
    hello = text.splitlines()[0]
    assert hello.startswith("Hello Eve Bcc: victim@example.com"), hello
    assert "\u202e" not in text
    assert "\x00" not in text
    assert len(hello) <= len("Hello ,") + MAX_NAME_IN_MAIL
