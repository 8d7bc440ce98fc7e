"""The web service's wire types: TodoCreate, TodoUpdate (all optional), TodoRead, TodoPage."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, StringConstraints, model_validator

from service_kit.schemas import ApiModel, Timestamp
from web.models import DESCRIPTION_MAX, TITLE_MAX

# Postgres text cannot hold NUL: refuse it as a validation error, not a database error.
_NO_NUL = r"^[^\x00]*$"
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX, pattern=_NO_NUL),
]
Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX, pattern=_NO_NUL)]


class _Input(ApiModel):
    # strict: JSON types as documented (no 0 for false, no "1" for true)
    model_config = ConfigDict(extra="forbid", strict=True)


class TodoCreate(_Input):
    title: Title
    description: Description | None = None
    completed: bool = False


def _not_nullable(schema: dict[str, Any]) -> None:
    """title and completed may be left out of a PATCH, not set to null: say so in OpenAPI."""
    for name in ("title", "completed"):
        prop = schema["properties"][name]
        (kept,) = [s for s in prop.pop("anyOf") if s.get("type") != "null"]
        prop.update(kept)
        prop.pop("default", None)


class TodoUpdate(_Input):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_not_nullable)

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
