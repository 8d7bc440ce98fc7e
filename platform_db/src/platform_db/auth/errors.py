"""better-auth's error codes, status codes and messages."""

from __future__ import annotations

from platform_db.errors import AppError, Unauthorized


class UserAlreadyExists(AppError):
    status_code = 422
    code = "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL"
    message = "User already exists. Use another email."


class InvalidEmailOrPassword(AppError):
    status_code = 401
    code = "INVALID_EMAIL_OR_PASSWORD"
    message = "Invalid email or password"


class InvalidEmail(AppError):
    status_code = 400
    code = "INVALID_EMAIL"
    message = "Invalid email"


class PasswordTooShort(AppError):
    status_code = 400
    code = "PASSWORD_TOO_SHORT"
    message = "Password too short"


class PasswordTooLong(AppError):
    status_code = 400
    code = "PASSWORD_TOO_LONG"
    message = "Password too long"


class InvalidToken(AppError):
    status_code = 400
    code = "INVALID_TOKEN"
    message = "Invalid token"


class FailedToGetSession(AppError):
    status_code = 400
    code = "FAILED_TO_GET_SESSION"
    message = "Failed to get session"


class InvalidOrigin(AppError):
    status_code = 403
    code = "INVALID_ORIGIN"
    message = "Invalid origin"


class MissingOrigin(AppError):
    status_code = 403
    code = "MISSING_OR_NULL_ORIGIN"
    message = "Missing or null Origin"


__all__ = [
    "FailedToGetSession",
    "InvalidEmail",
    "InvalidEmailOrPassword",
    "InvalidOrigin",
    "InvalidToken",
    "MissingOrigin",
    "PasswordTooLong",
    "PasswordTooShort",
    "Unauthorized",
    "UserAlreadyExists",
]
