"""The floor: a bare Starlette app on a raw asyncpg pool doing the same SQL per request.

Each todo route looks the session up by token (joined to its user, as our service does),
then runs the todo query; writes run in a transaction. No ORM, no dependency injection,
no response models: this is about as fast as Python gets on this stack, so our service's
throughput is reported as a ratio of this one's.

Run: `DATABASE_URL=... python -m bench.floor --port 8011` (uvicorn, one worker).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import string
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SESSION_SQL = """
SELECT s.id, s.expires_at, s.token, s.created_at, s.updated_at, s.ip_address, s.user_agent,
       s.user_id, u.id, u.name, u.email, u.email_verified, u.image, u.created_at, u.updated_at
FROM "session" s JOIN "user" u ON u.id = s.user_id
WHERE s.token = $1
"""
COLUMNS = "id, user_id, title, description, completed, created_at, updated_at"
LIST_SQL = f"""
SELECT {COLUMNS} FROM web.todos WHERE user_id = $1
ORDER BY created_at DESC, id DESC LIMIT $2
"""
LIST_AFTER_SQL = f"""
SELECT {COLUMNS} FROM web.todos WHERE user_id = $1 AND (created_at, id) < ($3, $4)
ORDER BY created_at DESC, id DESC LIMIT $2
"""
GET_SQL = f"SELECT {COLUMNS} FROM web.todos WHERE user_id = $1 AND id = $2"
LOCK_SQL = f"SELECT {COLUMNS} FROM web.todos WHERE user_id = $1 AND id = $2 FOR UPDATE"
INSERT_SQL = f"""
INSERT INTO web.todos ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {COLUMNS}
"""
UPDATE_SQL = f"""
UPDATE web.todos SET title = $2, description = $3, completed = $4, updated_at = $5
WHERE id = $1 RETURNING {COLUMNS}
"""
ALPHABET = string.ascii_letters + string.digits
UNAUTHORIZED = {"code": "UNAUTHORIZED", "message": "Not signed in"}
NOT_FOUND = {"code": "TODO_NOT_FOUND", "message": "Todo not found"}


def _iso(value: datetime) -> str:
    return value.isoformat() + "Z"


def _todo(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row[0],
        "userId": row[1],
        "title": row[2],
        "description": row[3],
        "completed": row[4],
        "createdAt": _iso(row[5]),
        "updatedAt": _iso(row[6]),
    }


def _cursor(row: asyncpg.Record) -> str:
    raw = json.dumps([row[5].replace(tzinfo=UTC).isoformat(), row[0]], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str] | None:
    try:
        created, todo_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created).astimezone(UTC).replace(tzinfo=None), str(todo_id)
    except ValueError:
        return None


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def _user_id(conn: asyncpg.Connection, request: Request) -> str | None:
    """The session lookup our service does: by token, joined to the user, not expired."""
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer "):
        return None
    row = await conn.fetchrow(SESSION_SQL, header[7:])
    if row is None or row[1] <= datetime.now(UTC).replace(tzinfo=None):
        return None
    user_id: str = row[8]
    return user_id


async def list_todos(request: Request) -> Response:
    try:
        limit = min(max(int(request.query_params.get("limit", "20")), 1), 100)
    except ValueError:
        limit = 20
    cursor = request.query_params.get("cursor")
    after = _decode_cursor(cursor) if cursor else None
    async with _pool(request).acquire() as conn:
        user_id = await _user_id(conn, request)
        if user_id is None:
            return JSONResponse(UNAUTHORIZED, status_code=401)
        if after is not None:
            rows = await conn.fetch(LIST_AFTER_SQL, user_id, limit + 1, *after)
        else:
            rows = await conn.fetch(LIST_SQL, user_id, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return JSONResponse(
        {"items": [_todo(r) for r in rows], "nextCursor": _cursor(rows[-1]) if more else None}
    )


async def get_todo(request: Request) -> Response:
    async with _pool(request).acquire() as conn:
        user_id = await _user_id(conn, request)
        if user_id is None:
            return JSONResponse(UNAUTHORIZED, status_code=401)
        row = await conn.fetchrow(GET_SQL, user_id, request.path_params["todo_id"])
    if row is None:
        return JSONResponse(NOT_FOUND, status_code=404)
    return JSONResponse(_todo(row))


async def create_todo(request: Request) -> Response:
    body = json.loads(await request.body())
    title = body.get("title")
    if not isinstance(title, str) or not 1 <= len(title.strip()) <= 200:
        return JSONResponse({"code": "VALIDATION_ERROR", "message": "title"}, status_code=422)
    now = datetime.now(UTC).replace(tzinfo=None)
    todo_id = "".join(secrets.choice(ALPHABET) for _ in range(32))
    async with _pool(request).acquire() as conn, conn.transaction():
        user_id = await _user_id(conn, request)
        if user_id is None:
            return JSONResponse(UNAUTHORIZED, status_code=401)
        row = await conn.fetchrow(
            INSERT_SQL,
            todo_id,
            user_id,
            title.strip(),
            body.get("description"),
            bool(body.get("completed", False)),
            now,
        )
    return JSONResponse(
        _todo(row), status_code=201, headers={"location": f"{request.base_url}todos/{todo_id}"}
    )


async def update_todo(request: Request) -> Response:
    body = json.loads(await request.body())
    async with _pool(request).acquire() as conn, conn.transaction():
        user_id = await _user_id(conn, request)
        if user_id is None:
            return JSONResponse(UNAUTHORIZED, status_code=401)
        row = await conn.fetchrow(LOCK_SQL, user_id, request.path_params["todo_id"])
        if row is None:
            return JSONResponse(NOT_FOUND, status_code=404)
        row = await conn.fetchrow(
            UPDATE_SQL,
            row[0],
            body.get("title", row[2]),
            body.get("description", row[3]),
            bool(body.get("completed", row[4])),
            datetime.now(UTC).replace(tzinfo=None),
        )
    return JSONResponse(_todo(row))


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app(database_url: str, pool_size: int) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(
            database_url, min_size=pool_size, max_size=pool_size
        )
        try:
            yield
        finally:
            await app.state.pool.close()

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/todos", list_todos, methods=["GET"]),
            Route("/todos", create_todo, methods=["POST"]),
            Route("/todos/{todo_id}", get_todo, methods=["GET"]),
            Route("/todos/{todo_id}", update_todo, methods=["PATCH"]),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--pool-size", type=int, default=int(os.environ.get("DB_POOL_SIZE", 20)))
    args = parser.parse_args()
    url = os.environ["DATABASE_URL"]
    # The same uvicorn settings `web serve` uses (one worker, no access log).
    uvicorn.run(
        create_app(url, args.pool_size),
        host=args.host,
        port=args.port,
        log_level=os.environ.get("LOG_LEVEL", "warning").lower(),
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        access_log=False,
    )


if __name__ == "__main__":
    main()
