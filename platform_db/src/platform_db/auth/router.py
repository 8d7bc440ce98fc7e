"""better-auth's email and password routes, mounted by every service under /api/auth."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from platform_db.auth import cookies
from platform_db.auth.deps import Hasher, OptionalAuth, Settings, _bearer, session_token
from platform_db.auth.errors import (
    FailedToGetSession,
    InvalidEmail,
    InvalidEmailOrPassword,
    PasswordTooLong,
    PasswordTooShort,
    UserAlreadyExists,
)
from platform_db.auth.passwords import MAX_LENGTH, MIN_LENGTH
from platform_db.auth.schemas import (
    SessionWithUser,
    SignInEmail,
    SignInResult,
    SignUpEmail,
    SignUpResult,
    Success,
    UserRead,
)
from platform_db.auth.sessions import SessionPolicy, create_session, revoke_session
from platform_db.auth.tokens import generate_id
from platform_db.db import DbSession
from platform_db.errors import responses
from platform_db.models import Account, Session, User
from platform_db.settings import AuthSettings
from platform_db.types import utcnow

router = APIRouter(prefix="/api/auth", tags=["auth"])

CREDENTIAL_PROVIDER = "credential"
_EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$")


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        raise InvalidEmail()
    return email


def check_password_length(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordTooShort()
    if len(password) > MAX_LENGTH:
        raise PasswordTooLong()


def set_session_cookie(
    response: Response, settings: AuthSettings, session: Session, *, remember_me: bool = True
) -> None:
    response.set_cookie(
        settings.session_cookie_name,
        cookies.encode_cookie_value(session.token, settings.auth_secret.get_secret_value()),
        max_age=settings.session_expires_in if remember_me else None,
        path="/",
        domain=settings.cookie_domain,
        secure=settings.secure_cookies,
        httponly=True,
        samesite="lax",
    )


def clear_session_cookie(response: Response, settings: AuthSettings) -> None:
    response.delete_cookie(
        settings.session_cookie_name,
        path="/",
        domain=settings.cookie_domain,
        secure=settings.secure_cookies,
        httponly=True,
        samesite="lax",
    )


def _client(request: Request) -> tuple[str | None, str | None]:
    ip = request.client.host if request.client else None
    return ip, request.headers.get("user-agent")


@router.post(
    "/sign-up/email",
    response_model=SignUpResult,
    responses=responses(InvalidEmail, PasswordTooShort, PasswordTooLong, UserAlreadyExists),
)
async def sign_up_email(
    body: SignUpEmail,
    request: Request,
    response: Response,
    db: DbSession,
    settings: Settings,
    hasher: Hasher,
) -> SignUpResult:
    """Create a user with an email and password, and sign them in."""
    email = normalize_email(body.email)
    check_password_length(body.password)
    if (await db.execute(select(col(User.id)).where(col(User.email) == email))).first() is not None:
        raise UserAlreadyExists()
    password_hash = await hasher.hash(body.password)
    now = utcnow()
    user = User(
        id=generate_id(), name=body.name.strip(), email=email, image=body.image,
        created_at=now, updated_at=now,
    )  # fmt: skip
    db.add(user)
    try:
        await db.flush()
    except IntegrityError:  # a concurrent sign-up with the same email won the race
        raise UserAlreadyExists() from None
    db.add(
        Account(
            id=generate_id(), account_id=user.id, provider_id=CREDENTIAL_PROVIDER,
            user_id=user.id, password=password_hash, created_at=now, updated_at=now,
        )
    )  # fmt: skip
    ip, agent = _client(request)
    session = await create_session(
        db, user.id, SessionPolicy.from_settings(settings),
        ip_address=ip, user_agent=agent, remember_me=body.remember_me,
    )  # fmt: skip
    set_session_cookie(response, settings, session, remember_me=body.remember_me)
    return SignUpResult(token=session.token, user=UserRead.model_validate(user))


@router.post(
    "/sign-in/email",
    response_model=SignInResult,
    responses=responses(InvalidEmail, InvalidEmailOrPassword),
)
async def sign_in_email(
    body: SignInEmail,
    request: Request,
    response: Response,
    db: DbSession,
    settings: Settings,
    hasher: Hasher,
) -> SignInResult:
    """Sign in with an email and password; the session comes back as a cookie and a token."""
    email = normalize_email(body.email)
    row = (
        await db.execute(
            select(User, col(Account.password))
            .outerjoin(
                Account,
                (col(Account.user_id) == col(User.id))
                & (col(Account.provider_id) == CREDENTIAL_PROVIDER),
            )
            .where(col(User.email) == email)
        )
    ).first()
    stored = row[1] if row is not None else None
    # Unknown email: verify against a dummy hash so both cases cost the same.
    if not await hasher.verify(stored, body.password) or row is None:
        raise InvalidEmailOrPassword()
    user: User = row[0]
    ip, agent = _client(request)
    session = await create_session(
        db, user.id, SessionPolicy.from_settings(settings),
        ip_address=ip, user_agent=agent, remember_me=body.remember_me,
    )  # fmt: skip
    set_session_cookie(response, settings, session, remember_me=body.remember_me)
    return SignInResult(
        redirect=body.callback_url is not None,
        token=session.token,
        url=body.callback_url,
        user=UserRead.model_validate(user),
    )


@router.post("/sign-out", response_model=Success, responses=responses(FailedToGetSession))
async def sign_out(
    request: Request,
    response: Response,
    db: DbSession,
    settings: Settings,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Success:
    """End the current session, in every service at once."""
    token = session_token(request, settings, bearer)
    if token is None:
        raise FailedToGetSession()
    await revoke_session(db, token)
    clear_session_cookie(response, settings)
    return Success(success=True)


@router.get("/get-session", response_model=SessionWithUser | None)
async def get_session(
    ctx: OptionalAuth, response: Response, settings: Settings
) -> SessionWithUser | None:
    """The current session and its user, or null when signed out."""
    if ctx is None:
        return None
    if ctx.refreshed:
        set_session_cookie(response, settings, ctx.session)
    return SessionWithUser.model_validate({"session": ctx.session, "user": ctx.user})
