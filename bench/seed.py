"""Seeding in SQL: users with a password and a live session, and todos by generate_series.

Rows are built by Postgres itself (a million todos take seconds, not minutes). Ids and
tokens are md5 hex strings: 32 characters from [A-Za-z0-9], like the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from platform_auth.passwords import hash_password_sync
from service_kit.owned import encode_cursor

PASSWORD = "bench password 0123"  # noqa: S105 (every seeded account's)
TODOS = "web.todos"


@dataclass(frozen=True)
class BenchUser:
    id: str
    email: str
    token: str


def password_hash() -> str:
    """One real scrypt hash, shared by every seeded account (sign-in verifies it for real)."""
    return hash_password_sync(PASSWORD)


async def add_users(
    conn: asyncpg.Connection, group: str, count: int, pw_hash: str
) -> list[BenchUser]:
    """`count` users named `<group>-<n>@bench.example.com`, each with a password and a session."""
    rows = await conn.fetch(
        """
        WITH new_users AS (
            INSERT INTO "user" (id, name, email, email_verified, created_at, updated_at)
            SELECT md5('user:' || $1 || ':' || g), $1 || ' ' || g,
                   $1 || '-' || g || '@bench.example.com', true, now_utc, now_utc
            FROM generate_series(1, $2::int) g, (SELECT now() AT TIME ZONE 'utc' AS now_utc) t
            RETURNING id, email, created_at
        ), accounts AS (
            INSERT INTO account (id, account_id, provider_id, user_id, password,
                                 created_at, updated_at)
            SELECT md5('account:' || id), id, 'credential', id, $3, created_at, created_at
            FROM new_users
        ), sessions AS (
            INSERT INTO "session" (id, expires_at, token, created_at, updated_at, user_id)
            SELECT md5('session:' || id), created_at + interval '7 days',
                   md5('token:' || id || random()::text), created_at, created_at, id
            FROM new_users
            RETURNING user_id, token
        )
        SELECT u.id, u.email, s.token
        FROM new_users u JOIN sessions s ON s.user_id = u.id
        ORDER BY u.email
        """,
        group,
        count,
        pw_hash,
    )
    return [BenchUser(r["id"], r["email"], r["token"]) for r in rows]


async def add_todos(
    conn: asyncpg.Connection,
    owners: list[str],
    first: int,
    last: int,
    *,
    tag: str,
    base: datetime,
) -> None:
    """Todos number `first`..`last`; todo g belongs to owners[g % len(owners)] and was
    created g milliseconds before `base`, so a higher number is further down the list."""
    if last < first:
        return
    await conn.execute("SET session_replication_role = replica")  # skip per-row FK checks
    try:
        await conn.execute(
            f"""
            INSERT INTO {TODOS} (id, user_id, title, description, completed,
                                 created_at, updated_at)
            SELECT md5($1 || ':' || g), ($2::text[])[1 + g % cardinality($2::text[])],
                   'todo number ' || g,
                   CASE WHEN g % 4 = 0 THEN 'some words about todo ' || g END,
                   g % 3 = 0, ts, ts
            FROM generate_series($3::int, $4::int) g,
                 LATERAL (SELECT $5::timestamp - g * interval '1 millisecond' AS ts) t
            """,
            tag,
            owners,
            first,
            last,
            base.astimezone(UTC).replace(tzinfo=None),
        )
    finally:
        await conn.execute("SET session_replication_role = DEFAULT")


async def analyze(conn: asyncpg.Connection) -> None:
    await conn.execute(f"VACUUM (ANALYZE) {TODOS}")


async def count_todos(conn: asyncpg.Connection, user_id: str | None = None) -> int:
    if user_id is None:
        return int(await conn.fetchval(f"SELECT count(*) FROM {TODOS}"))
    return int(await conn.fetchval(f"SELECT count(*) FROM {TODOS} WHERE user_id = $1", user_id))


async def todo_ids(conn: asyncpg.Connection, user_id: str, count: int) -> list[str]:
    """Up to `count` of the user's todo ids, picked at random through the whole list."""
    rows = await conn.fetch(
        f"SELECT id FROM {TODOS} WHERE user_id = $1 ORDER BY random() LIMIT $2", user_id, count
    )
    return [r["id"] for r in rows]


async def owned_pairs(
    conn: asyncpg.Connection, users: list[BenchUser], per_user: int
) -> list[tuple[str, str]]:
    """(token, todo id) pairs: `per_user` of each user's todos."""
    by_id = {u.id: u.token for u in users}
    rows = await conn.fetch(
        f"""
        SELECT user_id, id FROM (
            SELECT user_id, id, row_number() OVER (PARTITION BY user_id ORDER BY id) AS n
            FROM {TODOS} WHERE user_id = ANY($1::text[])
        ) t WHERE n <= $2
        ORDER BY n, user_id
        """,
        list(by_id),
        per_user,
    )
    return [(by_id[r["user_id"]], r["id"]) for r in rows]


async def cursor_at(
    conn: asyncpg.Connection, user_id: str, position: int
) -> tuple[str, datetime, str]:
    """The cursor the API returns with the page that ends at row `position` (0-based) of the
    user's list, newest first (the next page starts right after that row); and that row's
    created_at (naive UTC, as stored) and id."""
    row = await conn.fetchrow(
        f"""
        SELECT created_at, id FROM {TODOS} WHERE user_id = $1
        ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1
        """,
        user_id,
        position,
    )
    if row is None:
        raise ValueError(f"the user has no todo at position {position}")
    created: datetime = row["created_at"]
    return encode_cursor(created.replace(tzinfo=UTC), row["id"]), created, row["id"]


def seed_base() -> datetime:
    """The newest seeded todo's time: a little in the past, so new todos come first."""
    return datetime.now(UTC) - timedelta(minutes=1)
