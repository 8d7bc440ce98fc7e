"""The web service's routes."""

from platform_db.todos import todo_router
from web.models import Todo

router = todo_router(Todo)
