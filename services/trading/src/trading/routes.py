"""The trading service's routes."""

from platform_db.todos import todo_router
from trading.models import Todo

router = todo_router(Todo)
