"""The web service's wire types: TodoCreate, TodoUpdate (all optional), TodoRead, TodoPage."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from service_kit.schemas import ApiModel, InputModel, PatchModel, Timestamp
from web.models import DESCRIPTION_MAX, TITLE_MAX

# Postgres text cannot hold NUL: refuse it as a validation error, not a database error.
_NO_NUL = r"^[^\x00]*$"
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX, pattern=_NO_NUL),
]
Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX, pattern=_NO_NUL)]


class TodoCreate(InputModel):
    title: Title
    description: Description | None = None
    completed: bool = False


class TodoUpdate(PatchModel):
    not_null = ("title", "completed")

    title: Title | None = None
    description: Description | None = None
    completed: bool | None = None


class TodoRead(ApiModel):
    id: str
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: Timestamp
    updated_at: Timestamp


class TodoPage(ApiModel):
    items: list[TodoRead]
    next_cursor: str | None
