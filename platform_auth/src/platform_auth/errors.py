"""better-auth's error codes, status codes and messages."""

from __future__ import annotations

from service_kit.errors import AppError, HeaderDoc, Unauthorized


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


class EmailNotVerified(AppError):
    status_code = 403
    code = "EMAIL_NOT_VERIFIED"
    message = "Email not verified"


class InvalidPassword(AppError):
    status_code = 400
    code = "INVALID_PASSWORD"
    message = "Invalid password"


class CredentialAccountNotFound(AppError):
    status_code = 400
    code = "CREDENTIAL_ACCOUNT_NOT_FOUND"
    message = "Credential account not found"


class TokenExpired(AppError):
    status_code = 400
    code = "TOKEN_EXPIRED"
    message = "Token expired"


class EmailAlreadyVerified(AppError):
    status_code = 400
    code = "EMAIL_ALREADY_VERIFIED"
    message = "Email is already verified"


class EmailMismatch(AppError):
    status_code = 400
    code = "EMAIL_MISMATCH"
    message = "Email mismatch"


# What better-auth answers when its mail callbacks are missing (sendResetPassword,
# sendVerificationEmail); here: SMTP_HOST is not set outside development.
class ResetPasswordDisabled(AppError):
    status_code = 400
    code = "RESET_PASSWORD_DISABLED"
    message = "Reset password isn't enabled"


class VerificationEmailNotEnabled(AppError):
    status_code = 400
    code = "VERIFICATION_EMAIL_NOT_ENABLED"
    message = "Verification email isn't enabled"


class InvalidCallbackUrl(AppError):
    status_code = 403
    code = "INVALID_CALLBACK_URL"
    message = "Invalid callbackURL"


class TooManyRequests(AppError):
    status_code = 429
    code = "TOO_MANY_REQUESTS"
    message = "Too many requests. Please try again later."
    documented_headers = {
        "Retry-After": HeaderDoc("Seconds until the window ends", "integer"),
        "X-Retry-After": HeaderDoc("The same, under better-auth's name", "integer"),
    }


__all__ = [
    "CredentialAccountNotFound",
    "EmailAlreadyVerified",
    "EmailMismatch",
    "EmailNotVerified",
    "FailedToGetSession",
    "InvalidCallbackUrl",
    "InvalidEmail",
    "InvalidEmailOrPassword",
    "InvalidOrigin",
    "InvalidPassword",
    "InvalidToken",
    "MissingOrigin",
    "PasswordTooLong",
    "PasswordTooShort",
    "ResetPasswordDisabled",
    "TokenExpired",
    "TooManyRequests",
    "Unauthorized",
    "UserAlreadyExists",
    "VerificationEmailNotEnabled",
]
