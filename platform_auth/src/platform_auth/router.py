"""better-auth's email and password routes, mounted by every service under /api/auth."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from platform_auth.accounts import (
    CREDENTIAL_PROVIDER,
    new_credential_account,
    password_is_current,
)
from platform_auth.deps import (
    Cache,
    Hasher,
    MailerDep,
    OptionalAuth,
    Settings,
    _bearer,
    session_token,
)
from platform_auth.email_routes import router as email_router
from platform_auth.email_routes import send_verification_mail
from platform_auth.errors import (
    EmailNotVerified,
    FailedToGetSession,
    InvalidEmailOrPassword,
    UserAlreadyExists,
)
from platform_auth.http import (
    callback_target,
    check_password_length,
    clear_session_cookie,
    client_info,
    normalize_email,
    set_session_cookie,
)
from platform_auth.schemas import (
    SessionWithUser,
    SignInEmail,
    SignInResult,
    SignUpEmail,
    SignUpResult,
    Success,
    UserRead,
)
from platform_auth.session_routes import router as session_router
from platform_auth.sessions import SessionPolicy, create_session, revoke_session
from platform_auth.tokens import generate_id
from platform_db.models import Account, User
from service_kit.errors import error_response
from service_kit.transaction import WriteOrm
from service_kit.types import utcnow

__all__ = [
    "CREDENTIAL_PROVIDER",
    "check_password_length",
    "clear_session_cookie",
    "normalize_email",
    "router",
    "set_session_cookie",
]

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post(
    "/sign-up/email",
    response_model=SignUpResult,
)
async def sign_up_email(
    body: SignUpEmail,
    request: Request,
    response: Response,
    background: BackgroundTasks,
    db: WriteOrm,
    settings: Settings,
    hasher: Hasher,
    mailer: MailerDep,
) -> SignUpResult:
    """Create a user with an email and password and sign them in (unless they must verify)."""
    email = normalize_email(body.email)
    check_password_length(body.password)
    callback = callback_target(body.callback_url, request, settings)
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
    db.add(new_credential_account(user.id, password_hash))
    if settings.require_email_verification:
        # No session until the address is proven; the mail goes out after the commit.
        if mailer.configured:
            await send_verification_mail(db, background, mailer, request, settings, user, callback)
        return SignUpResult(token=None, user=UserRead.model_validate(user))
    ip, agent = client_info(request)
    session = await create_session(
        db, user.id, SessionPolicy.from_settings(settings),
        ip_address=ip, user_agent=agent, remember_me=body.remember_me,
    )  # fmt: skip
    set_session_cookie(response, settings, session, remember_me=body.remember_me, request=request)
    return SignUpResult(token=session.token, user=UserRead.model_validate(user))


@router.post(
    "/sign-in/email",
    response_model=SignInResult,
)
async def sign_in_email(
    body: SignInEmail,
    request: Request,
    response: Response,
    background: BackgroundTasks,
    db: WriteOrm,
    settings: Settings,
    hasher: Hasher,
    mailer: MailerDep,
) -> SignInResult | JSONResponse:
    """Sign in with an email and password; the session comes back as a cookie and a token."""
    email = normalize_email(body.email)
    callback = callback_target(body.callback_url, request, settings)
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
    if not await hasher.verify(stored, body.password) or row is None or stored is None:
        raise InvalidEmailOrPassword()
    user: User = row[0]
    # A reset or change that committed while scrypt ran has ended this password.
    if not await password_is_current(db, user.id, stored):
        raise InvalidEmailOrPassword()
    if settings.require_email_verification and not user.email_verified:
        if mailer.configured:
            await send_verification_mail(db, background, mailer, request, settings, user, callback)
        # Returned, not raised: the transaction must commit the token the mail carries.
        err = EmailNotVerified()
        return error_response(err.status_code, err.code, err.detail)
    ip, agent = client_info(request)
    session = await create_session(
        db, user.id, SessionPolicy.from_settings(settings),
        ip_address=ip, user_agent=agent, remember_me=body.remember_me,
    )  # fmt: skip
    set_session_cookie(response, settings, session, remember_me=body.remember_me, request=request)
    return SignInResult(
        redirect=callback is not None,
        token=session.token,
        url=callback.url() if callback is not None else None,
        user=UserRead.model_validate(user),
    )


# A session is optional here: `{}` beside the bearer scheme says so in OpenAPI.
OPTIONAL_AUTH: dict[str, Any] = {"security": [{}]}


@router.post(
    "/sign-out",
    response_model=Success,
    openapi_extra=OPTIONAL_AUTH,
)
async def sign_out(
    request: Request,
    response: Response,
    db: WriteOrm,
    settings: Settings,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cache: Cache,
) -> Success:
    """End the current session, in every service at once."""
    token = session_token(request, settings, bearer)
    if token is None:
        raise FailedToGetSession()
    await revoke_session(db, token, cache=cache)
    clear_session_cookie(response, settings)
    return Success(success=True)


@router.get("/get-session", response_model=SessionWithUser | None, openapi_extra=OPTIONAL_AUTH)
async def get_session(ctx: OptionalAuth) -> SessionWithUser | None:
    """The current session and its user, or null when signed out (a slid session's cookie too)."""
    if ctx is None:
        return None
    return SessionWithUser.model_validate({"session": ctx.session, "user": ctx.user})


router.include_router(session_router)
router.include_router(email_router)
