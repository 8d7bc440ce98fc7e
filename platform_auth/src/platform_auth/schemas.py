"""Request and response bodies of the auth routes, in better-auth's shapes."""

from __future__ import annotations

from pydantic import ConfigDict, Field
from pydantic.config import JsonDict

from service_kit.schemas import ApiModel, Timestamp

# Checked by the routes themselves (better-auth's 400 codes, not a 422), documented here:
# the address as normalize_email accepts it, a new password's length.
_WS = r" \t\n\r\f\v"
_PART = rf"[^{_WS}@\x00]+"
EMAIL_DOC: JsonDict = {"maxLength": 254, "pattern": rf"^[{_WS}]*{_PART}@{_PART}\.{_PART}[{_WS}]*$"}
NEW_PASSWORD_DOC: JsonDict = {"minLength": 8, "maxLength": 128}
# What the user row stores: Postgres text holds no NUL, so one is a validation error (422),
# not a database error.
_STORABLE = r"^[^\x00]*$"


class _Input(ApiModel):
    # strict: JSON types as documented (better-auth's zod schemas are strict too)
    model_config = ConfigDict(strict=True)


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


class SignUpEmail(_Input):
    name: str = Field(min_length=1, max_length=200, pattern=_STORABLE)
    email: str = Field(max_length=320, json_schema_extra=EMAIL_DOC)
    password: str = Field(max_length=4096, json_schema_extra=NEW_PASSWORD_DOC)
    image: str | None = Field(default=None, max_length=2048, pattern=_STORABLE)
    callback_url: str | None = Field(default=None, alias="callbackURL", max_length=2048)
    remember_me: bool = True


class SignInEmail(_Input):
    email: str = Field(max_length=320, json_schema_extra=EMAIL_DOC)
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


class RevokeSession(_Input):
    token: str = Field(max_length=512)


class ChangePassword(_Input):
    new_password: str = Field(max_length=4096, json_schema_extra=NEW_PASSWORD_DOC)
    current_password: str = Field(max_length=4096)
    # better-auth defaults this to false; we default to true: a changed password usually
    # means the old one may be known to someone else.
    revoke_other_sessions: bool = True


class ChangePasswordResult(ApiModel):
    token: str | None
    user: UserRead


class SendVerificationEmail(_Input):
    email: str = Field(max_length=320, json_schema_extra=EMAIL_DOC)
    callback_url: str | None = Field(default=None, alias="callbackURL", max_length=2048)


class VerifyEmailResult(ApiModel):
    status: bool
    user: UserRead | None = None


class RequestPasswordReset(_Input):
    email: str = Field(max_length=320, json_schema_extra=EMAIL_DOC)
    redirect_to: str | None = Field(default=None, max_length=2048)


class ResetPassword(_Input):
    new_password: str = Field(max_length=4096, json_schema_extra=NEW_PASSWORD_DOC)
    token: str | None = Field(default=None, max_length=512)


class ResetToken(ApiModel):
    token: str
