"""web and trading as real uvicorn processes on one database: one login, separate data."""

from __future__ import annotations

import asyncio
from http.cookies import SimpleCookie
from typing import Any

import httpx

from platform_db.trees import PLATFORM
from tests.e2e.conftest import Processes, versions
from tests.pg import sql
from trading.app import TREE as TRADING_TREE
from web.app import TREE as WEB_TREE

PASSWORD = "correct horse battery"
# ENVIRONMENT=test: secure cookies, so the name carries the __Secure- prefix.
COOKIE_NAME = "__Secure-better-auth.session_token"


class Api:
    """A client for one running service that never carries credentials implicitly."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.base = str(client.base_url).rstrip("/")

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        cookie: str | None = None,
        origin: str | None = None,
        json: Any = None,
    ) -> httpx.Response:
        self.client.cookies.clear()  # only what this call names is sent
        headers: dict[str, str] = {}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        if cookie is not None:
            headers["cookie"] = cookie
        if origin is not None:
            headers["origin"] = origin
        return await self.client.request(method, path, headers=headers, json=json)

    async def sign_up(self, name: str, email: str) -> tuple[str, str]:
        body = {"name": name, "email": email, "password": PASSWORD}
        r = await self.call("POST", "/api/auth/sign-up/email", json=body)
        assert r.status_code == 200, r.text
        result = r.json()
        return result["token"], result["user"]["id"]

    async def create(self, title: str, **auth: str) -> dict[str, Any]:
        r = await self.call("POST", "/todos", json={"title": title}, **auth)
        assert r.status_code == 201, r.text
        todo: dict[str, Any] = r.json()
        assert r.headers["location"] == f"{self.base}/todos/{todo['id']}"
        return todo

    async def titles(self, **auth: str) -> list[str]:
        r = await self.call("GET", "/todos", **auth)
        assert r.status_code == 200, r.text
        return [t["title"] for t in r.json()["items"]]


async def until_401(
    api: Api, path: str, *, token: str | None = None, cookie: str | None = None
) -> httpx.Response:
    """GET `path` until it answers 401, for at most 5 s (a revocation travels by NOTIFY)."""
    for _ in range(100):
        r = await api.call("GET", path, token=token, cookie=cookie)
        if r.status_code != 200:
            return r
        await asyncio.sleep(0.05)
    return r


def session_cookie(response: httpx.Response) -> str:
    """The `Cookie` header a browser would send back after this response."""
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    assert COOKIE_NAME in jar, response.headers.get_list("set-cookie")
    morsel = jar[COOKIE_NAME]
    assert morsel["secure"]
    assert morsel["httponly"]
    return f"{COOKIE_NAME}={morsel.coded_value}"


async def count_todos(db: str, schema: str, user_id: str) -> int:
    rows = await sql(db, f"SELECT count(*) AS n FROM {schema}.todos WHERE user_id = $1", user_id)
    return int(rows[0]["n"])


async def test_one_login_across_real_services(db_url: str, processes: Processes) -> None:
    # The platform tree is at head; each `serve` migrates its own tree.
    assert await versions(db_url, "web.alembic_version") == []
    web_proc = await processes.serve("web", db_url)
    trading_proc = await processes.serve("trading", db_url)
    await asyncio.gather(web_proc.wait_ready(), trading_proc.wait_ready())
    assert await versions(db_url, "public.platform_alembic_version") == list(PLATFORM.heads())
    assert await versions(db_url, "web.alembic_version") == list(WEB_TREE.heads())
    assert await versions(db_url, "trading.alembic_version") == list(TRADING_TREE.heads())

    assert web_proc.base_url is not None
    assert trading_proc.base_url is not None
    async with (
        httpx.AsyncClient(base_url=web_proc.base_url, timeout=30) as web_client,
        httpx.AsyncClient(base_url=trading_proc.base_url, timeout=30) as trading_client,
    ):
        web, trading = Api(web_client), Api(trading_client)

        # Signed up through web; the same bearer token works on trading.
        token_a, ada = await web.sign_up("Ada", "ada@example.com")
        made = await trading.create("trading: from bearer", token=token_a)
        assert made["userId"] == ada
        assert await trading.titles(token=token_a) == ["trading: from bearer"]
        # Each service keeps its own todos table.
        assert await web.titles(token=token_a) == []
        web_todo = await web.create("web: from bearer", token=token_a)
        assert await web.titles(token=token_a) == ["web: from bearer"]

        # The cookie web's sign-in sets is accepted by trading.
        credentials = {"email": "ada@example.com", "password": PASSWORD}
        r = await web.call("POST", "/api/auth/sign-in/email", json=credentials)
        assert r.status_code == 200, r.text
        cookie, cookie_token = session_cookie(r), r.json()["token"]
        assert cookie_token != token_a
        r = await trading.call("GET", "/api/auth/get-session", cookie=cookie)
        assert r.status_code == 200, r.text
        assert r.json()["user"]["id"] == ada
        assert r.json()["session"]["token"] == cookie_token
        assert await trading.titles(cookie=cookie) == ["trading: from bearer"]
        await trading.create("trading: from cookie", cookie=cookie, origin=trading.base)
        assert await trading.titles(cookie=cookie) == [
            "trading: from cookie",
            "trading: from bearer",
        ]
        # A cookie-authenticated POST from no origin or a foreign one is refused (CSRF).
        r = await trading.call("POST", "/todos", cookie=cookie, json={"title": "x"})
        assert (r.status_code, r.json()["code"]) == (403, "MISSING_OR_NULL_ORIGIN"), r.text
        r = await trading.call(
            "POST", "/todos", cookie=cookie, origin=web.base, json={"title": "x"}
        )
        assert (r.status_code, r.json()["code"]) == (403, "INVALID_ORIGIN"), r.text

        # A second user, signed up through trading: neither sees the other's todos anywhere.
        token_b, bo = await trading.sign_up("Bo", "bo@example.com")
        bo_trading = await trading.create("trading: bo", token=token_b)
        bo_web = await web.create("web: bo", token=token_b)
        assert await trading.titles(token=token_b) == ["trading: bo"]
        assert await web.titles(token=token_b) == ["web: bo"]
        assert await trading.titles(token=token_a) == [
            "trading: from cookie",
            "trading: from bearer",
        ]
        assert await web.titles(token=token_a) == ["web: from bearer"]
        for api, theirs, token in (
            (trading, made["id"], token_b),
            (web, web_todo["id"], token_b),
            (trading, bo_trading["id"], token_a),
            (web, bo_web["id"], token_a),
        ):
            for method, body in (("GET", None), ("PATCH", {"title": "mine now"}), ("DELETE", None)):
                r = await api.call(method, f"/todos/{theirs}", token=token, json=body)
                assert (r.status_code, r.json()["code"]) == (404, "TODO_NOT_FOUND"), (
                    api.base,
                    method,
                    r.text,
                )
        # ... and nothing of theirs changed.
        r = await trading.call("GET", f"/todos/{made['id']}", token=token_a)
        assert (r.status_code, r.json()["title"]) == (200, "trading: from bearer")
        r = await web.call("GET", f"/todos/{bo_web['id']}", token=token_b)
        assert (r.status_code, r.json()["title"]) == (200, "web: bo")

        # Signing out through trading ends the session on web: web's cached copy is evicted by
        # the NOTIFY the delete fires, which may land a moment after trading's answer.
        r = await trading.call("POST", "/api/auth/sign-out", token=token_a)
        assert r.status_code == 200, r.text
        assert r.json() == {"success": True}
        r = await until_401(web, "/todos", token=token_a)
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED"), r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = await web.call("GET", "/api/auth/get-session", token=token_a)
        assert (r.status_code, r.json()) == (200, None)
        # Only that session: the cookie's session is still signed in, until it signs out too.
        assert await web.titles(cookie=cookie) == ["web: from bearer"]
        r = await trading.call("POST", "/api/auth/sign-out", cookie=cookie, origin=trading.base)
        assert r.status_code == 200, r.text
        r = await until_401(web, "/todos", cookie=cookie)
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED"), r.text

        # Deleting a user removes their todos in both services' schemas, and only theirs.
        assert await count_todos(db_url, "web", bo) == 1
        assert await count_todos(db_url, "trading", bo) == 1
        await sql(db_url, 'DELETE FROM "user" WHERE id = $1', bo)
        assert await count_todos(db_url, "web", bo) == 0
        assert await count_todos(db_url, "trading", bo) == 0
        assert await count_todos(db_url, "web", ada) == 1
        assert await count_todos(db_url, "trading", ada) == 2
        # ... and their sessions with them, in both services at once.
        for api in (trading, web):
            r = await until_401(api, "/todos", token=token_b)
            assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED"), r.text

    for proc in (web_proc, trading_proc):
        assert proc.returncode is None, proc.describe()
        assert "Traceback" not in proc.output(), proc.describe()
