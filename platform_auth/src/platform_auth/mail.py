"""Mail delivery for verification and password-reset links.

SMTP when `SMTP_HOST` is set. Without it, development writes each mail to the log (so a
developer can click the link; the only place a token is ever logged); elsewhere the mail
routes answer as better-auth does without its mail callbacks (400 RESET_PASSWORD_DISABLED,
400 VERIFICATION_EMAIL_NOT_ENABLED) instead of dropping the message.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib

from platform_auth.settings import MailSettings

log = logging.getLogger(__name__)


MAX_NAME_IN_MAIL = 64


def display_name(name: str) -> str:
    """A user's name as it may appear in a mail: no control or format characters (no line
    breaks, no bidi overrides), whitespace folded, at most MAX_NAME_IN_MAIL characters."""
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in name
        if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
    )
    folded = " ".join(kept.split())
    if len(folded) > MAX_NAME_IN_MAIL:
        folded = folded[: MAX_NAME_IN_MAIL - 1].rstrip() + "…"
    return folded or "there"


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str


class Mailer(Protocol):
    configured: bool

    async def send(self, mail: Mail) -> None: ...


class SmtpMailer:
    configured = True

    def __init__(self, settings: MailSettings) -> None:
        assert settings.smtp_host is not None
        self.settings = settings

    def _message(self, mail: Mail) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.settings.mail_from
        msg["To"] = mail.to
        msg["Subject"] = mail.subject
        msg.set_content(mail.text)
        return msg

    async def send(self, mail: Mail) -> None:
        s = self.settings
        security = s.smtp_security
        port = s.smtp_port or {"tls": 465, "starttls": 587, "none": 25}[security]
        await aiosmtplib.send(
            self._message(mail),
            hostname=s.smtp_host,
            port=port,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            use_tls=security == "tls",
            start_tls=security == "starttls",
            timeout=s.smtp_timeout,
        )


class LogMailer:
    """Development only: the mail, link included, goes to the log."""

    configured = True

    async def send(self, mail: Mail) -> None:
        log.warning(
            "SMTP_HOST is not set; mail to %s written here instead:\nSubject: %s\n\n%s",
            mail.to,
            mail.subject,
            mail.text,
        )


class NoMailer:
    configured = False

    async def send(self, mail: Mail) -> None:
        raise RuntimeError("mail is not configured")


def create_mailer(settings: MailSettings, environment: str) -> Mailer:
    if settings.smtp_host:
        return SmtpMailer(settings)
    if environment == "development":
        return LogMailer()
    log.warning(
        "SMTP_HOST is not set: mail is off, so request-password-reset answers 400 "
        "RESET_PASSWORD_DISABLED and send-verification-email 400 VERIFICATION_EMAIL_NOT_ENABLED; "
        "set SMTP_HOST (and AUTH_URL) to enable them"
    )
    return NoMailer()


async def deliver(mailer: Mailer, mail: Mail) -> None:
    """Send after the response (a background task): failures are logged, never raised."""
    try:
        await mailer.send(mail)
    except Exception as exc:
        # The mail holds a token: log where it failed, not what it said.
        log.error("could not send mail %r to %s: %s", mail.subject, mail.to, type(exc).__name__)
