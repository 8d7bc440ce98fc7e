"""Test databases: one server per test run, a fresh database per test.

The server is an embedded PostgreSQL from a pip wheel, or whatever `DATABASE_URL` names
(it must allow CREATE DATABASE). Each test gets its own database, created empty or copied
from a template migrated once per run, so tests never see each other's rows.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def plain_url(url: str) -> str:
    """asyncpg wants postgresql:// without a driver suffix."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql", parts.netloc, parts.path, "", ""))


async def create_database(admin_url: str, *, template: str | None = None, prefix: str = "t") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(plain_url(admin_url))
    try:
        tmpl = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{tmpl}')
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(plain_url(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """One statement on its own connection, outside any app, as another client would; its rows."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()
