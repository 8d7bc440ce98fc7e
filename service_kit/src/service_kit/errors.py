"""One error shape for every service: `{"code": ..., "message": ...}` with a stable code."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Send

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The body of every error response."""

    code: str
    message: str
    details: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class HeaderDoc:
    """A header an error's answer always carries, as OpenAPI documents it."""

    description: str
    type: Literal["string", "integer"] = "string"

    def openapi(self, *, required: bool) -> dict[str, Any]:
        return {
            "description": self.description,
            "required": required,
            "schema": {"type": self.type},
        }


class AppError(Exception):
    """A domain error: subclasses fix the status code, the stable code and the message.

    `documented_headers` are the headers every answer with this error carries.
    """

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "BAD_REQUEST"
    message: ClassVar[str] = "Bad request"
    documented_headers: ClassVar[Mapping[str, HeaderDoc]] = {}

    def __init__(self, message: str | None = None, *, headers: Mapping[str, str] | None = None):
        self.detail = message or self.message
        self.headers = dict(headers or {})
        super().__init__(self.detail)


class NotFound(AppError):
    status_code = 404
    code = "NOT_FOUND"
    message = "Not found"


class Unauthorized(AppError):
    status_code = 401
    code = "UNAUTHORIZED"
    message = "Unauthorized"
    documented_headers = {"WWW-Authenticate": HeaderDoc("The scheme to authenticate with")}

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="api"'})


class ServiceUnavailable(AppError):
    status_code = 503
    code = "SERVICE_UNAVAILABLE"
    message = "The database is unavailable; try again shortly"
    documented_headers = {"Retry-After": HeaderDoc("Seconds to wait", "integer")}


class InvalidJson(AppError):
    status_code = 400
    code = "INVALID_JSON"
    message = "The request body is not valid JSON"


class ValidationFailed(AppError):
    """Rendered by the request-validation handler, with `details` (never the input)."""

    status_code = 422
    code = "VALIDATION_ERROR"
    message = "The request does not match the documented schema"


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


async def send_error(
    send: Send, error: type[AppError], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Answer with `error` from plain ASGI middleware, in the same shape as the handlers."""
    body = json.dumps({"code": error.code, "message": error.message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "TOO_MANY_REQUESTS",
}


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(exc.status_code, exc.code, exc.detail, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(InvalidJson.status_code, InvalidJson.code, InvalidJson.message)
    # Never echo the input back: it may hold a password.
    details = [
        {"loc": [str(p) for p in e.get("loc", ())], "type": e.get("type"), "msg": e.get("msg")}
        for e in errors
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid"}
    where = ".".join(first["loc"][1:] or first["loc"])
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return error_response(
        ValidationFailed.status_code, ValidationFailed.code, message, details=details
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method a route serves at this path: Starlette's 405 names only the first route's."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    ]
    return ", ".join(allowed)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's answer to a JSON body that is not UTF-8: malformed JSON like any other.
        return error_response(InvalidJson.status_code, InvalidJson.code, InvalidJson.message)
    code = _STATUS_CODES.get(exc.status_code, "HTTP_ERROR")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


class InvalidInput(AppError):
    status_code = 400
    code = "INVALID_INPUT"
    message = "The request holds a value the database cannot store (such as a NUL character)"


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    # SQLSTATE class 22 (data exception): the client sent a value Postgres rejects, e.g. a
    # NUL character in text. The transaction is rolled back; it is the client's error.
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith("22"):
        err = InvalidInput()
        return error_response(err.status_code, err.code, err.detail)
    return await _database_unavailable(request, exc)


# Connection exceptions, "shutting down" / "starting up" / "in recovery", too many connections.
UNAVAILABLE_SQLSTATES = ("08", "57P0", "53300")


def is_stale_statement(exc: BaseException) -> bool:
    """A cached prepared statement or type that another process's DDL made stale.

    The asyncpg dialect drops its caches when it sees one, so the next try succeeds.
    """
    orig = getattr(exc, "orig", None)
    name = type(orig).__name__
    return name == "InvalidCachedStatementError" or (
        name == "InternalServerError" and "cache lookup failed" in str(orig)
    )


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database error means: out of reach for now (503, retry), not a bug."""
    if not isinstance(exc, DBAPIError):
        return True  # ConnectionError, OSError: the server is out of reach
    if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith(UNAVAILABLE_SQLSTATES):
        return True
    # A write transaction hit a statement gone stale under a migration: it cannot be retried
    # inside the aborted transaction, but the client can retry the request at once.
    return is_stale_statement(exc)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    if not is_unavailable(exc):
        return await _unhandled(request, exc)
    log.warning(
        "database unavailable during %s %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
    )
    err = ServiceUnavailable()
    return error_response(err.status_code, err.code, err.detail, headers={"Retry-After": "1"})


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error during %s %s", request.method, request.url.path)
    return error_response(500, "INTERNAL_SERVER_ERROR", "Internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(ConnectionError, _database_unavailable)
    app.add_exception_handler(Exception, _unhandled)
