"""A real SMTP server (aiosmtpd) in the test's own event loop, collecting every message it gets.

Use it from a test module with `pytest_plugins = ("tests.smtp",)` and the `smtp_server`
fixture; `smtp_server.settings()` are the SMTP_* settings that point an app at it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
MAIL_FROM = "Accounts <accounts@example.com>"
_LINK = re.compile(r"https?://\S+")


@dataclass(frozen=True)
class ReceivedMail:
    """One message as the server received it."""

    envelope_from: str
    recipients: tuple[str, ...]
    message: EmailMessage
    login: str | None  # the SMTP AUTH user the client logged in as, if any

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        """The decoded text/plain body (transfer encodings such as quoted-printable undone)."""
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None, "the message has no text/plain body"
        assert isinstance(part, EmailMessage)
        content = part.get_content()
        assert isinstance(content, str)
        return content

    def links(self) -> list[str]:
        return _LINK.findall(self.text)


@dataclass
class _Sink:
    """The aiosmtpd handler: keeps every accepted message."""

    credentials: tuple[str, str] | None = None
    received: list[ReceivedMail] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        auth: Any = session.auth_data  # a LoginPassword after a successful AUTH
        login = auth.login.decode() if session.authenticated else None
        if self.credentials is not None and login is None:
            return "530 5.7.0 Authentication required"
        self.received.append(
            ReceivedMail(
                envelope_from=envelope.mail_from or "",
                recipients=tuple(envelope.rcpt_tos),
                message=message,
                login=login,
            )
        )
        self.arrived.set()
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            self.credentials is not None
            and isinstance(data, LoginPassword)
            and (data.login.decode(), data.password.decode()) == self.credentials
        )
        return AuthResult(success=ok, auth_data=data if ok else None)


class SmtpServer:
    """A running SMTP server on a free port of 127.0.0.1."""

    def __init__(self, sink: _Sink, port: int) -> None:
        self._sink = sink
        self.host = HOST
        self.port = port
        self._taken: dict[str, int] = {}

    @property
    def mail_from(self) -> str:
        return MAIL_FROM

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The SMTP AUTH login the server demands, if any."""
        return self._sink.credentials

    def settings(self) -> dict[str, object]:
        """Settings that make an app deliver its mail here (plain SMTP, no TLS)."""
        values: dict[str, object] = {
            "SMTP_HOST": self.host,
            "SMTP_PORT": self.port,
            "SMTP_SECURITY": "none",
            "SMTP_TIMEOUT": 5,
            "MAIL_FROM": MAIL_FROM,
        }
        if self._sink.credentials is not None:
            values["SMTP_USERNAME"], values["SMTP_PASSWORD"] = self._sink.credentials
        return values

    @property
    def received(self) -> list[ReceivedMail]:
        return list(self._sink.received)

    def mails_to(self, address: str) -> list[ReceivedMail]:
        address = address.lower()
        return [m for m in self._sink.received if address in (r.lower() for r in m.recipients)]

    async def next_mail(self, address: str, within: float = 5.0) -> ReceivedMail:
        """The next message to `address` not returned before; waits at most `within` s."""
        key = address.lower()

        async def wait() -> ReceivedMail:
            while True:
                self._sink.arrived.clear()
                mails = self.mails_to(address)
                seen = self._taken.get(key, 0)
                if len(mails) > seen:
                    self._taken[key] = seen + 1
                    return mails[seen]
                await self._sink.arrived.wait()

        try:
            return await asyncio.wait_for(wait(), within)
        except TimeoutError:
            raise AssertionError(
                f"no new mail to {address} within {within} s; "
                f"received so far: {[m.recipients for m in self._sink.received]}"
            ) from None

    async def next_text(self, address: str, within: float = 5.0) -> str:
        """The decoded text body of the next message to `address`."""
        return (await self.next_mail(address, within)).text


async def _serve(credentials: tuple[str, str] | None) -> AsyncIterator[SmtpServer]:
    sink = _Sink(credentials=credentials)
    loop = asyncio.get_running_loop()

    def protocol() -> SMTP:
        return SMTP(
            sink,
            hostname="mail.test",
            loop=loop,
            authenticator=sink.authenticate if credentials else None,
            auth_require_tls=False,
        )

    server = await loop.create_server(protocol, HOST, 0)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield SmtpServer(sink, port)
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def smtp_server() -> AsyncIterator[SmtpServer]:
    """An open SMTP server (no login) collecting mail for one test."""
    async for server in _serve(None):
        yield server


SMTP_LOGIN = ("mailer", "mail-password-123")


@pytest.fixture
async def smtp_server_with_login() -> AsyncIterator[SmtpServer]:
    """An SMTP server that accepts mail only after AUTH with `SMTP_LOGIN`."""
    async for server in _serve(SMTP_LOGIN):
        yield server
