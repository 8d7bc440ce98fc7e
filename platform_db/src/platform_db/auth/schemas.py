"""Request and response bodies of the auth routes, in better-auth's shapes."""

from __future__ import annotations

from pydantic import Field

from platform_db.schemas import ApiModel, Timestamp


class UserRead(ApiModel):
    id: str
    name: str
    email: str
    email_verified: bool
    image: str | None
    created_at: Timestamp
    updated_at: Timestamp


class SessionRead(ApiModel):
    id: str
    token: str
    user_id: str
    expires_at: Timestamp
    ip_address: str | None
    user_agent: str | None
    created_at: Timestamp
    updated_at: Timestamp


class SignUpEmail(ApiModel):
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)
    image: str | None = Field(default=None, max_length=2048)
    callback_url: str | None = Field(default=None, alias="callbackURL", max_length=2048)
    remember_me: bool = True


class SignInEmail(ApiModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)
    callback_url: str | None = Field(default=None, alias="callbackURL", max_length=2048)
    remember_me: bool = True


class SignUpResult(ApiModel):
    token: str | None
    user: UserRead


class SignInResult(ApiModel):
    redirect: bool
    token: str
    # better-auth leaves `url` out rather than sending null.
    url: str | None = Field(default=None, exclude_if=lambda v: v is None)
    user: UserRead


class SessionWithUser(ApiModel):
    session: SessionRead
    user: UserRead


class Success(ApiModel):
    success: bool


class Status(ApiModel):
    status: bool


class StatusMessage(ApiModel):
    status: bool
    message: str


class RevokeSession(ApiModel):
    token: str = Field(max_length=512)


class ChangePassword(ApiModel):
    new_password: str = Field(max_length=4096)
    current_password: str = Field(max_length=4096)
    # better-auth defaults this to false; we default to true: a changed password usually
    # means the old one may be known to someone else.
    revoke_other_sessions: bool = True


class ChangePasswordResult(ApiModel):
    token: str | None
    user: UserRead


class SendVerificationEmail(ApiModel):
    email: str = Field(max_length=320)
    callback_url: str | None = Field(default=None, alias="callbackURL", max_length=2048)


class VerifyEmailResult(ApiModel):
    status: bool
    user: UserRead | None = None


class RequestPasswordReset(ApiModel):
    email: str = Field(max_length=320)
    redirect_to: str | None = Field(default=None, max_length=2048)


class ResetPassword(ApiModel):
    new_password: str = Field(max_length=4096)
    token: str | None = Field(default=None, max_length=512)


class ResetToken(ApiModel):
    token: str
