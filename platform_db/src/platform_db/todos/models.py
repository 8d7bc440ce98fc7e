"""The columns of a service's `todos` table; the service picks the schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Index, Text, text
from sqlmodel import Field, SQLModel

from platform_db.types import UTCDateTime, utcnow

TITLE_MAX = 200
DESCRIPTION_MAX = 2000


class TodoBase(SQLModel):
    id: str = Field(primary_key=True, sa_type=Text)
    user_id: str = Field(foreign_key="user.id", ondelete="CASCADE", nullable=False, sa_type=Text)
    title: str = Field(nullable=False, sa_type=Text)
    description: str | None = Field(default=None, nullable=True, sa_type=Text)
    completed: bool = Field(
        default=False, nullable=False, sa_column_kwargs={"server_default": text("false")}
    )
    created_at: datetime = Field(
        default_factory=utcnow,
        nullable=False,
        sa_type=UTCDateTime,
        sa_column_kwargs={"server_default": text("now()")},
    )
    updated_at: datetime = Field(
        default_factory=utcnow,
        nullable=False,
        sa_type=UTCDateTime,
        sa_column_kwargs={"server_default": text("now()")},
    )


def todo_table_args(schema: str) -> tuple[Any, ...]:
    """Constraints and the index of a todos table in `schema`.

    The index serves "my todos, newest first" (and the keyset cursor) with a backward scan.
    """
    return (
        Index(None, "user_id", "created_at", "id"),
        CheckConstraint(f"char_length(title) BETWEEN 1 AND {TITLE_MAX}", name="title_length"),
        CheckConstraint(
            f"description IS NULL OR char_length(description) <= {DESCRIPTION_MAX}",
            name="description_length",
        ),
        {"schema": schema},
    )
