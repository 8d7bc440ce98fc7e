"""Core statements compiled once for asyncpg, run on the driver connection under the pool.

SQLAlchemy stays the source of every statement: a service builds it with Core from its
models, and `Compiled` asks SQLAlchemy's asyncpg dialect for its SQL, its bind parameters in
order and its column types' conversions, once. What a request then pays is asyncpg's own
execution (its prepared-statement cache included) and the conversions the column types
declare, not SQLAlchemy's per-execution machinery (the execution context, the greenlet hop,
the result wrapper): measured at a third of a read's CPU time (docs/benchmarks.md). The
asyncpg connection is the one SQLAlchemy's pool lends (`driver_connection`, as SQLAlchemy
documents for driver-level work), so the pool, its size and its pooled-mode settings stay
one.

A statement whose values SQLAlchemy would fill in while executing (Python-side column
defaults, `onupdate`) or whose SQL depends on its values (expanding `IN`, literal binds)
is refused when compiled: its caller passes every value, or runs it through SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Executable
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

# The dialect the engine runs: its type conversions are the ones applied here.
DIALECT = PGDialect_asyncpg()  # type: ignore[no-untyped-call]

Convert = Callable[[Any], Any]


class NotCompilable(ValueError):
    """The statement needs SQLAlchemy at execution time (see the module's docstring)."""


def _result_columns(statement: Executable) -> Sequence[Any]:
    columns = getattr(statement, "selected_columns", None)
    if columns is None:  # INSERT, UPDATE, DELETE: what RETURNING names
        columns = getattr(statement, "exported_columns", None)
    return list(columns or ())


class Compiled:
    """One statement's SQL for asyncpg, with its parameters' order and conversions."""

    __slots__ = ("_binds", "_conversions", "_names", "keys", "sql")

    def __init__(self, statement: Executable, *, keys: Sequence[str] | None = None) -> None:
        """`keys`: for an INSERT or UPDATE, the columns it sets (each a bind parameter of
        the column's name); by default every column of the table."""
        assert isinstance(statement, ClauseElement)
        compiled = statement.compile(dialect=DIALECT, column_keys=keys)
        assert isinstance(compiled, SQLCompiler)
        if compiled.insert_prefetch or compiled.update_prefetch:
            names = [c.name for c in (*compiled.insert_prefetch, *compiled.update_prefetch)]
            raise NotCompilable(f"columns {names} get a Python-side default: pass their values")
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise NotCompilable("the SQL of this statement depends on its values")
        self.sql: str = compiled.string
        self._names: tuple[str, ...] = tuple(compiled.positiontup or ())
        self._binds: tuple[tuple[int, Convert], ...] = tuple(
            (i, proc)
            for i, name in enumerate(self._names)
            if (proc := compiled.binds[name].type.dialect_impl(DIALECT).bind_processor(DIALECT))
        )
        columns = _result_columns(statement)
        self.keys: tuple[str, ...] = tuple(col.key for col in columns)
        self._conversions: tuple[tuple[str, Convert], ...] = tuple(
            (col.key, proc)
            for col in columns
            if (proc := col.type.dialect_impl(DIALECT).result_processor(DIALECT, None))
        )

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for asyncpg, converted as the columns' types say."""
        values = [params[name] for name in self._names]
        for i, convert in self._binds:
            values[i] = convert(values[i])
        return values

    def row(self, record: Sequence[Any]) -> dict[str, Any]:
        """One result row as a dict by column key, converted as the columns' types say."""
        row = dict(zip(self.keys, record, strict=True))
        for key, convert in self._conversions:
            row[key] = convert(row[key])
        return row
