"""Rows that belong to one owner (a user): statements scoped to the owner and keyset cursors.

A service parametrises `OwnedTable` with its own table and writes its own routes and schemas
on top; the scoping lives here once, so no route can forget it. Another owner's row is
indistinguishable from a missing one: the statement simply finds nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Integer,
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

from service_kit.compiled import Compiled
from service_kit.errors import AppError


class Runs(Protocol):
    """What runs the statements: a request's connection (ReadDb, WriteDb)."""

    async def rows(
        self, statement: Compiled, params: Mapping[str, Any]
    ) -> list[dict[str, Any]]: ...

    async def row(
        self, statement: Compiled, params: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...


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
    """Statements on `table` scoped to one owner, built and compiled once (building a
    statement costs more than running it), with the owner's id and the row's key bound at
    execution.

    The table needs a text key column (`key`), an owner column (`owner`) and a creation time
    (`created_at`) for newest-first keyset pages.
    """

    def __init__(
        self, table: Table, *, owner: str = "user_id", key: str = "id", created: str = "created_at"
    ) -> None:
        self.table = table
        self.columns = tuple(table.c)
        self._owner_col, self._key_col = table.c[owner], table.c[key]
        self._created_col = table.c[created]
        self._owned: ColumnElement[bool] = self._owner_col == bindparam("owner")
        self._one = and_(self._owned, self._key_col == bindparam("key"))
        self._get = Compiled(select(*self.columns).where(self._one))
        self._delete = Compiled(delete(table).where(self._one).returning(self._key_col))
        # At most one entry per subset of the columns a call sets (or filters on).
        self._inserts: dict[frozenset[str], Compiled] = {}
        self._updates: dict[frozenset[str], Compiled] = {}
        self._pages: dict[tuple[frozenset[str], bool], Compiled] = {}

    @staticmethod
    def _params(owner_id: str, key: str) -> dict[str, Any] | None:
        """Bind values for one row; None when no row can have that key."""
        if "\x00" in key:  # no key holds a NUL; Postgres text cannot even compare one
            return None
        return {"owner": owner_id, "key": key}

    async def one(self, db: Runs, owner_id: str, key: str) -> dict[str, Any] | None:
        """The owner's row with this key, or None."""
        params = self._params(owner_id, key)
        return None if params is None else await db.row(self._get, params)

    async def created(self, db: Runs, values: Mapping[str, Any]) -> dict[str, Any]:
        """INSERT one row of `values` (every column without a server default); the row as
        stored, defaults filled in."""
        fields = frozenset(values)
        stmt = self._inserts.get(fields)
        if stmt is None:
            insert_all = insert(self.table).returning(*self.columns)
            stmt = self._inserts[fields] = Compiled(insert_all, keys=sorted(fields))
        row = await db.row(stmt, values)
        assert row is not None  # INSERT ... RETURNING returns its row
        return row

    async def updated(
        self, db: Runs, owner_id: str, key: str, changes: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Set `changes` on the owner's row with this key; the row as stored, or None."""
        params = self._params(owner_id, key)
        if params is None:
            return None
        fields = frozenset(changes)
        stmt = self._updates.get(fields)
        if stmt is None:
            # (A bind parameter may not be named after a column it sets: hence `new_`.)
            values: dict[str, Any] = {name: bindparam(f"new_{name}") for name in fields}
            built = update(self.table).where(self._one).values(**values)
            stmt = self._updates[fields] = Compiled(built.returning(*self.columns))
        return await db.row(stmt, params | {f"new_{n}": v for n, v in changes.items()})

    async def deleted(self, db: Runs, owner_id: str, key: str) -> bool:
        """Delete the owner's row with this key; whether there was one."""
        params = self._params(owner_id, key)
        return params is not None and await db.row(self._delete, params) is not None

    async def page(
        self,
        db: Runs,
        owner_id: str,
        *,
        equal: Mapping[str, Any] | None = None,
        cursor: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """The owner's rows whose columns hold the values in `equal`, newest first, after
        `cursor`, one more than `limit` (to tell whether there is a next page)."""
        equal = equal or {}
        variant = (frozenset(equal), cursor is not None)
        stmt = self._pages.get(variant)
        if stmt is None:
            stmt = self._pages[variant] = Compiled(self._page_statement(*variant))
        params: dict[str, Any] = {"owner": owner_id, "limit": limit + 1}
        params.update({f"eq_{name}": value for name, value in equal.items()})
        if cursor is not None:
            params["after_created"], params["after_key"] = decode_cursor(cursor)
        return await db.rows(stmt, params)

    def _page_statement(self, equal: frozenset[str], after: bool) -> Select[Any]:
        where = [self.table.c[name] == bindparam(f"eq_{name}") for name in sorted(equal)]
        stmt = select(*self.columns).where(self._owned, *where)
        if after:
            position = (
                bindparam("after_created", type_=self._created_col.type),
                bindparam("after_key", type_=self._key_col.type),
            )
            stmt = stmt.where(tuple_(self._created_col, self._key_col) < tuple_(*position))
        order = (self._created_col.desc(), self._key_col.desc())
        return stmt.order_by(*order).limit(bindparam("limit", type_=Integer))
