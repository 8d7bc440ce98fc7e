"""The web service's tables, in its own Postgres schema `web`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, Text, text
from sqlmodel import Field, SQLModel

from platform_db.models import User
from service_kit.metadata import metadata
from service_kit.types import UTCDateTime, utcnow

SCHEMA = "web"
TITLE_MAX = 200
DESCRIPTION_MAX = 2000


class Todo(SQLModel, table=True):
    __tablename__ = "todos"
    __table_args__ = (
        # "My todos, newest first" (and the keyset cursor), by a backward index scan.
        Index(None, "user_id", "created_at", "id"),
        CheckConstraint(f"char_length(title) BETWEEN 1 AND {TITLE_MAX}", name="title_length"),
        CheckConstraint(
            f"description IS NULL OR char_length(description) <= {DESCRIPTION_MAX}",
            name="description_length",
        ),
        {"schema": SCHEMA},
    )

    id: str = Field(primary_key=True, sa_type=Text)
    user_id: str = Field(
        foreign_key=f"{User.__tablename__}.id", ondelete="CASCADE", nullable=False, sa_type=Text
    )
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


__all__ = ["SCHEMA", "Todo", "metadata"]
