"""Email verification and password reset, with single-use tokens in the `verification` table.

Mail is sent after the response, once the transaction holding its token has committed, so
the answer (and its timing) does not tell whether an address has an account.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, BackgroundTasks, Query, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from platform_auth import verification
from platform_auth.accounts import find_user_by_email, mark_email_verified, set_password
from platform_auth.deps import Cache, Hasher, MailerDep, OptionalAuth, Settings
from platform_auth.errors import (
    EmailAlreadyVerified,
    EmailMismatch,
    InvalidToken,
    ResetPasswordDisabled,
    TokenExpired,
    VerificationEmailNotEnabled,
)
from platform_auth.http import (
    base_url,
    callback_target,
    check_password_length,
    normalize_email,
)
from platform_auth.mail import Mail, Mailer, deliver, display_name
from platform_auth.schemas import (
    RequestPasswordReset,
    ResetPassword,
    ResetToken,
    SendVerificationEmail,
    Status,
    StatusMessage,
    VerifyEmailResult,
)
from platform_auth.sessions import revoke_user_sessions
from platform_auth.settings import AuthSettings
from platform_db.models import User
from service_kit.db import Database
from service_kit.errors import AppError
from service_kit.state import kit_state
from service_kit.transaction import WriteOrm
from service_kit.urls import Redirect, RedirectTarget

log = logging.getLogger(__name__)
router = APIRouter()

RESET_MESSAGE = "If this email exists in our system, check your email for the reset link"


def _mail_with_callback(link: str, callback: RedirectTarget | None) -> str:
    if callback is None:
        return link
    sep = "&" if "?" in link else "?"
    return f"{link}{sep}callbackURL={quote(callback.url(), safe='')}"


async def verification_mail(
    db: AsyncSession,
    settings: AuthSettings,
    links: str,
    user: User,
    callback: RedirectTarget | None,
) -> Mail:
    """Issue a verification token for `user`; the mail carrying its link (`links`: base_url)."""
    token = await verification.issue(
        db,
        verification.EMAIL_VERIFICATION,
        user.id,
        timedelta(seconds=settings.email_verification_expires_in),
        length=32,
    )
    link = _mail_with_callback(f"{links}/verify-email?token={token}", callback)
    text = (
        f"Hello {display_name(user.name)},\n\nOpen this link to verify your email address:\n"
        f"{link}\n\nIf you did not sign up, ignore this mail.\n"
    )
    return Mail(user.email, "Verify your email address", text)


async def send_verification_mail(
    db: AsyncSession,
    background: BackgroundTasks,
    mailer: Mailer,
    request: Request,
    settings: AuthSettings,
    user: User,
    callback: RedirectTarget | None,
) -> None:
    """Issue a verification token for `user` and mail its link once the request commits."""
    mail = await verification_mail(db, settings, base_url(request, settings), user, callback)
    background.add_task(deliver, mailer, mail)


async def _after_response(
    database: Database, mailer: Mailer, prepare: Callable[[AsyncSession], Awaitable[Mail | None]]
) -> None:
    """Look up, write and mail after the answer has gone, in a transaction of its own.

    So the answer takes the same work whether or not the address has an account: nothing
    about the account is read or written before it.
    """
    try:
        async with database.write_sessionmaker() as db, db.begin():
            mail = await prepare(db)
    except Exception as exc:
        log.error("could not prepare mail: %s", type(exc).__name__)
        return
    if mail is not None:
        await deliver(mailer, mail)


def _database(request: Request) -> Database:
    return kit_state(request.app).database


@router.post(
    "/send-verification-email",
    response_model=Status,
    openapi_extra={"security": [{}]},  # a session is optional
)
async def send_verification_email(
    body: SendVerificationEmail,
    request: Request,
    background: BackgroundTasks,
    ctx: OptionalAuth,
    settings: Settings,
    mailer: MailerDep,
) -> Status:
    """Mail a verification link; without a session the answer is the same for any address."""
    email = normalize_email(body.email)
    callback = callback_target(body.callback_url, request, settings)
    if not mailer.configured:  # as better-auth without sendVerificationEmail
        raise VerificationEmailNotEnabled()
    if ctx is not None:
        if ctx.user.email != email:
            raise EmailMismatch()
        if ctx.user.email_verified:
            raise EmailAlreadyVerified()
    links = base_url(request, settings)

    async def prepare(db: AsyncSession) -> Mail | None:
        user = await find_user_by_email(db, email)
        if user is None or user.email_verified:
            return None
        return await verification_mail(db, settings, links, user, callback)

    background.add_task(_after_response, _database(request), mailer, prepare)
    return Status(status=True)


def _fail(error: type[AppError], callback: RedirectTarget | None) -> Redirect:
    if callback is not None:
        return Redirect(callback, error=error.code)
    raise error()


@router.get(
    "/verify-email",
    response_model=VerifyEmailResult,
    responses={302: {"description": "To callbackURL, with ?error=CODE on failure"}},
)
async def verify_email(
    request: Request,
    db: WriteOrm,
    settings: Settings,
    cache: Cache,
    token: Annotated[str, Query(max_length=4096)],
    callback_url: Annotated[str | None, Query(alias="callbackURL", max_length=2048)] = None,
) -> VerifyEmailResult | Redirect:
    """Mark the address verified with the token from the mail (ours, or a better-auth app's)."""
    callback = callback_target(callback_url, request, settings)
    user_id: str | None = None
    used = await verification.consume(db, verification.EMAIL_VERIFICATION, token)
    if used is not None:
        if used.expired:
            return _fail(TokenExpired, callback)
        user_id = used.value
    else:
        secret = settings.auth_secret.get_secret_value()
        try:
            claims = verification.verify_better_auth_jwt(token, secret)
        except verification.JwtExpired:
            return _fail(TokenExpired, callback)
        # A change-email token (updateTo) is a flow we do not offer: refuse it.
        if (
            claims is not None
            and isinstance(claims.get("email"), str)
            and not claims.get("updateTo")
        ):
            found = await db.execute(
                select(col(User.id)).where(col(User.email) == claims["email"].lower())
            )
            user_id = found.scalar_one_or_none()
            if claims.get("userId") not in (None, user_id):
                user_id = None
    if user_id is None or not await mark_email_verified(db, user_id, cache=cache):
        return _fail(InvalidToken, callback)
    if callback is not None:
        return Redirect(callback)
    return VerifyEmailResult(status=True, user=None)


@router.post(
    "/request-password-reset",
    response_model=StatusMessage,
)
async def request_password_reset(
    body: RequestPasswordReset,
    request: Request,
    background: BackgroundTasks,
    settings: Settings,
    mailer: MailerDep,
) -> StatusMessage:
    """Mail a one-hour reset link; the answer is the same whether the address has an account."""
    email = normalize_email(body.email)
    callback = callback_target(body.redirect_to, request, settings)
    if not mailer.configured:  # as better-auth without sendResetPassword
        raise ResetPasswordDisabled()
    links = base_url(request, settings)

    async def prepare(db: AsyncSession) -> Mail | None:
        user = await find_user_by_email(db, email)
        if user is None:
            return None
        token = await verification.issue(
            db,
            verification.RESET_PASSWORD,
            user.id,
            timedelta(seconds=settings.reset_password_expires_in),
        )
        link = _mail_with_callback(f"{links}/reset-password/{token}", callback)
        text = (
            f"Hello {display_name(user.name)},\n\nOpen this link to choose a new password:\n"
            f"{link}\n\nIt works once, for one hour. If you did not ask for it, ignore this "
            "mail.\n"
        )
        return Mail(user.email, "Reset your password", text)

    background.add_task(_after_response, _database(request), mailer, prepare)
    return StatusMessage(status=True, message=RESET_MESSAGE)


@router.get(
    "/reset-password/{token}",
    response_model=ResetToken,
    responses={302: {"description": "To callbackURL with ?token=..., or ?error=INVALID_TOKEN"}},
)
async def reset_password_link(
    token: str,
    request: Request,
    db: WriteOrm,
    settings: Settings,
    callback_url: Annotated[str | None, Query(alias="callbackURL", max_length=2048)] = None,
) -> ResetToken | Redirect:
    """The link in the reset mail: on to the app's reset page with the token, if it is live."""
    callback = callback_target(callback_url, request, settings)
    if not await verification.peek(db, verification.RESET_PASSWORD, token):
        return _fail(InvalidToken, callback)
    if callback is not None:
        return Redirect(callback, token=token)
    return ResetToken(token=token)


@router.post(
    "/reset-password",
    response_model=Status,
)
async def reset_password(
    body: ResetPassword,
    db: WriteOrm,
    hasher: Hasher,
    cache: Cache,
    token_query: Annotated[str | None, Query(alias="token", max_length=512)] = None,
) -> Status:
    """Set a new password with a reset token (single use); every session of the user ends."""
    token = body.token or token_query
    if not token:
        raise InvalidToken()
    check_password_length(body.new_password)
    used = await verification.consume(db, verification.RESET_PASSWORD, token)
    if used is None or used.expired:
        raise InvalidToken()
    user = await db.get(User, used.value)
    if user is None:
        raise InvalidToken()
    await set_password(db, user.id, await hasher.hash(body.new_password))
    await revoke_user_sessions(db, user.id, cache=cache)
    return Status(status=True)
