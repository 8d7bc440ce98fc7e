"""The trading service's tables, in its own Postgres schema `trading`."""

from platform_db.metadata import metadata
from platform_db.todos import TodoBase, todo_table_args

SCHEMA = "trading"


class Todo(TodoBase, table=True):
    __tablename__ = "todos"
    __table_args__ = todo_table_args(SCHEMA)


__all__ = ["SCHEMA", "Todo", "metadata"]
