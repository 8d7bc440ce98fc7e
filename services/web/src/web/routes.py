"""The web service's endpoints: /todos, scoped to the signed-in user.

Scoping lives in `todos` (the kit's OwnedTable): another user's todo is a 404, like a
missing one. Each route is one statement (`RETURNING` for writes) turned straight into the
response model: a PATCH or DELETE racing another is decided by the row lock of its statement.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from platform_auth.deps import CurrentUser
from service_kit.errors import NotFound
from service_kit.ids import generate_id
from service_kit.owned import OwnedTable, encode_cursor
from service_kit.transaction import ReadDb, WriteDb
from service_kit.types import utcnow
from web.models import Todo
from web.schemas import TodoCreate, TodoPage, TodoRead, TodoUpdate

PREFIX = "/todos"
PAGE_DEFAULT, PAGE_MAX = 20, 100
LOCATION = {"description": "URL of the new todo", "schema": {"type": "string", "format": "uri"}}

todos = OwnedTable(Todo.__table__)  # type: ignore[attr-defined]

router = APIRouter(
    prefix=PREFIX,
    tags=["todos"],
)


class TodoNotFound(NotFound):
    code = "TODO_NOT_FOUND"
    message = "Todo not found"


def _found(row: dict[str, Any] | None) -> TodoRead:
    if row is None:
        raise TodoNotFound()
    return TodoRead.model_validate(row)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TodoRead,
    responses={201: {"headers": {"Location": LOCATION}}},
)
async def create_todo(
    body: TodoCreate, request: Request, response: Response, db: WriteDb, user: CurrentUser
) -> TodoRead:
    """Create a todo for the signed-in user."""
    now = utcnow()
    values = {"id": generate_id(), "user_id": user.id, "created_at": now, "updated_at": now}
    todo = TodoRead.model_validate(await todos.created(db, values | body.model_dump()))
    # Built by hand: url_for walks every route of the app on each call.
    response.headers["Location"] = f"{str(request.base_url).rstrip('/')}{PREFIX}/{todo.id}"
    return todo


@router.get("", response_model=TodoPage)
async def list_todos(
    db: ReadDb,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="Page size")] = PAGE_DEFAULT,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`nextCursor` of the previous page")
    ] = None,
    completed: Annotated[bool | None, Query(description="Only done or only open")] = None,
) -> TodoPage:
    """The signed-in user's todos, newest first, a page at a time."""
    equal = None if completed is None else {"completed": completed}
    rows = await todos.page(db, user.id, equal=equal, cursor=cursor, limit=limit)
    items = [TodoRead.model_validate(r) for r in rows[:limit]]
    more = len(rows) > limit
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if more else None
    return TodoPage(items=items, next_cursor=next_cursor)


@router.get("/{todo_id}", response_model=TodoRead)
async def get_todo(todo_id: str, db: ReadDb, user: CurrentUser) -> TodoRead:
    """One of the signed-in user's todos."""
    return _found(await todos.one(db, user.id, todo_id))


@router.patch("/{todo_id}", response_model=TodoRead)
async def update_todo(todo_id: str, body: TodoUpdate, db: WriteDb, user: CurrentUser) -> TodoRead:
    """Change some fields of one of the signed-in user's todos."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        return _found(await todos.one(db, user.id, todo_id))
    changes["updated_at"] = utcnow()
    return _found(await todos.updated(db, user.id, todo_id, changes))


@router.delete(
    "/{todo_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
)
async def delete_todo(todo_id: str, db: WriteDb, user: CurrentUser) -> Response:
    """Delete one of the signed-in user's todos."""
    if not await todos.deleted(db, user.id, todo_id):
        raise TodoNotFound()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
