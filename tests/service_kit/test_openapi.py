"""Every status a route can answer is in its OpenAPI entry, found from the code it runs: the
endpoint, its dependencies and what they call, and the middleware on its path."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from openapi_spec_validator import validate as validate_spec
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from platform_auth.settings import ServiceSettings
from service_kit.app import create_app
from service_kit.errors import AppError, HeaderDoc, send_error
from service_kit.openapi import raises
from service_kit.settings import Settings
from tests.conftest import SERVICES, TEST_SECRET, auth_settings, running

UNUSED_URL = "postgresql://unused@localhost/unused"


def validate(doc: dict[str, Any]) -> None:
    """openapi-spec-validator on the document as served (JSON: every key a string)."""
    validate_spec(json.loads(json.dumps(doc)))


class Teapot(AppError):
    status_code = 418
    code = "I_AM_A_TEAPOT"
    message = "Short and stout"


class Gone(AppError):
    status_code = 410
    code = "GONE"
    message = "Gone"


class Busy(AppError):
    status_code = 429
    code = "BUSY"
    message = "Busy"
    documented_headers = {"Retry-After": HeaderDoc("Seconds to wait", "integer")}


class Mapped(AppError):
    status_code = 502
    code = "UPSTREAM"
    message = "Upstream failed"


class BusyMiddleware:
    """Answers 429 BUSY on paths under `prefix`, before any route runs."""

    def __init__(self, app: ASGIApp, *, prefix: str) -> None:
        self.app, self.prefix = app, prefix

    @classmethod
    def openapi_errors(cls, method: str, path: str, *, prefix: str) -> Iterable[type[AppError]]:
        return [Busy] if path.startswith(prefix) else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            await send_error(send, Busy, [(b"retry-after", b"7")])
            return
        await self.app(scope, receive, send)


def brew(strong: bool) -> str:
    if strong:
        raise Teapot()
    return "tea"


def fail_with(error: type[AppError]) -> None:
    raise error()


async def key_required(key: str | None = None) -> str:
    if key is None:
        fail_with(Gone)  # passed to a helper: still found
    return key or ""


@raises(Mapped)  # say, an exception handler maps a library's error to it
async def upstream() -> None:
    return None


class Delegating:
    """A callable-instance dependency that calls the function it was given."""

    def __init__(self, resolve: Any) -> None:
        self._resolve = resolve

    async def __call__(self) -> str:
        return brew(await self._resolve())


router = APIRouter()


@router.get("/plain")
async def plain() -> dict[str, str]:
    """Nothing can go wrong here but what the kit adds."""
    return {"ok": "yes"}


@router.get("/brew")
async def brew_route(strong: bool = False) -> dict[str, str]:
    """Calls a helper that raises."""
    return {"cup": brew(strong)}


@router.get("/limited/key")
async def limited(
    key: Annotated[str, Depends(key_required)], _: Annotated[None, Depends(upstream)]
) -> dict[str, str]:
    """A dependency that raises, one that declares, and a middleware in front."""
    return {"key": key}


# Built away from the route, as an `Annotated` alias is: the route's source names neither
# the class nor the function it holds.
Cup = Annotated[str, Depends(Delegating(key_required))]


@router.get("/delegated")
async def delegated(cup: Cup) -> dict[str, str]:
    """A callable instance as the dependency: its __call__ and what it holds."""
    return {"cup": cup}


def kit_app() -> FastAPI:
    return create_app(
        title="openapi test",
        settings=Settings.from_values({"DATABASE_URL": UNUSED_URL}),
        trees=(),
        routers=[router],
        middleware=[Middleware(BusyMiddleware, prefix="/limited")],
    )


def responses(doc: dict[str, Any], path: str, method: str = "get") -> dict[str, Any]:
    found: dict[str, Any] = doc["paths"][path][method]["responses"]
    return found


def codes(doc: dict[str, Any], path: str, status: str, method: str = "get") -> set[str]:
    entry = responses(doc, path, method).get(status)
    if entry is None:
        return set()
    examples = entry["content"]["application/json"]["examples"]
    assert entry["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert set(entry["description"].split(", ")) == set(examples)
    return set(examples)


def test_errors_come_from_the_endpoint_its_dependencies_and_the_middleware() -> None:
    doc = kit_app().openapi()
    assert codes(doc, "/brew", "418") == {"I_AM_A_TEAPOT"}
    assert codes(doc, "/limited/key", "410") == {"GONE"}
    assert codes(doc, "/limited/key", "502") == {"UPSTREAM"}
    assert codes(doc, "/limited/key", "429") == {"BUSY"}
    # A callable instance: what its __call__ raises (418) and what the function it holds
    # raises (410), neither named where the route is declared.
    assert codes(doc, "/delegated", "418") == {"I_AM_A_TEAPOT"}
    assert codes(doc, "/delegated", "410") == {"GONE"}
    assert codes(doc, "/limited/key", "422") == {"VALIDATION_ERROR"}
    headers = responses(doc, "/limited/key")["429"]["headers"]
    assert headers == {
        "Retry-After": {
            "description": "Seconds to wait",
            "required": True,
            "schema": {"type": "integer"},
        }
    }
    # Nothing leaks onto routes that do not run that code.
    for status in ("410", "418", "429", "502"):
        assert status not in responses(doc, "/plain"), status
    assert "418" not in responses(doc, "/limited/key")
    assert "429" not in responses(doc, "/brew")
    # The kit's own: any body may be too large; no route here holds a database session.
    assert codes(doc, "/plain", "413") == {"PAYLOAD_TOO_LARGE"}
    assert "503" not in responses(doc, "/plain")
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    validate(doc)


async def test_what_the_middleware_answers_is_what_is_documented() -> None:
    app = kit_app()
    doc = app.openapi()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        r = await client.get("/limited/key")
    assert r.status_code == 429
    assert r.json() == {"code": "BUSY", "message": "Busy"}
    assert r.headers["retry-after"] == "7"
    documented = responses(doc, "/limited/key")["429"]
    assert {h.lower() for h, d in documented["headers"].items() if d["required"]} <= set(r.headers)


def test_a_status_shared_by_errors_requires_only_the_headers_all_of_them_send() -> None:
    class Other(AppError):
        status_code = 429
        code = "OTHER"
        message = "Other"

    class Both:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        @classmethod
        def openapi_errors(cls, method: str, path: str) -> Iterable[type[AppError]]:
            return [Busy, Other]

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await self.app(scope, receive, send)

    app = create_app(
        title="t",
        settings=Settings.from_values({"DATABASE_URL": UNUSED_URL}),
        trees=(),
        routers=[router],
        middleware=[Middleware(Both)],
    )
    entry = responses(app.openapi(), "/plain")["429"]
    assert entry["description"] == "BUSY, OTHER"
    assert entry["headers"]["Retry-After"]["required"] is False


# The routes the default rate limits cover (sign-in, sign-up, password, mail groups).
LIMITED = {
    ("post", "/api/auth/sign-in/email"),
    ("post", "/api/auth/sign-up/email"),
    ("post", "/api/auth/change-password"),
    ("post", "/api/auth/reset-password"),
    ("get", "/api/auth/reset-password/{token}"),
    ("post", "/api/auth/request-password-reset"),
    ("post", "/api/auth/send-verification-email"),
}


def production_defaults() -> ServiceSettings:
    return ServiceSettings.from_values({"DATABASE_URL": UNUSED_URL, "AUTH_SECRET": TEST_SECRET})


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_rate_limited_routes_document_429_only_where_limits_run(service: Any) -> None:
    production = service.create_app(production_defaults()).openapi()
    development = service.create_app(auth_settings(UNUSED_URL, ENVIRONMENT="development")).openapi()
    operations = {(m, p) for p, item in production["paths"].items() for m in item}
    limited = {(m, p) for m, p in operations if "429" in responses(production, p, m)}
    assert limited == LIMITED
    for method, path in LIMITED:
        assert codes(production, path, "429", method) == {"TOO_MANY_REQUESTS"}
        headers = responses(production, path, method)["429"]["headers"]
        assert headers["Retry-After"]["required"] is True
        assert headers["Retry-After"]["schema"] == {"type": "integer"}
    # Limits off (development): no route says it may answer 429.
    assert not any("429" in responses(development, p, m) for m, p in operations)
    # Mail routes document better-auth's answers for mail that is off.
    assert "RESET_PASSWORD_DISABLED" in codes(
        production, "/api/auth/request-password-reset", "400", "post"
    )
    assert "VERIFICATION_EMAIL_NOT_ENABLED" in codes(
        production, "/api/auth/send-verification-email", "400", "post"
    )
    # A route that reads the database may answer 503 (with Retry-After); one that does not,
    # never.
    assert codes(production, "/todos", "503") == {"SERVICE_UNAVAILABLE"}
    assert "503" not in responses(production, "/healthz")
    assert codes(production, "/todos/{todo_id}", "404") == {"TODO_NOT_FOUND"}
    assert "404" not in responses(production, "/todos", "post")
    for doc in (production, development):
        validate(doc)


async def test_a_refused_sign_in_answers_what_its_entry_documents(full_db: str) -> None:
    app = SERVICES[0].create_app(
        ServiceSettings.from_values({"DATABASE_URL": full_db, "AUTH_SECRET": TEST_SECRET})
    )
    entry = responses(app.openapi(), "/api/auth/sign-in/email", "post")
    async with running(app) as client:
        client.base_url = httpx.URL("http://localhost")  # production answers loopback hosts
        body = {"email": "nobody@example.com", "password": "wrong password"}
        answers = [await client.post("/api/auth/sign-in/email", json=body) for _ in range(4)]
    assert [r.status_code for r in answers] == [401, 401, 401, 429]
    for r in answers:
        documented = entry[str(r.status_code)]
        assert r.json()["code"] in documented["content"]["application/json"]["examples"]
        required = {h.lower() for h, d in documented.get("headers", {}).items() if d["required"]}
        assert required <= set(r.headers), (r.status_code, dict(r.headers))
    assert int(answers[-1].headers["retry-after"]) >= 1


def test_every_document_validates() -> None:
    for service in SERVICES:
        for settings in (production_defaults(), auth_settings(UNUSED_URL)):
            validate(service.create_app(settings).openapi())
