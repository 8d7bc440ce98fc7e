"""Rows that belong to one owner (a user): statements scoped to the owner and keyset cursors.

A service parametrises `OwnedTable` with its own table and writes its own routes and schemas
on top; the scoping lives here once, so no route can forget it. Another owner's row is
indistinguishable from a missing one: the statement simply finds nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Executable,
    Result,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    insert,
    select,
    tuple_,
    update,
)

from service_kit.errors import AppError


class Executes(Protocol):
    """What runs the statements: a request's connection (ReadDb, WriteDb) or a session."""

    async def execute(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None, /
    ) -> Result[Any]: ...


class InvalidCursor(AppError):
    status_code = 400
    code = "INVALID_CURSOR"
    message = "The cursor is not one this API issued"


def encode_cursor(created_at: datetime, key: str) -> str:
    """An opaque cursor for the position after (created_at, key)."""
    raw = json.dumps([created_at.isoformat(), key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor from `encode_cursor` names; InvalidCursor for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, key = json.loads(raw)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or not isinstance(key, str) or "\x00" in key:
            raise ValueError
        when = when.astimezone(UTC)  # out of range once in UTC: OverflowError
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor() from None
    return when, key


class OwnedTable:
    """Statements on `table` scoped to one owner, built once (building a statement costs more
    than running it), with the owner's id and the row's key bound at execution.

    The table needs a text key column (`key`), an owner column (`owner`) and a creation time
    (`created_at`) for newest-first keyset pages.
    """

    def __init__(
        self, table: Table, *, owner: str = "user_id", key: str = "id", created: str = "created_at"
    ) -> None:
        self.table = table
        self.columns = tuple(table.c)
        self.names = tuple(col.name for col in self.columns)
        self._owner_col, self._key_col = table.c[owner], table.c[key]
        self._created_col = table.c[created]
        self.owned: ColumnElement[bool] = self._owner_col == bindparam("owner")
        one = and_(self.owned, self._key_col == bindparam("key"))
        self._one = one
        self.get: Executable = select(*self.columns).where(one)
        self.delete: Executable = delete(table).where(one).returning(self._key_col)
        self.insert: Executable = insert(table).returning(*self.columns)
        # At most one entry per subset of the columns a client may change.
        self._updates: dict[frozenset[str], Executable] = {}

    def update(self, fields: frozenset[str]) -> Executable:
        """UPDATE of exactly these fields (set as `new_<name>`), built once per set."""
        stmt = self._updates.get(fields)
        if stmt is None:
            # (A bind parameter may not be named after a column it sets: hence `new_`.)
            values: dict[str, Any] = {name: bindparam(f"new_{name}") for name in fields}
            stmt = update(self.table).where(self._one).values(**values).returning(*self.columns)
            self._updates[fields] = stmt
        return stmt

    @staticmethod
    def params(owner_id: str, key: str) -> dict[str, str] | None:
        """Bind values for one row; None when no row can have that key."""
        if "\x00" in key:  # no key holds a NUL; Postgres text cannot even compare one
            return None
        return {"owner": owner_id, "key": key}

    @staticmethod
    def changes(values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` as the bind parameters of `update(frozenset(values))`."""
        return {f"new_{name}": value for name, value in values.items()}

    def page(self, *where: ColumnElement[bool], cursor: str | None, limit: int) -> Select[Any]:
        """The owner's rows, newest first, after `cursor`, one more than `limit` (to tell
        whether there is a next page). Bind `owner` when executing."""
        stmt = select(*self.columns).where(self.owned, *where)
        if cursor is not None:
            after_created, after_key = decode_cursor(cursor)
            stmt = stmt.where(
                tuple_(self._created_col, self._key_col) < tuple_(after_created, after_key)
            )
        order = (self._created_col.desc(), self._key_col.desc())
        return stmt.order_by(*order).limit(limit + 1)

    def as_dict(self, row: Row[Any]) -> dict[str, Any]:
        # By column name: validating a Row by attributes would first try each camelCase
        # alias, and every miss costs SQLAlchemy an exception.
        return dict(zip(self.names, row, strict=True))

    async def one(
        self, db: Executes, stmt: Executable, params: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The single row `stmt` returns, as a dict, or None."""
        row = (await db.execute(stmt, dict(params))).first()
        return None if row is None else self.as_dict(row)

    async def created(self, db: Executes, values: Mapping[str, Any]) -> dict[str, Any]:
        """INSERT one row of `values`; the row as stored (defaults filled in)."""
        return self.as_dict((await db.execute(self.insert, dict(values))).one())

    async def rows(
        self, db: Executes, stmt: Executable, params: Mapping[str, Any]
    ) -> Sequence[dict[str, Any]]:
        return [self.as_dict(r) for r in (await db.execute(stmt, dict(params))).all()]
