"""The web service's tables, in its own Postgres schema `web`."""

from platform_db.metadata import metadata
from platform_db.todos import TodoBase, todo_table_args

SCHEMA = "web"


class Todo(TodoBase, table=True):
    __tablename__ = "todos"
    __table_args__ = todo_table_args(SCHEMA)


__all__ = ["SCHEMA", "Todo", "metadata"]
