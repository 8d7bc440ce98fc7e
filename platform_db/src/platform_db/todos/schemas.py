"""TodoCreate, TodoUpdate (all optional), TodoRead and a page of them."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, StringConstraints, model_validator

from platform_db.schemas import ApiModel, Timestamp
from platform_db.todos.models import DESCRIPTION_MAX, TITLE_MAX

# Postgres text cannot hold NUL: refuse it as a validation error, not a database error.
_NO_NUL = r"^[^\x00]*$"
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX, pattern=_NO_NUL),
]
Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX, pattern=_NO_NUL)]


class _Input(ApiModel):
    model_config = ConfigDict(extra="forbid")


class TodoCreate(_Input):
    title: Title
    description: Description | None = None
    completed: bool = False


class TodoUpdate(_Input):
    title: Title | None = None
    description: Description | None = None
    completed: bool | None = None

    @model_validator(mode="after")
    def _no_null_for_required(self) -> TodoUpdate:
        for name in ("title", "completed"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


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
