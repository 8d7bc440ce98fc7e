"""The /todos routes, built for a service's own table. Scoping to the caller lives in
`_owned` and `_get_owned`, nowhere else: another user's todo is a 404, like a missing one."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy import Select, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

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
    """CRUD on `model` (a table built from TodoBase), scoped to the signed-in user."""
    router = APIRouter(
        prefix=prefix,
        tags=[tag],
        responses={401: {"model": ErrorBody, "description": Unauthorized.code}},
    )

    def _owned(user: User) -> Select[T]:
        return select(model).where(col(model.user_id) == user.id)

    async def _get_owned(db: AsyncSession, user: User, todo_id: str, *, lock: bool = False) -> T:
        if "\x00" in todo_id:  # no id holds a NUL; Postgres text cannot even compare one
            raise TodoNotFound()
        stmt = _owned(user).where(col(model.id) == todo_id)
        if lock:
            stmt = stmt.with_for_update()
        todo = (await db.execute(stmt)).scalar_one_or_none()
        if todo is None:
            raise TodoNotFound()
        return todo

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        response_model=TodoRead,
        responses={201: {"headers": {"Location": {"description": "URL of the new todo"}}}},
    )
    async def create_todo(
        body: TodoCreate, request: Request, response: Response, db: DbSession, user: CurrentUser
    ) -> Any:
        """Create a todo for the signed-in user."""
        now = utcnow()
        todo = model(
            id=generate_id(), user_id=user.id, created_at=now, updated_at=now, **body.model_dump()
        )
        db.add(todo)
        await db.flush()
        response.headers["Location"] = str(request.url_for("get_todo", todo_id=todo.id))
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
        stmt = _owned(user)
        if completed is not None:
            stmt = stmt.where(col(model.completed) == completed)
        if cursor is not None:
            after_created, after_id = decode_cursor(cursor)
            stmt = stmt.where(
                tuple_(col(model.created_at), col(model.id)) < tuple_(after_created, after_id)
            )
        stmt = stmt.order_by(col(model.created_at).desc(), col(model.id).desc()).limit(limit + 1)
        rows = list((await db.execute(stmt)).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
        return TodoPage(items=[TodoRead.model_validate(r) for r in rows], next_cursor=next_cursor)

    @router.get("/{todo_id}", response_model=TodoRead, responses=responses(TodoNotFound))
    async def get_todo(todo_id: str, db: DbSession, user: CurrentUser) -> Any:
        """One of the signed-in user's todos."""
        return await _get_owned(db, user, todo_id)

    @router.patch("/{todo_id}", response_model=TodoRead, responses=responses(TodoNotFound))
    async def update_todo(todo_id: str, body: TodoUpdate, db: DbSession, user: CurrentUser) -> Any:
        """Change some fields of one of the signed-in user's todos."""
        todo = await _get_owned(db, user, todo_id, lock=True)
        changes = body.model_dump(exclude_unset=True)
        if changes:
            for name, value in changes.items():
                setattr(todo, name, value)
            todo.updated_at = utcnow()
            await db.flush()
        return todo

    @router.delete(
        "/{todo_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        responses=responses(TodoNotFound),
    )
    async def delete_todo(todo_id: str, db: DbSession, user: CurrentUser) -> Response:
        """Delete one of the signed-in user's todos."""
        todo = await _get_owned(db, user, todo_id, lock=True)
        await db.delete(todo)
        await db.flush()
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
