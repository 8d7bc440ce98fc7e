"""The /todos API of both services: CRUD, listing, validation, scoping, and where rows land."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service_kit.service import ServiceDefinition
from tests.services.helpers import TODO_FIELDS, Caller, connect, create_todo, sign_up


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def insert_rows(
    url: str, schema: str, user_id: str, rows: list[tuple[str, datetime, bool]]
) -> None:
    """Insert (id, created_at, completed) rows straight into `schema`.todos."""
    async with connect(url) as conn:
        await conn.executemany(
            f"INSERT INTO {schema}.todos (id, user_id, title, completed, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $5)",
            [
                (todo_id, user_id, f"row {todo_id}", done, created.replace(tzinfo=None))
                for todo_id, created, done in rows
            ],
        )


async def walk(
    client: httpx.AsyncClient, caller: Caller, limit: int, **params: str
) -> tuple[list[str], list[int]]:
    """Follow nextCursor to the end; return the ids in order and each page's size."""
    ids: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(1000):
        query: dict[str, str | int] = {"limit": limit, **params}
        if cursor is not None:
            query["cursor"] = cursor
        r = await client.get("/todos", params=query, headers=caller.headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"items", "nextCursor"}
        ids += [t["id"] for t in page["items"]]
        sizes.append(len(page["items"]))
        cursor = page["nextCursor"]
        if cursor is None:
            return ids, sizes
    raise AssertionError("pagination did not end")


def assert_validation_error(r: httpx.Response, sent: Any = None) -> dict[str, Any]:
    assert r.status_code == 422, (repr(sent)[:80], r.text)
    body: dict[str, Any] = r.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == "VALIDATION_ERROR"
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["details"], list)
    assert body["details"]
    for item in body["details"]:
        assert {"loc", "type", "msg"} <= set(item)
    return body


# --------------------------------------------------------------------------------------
# CRUD
# --------------------------------------------------------------------------------------
async def test_create_returns_201_location_and_camel_case(
    service_client: httpx.AsyncClient,
) -> None:
    ada = await sign_up(service_client)
    before = datetime.now(UTC)
    r = await service_client.post(
        "/todos",
        json={"title": "  buy milk \n", "description": "two litres"},
        headers=ada.headers,
    )
    assert r.status_code == 201, r.text
    todo = r.json()
    assert set(todo) == TODO_FIELDS
    assert todo["userId"] == ada.user_id
    assert todo["title"] == "buy milk"
    assert todo["description"] == "two litres"
    assert todo["completed"] is False
    assert len(todo["id"]) == 32
    assert todo["id"].isalnum()
    created = ts(todo["createdAt"])
    assert created.tzinfo is not None
    assert before - timedelta(seconds=5) <= created <= datetime.now(UTC) + timedelta(seconds=5)
    assert ts(todo["updatedAt"]) == created

    location = r.headers["location"]
    assert urlsplit(location).path == f"/todos/{todo['id']}"
    r = await service_client.get(location, headers=ada.headers)
    assert r.status_code == 200
    assert r.json() == todo
    r = await service_client.get(f"/todos/{todo['id']}", headers=ada.headers)
    assert r.json() == todo


async def test_create_defaults_and_explicit_fields(service_client: httpx.AsyncClient) -> None:
    ada = await sign_up(service_client)
    bare = await create_todo(service_client, ada, "bare")
    assert bare["description"] is None
    assert bare["completed"] is False
    done = await create_todo(service_client, ada, "done", completed=True, description=None)
    assert done["completed"] is True
    assert done["description"] is None
    # Boundaries are accepted: 200 characters of title (after trimming), 2000 of description.
    edge = await create_todo(service_client, ada, f"  {'t' * 200}  ", description="d" * 2000)
    assert edge["title"] == "t" * 200
    assert len(edge["description"]) == 2000
    unicode = await create_todo(service_client, ada, "é" * 199 + "🙂")
    assert unicode["title"] == "é" * 199 + "🙂"


async def test_patch_changes_only_the_sent_fields(service_client: httpx.AsyncClient) -> None:
    ada = await sign_up(service_client)
    original = await create_todo(service_client, ada, "write tests", description="all of them")
    url = f"/todos/{original['id']}"

    r = await service_client.patch(url, json={"completed": True}, headers=ada.headers)
    assert r.status_code == 200, r.text
    first = r.json()
    assert set(first) == TODO_FIELDS
    assert first["completed"] is True
    assert first["title"] == "write tests"
    assert first["description"] == "all of them"
    assert first["createdAt"] == original["createdAt"]
    assert ts(first["updatedAt"]) > ts(original["updatedAt"])

    r = await service_client.patch(
        url, json={"title": "  write more tests ", "description": None}, headers=ada.headers
    )
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["title"] == "write more tests"
    assert second["description"] is None
    assert second["completed"] is True
    assert second["createdAt"] == original["createdAt"]
    assert ts(second["updatedAt"]) > ts(first["updatedAt"])

    # An empty patch changes nothing, not even updatedAt.
    r = await service_client.patch(url, json={}, headers=ada.headers)
    assert r.status_code == 200
    assert r.json() == second

    r = await service_client.get(url, headers=ada.headers)
    assert r.json() == second


INVALID_PATCH_BODIES: list[Any] = [
    {"title": None},
    {"completed": None},
    {"title": None, "completed": True},
    {"title": ""},
    {"title": "   "},
    {"title": "x" * 201},
    {"description": "x" * 2001},
    {"completed": "sure"},
    {"title": 7},
    {"userId": "someone-else"},
    {"id": "another-id"},
    {"createdAt": "2020-01-01T00:00:00Z"},
    [],
    "title",
    None,
]


async def test_patch_rejects_invalid_bodies(service_client: httpx.AsyncClient) -> None:
    ada = await sign_up(service_client)
    original = await create_todo(service_client, ada, "keep me", description="as I am")
    headers = {**ada.headers, "content-type": "application/json"}
    for body in INVALID_PATCH_BODIES:
        r = await service_client.patch(
            f"/todos/{original['id']}", content=json.dumps(body), headers=headers
        )
        assert_validation_error(r, body)
    r = await service_client.get(f"/todos/{original['id']}", headers=ada.headers)
    assert r.json() == original


async def test_delete_then_not_found(service_client: httpx.AsyncClient) -> None:
    ada = await sign_up(service_client)
    keep = await create_todo(service_client, ada, "keep")
    gone = await create_todo(service_client, ada, "gone")
    url = f"/todos/{gone['id']}"

    r = await service_client.delete(url, headers=ada.headers)
    assert r.status_code == 204
    assert r.content == b""

    for method, body in (
        ("GET", None),
        ("PATCH", {"completed": True}),
        ("DELETE", None),
    ):
        r = await service_client.request(method, url, headers=ada.headers, json=body)
        assert r.status_code == 404, (method, r.text)
        assert r.json() == {"code": "TODO_NOT_FOUND", "message": "Todo not found"}

    r = await service_client.get("/todos", headers=ada.headers)
    assert [t["id"] for t in r.json()["items"]] == [keep["id"]]


async def assert_not_found_everywhere(
    client: httpx.AsyncClient, caller: Caller, todo_id: str
) -> None:
    for method, body in (
        ("GET", None),
        ("PATCH", {"completed": True}),
        ("DELETE", None),
    ):
        r = await client.request(method, f"/todos/{todo_id}", headers=caller.headers, json=body)
        assert r.status_code == 404, (method, todo_id, r.text)
        assert r.json()["code"] == "TODO_NOT_FOUND"


async def test_unknown_ids_are_404(service_client: httpx.AsyncClient) -> None:
    ada = await sign_up(service_client)
    await create_todo(service_client, ada, "exists")
    for todo_id in ("does-not-exist", "x" * 300, "%F0%9F%99%82", "'", "a%20b", "%25"):
        await assert_not_found_everywhere(service_client, ada, todo_id)


async def test_id_with_a_nul_byte_is_404(service_client: httpx.AsyncClient) -> None:
    """Postgres text cannot hold NUL; such an id matches no todo, it is not a server error."""
    ada = await sign_up(service_client)
    await assert_not_found_everywhere(service_client, ada, "a%00b")


# --------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------
async def test_list_is_the_callers_newest_first(service_client: httpx.AsyncClient) -> None:
    ada = await sign_up(service_client, "Ada")
    bob = await sign_up(service_client, "Bob")
    ada_ids = [(await create_todo(service_client, ada, f"ada {i}"))["id"] for i in range(3)]
    bob_ids = [(await create_todo(service_client, bob, f"bob {i}"))["id"] for i in range(2)]

    r = await service_client.get("/todos", headers=ada.headers)
    assert r.status_code == 200
    page = r.json()
    assert [t["id"] for t in page["items"]] == ada_ids[::-1]
    assert all(t["userId"] == ada.user_id for t in page["items"])
    assert all(set(t) == TODO_FIELDS for t in page["items"])
    assert page["nextCursor"] is None

    r = await service_client.get("/todos", headers=bob.headers)
    assert [t["id"] for t in r.json()["items"]] == bob_ids[::-1]

    carl = await sign_up(service_client, "Carl")
    r = await service_client.get("/todos", headers=carl.headers)
    assert r.json() == {"items": [], "nextCursor": None}


async def test_limit_default_max_and_bounds(
    service_client: httpx.AsyncClient, service: ServiceDefinition, full_db: str
) -> None:
    ada = await sign_up(service_client)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    rows = [(f"id{i:04d}", start + timedelta(seconds=i), False) for i in range(105)]
    await insert_rows(full_db, service.tree.schema, ada.user_id, rows)
    newest_first = [r[0] for r in rows][::-1]

    r = await service_client.get("/todos", headers=ada.headers)
    page = r.json()
    assert [t["id"] for t in page["items"]] == newest_first[:20]
    assert page["nextCursor"] is not None

    r = await service_client.get("/todos", params={"limit": 100}, headers=ada.headers)
    assert [t["id"] for t in r.json()["items"]] == newest_first[:100]

    r = await service_client.get("/todos", params={"limit": 1}, headers=ada.headers)
    assert [t["id"] for t in r.json()["items"]] == newest_first[:1]

    for bad in ("0", "101", "-1", "1000000000000000000000", "ten", "1.5", ""):
        r = await service_client.get("/todos", params={"limit": bad}, headers=ada.headers)
        body = assert_validation_error(r)
        assert body["details"][0]["loc"] == ["query", "limit"]


async def test_cursor_walks_every_row_once_across_equal_created_at(
    service_client: httpx.AsyncClient, service: ServiceDefinition, full_db: str
) -> None:
    ada = await sign_up(service_client, "Ada")
    bob = await sign_up(service_client, "Bob")
    start = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    # 24 rows in 5 groups; every row of a group has the very same created_at, and the ids
    # are deliberately not in insertion order, so only the id tiebreak orders a group.
    rows: list[tuple[str, datetime, bool]] = []
    names = iter(f"{c}{n}" for n in range(9) for c in "qwertyuiopasdfghjklzxcvbnm")
    for group, size in enumerate((7, 1, 5, 8, 3)):
        rows += [(next(names), start + timedelta(minutes=group), i % 2 == 0) for i in range(size)]
    await insert_rows(full_db, service.tree.schema, ada.user_id, rows)
    # Bob's rows at the same instants must never leak into Ada's pages.
    await insert_rows(
        full_db,
        service.tree.schema,
        bob.user_id,
        [(f"bob{i}", start + timedelta(minutes=i % 5), False) for i in range(6)],
    )
    expected = [r[0] for r in sorted(rows, key=lambda r: (r[1], r[0]), reverse=True)]
    assert len(expected) == 24

    for limit in (1, 3, 4, 5, 7, 8, 24, 100):
        ids, sizes = await walk(service_client, ada, limit)
        assert ids == expected, limit
        # Full pages until the last; the last page is never empty (nextCursor null on it).
        pages = -(-len(expected) // limit)
        assert len(sizes) == pages, limit
        assert all(s == limit for s in sizes[:-1])
        assert sizes[-1] == len(expected) - limit * (pages - 1)

    done = [r[0] for r in sorted(rows, key=lambda r: (r[1], r[0]), reverse=True) if r[2]]
    ids, _ = await walk(service_client, ada, 2, completed="true")
    assert ids == done
    open_ = [i for i in expected if i not in done]
    ids, _ = await walk(service_client, ada, 3, completed="false")
    assert ids == open_


async def test_filter_completed(service_client: httpx.AsyncClient) -> None:
    ada = await sign_up(service_client)
    a = await create_todo(service_client, ada, "a")
    b = await create_todo(service_client, ada, "b", completed=True)
    c = await create_todo(service_client, ada, "c")
    r = await service_client.patch(
        f"/todos/{c['id']}", json={"completed": True}, headers=ada.headers
    )
    assert r.status_code == 200

    async def ids(**params: str) -> list[str]:
        r = await service_client.get("/todos", params=params, headers=ada.headers)
        assert r.status_code == 200, r.text
        return [t["id"] for t in r.json()["items"]]

    assert await ids(completed="true") == [c["id"], b["id"]]
    assert await ids(completed="false") == [a["id"]]
    assert await ids() == [c["id"], b["id"], a["id"]]
    r = await service_client.get("/todos", params={"completed": "maybe"}, headers=ada.headers)
    assert_validation_error(r)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


GARBAGE_CURSORS = [
    "garbage",
    "!!!!",
    "a",
    "====",
    _b64(b"not json"),
    _b64(b"\xff\xfe\xfd"),
    _b64(b"{}"),
    _b64(b"[]"),
    _b64(b"null"),
    _b64(b'"ab"'),
    _b64(b"[1, 2]"),
    _b64(json.dumps(["2025-01-01T00:00:00+00:00"]).encode()),
    _b64(json.dumps(["2025-01-01T00:00:00+00:00", "id", "x"]).encode()),
    _b64(json.dumps(["2025-01-01T00:00:00", "naive"]).encode()),
    _b64(json.dumps(["2025-01-01T00:00:00+00:00", 5]).encode()),
    _b64(json.dumps(["2025-01-01T00:00:00+00:00", None]).encode()),
    _b64(json.dumps(["yesterday", "id"]).encode()),
    _b64(json.dumps([["2025"], "id"]).encode()),
    # Well-formed but never issued: instants Postgres cannot hold once in UTC, a NUL in the id.
    _b64(json.dumps(["0001-01-01T00:00:00+01:00", "id"]).encode()),
    _b64(json.dumps(["9999-12-31T23:59:59-01:00", "id"]).encode()),
    _b64(json.dumps(["2025-01-01T00:00:00+00:00", "nul\x00id"]).encode()),
]


INVALID_CURSOR = {"code": "INVALID_CURSOR", "message": "The cursor is not one this API issued"}


async def test_garbage_cursor_is_400(service_client: httpx.AsyncClient) -> None:
    ada = await sign_up(service_client)
    await create_todo(service_client, ada, "one")
    for cursor in GARBAGE_CURSORS:
        r = await service_client.get("/todos", params={"cursor": cursor}, headers=ada.headers)
        assert r.status_code == 400, (cursor, r.text)
        assert r.json() == INVALID_CURSOR


async def test_cursor_with_another_utc_offset_compares_instants(
    service_client: httpx.AsyncClient,
) -> None:
    """A cursor with a non-UTC offset still compares instants, not wall-clock times."""
    ada = await sign_up(service_client)
    old = await create_todo(service_client, ada, "old")
    new = await create_todo(service_client, ada, "new")
    boundary = ts(new["createdAt"]).astimezone(timezone(timedelta(hours=-5)))
    cursor = _b64(json.dumps([boundary.isoformat(), new["id"]]).encode())
    r = await service_client.get("/todos", params={"cursor": cursor}, headers=ada.headers)
    assert r.status_code == 200, r.text
    assert [t["id"] for t in r.json()["items"]] == [old["id"]]


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------
INVALID_CREATE_BODIES: list[Any] = [
    {},
    {"title": ""},
    {"title": "   "},
    {"title": "\t\n "},
    {"title": "x" * 201},
    {"title": "ok", "description": "x" * 2001},
    {"title": "ok", "priority": 1},
    {"title": "ok", "userId": "someone-else"},
    {"title": "ok", "id": "chosen-id"},
    {"title": None},
    {"title": 5},
    {"title": ["a"]},
    {"title": {"text": "a"}},
    {"title": "ok", "description": 3},
    {"title": "ok", "completed": "maybe"},
    {"title": "ok", "completed": None},
    [],
    ["title"],
    "title",
    42,
    None,
]


async def test_create_rejects_invalid_bodies(service_client: httpx.AsyncClient) -> None:
    ada = await sign_up(service_client)
    headers = {**ada.headers, "content-type": "application/json"}
    for body in INVALID_CREATE_BODIES:
        r = await service_client.post("/todos", content=json.dumps(body), headers=headers)
        payload = assert_validation_error(r, body)
        # The submitted values are never echoed back.
        assert "x" * 201 not in r.text
        assert all("input" not in d for d in payload["details"])
    r = await service_client.get("/todos", headers=ada.headers)
    assert r.json()["items"] == []


async def test_malformed_json_is_400(service_client: httpx.AsyncClient) -> None:
    ada = await sign_up(service_client)
    todo = await create_todo(service_client, ada, "existing")
    headers = {**ada.headers, "content-type": "application/json"}
    for raw in (b'{"title": ', b"{title: 'x'}", b'{"title": "a",}', b"\xff\xfe", b"nope"):
        for method, url in (("POST", "/todos"), ("PATCH", f"/todos/{todo['id']}")):
            r = await service_client.request(method, url, content=raw, headers=headers)
            assert r.status_code == 400, (method, raw, r.text)
            body = r.json()
            assert body["code"] == "INVALID_JSON"
            assert isinstance(body["message"], str)
            assert body["message"]
    r = await service_client.get("/todos", headers=ada.headers)
    assert r.json()["items"] == [todo]


@pytest.mark.parametrize(
    "body",
    [
        {"title": "nul\x00byte"},
        {"title": "ok", "description": "nul\x00byte"},
        {"title": "\ud800 lone surrogate"},
    ],
    ids=["nul-title", "nul-description", "lone-surrogate"],
)
async def test_text_postgres_cannot_store_is_a_validation_error(
    service_client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    """Postgres text holds no NUL and no lone surrogate: that is the caller's error, not a 500."""
    ada = await sign_up(service_client)
    headers = {**ada.headers, "content-type": "application/json"}
    r = await service_client.post("/todos", content=json.dumps(body), headers=headers)
    assert_validation_error(r)
    todo = await create_todo(service_client, ada, "fine")
    r = await service_client.patch(
        f"/todos/{todo['id']}", content=json.dumps(body), headers=headers
    )
    assert_validation_error(r)
    r = await service_client.get("/todos", headers=ada.headers)
    assert r.json()["items"] == [todo]


# --------------------------------------------------------------------------------------
# Scoping
# --------------------------------------------------------------------------------------
async def test_another_users_todo_is_a_404_like_a_missing_one(
    service_client: httpx.AsyncClient,
) -> None:
    ada = await sign_up(service_client, "Ada")
    bob = await sign_up(service_client, "Bob")
    todo = await create_todo(service_client, ada, "ada's", description="private")
    missing = await service_client.get("/todos/no-such-todo", headers=bob.headers)
    assert missing.status_code == 404

    for method, body in (
        ("GET", None),
        ("PATCH", {"title": "bob was here", "completed": True}),
        ("DELETE", None),
    ):
        r = await service_client.request(
            method, f"/todos/{todo['id']}", headers=bob.headers, json=body
        )
        assert r.status_code == 404, (method, r.text)
        assert r.json() == missing.json() == {"code": "TODO_NOT_FOUND", "message": "Todo not found"}

    r = await service_client.get("/todos", headers=bob.headers)
    assert r.json() == {"items": [], "nextCursor": None}
    r = await service_client.get(f"/todos/{todo['id']}", headers=ada.headers)
    assert r.status_code == 200
    assert r.json() == todo


UNAUTHENTICATED = [
    ("GET", "/todos", None),
    ("POST", "/todos", {"title": "x"}),
    ("GET", "/todos/some-id", None),
    ("PATCH", "/todos/some-id", {"completed": True}),
    ("DELETE", "/todos/some-id", None),
]


NO_SESSION: list[dict[str, str]] = [
    {},
    {"authorization": "Bearer not-a-session-token"},
    {"authorization": "Bearer tok.forged-signature"},
    {"authorization": "Basic dXNlcjpwYXNz"},
    {"cookie": "__Secure-better-auth.session_token=forged.sig"},
]


async def test_no_session_is_401_on_every_route(service_client: httpx.AsyncClient) -> None:
    ada = await sign_up(service_client)
    todo = await create_todo(service_client, ada, "mine")
    for auth in NO_SESSION:
        for method, path, body in UNAUTHENTICATED:
            path = path.replace("some-id", todo["id"])
            r = await service_client.request(method, path, json=body, headers=auth)
            assert r.status_code == 401, (auth, method, path, r.text)
            assert r.json() == {"code": "UNAUTHORIZED", "message": "Unauthorized"}
            assert r.headers["www-authenticate"].startswith("Bearer")
    r = await service_client.get("/todos", headers=ada.headers)
    assert r.json()["items"] == [todo]


async def test_signed_out_session_is_401(service_client: httpx.AsyncClient) -> None:
    ada = await sign_up(service_client)
    todo = await create_todo(service_client, ada, "mine")
    r = await service_client.post("/api/auth/sign-out", headers=ada.headers)
    assert r.status_code == 200, r.text
    service_client.cookies.clear()
    r = await service_client.get(f"/todos/{todo['id']}", headers=ada.headers)
    assert r.status_code == 401
    assert "www-authenticate" in r.headers


# --------------------------------------------------------------------------------------
# Rows land in the service's own schema
# --------------------------------------------------------------------------------------
async def test_rows_land_in_the_services_own_schema(
    both_clients: tuple[httpx.AsyncClient, httpx.AsyncClient], full_db: str
) -> None:
    web, trading = both_clients
    ada = await sign_up(web)  # one session, valid in both services
    from_web = await create_todo(web, ada, "from web")
    from_trading = await create_todo(trading, ada, "from trading")

    async with connect(full_db) as conn:
        web_ids = {r["id"] for r in await conn.fetch("SELECT id FROM web.todos")}
        trading_ids = {r["id"] for r in await conn.fetch("SELECT id FROM trading.todos")}
    assert web_ids == {from_web["id"]}
    assert trading_ids == {from_trading["id"]}

    r = await web.get("/todos", headers=ada.headers)
    assert [t["id"] for t in r.json()["items"]] == [from_web["id"]]
    r = await trading.get("/todos", headers=ada.headers)
    assert [t["id"] for t in r.json()["items"]] == [from_trading["id"]]
    # Each service sees only its own table, even by id.
    r = await web.get(f"/todos/{from_trading['id']}", headers=ada.headers)
    assert r.status_code == 404
    r = await trading.delete(f"/todos/{from_web['id']}", headers=ada.headers)
    assert r.status_code == 404


async def test_deleting_a_user_cascades_to_both_schemas(
    both_clients: tuple[httpx.AsyncClient, httpx.AsyncClient], full_db: str
) -> None:
    web, trading = both_clients
    ada = await sign_up(web, "Ada")
    bob = await sign_up(web, "Bob")
    for client in (web, trading):
        await create_todo(client, ada, "ada's")
        await create_todo(client, ada, "ada's too")
        await create_todo(client, bob, "bob's")

    async with connect(full_db) as conn:

        async def owners(schema: str) -> list[str]:
            rows = await conn.fetch(f"SELECT user_id FROM {schema}.todos ORDER BY user_id")
            return [r["user_id"] for r in rows]

        assert sorted(await owners("web")) == sorted([ada.user_id] * 2 + [bob.user_id])
        assert sorted(await owners("trading")) == sorted([ada.user_id] * 2 + [bob.user_id])
        await conn.execute('DELETE FROM "user" WHERE id = $1', ada.user_id)
        assert await owners("web") == [bob.user_id]
        assert await owners("trading") == [bob.user_id]


async def test_a_due_session_slides_and_its_cookie_with_it(
    service_client: httpx.AsyncClient, full_db: str
) -> None:
    # A cookie client that only ever calls /todos must not lose its cookie after 7 days while
    # the session it holds keeps sliding.
    r = await service_client.post(
        "/api/auth/sign-up/email",
        json={"name": "Cy", "email": "cy@example.com", "password": "correct horse battery"},
    )
    token = r.json()["token"]
    async with connect(full_db) as conn:  # set two days ago: the refresh is due
        await conn.execute(
            "UPDATE session SET expires_at = expires_at - interval '2 days', "
            "updated_at = updated_at - interval '2 days' WHERE token = $1",
            token,
        )
        before = await conn.fetchval("SELECT expires_at FROM session WHERE token = $1", token)
    r = await service_client.get("/todos")
    assert r.status_code == 200, r.text
    set_cookie = r.headers.get("set-cookie", "")
    assert "better-auth.session_token=" in set_cookie
    assert "Max-Age=604800" in set_cookie
    async with connect(full_db) as conn:
        after = await conn.fetchval("SELECT expires_at FROM session WHERE token = $1", token)
    assert after - before > timedelta(days=1)
