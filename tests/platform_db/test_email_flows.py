"""Email verification, password reset and change-password, end to end through a real SMTP
server: the link a test follows is the one it read out of the mail it received."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from platform_auth import cookies
from tests.conftest import TEST_SECRET, app_client
from tests.factories import PASSWORD, sign_up, unique_email
from tests.pg import sql

if TYPE_CHECKING:
    from tests.smtp import SmtpServer

# The SMTP fixtures; imported here (not at the top) so pytest can rewrite its asserts.
pytest_plugins = ("tests.smtp",)

AUTH = "/api/auth"
SECURE_COOKIE = "__Secure-better-auth.session_token"
NEW_PASSWORD = "a much better password"
RESET_MESSAGE = "If this email exists in our system, check your email for the reset link"
EVIL_CALLBACKS = [
    "https://evil.example/welcome",
    "//evil.example/welcome",
    "/\\evil.example",
    "javascript:alert(1)",
    "http://testserver/welcome",  # the right host, the wrong scheme
]


@pytest.fixture
async def client(db_url: str, smtp_server: SmtpServer) -> AsyncIterator[httpx.AsyncClient]:
    """An app that sends its mail to `smtp_server`."""
    async with app_client(db_url, **smtp_server.settings()) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code
    assert isinstance(body["message"], str)
    assert body["message"]


def only_link(text: str, path: str) -> str:
    links = re.findall(r"https?://\S+", text)
    assert len(links) == 1, text
    link: str = links[0]
    assert urlsplit(link).path.startswith(f"{AUTH}/{path}"), link
    return link


async def sign_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(f"{AUTH}/sign-in/email", json={"email": email, "password": password})


async def user_row(db_url: str, email: str) -> dict[str, Any]:
    [row] = await sql(db_url, 'SELECT * FROM "user" WHERE email = $1', email)
    return dict(row)


async def verification_rows(db_url: str, prefix: str = "") -> list[dict[str, Any]]:
    statement = "SELECT * FROM verification WHERE identifier LIKE $1 ORDER BY created_at"
    rows = await sql(db_url, statement, prefix + "%")
    return [dict(r) for r in rows]


async def expire(db_url: str, identifier: str, by: timedelta) -> None:
    await sql(
        db_url,
        "UPDATE verification SET expires_at = expires_at - $2::interval WHERE identifier = $1",
        identifier,
        by,
    )


async def session_count(db_url: str, user_id: str) -> int:
    rows = await sql(db_url, "SELECT count(*) AS n FROM session WHERE user_id = $1", user_id)
    return int(rows[0]["n"])


# --- email verification --------------------------------------------------------------------


async def test_verify_email_through_the_mailed_link(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    email = unique_email()
    _, user = await sign_up(client, email=email, name="Ada Lovelace")
    assert user["emailVerified"] is False
    r = await client.post(
        f"{AUTH}/send-verification-email", json={"email": email, "callbackURL": "/welcome"}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"status": True}

    mail = await smtp_server.next_mail(email)
    assert mail.recipients == (email,)
    assert mail.message["From"] == smtp_server.mail_from
    assert mail.subject == "Verify your email address"
    assert "Ada Lovelace" in mail.text
    link = only_link(mail.text, "verify-email")
    mailed_token = parse_qs(urlsplit(link).query)["token"][0]
    [row] = await verification_rows(db_url, "email-verification:")
    assert row["identifier"] == f"email-verification:{mailed_token}"
    assert row["value"] == user["id"]
    assert row["expires_at"] - row["created_at"] == timedelta(hours=1)

    r = await client.get(link)
    assert r.status_code == 302, r.text
    assert r.headers["location"] == "/welcome"
    assert (await user_row(db_url, email))["email_verified"] is True
    assert await verification_rows(db_url) == []  # used: gone

    # Single use: the same link again is an error, carried back to the callback.
    r = await client.get(link)
    assert r.status_code == 302
    assert r.headers["location"] == "/welcome?error=INVALID_TOKEN"
    r = await client.get(f"{AUTH}/verify-email", params={"token": mailed_token})
    assert_error(r, 400, "INVALID_TOKEN")


async def test_verify_email_without_callback(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    email = unique_email()
    await sign_up(client, email=email)
    client.cookies.clear()
    r = await client.post(f"{AUTH}/send-verification-email", json={"email": email.upper()})
    assert r.status_code == 200, r.text
    link = only_link(await smtp_server.next_text(email), "verify-email")
    assert "callbackURL" not in link
    r = await client.get(link)
    assert r.status_code == 200, r.text
    assert r.json()["status"] is True
    assert (await user_row(db_url, email))["email_verified"] is True


async def test_verification_mail_gives_nothing_away(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    """Without a session the answer is the same for any address; only real ones get mail."""
    known, unknown = unique_email("known"), unique_email("unknown")
    await sign_up(client, email=known)
    client.cookies.clear()
    r_unknown = await client.post(f"{AUTH}/send-verification-email", json={"email": unknown})
    r_known = await client.post(f"{AUTH}/send-verification-email", json={"email": known})
    assert (r_unknown.status_code, r_unknown.json()) == (r_known.status_code, r_known.json())
    await smtp_server.next_mail(known)
    assert smtp_server.mails_to(unknown) == []
    assert len(await verification_rows(db_url)) == 1


async def test_verification_link_expires(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    email = unique_email()
    await sign_up(client, email=email)
    r = await client.post(f"{AUTH}/send-verification-email", json={"email": email})
    assert r.status_code == 200, r.text
    link = only_link(await smtp_server.next_text(email), "verify-email")
    [row] = await verification_rows(db_url)
    await expire(db_url, row["identifier"], timedelta(hours=1))
    r = await client.get(link)
    assert_error(r, 400, "TOKEN_EXPIRED")
    assert (await user_row(db_url, email))["email_verified"] is False
    r = await client.get(link + "&callbackURL=%2Fwelcome")
    assert r.status_code == 302
    assert r.headers["location"] == "/welcome?error=TOKEN_EXPIRED"
    assert (await user_row(db_url, email))["email_verified"] is False


async def test_verification_lifetime_is_a_setting(db_url: str, smtp_server: SmtpServer) -> None:
    async with app_client(
        db_url, EMAIL_VERIFICATION_EXPIRES_IN=600, **smtp_server.settings()
    ) as client:
        email = unique_email()
        await sign_up(client, email=email)
        r = await client.post(f"{AUTH}/send-verification-email", json={"email": email})
        assert r.status_code == 200, r.text
        await smtp_server.next_mail(email)
        [row] = await verification_rows(db_url)
        assert (row["expires_at"] - row["created_at"]).total_seconds() == 600


async def test_send_verification_email_with_a_session(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    email = unique_email()
    await sign_up(client, email=email)
    r = await client.post(f"{AUTH}/send-verification-email", json={"email": unique_email()})
    assert_error(r, 400, "EMAIL_MISMATCH")
    assert smtp_server.received == []
    assert await verification_rows(db_url) == []


async def test_signed_in_user_sees_the_verification(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    email = unique_email()
    await sign_up(client, email=email)
    r = await client.post(f"{AUTH}/send-verification-email", json={"email": email})
    assert r.status_code == 200, r.text
    link = only_link(await smtp_server.next_text(email), "verify-email")
    r = await client.get(f"{AUTH}/get-session")  # the session (and user) is now cached
    assert r.json()["user"]["emailVerified"] is False
    r = await client.get(link)
    assert r.status_code == 200, r.text
    # Bounded poll: verify-email does not evict the cached user in this process, so the
    # change arrives through NOTIFY (see the report: it should be at once).
    for _ in range(100):
        r = await client.get(f"{AUTH}/get-session")
        if r.json()["user"]["emailVerified"]:
            break
        await asyncio.sleep(0.05)
    assert r.json()["user"]["emailVerified"] is True
    r = await client.post(f"{AUTH}/send-verification-email", json={"email": email})
    assert_error(r, 400, "EMAIL_ALREADY_VERIFIED")
    assert await verification_rows(db_url) == []


# --- better-auth's JWT verification links --------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def better_auth_jwt(payload: dict[str, Any], secret: str = TEST_SECRET, alg: str = "HS256") -> str:
    """An HS256 JWT as better-auth signs its email-verification tokens."""
    head = _b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = _b64url(json.dumps(payload).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64url(mac)}"


async def test_better_auth_jwt_verifies_the_email(client: httpx.AsyncClient, db_url: str) -> None:
    email = unique_email()
    _, user = await sign_up(client, email=email)
    now = int(time.time())
    good = {"email": email, "userId": user["id"], "iat": now, "exp": now + 3600}
    refused = [
        better_auth_jwt(good, secret="another-secret-0123456789abcdef0123456789"),
        better_auth_jwt({**good, "userId": "someone-else"}),
        better_auth_jwt({**good, "email": unique_email()}),
        better_auth_jwt({**good, "updateTo": unique_email()}),  # change-email: not offered
        better_auth_jwt(good, alg="none"),
        better_auth_jwt({k: v for k, v in good.items() if k != "exp"}),
    ]
    for token in refused:
        r = await client.get(f"{AUTH}/verify-email", params={"token": token})
        assert_error(r, 400, "INVALID_TOKEN")
    expired = better_auth_jwt({**good, "iat": now - 7200, "exp": now - 3600})
    r = await client.get(f"{AUTH}/verify-email", params={"token": expired})
    assert_error(r, 400, "TOKEN_EXPIRED")
    assert (await user_row(db_url, email))["email_verified"] is False

    r = await client.get(f"{AUTH}/verify-email", params={"token": better_auth_jwt(good)})
    assert r.status_code == 200, r.text
    assert r.json()["status"] is True
    assert (await user_row(db_url, email))["email_verified"] is True


async def test_better_auth_jwt_without_user_id(client: httpx.AsyncClient, db_url: str) -> None:
    email = unique_email()
    await sign_up(client, email=email)
    now = int(time.time())
    token = better_auth_jwt({"email": email.upper(), "iat": now, "exp": now + 60})
    r = await client.get(f"{AUTH}/verify-email", params={"token": token})
    assert r.status_code == 200, r.text
    assert (await user_row(db_url, email))["email_verified"] is True


# --- password reset ------------------------------------------------------------------------


async def test_password_reset_through_the_mailed_link(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    email = unique_email()
    first, user = await sign_up(client, email=email, name="Grace")
    client.cookies.clear()
    second = (await sign_in(client, email, PASSWORD)).json()["token"]
    client.cookies.clear()
    assert await session_count(db_url, user["id"]) == 2

    r = await client.post(
        f"{AUTH}/request-password-reset", json={"email": email, "redirectTo": "/reset"}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"status": True, "message": RESET_MESSAGE}
    mail = await smtp_server.next_mail(email)
    assert mail.subject == "Reset your password"
    assert "Grace" in mail.text
    link = only_link(mail.text, "reset-password/")
    token = urlsplit(link).path.rsplit("/", 1)[1]
    [row] = await verification_rows(db_url)
    assert row["identifier"] == f"reset-password:{token}"
    assert row["value"] == user["id"]
    assert row["expires_at"] - row["created_at"] == timedelta(hours=1)

    # The link leads on to the app's page with the token, without using it.
    r = await client.get(link)
    assert r.status_code == 302, r.text
    assert r.headers["location"] == f"/reset?token={token}"
    r = await client.get(f"{AUTH}/reset-password/{token}")
    assert r.status_code == 200
    assert r.json() == {"token": token}
    assert len(await verification_rows(db_url)) == 1

    r = await client.post(
        f"{AUTH}/reset-password", json={"newPassword": NEW_PASSWORD, "token": token}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"status": True}
    assert await verification_rows(db_url) == []
    assert await session_count(db_url, user["id"]) == 0  # every session ended
    for old in (first, second):
        r = await client.get(f"{AUTH}/get-session", headers=bearer(old))
        assert r.json() is None
    assert_error(await sign_in(client, email, PASSWORD), 401, "INVALID_EMAIL_OR_PASSWORD")
    r = await sign_in(client, email, NEW_PASSWORD)
    assert r.status_code == 200, r.text

    # Single use.
    r = await client.post(
        f"{AUTH}/reset-password", json={"newPassword": "yet another password", "token": token}
    )
    assert_error(r, 400, "INVALID_TOKEN")
    r = await client.get(link)
    assert r.status_code == 302
    assert r.headers["location"] == "/reset?error=INVALID_TOKEN"
    assert_error(await client.get(f"{AUTH}/reset-password/{token}"), 400, "INVALID_TOKEN")
    client.cookies.clear()
    assert (await sign_in(client, email, NEW_PASSWORD)).status_code == 200


async def test_reset_token_in_the_query_string(
    client: httpx.AsyncClient, smtp_server: SmtpServer
) -> None:
    email = unique_email()
    await sign_up(client, email=email)
    client.cookies.clear()
    await client.post(f"{AUTH}/request-password-reset", json={"email": email})
    link = only_link(await smtp_server.next_text(email), "reset-password/")
    assert "callbackURL" not in link
    token = urlsplit(link).path.rsplit("/", 1)[1]
    r = await client.post(
        f"{AUTH}/reset-password", params={"token": token}, json={"newPassword": NEW_PASSWORD}
    )
    assert r.status_code == 200, r.text
    assert (await sign_in(client, email, NEW_PASSWORD)).status_code == 200


async def test_reset_request_gives_nothing_away(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    known, unknown = unique_email("known"), unique_email("unknown")
    await sign_up(client, email=known)
    client.cookies.clear()
    r_unknown = await client.post(f"{AUTH}/request-password-reset", json={"email": unknown})
    r_known = await client.post(f"{AUTH}/request-password-reset", json={"email": known})
    assert r_unknown.status_code == r_known.status_code == 200
    assert r_unknown.json() == r_known.json() == {"status": True, "message": RESET_MESSAGE}
    assert r_unknown.headers.get("set-cookie") == r_known.headers.get("set-cookie") is None
    await smtp_server.next_mail(known)
    assert smtp_server.mails_to(unknown) == []
    assert len(await verification_rows(db_url, "reset-password:")) == 1


async def test_reset_link_expires_after_one_hour(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    email = unique_email()
    await sign_up(client, email=email)
    client.cookies.clear()
    for _ in range(2):
        r = await client.post(
            f"{AUTH}/request-password-reset", json={"email": email, "redirectTo": "/reset"}
        )
        assert r.status_code == 200, r.text
    late = only_link(await smtp_server.next_text(email), "reset-password/")
    in_time = only_link(await smtp_server.next_text(email), "reset-password/")
    late_token = urlsplit(late).path.rsplit("/", 1)[1]
    in_time_token = urlsplit(in_time).path.rsplit("/", 1)[1]
    await expire(db_url, f"reset-password:{late_token}", timedelta(hours=1))
    await expire(db_url, f"reset-password:{in_time_token}", timedelta(minutes=59))

    r = await client.get(late)
    assert r.status_code == 302
    assert r.headers["location"] == "/reset?error=INVALID_TOKEN"
    r = await client.post(
        f"{AUTH}/reset-password", json={"newPassword": NEW_PASSWORD, "token": late_token}
    )
    assert_error(r, 400, "INVALID_TOKEN")
    assert (await sign_in(client, email, PASSWORD)).status_code == 200  # unchanged
    client.cookies.clear()

    r = await client.post(
        f"{AUTH}/reset-password", json={"newPassword": NEW_PASSWORD, "token": in_time_token}
    )
    assert r.status_code == 200, r.text
    assert (await sign_in(client, email, NEW_PASSWORD)).status_code == 200


async def test_reset_with_a_bad_password_keeps_the_token(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    email = unique_email()
    await sign_up(client, email=email)
    client.cookies.clear()
    await client.post(f"{AUTH}/request-password-reset", json={"email": email})
    link = only_link(await smtp_server.next_text(email), "reset-password/")
    token = urlsplit(link).path.rsplit("/", 1)[1]
    r = await client.post(f"{AUTH}/reset-password", json={"newPassword": "short", "token": token})
    assert_error(r, 400, "PASSWORD_TOO_SHORT")
    r = await client.post(f"{AUTH}/reset-password", json={"newPassword": "x" * 129, "token": token})
    assert_error(r, 400, "PASSWORD_TOO_LONG")
    assert len(await verification_rows(db_url)) == 1  # a typo does not burn the link
    r = await client.post(
        f"{AUTH}/reset-password", json={"newPassword": NEW_PASSWORD, "token": "not-a-token"}
    )
    assert_error(r, 400, "INVALID_TOKEN")
    r = await client.post(f"{AUTH}/reset-password", json={"newPassword": NEW_PASSWORD})
    assert_error(r, 400, "INVALID_TOKEN")
    r = await client.post(
        f"{AUTH}/reset-password", json={"newPassword": NEW_PASSWORD, "token": token}
    )
    assert r.status_code == 200, r.text


# --- no open redirects ---------------------------------------------------------------------


async def test_untrusted_callback_urls_are_refused(
    client: httpx.AsyncClient, smtp_server: SmtpServer, db_url: str
) -> None:
    email = unique_email()
    await sign_up(client, email=email)
    client.cookies.clear()
    await client.post(f"{AUTH}/request-password-reset", json={"email": email})
    reset = only_link(await smtp_server.next_text(email), "reset-password/")
    await client.post(f"{AUTH}/send-verification-email", json={"email": email})
    verify = only_link(await smtp_server.next_text(email), "verify-email")
    for callback in EVIL_CALLBACKS:
        r = await client.post(
            f"{AUTH}/send-verification-email", json={"email": email, "callbackURL": callback}
        )
        assert_error(r, 403, "INVALID_CALLBACK_URL")
        r = await client.post(
            f"{AUTH}/request-password-reset", json={"email": email, "redirectTo": callback}
        )
        assert_error(r, 403, "INVALID_CALLBACK_URL")
        r = await client.post(
            f"{AUTH}/sign-in/email",
            json={"email": email, "password": PASSWORD, "callbackURL": callback},
        )
        assert_error(r, 403, "INVALID_CALLBACK_URL")
        assert "set-cookie" not in r.headers
        # Links with a forged callback do not redirect, and are not used up.
        r = await client.get(reset, params={"callbackURL": callback})
        assert_error(r, 403, "INVALID_CALLBACK_URL")
        r = await client.get(httpx.URL(verify).copy_add_param("callbackURL", callback))
        assert_error(r, 403, "INVALID_CALLBACK_URL")
    assert len(smtp_server.mails_to(email)) == 2  # only the two requests without a callback
    assert (await user_row(db_url, email))["email_verified"] is False
    assert len(await verification_rows(db_url)) == 2  # neither link was used up
    r = await client.get(verify)
    assert r.status_code == 200, r.text


async def test_trusted_callback_origins(db_url: str, smtp_server: SmtpServer) -> None:
    app_url = "https://app.example.com/verified"
    async with app_client(
        db_url, TRUSTED_ORIGINS="https://app.example.com", **smtp_server.settings()
    ) as client:
        email = unique_email()
        await sign_up(client, email=email)
        r = await client.post(
            f"{AUTH}/send-verification-email", json={"email": email, "callbackURL": app_url}
        )
        assert r.status_code == 200, r.text
        link = only_link(await smtp_server.next_text(email), "verify-email")
        r = await client.get(link)
        assert r.status_code == 302
        assert r.headers["location"] == app_url


# --- REQUIRE_EMAIL_VERIFICATION ------------------------------------------------------------


async def test_require_email_verification(db_url: str, smtp_server: SmtpServer) -> None:
    async with app_client(
        db_url, REQUIRE_EMAIL_VERIFICATION=True, **smtp_server.settings()
    ) as client:
        email = unique_email()
        r = await client.post(
            f"{AUTH}/sign-up/email",
            json={"name": "Ada", "email": email, "password": PASSWORD, "callbackURL": "/home"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["token"] is None
        assert r.json()["user"]["emailVerified"] is False
        assert "set-cookie" not in r.headers
        user_id = r.json()["user"]["id"]
        assert await session_count(db_url, user_id) == 0
        first_link = only_link(await smtp_server.next_text(email), "verify-email")
        assert parse_qs(urlsplit(first_link).query)["callbackURL"] == ["/home"]

        # Signing in before verifying: 403, no session, and a fresh link in the mail.
        r = await sign_in(client, email, PASSWORD)
        assert_error(r, 403, "EMAIL_NOT_VERIFIED")
        assert "set-cookie" not in r.headers
        assert await session_count(db_url, user_id) == 0
        second_link = only_link(await smtp_server.next_text(email), "verify-email")
        assert second_link != first_link
        # A wrong password says nothing about verification and mails nothing.
        assert_error(
            await sign_in(client, email, "wrong password!"), 401, "INVALID_EMAIL_OR_PASSWORD"
        )

        r = await client.get(second_link)
        assert r.status_code == 200, r.text
        r = await sign_in(client, email, PASSWORD)
        assert r.status_code == 200, r.text
        assert r.json()["user"]["emailVerified"] is True
        assert len(smtp_server.mails_to(email)) == 2


# --- change password -----------------------------------------------------------------------


async def test_change_password(client: httpx.AsyncClient, db_url: str) -> None:
    email = unique_email()
    current, user = await sign_up(client, email=email)
    client.cookies.clear()
    other = (await sign_in(client, email, PASSWORD)).json()["token"]
    client.cookies.clear()

    r = await client.post(
        f"{AUTH}/change-password",
        json={"currentPassword": "not my password", "newPassword": NEW_PASSWORD},
        headers=bearer(current),
    )
    assert_error(r, 400, "INVALID_PASSWORD")
    r = await client.post(
        f"{AUTH}/change-password",
        json={"currentPassword": PASSWORD, "newPassword": "short"},
        headers=bearer(current),
    )
    assert_error(r, 400, "PASSWORD_TOO_SHORT")
    assert await session_count(db_url, user["id"]) == 2

    r = await client.post(
        f"{AUTH}/change-password",
        json={"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD},
        headers=bearer(current),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["id"] == user["id"]
    fresh = body["token"]
    assert fresh not in (None, current, other)
    cookie = r.headers.get_list("set-cookie")
    assert any(cookies.encode_cookie_value(fresh, TEST_SECRET) in c for c in cookie)
    # Every old session ended (this one is replaced by a fresh one); the fresh one works.
    rows = await sql(db_url, "SELECT token FROM session WHERE user_id = $1", user["id"])
    assert [row["token"] for row in rows] == [fresh]
    for old in (current, other):
        assert (await client.get(f"{AUTH}/get-session", headers=bearer(old))).json() is None
    r = await client.get(f"{AUTH}/get-session", headers=bearer(fresh))
    assert r.json()["user"]["id"] == user["id"]
    client.cookies.clear()
    assert_error(await sign_in(client, email, PASSWORD), 401, "INVALID_EMAIL_OR_PASSWORD")
    assert (await sign_in(client, email, NEW_PASSWORD)).status_code == 200


async def test_change_password_keeping_other_sessions(
    client: httpx.AsyncClient, db_url: str
) -> None:
    email = unique_email()
    current, user = await sign_up(client, email=email)
    client.cookies.clear()
    other = (await sign_in(client, email, PASSWORD)).json()["token"]
    client.cookies.clear()
    r = await client.post(
        f"{AUTH}/change-password",
        json={
            "currentPassword": PASSWORD,
            "newPassword": NEW_PASSWORD,
            "revokeOtherSessions": False,
        },
        headers=bearer(current),
    )
    assert r.status_code == 200, r.text
    assert r.json()["token"] is None
    assert await session_count(db_url, user["id"]) == 2
    for token in (current, other):
        assert (await client.get(f"{AUTH}/get-session", headers=bearer(token))).json()
    assert (await sign_in(client, email, NEW_PASSWORD)).status_code == 200


# --- mail transport ------------------------------------------------------------------------


async def test_smtp_login_from_settings(db_url: str, smtp_server_with_login: SmtpServer) -> None:
    settings = smtp_server_with_login.settings()
    login = smtp_server_with_login.credentials
    assert login is not None
    assert (settings["SMTP_USERNAME"], settings["SMTP_PASSWORD"]) == login
    async with app_client(db_url, **settings) as client:
        email = unique_email()
        await sign_up(client, email=email)
        client.cookies.clear()
        await client.post(f"{AUTH}/request-password-reset", json={"email": email})
        mail = await smtp_server_with_login.next_mail(email)
        assert mail.login == login[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_failed_delivery_is_logged_without_the_link(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with app_client(
        db_url, SMTP_HOST="127.0.0.1", SMTP_PORT=_closed_port(), SMTP_SECURITY="none"
    ) as client:
        email = unique_email()
        await sign_up(client, email=email)
        client.cookies.clear()
        with caplog.at_level(logging.WARNING, logger="platform_auth.mail"):
            r = await client.post(f"{AUTH}/request-password-reset", json={"email": email})
        assert r.status_code == 200, r.text  # the same answer: nothing leaks
        [row] = await verification_rows(db_url)
        token = row["identifier"].split(":", 1)[1]
        errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert errors, "a failed delivery must be logged"
        assert email in errors[0].getMessage()
        assert token not in caplog.text


async def test_development_writes_mail_to_the_log(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with app_client(db_url, ENVIRONMENT="development") as client:
        email = unique_email()
        await sign_up(client, email=email)
        client.cookies.clear()
        with caplog.at_level(logging.WARNING, logger="platform_auth.mail"):
            r = await client.post(f"{AUTH}/request-password-reset", json={"email": email})
            assert r.status_code == 200, r.text
        logged = [rec.getMessage() for rec in caplog.records if email in rec.getMessage()]
        assert len(logged) == 1
        link = only_link(logged[0], "reset-password/")
        token = urlsplit(link).path.rsplit("/", 1)[1]
        r = await client.post(
            f"{AUTH}/reset-password", json={"newPassword": NEW_PASSWORD, "token": token}
        )
        assert r.status_code == 200, r.text
        assert (await sign_in(client, email, NEW_PASSWORD)).status_code == 200


async def test_production_without_smtp_answers_as_better_auth_without_mail_callbacks(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="platform_auth.mail"):
        async with app_client(db_url, ENVIRONMENT="production", RATE_LIMIT_ENABLED=False) as client:
            email = unique_email()
            token, _ = await sign_up(client, email=email)
            client.cookies.clear()
            for _ in range(2):  # better-auth's status, code and message, every time
                r = await client.post(f"{AUTH}/send-verification-email", json={"email": email})
                assert_error(r, 400, "VERIFICATION_EMAIL_NOT_ENABLED")
                assert r.json()["message"] == "Verification email isn't enabled"
                r = await client.post(f"{AUTH}/request-password-reset", json={"email": email})
                assert_error(r, 400, "RESET_PASSWORD_DISABLED")
                assert r.json()["message"] == "Reset password isn't enabled"
            # Signed in too, and before the session's own checks (as better-auth).
            r = await client.post(
                f"{AUTH}/send-verification-email",
                json={"email": "someone-else@example.com"},
                headers={"authorization": f"Bearer {token}"},
            )
            assert_error(r, 400, "VERIFICATION_EMAIL_NOT_ENABLED")
            # The body is still checked first: a malformed address is the client's error.
            r = await client.post(f"{AUTH}/request-password-reset", json={"email": "nope"})
            assert_error(r, 400, "INVALID_EMAIL")
            r = await client.post(
                f"{AUTH}/request-password-reset",
                json={"email": email, "redirectTo": "https://evil.example/"},
            )
            assert_error(r, 403, "INVALID_CALLBACK_URL")
            assert await verification_rows(db_url) == []
    # Said once, at start-up, with the setting that turns the routes on.
    warnings = [rec.getMessage() for rec in caplog.records if "SMTP_HOST" in rec.getMessage()]
    assert len(warnings) == 1, warnings
    assert "RESET_PASSWORD_DISABLED" in warnings[0]
    assert "VERIFICATION_EMAIL_NOT_ENABLED" in warnings[0]
