"""A signed-in user's sessions and password: list, revoke one, others or all; change password."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from platform_auth.accounts import credential_account, replace_password
from platform_auth.deps import Cache, CurrentSession, Hasher, Settings
from platform_auth.errors import (
    CredentialAccountNotFound,
    InvalidPassword,
    PasswordTooLong,
)
from platform_auth.http import (
    check_password_length,
    clear_session_cookie,
    client_info,
    set_session_cookie,
)
from platform_auth.schemas import (
    ChangePassword,
    ChangePasswordResult,
    RevokeSession,
    SessionRead,
    Status,
    UserRead,
)
from platform_auth.sessions import (
    SessionPolicy,
    create_session,
    list_sessions,
    revoke_user_session,
    revoke_user_sessions,
)
from service_kit.transaction import ReadOrm, WriteOrm

router = APIRouter()


@router.get("/list-sessions", response_model=list[SessionRead])
async def list_my_sessions(ctx: CurrentSession, db: ReadOrm) -> list[SessionRead]:
    """The signed-in user's active sessions, on every device, newest first."""
    return [SessionRead.model_validate(s) for s in await list_sessions(db, ctx.user.id)]


@router.post("/revoke-session", response_model=Status)
async def revoke_one_session(
    body: RevokeSession,
    ctx: CurrentSession,
    db: WriteOrm,
    response: Response,
    settings: Settings,
    cache: Cache,
) -> Status:
    """End one of the signed-in user's sessions (another user's token is ignored)."""
    await revoke_user_session(db, ctx.user.id, body.token, cache=cache)
    if body.token == ctx.session.token:
        clear_session_cookie(response, settings)
    return Status(status=True)


@router.post("/revoke-sessions", response_model=Status)
async def revoke_all_sessions(
    ctx: CurrentSession, db: WriteOrm, response: Response, settings: Settings, cache: Cache
) -> Status:
    """End every session of the signed-in user, this one included."""
    await revoke_user_sessions(db, ctx.user.id, cache=cache)
    clear_session_cookie(response, settings)
    return Status(status=True)


@router.post("/revoke-other-sessions", response_model=Status)
async def revoke_other_sessions(ctx: CurrentSession, db: WriteOrm, cache: Cache) -> Status:
    """End every session of the signed-in user except this one."""
    await revoke_user_sessions(db, ctx.user.id, keep_token=ctx.session.token, cache=cache)
    return Status(status=True)


@router.post(
    "/change-password",
    response_model=ChangePasswordResult,
)
async def change_password(
    body: ChangePassword,
    ctx: CurrentSession,
    request: Request,
    response: Response,
    db: WriteOrm,
    settings: Settings,
    hasher: Hasher,
    cache: Cache,
) -> ChangePasswordResult:
    """Change the password (the current one is required); other sessions end by default."""
    check_password_length(body.new_password)
    if len(body.current_password) > 128:
        raise PasswordTooLong()
    account = await credential_account(db, ctx.user.id)
    if account is None or not account.password:
        raise CredentialAccountNotFound()
    current = account.password
    if not await hasher.verify(current, body.current_password):
        raise InvalidPassword()
    # Compare and set, holding the row until commit: a reset or another change that
    # committed meanwhile wins, and none can slip in before the new session below.
    if not await replace_password(db, ctx.user.id, current, await hasher.hash(body.new_password)):
        raise InvalidPassword()
    token: str | None = None
    if body.revoke_other_sessions:
        # As better-auth: every session ends, this one too, and a fresh one replaces it, so a
        # token that leaked with the old password is useless.
        await revoke_user_sessions(db, ctx.user.id, cache=cache)
        ip, agent = client_info(request)
        policy = SessionPolicy.from_settings(settings)
        remember = not policy.is_short(ctx.session)  # a browser-session login stays one
        session = await create_session(
            db, ctx.user.id, policy, ip_address=ip, user_agent=agent, remember_me=remember
        )
        set_session_cookie(response, settings, session, remember_me=remember, request=request)
        token = session.token
    return ChangePasswordResult(token=token, user=UserRead.model_validate(ctx.user))
