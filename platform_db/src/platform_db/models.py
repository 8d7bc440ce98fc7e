"""The auth tables, column for column as better-auth 1.7.25 generates them for Drizzle: its four
tables, and `rate_limit` (its `rateLimit` model, for `rateLimit.storage: "database"`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, Integer, Text, func, text
from sqlmodel import Field, SQLModel

from service_kit.metadata import metadata
from service_kit.types import UTCDateTime, utcnow

__all__ = [
    "PLATFORM_TABLES",
    "Account",
    "RateLimit",
    "Session",
    "User",
    "Verification",
    "metadata",
]

_NOW = text("now()")
# The database's clock as the timestamp columns hold it: UTC wall-clock time (timestamp without
# time zone, as better-auth's).
NOW_UTC = func.timezone("utc", func.now())


def _text(*, nullable: bool = False, unique: bool = False) -> Column[str]:
    return Column(Text, nullable=nullable, unique=unique)


def _timestamp(*, nullable: bool = False, server_now: bool = False) -> Column[datetime]:
    return Column(UTCDateTime, nullable=nullable, server_default=_NOW if server_now else None)


class User(SQLModel, table=True):
    __tablename__ = "user"

    id: str = Field(sa_column=Column(Text, primary_key=True))
    name: str = Field(sa_column=_text())
    email: str = Field(sa_column=_text(unique=True))
    email_verified: bool = Field(
        default=False,
        sa_column=Column(Boolean, nullable=False, server_default=text("false")),
    )
    image: str | None = Field(default=None, sa_column=_text(nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp(server_now=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp(server_now=True))


class Session(SQLModel, table=True):
    __tablename__ = "session"
    __table_args__ = (Index("session_userId_idx", "user_id"),)

    id: str = Field(sa_column=Column(Text, primary_key=True))
    expires_at: datetime = Field(sa_column=_timestamp())
    token: str = Field(sa_column=_text(unique=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp(server_now=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    ip_address: str | None = Field(default=None, sa_column=_text(nullable=True))
    user_agent: str | None = Field(default=None, sa_column=_text(nullable=True))
    user_id: str = Field(
        sa_column=Column(Text, ForeignKey("user.id", ondelete="CASCADE"), nullable=False)
    )


class Account(SQLModel, table=True):
    __tablename__ = "account"
    __table_args__ = (Index("account_userId_idx", "user_id"),)

    id: str = Field(sa_column=Column(Text, primary_key=True))
    account_id: str = Field(sa_column=_text())
    provider_id: str = Field(sa_column=_text())
    user_id: str = Field(
        sa_column=Column(Text, ForeignKey("user.id", ondelete="CASCADE"), nullable=False)
    )
    access_token: str | None = Field(default=None, sa_column=_text(nullable=True))
    refresh_token: str | None = Field(default=None, sa_column=_text(nullable=True))
    id_token: str | None = Field(default=None, sa_column=_text(nullable=True))
    access_token_expires_at: datetime | None = Field(
        default=None, sa_column=_timestamp(nullable=True)
    )
    refresh_token_expires_at: datetime | None = Field(
        default=None, sa_column=_timestamp(nullable=True)
    )
    scope: str | None = Field(default=None, sa_column=_text(nullable=True))
    password: str | None = Field(default=None, sa_column=_text(nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp(server_now=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())


class Verification(SQLModel, table=True):
    __tablename__ = "verification"
    __table_args__ = (Index("verification_identifier_idx", "identifier"),)

    id: str = Field(sa_column=Column(Text, primary_key=True))
    identifier: str = Field(sa_column=_text())
    value: str = Field(sa_column=_text())
    expires_at: datetime = Field(sa_column=_timestamp())
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp(server_now=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp(server_now=True))


class RateLimit(SQLModel, table=True):
    """One client's counter on one auth path, shared by every replica (and by better-auth
    apps with `rateLimit.storage: "database"` on this database)."""

    __tablename__ = "rate_limit"

    id: str = Field(sa_column=Column(Text, primary_key=True))
    key: str = Field(sa_column=_text(unique=True))  # "<ip>|<path>", as better-auth makes it
    count: int = Field(sa_column=Column(Integer, nullable=False))
    # Epoch milliseconds of the last counted request (better-auth's `lastRequest`).
    last_request: int = Field(sa_column=Column(BigInteger, nullable=False))


# The tables the platform's Alembic tree owns; everything else in the database belongs to others.
PLATFORM_TABLES = frozenset(
    str(model.__tablename__) for model in (User, Session, Account, Verification, RateLimit)
)
