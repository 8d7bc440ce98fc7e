"""A per-user todo list: the table shape, the schemas and the routes both services expose.

A service declares its own table (in its own schema) from `TodoBase` and mounts
`todo_router(ItsTodo)`; the logic, the scoping and the errors live here, once.
"""

from platform_db.todos.models import TodoBase, todo_table_args
from platform_db.todos.router import todo_router

__all__ = ["TodoBase", "todo_router", "todo_table_args"]
