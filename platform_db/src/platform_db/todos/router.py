"""The /todos routes, built for a service's own table. Scoping to the caller lives in
`_owned` and `_get_owned`, nowhere else: another user's todo is a 404, like a missing one."""

from __future__ import annotations

import base64
import binascii
import functools
import json
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy import (
    Executable,
    Row,
    Table,
    and_,
    bindparam,
    delete,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from platform_db.auth.deps import CurrentUser
from platform_db.auth.tokens import generate_id
from platform_db.db import DbSession
from platform_db.errors import AppError, ErrorBody, NotFound, Unauthorized, responses
from platform_db.models import User
from platform_db.todos.models import TodoBase
from platform_db.todos.schemas import TodoCreate, TodoPage, TodoRead, TodoUpdate
from platform_db.types import utcnow

T = TypeVar("T", bound=TodoBase)

PAGE_DEFAULT, PAGE_MAX = 20, 100


class TodoNotFound(NotFound):
    code = "TODO_NOT_FOUND"
    message = "Todo not found"


class InvalidCursor(AppError):
    status_code = 400
    code = "INVALID_CURSOR"
    message = "The cursor is not one this API issued"


def encode_cursor(created_at: datetime, todo_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), todo_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, todo_id = json.loads(raw)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or not isinstance(todo_id, str) or "\x00" in todo_id:
            raise ValueError
        when = when.astimezone(UTC)  # out of range once in UTC: OverflowError
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor() from None
    return when, todo_id


def todo_router(model: type[T], *, prefix: str = "/todos", tag: str = "todos") -> APIRouter:
    """CRUD on `model` (a table built from TodoBase), scoped to the signed-in user.

    Each route is one Core statement (`RETURNING` for writes) turned straight into the response
    model: no ORM instances, no read-modify-write, so a PATCH or DELETE racing another is
    decided by the row lock of its single UPDATE or DELETE.
    """
    router = APIRouter(
        prefix=prefix,
        tags=[tag],
        responses={401: {"model": ErrorBody, "description": Unauthorized.code}},
    )
    table: Table = model.__table__  # type: ignore[attr-defined]
    c = table.c
    columns = tuple(table.c)

    # Scoping to the owner lives here, once: every statement below is built from these two
    # conditions, with the caller's id bound at execution. Built once, not per request
    # (building a statement costs more than running it).
    owner = c.user_id == bindparam("owner")
    one = and_(owner, c.id == bindparam("todo_id"))
    get_stmt = select(*columns).where(one)
    delete_stmt = delete(table).where(one).returning(c.id)
    insert_stmt = insert(table).returning(*columns)

    @functools.cache
    def _update_stmt(fields: frozenset[str]) -> Executable:
        """UPDATE of exactly these fields (a PATCH changes only what it sends), built once."""
        # (A bind parameter may not be named after a column it sets: hence `new_`.)
        values: dict[str, Any] = {name: bindparam(f"new_{name}") for name in fields}
        values["updated_at"] = bindparam("new_updated_at")
        return update(table).where(one).values(**values).returning(*columns)

    names = tuple(col.name for col in columns)

    def _read(row: Row[Any]) -> TodoRead:
        # From a dict by field name: validating the Row by attributes would first try each
        # camelCase alias, and every miss costs SQLAlchemy an exception.
        return TodoRead.model_validate(dict(zip(names, row, strict=True)))

    def _params(user: User, todo_id: str) -> dict[str, str]:
        if "\x00" in todo_id:  # no id holds a NUL; Postgres text cannot even compare one
            raise TodoNotFound()
        return {"owner": user.id, "todo_id": todo_id}

    async def _one(db: AsyncSession, stmt: Executable, params: dict[str, Any]) -> TodoRead:
        row = (await db.execute(stmt, params)).first()
        if row is None:
            raise TodoNotFound()
        return _read(row)

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        response_model=TodoRead,
        responses={201: {"headers": {"Location": {"description": "URL of the new todo"}}}},
    )
    async def create_todo(
        body: TodoCreate, request: Request, response: Response, db: DbSession, user: CurrentUser
    ) -> TodoRead:
        """Create a todo for the signed-in user."""
        now = utcnow()
        values = {"id": generate_id(), "user_id": user.id, "created_at": now, "updated_at": now}
        todo = await _one(db, insert_stmt, values | body.model_dump())
        # Built by hand: url_for walks every route of the app on each call.
        response.headers["Location"] = f"{str(request.base_url).rstrip('/')}{prefix}/{todo.id}"
        return todo

    @router.get("", response_model=TodoPage, responses=responses(InvalidCursor))
    async def list_todos(
        db: DbSession,
        user: CurrentUser,
        limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="Page size")] = PAGE_DEFAULT,
        cursor: Annotated[
            str | None, Query(max_length=512, description="`nextCursor` of the previous page")
        ] = None,
        completed: Annotated[bool | None, Query(description="Only done or only open")] = None,
    ) -> TodoPage:
        """The signed-in user's todos, newest first, a page at a time."""
        stmt = select(*columns).where(owner)
        if completed is not None:
            stmt = stmt.where(c.completed == completed)
        if cursor is not None:
            after_created, after_id = decode_cursor(cursor)
            stmt = stmt.where(tuple_(c.created_at, c.id) < tuple_(after_created, after_id))
        stmt = stmt.order_by(c.created_at.desc(), c.id.desc()).limit(limit + 1)
        rows = (await db.execute(stmt, {"owner": user.id})).all()
        more = len(rows) > limit
        items = [_read(r) for r in rows[:limit]]
        next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if more else None
        return TodoPage(items=items, next_cursor=next_cursor)

    @router.get("/{todo_id}", response_model=TodoRead, responses=responses(TodoNotFound))
    async def get_todo(todo_id: str, db: DbSession, user: CurrentUser) -> TodoRead:
        """One of the signed-in user's todos."""
        return await _one(db, get_stmt, _params(user, todo_id))

    @router.patch("/{todo_id}", response_model=TodoRead, responses=responses(TodoNotFound))
    async def update_todo(
        todo_id: str, body: TodoUpdate, db: DbSession, user: CurrentUser
    ) -> TodoRead:
        """Change some fields of one of the signed-in user's todos."""
        params = _params(user, todo_id)
        changes = body.model_dump(exclude_unset=True)
        if not changes:
            return await _one(db, get_stmt, params)
        changes["updated_at"] = utcnow()
        new = {f"new_{name}": value for name, value in changes.items()}
        return await _one(db, _update_stmt(frozenset(changes) - {"updated_at"}), params | new)

    @router.delete(
        "/{todo_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        responses=responses(TodoNotFound),
    )
    async def delete_todo(todo_id: str, db: DbSession, user: CurrentUser) -> Response:
        """Delete one of the signed-in user's todos."""
        result = await db.execute(delete_stmt, _params(user, todo_id))
        if result.first() is None:
            raise TodoNotFound()
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
