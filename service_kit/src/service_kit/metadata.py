"""The one MetaData every table lives in, with Drizzle's constraint names as convention.

All owners (platform, web, trading) share `SQLModel.metadata` so that foreign keys
such as `web.todos.user_id -> user.id` resolve; each Alembic tree filters what it owns.
"""

from __future__ import annotations

from sqlmodel import SQLModel

# Drizzle's names: user_pkey, user_email_unique, session_user_id_user_id_fk, ...
NAMING_CONVENTION: dict[str, str] = {
    "pk": "%(table_name)s_pkey",
    "uq": "%(table_name)s_%(column_0_N_name)s_unique",
    "fk": "%(table_name)s_%(column_0_name)s_%(referred_table_name)s_%(referred_column_0_name)s_fk",
    "ix": "%(table_name)s_%(column_0_N_name)s_idx",
    "ck": "%(table_name)s_%(constraint_name)s_check",
}

metadata = SQLModel.metadata
metadata.naming_convention = NAMING_CONVENTION
