"""The service kit: health and readiness, one error shape, one transaction per request."""

from __future__ import annotations

import httpx
import pytest

from platform_auth.app import create_app
from platform_db.trees import PLATFORM
from tests.conftest import auth_settings, running
from tests.factories import PASSWORD, sign_up
from tests.pg import sql
from web.app import SERVICE as WEB


def assert_error_shape(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code
    assert isinstance(body["message"], str)
    assert body["message"]


async def test_healthz(platform_client: httpx.AsyncClient) -> None:
    r = await platform_client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_platform(platform_client: httpx.AsyncClient) -> None:
    r = await platform_client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ready",
        "trees": {"platform-db": " ".join(PLATFORM.heads())},
        "ahead": {},
    }


async def test_readyz_service(service_client: httpx.AsyncClient) -> None:
    r = await service_client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert body["trees"]["platform-db"] == " ".join(PLATFORM.heads())
    assert len(body["trees"]) == 2
    assert all(body["trees"].values())


async def test_readyz_not_ready_on_empty_database(empty_db: str) -> None:
    app = create_app(title="not migrated", settings=auth_settings(empty_db))
    async with running(app) as client:
        r = await client.get("/readyz")
        assert_error_shape(r, 503, "NOT_READY")
        assert "platform-db" in r.json()["message"]
        assert (await client.get("/healthz")).status_code == 200  # alive, just not ready


async def test_readyz_not_ready_when_a_service_tree_is_behind(db_url: str) -> None:
    # The platform tree is at head, the web tree was never migrated.
    async with running(WEB.create_app(auth_settings(db_url))) as client:
        r = await client.get("/readyz")
        assert_error_shape(r, 503, "NOT_READY")
        assert WEB.tree.name in r.json()["message"]


async def test_database_down() -> None:
    # Nothing listens on port 1: readiness says so, and a route needing the database is a 503.
    settings = auth_settings("postgresql://nobody:nothing@127.0.0.1:1/none")
    async with running(create_app(title="no database", settings=settings)) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert_error_shape(await client.get("/readyz"), 503, "NOT_READY")
        r = await client.post(
            "/api/auth/sign-in/email", json={"email": "ada@example.com", "password": PASSWORD}
        )
        assert_error_shape(r, 503, "SERVICE_UNAVAILABLE")
        assert r.headers["retry-after"] == "1"


async def test_unknown_route_and_method(platform_client: httpx.AsyncClient) -> None:
    assert_error_shape(await platform_client.get("/no/such/route"), 404, "NOT_FOUND")
    assert_error_shape(await platform_client.post("/api/auth/nope", json={}), 404, "NOT_FOUND")
    assert_error_shape(await platform_client.delete("/healthz"), 405, "METHOD_NOT_ALLOWED")
    assert_error_shape(
        await platform_client.get("/api/auth/sign-in/email"), 405, "METHOD_NOT_ALLOWED"
    )


async def test_auth_errors_have_one_shape(platform_client: httpx.AsyncClient) -> None:
    await sign_up(platform_client, email="ada@example.com")
    platform_client.cookies.clear()
    cases = [
        ("/api/auth/sign-up/email", {"name": "A", "email": "ada@example.com", "password": PASSWORD},
         422, "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL"),
        ("/api/auth/sign-up/email", {"name": "A", "email": "x", "password": PASSWORD},
         400, "INVALID_EMAIL"),
        ("/api/auth/sign-in/email", {"email": "ada@example.com", "password": "wrong password"},
         401, "INVALID_EMAIL_OR_PASSWORD"),
        ("/api/auth/sign-out", {}, 400, "FAILED_TO_GET_SESSION"),
    ]  # fmt: skip
    for path, body, status, code in cases:
        assert_error_shape(await platform_client.post(path, json=body), status, code)


async def test_validation_error_shape(platform_client: httpx.AsyncClient) -> None:
    r = await platform_client.post(
        "/api/auth/sign-up/email", json={"name": "", "email": 5, "password": "secret-pass-1"}
    )
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == "VALIDATION_ERROR"
    assert isinstance(body["message"], str)
    assert body["message"]
    assert {tuple(d["loc"]) for d in body["details"]} == {("body", "name"), ("body", "email")}
    for detail in body["details"]:
        assert set(detail) == {"loc", "type", "msg"}
    assert "secret-pass-1" not in r.text
    assert_error_shape(
        await platform_client.post(
            "/api/auth/sign-up/email", content=b"{", headers={"content-type": "application/json"}
        ),
        400,
        "INVALID_JSON",
    )


@pytest.mark.parametrize(
    ("raise_sql", "status", "code"),
    [
        ("RAISE EXCEPTION 'refused by a test trigger'", 500, "INTERNAL_SERVER_ERROR"),
        (
            "RAISE EXCEPTION 'bad value' USING ERRCODE = 'invalid_parameter_value'",
            400,
            "INVALID_INPUT",
        ),
    ],
    ids=["server-error", "data-exception"],
)
async def test_database_error_rolls_back_the_request(
    platform_client: httpx.AsyncClient, db_url: str, raise_sql: str, status: int, code: str
) -> None:
    """Sign-up writes the user and account, then the session insert fails: nothing stays."""
    await sql(
        db_url,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql"
        f" AS $$ BEGIN {raise_sql}; END $$",
    )
    await sql(
        db_url,
        "CREATE TRIGGER refuse_session BEFORE INSERT ON session"
        " FOR EACH ROW EXECUTE FUNCTION refuse()",
    )
    r = await platform_client.post(
        "/api/auth/sign-up/email",
        json={"name": "Ada", "email": "ada@example.com", "password": PASSWORD},
    )
    assert_error_shape(r, status, code)
    assert "set-cookie" not in r.headers
    for table in ("user", "account", "session"):
        rows = await sql(db_url, f'SELECT count(*) FROM "{table}"')
        assert rows[0][0] == 0, table
    # The app is still healthy: once the trigger is gone the same sign-up works.
    await sql(db_url, "DROP TRIGGER refuse_session ON session")
    token, _ = await sign_up(platform_client, email="ada@example.com")
    assert len(await sql(db_url, "SELECT 1 FROM session WHERE token = $1", token)) == 1
