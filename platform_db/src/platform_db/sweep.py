"""Housekeeping of the auth tables: rows no one can use any more, deleted in bounded batches.

- `session` rows past `expires_at`: such a session is refused, and deleted when it is
  presented, but one never presented again would stay for ever;
- `verification` rows past `expires_at`: links that were never followed;
- `rate_limit` counters whose last request is older than `rate_limit_age` seconds: older
  than any window, they would count from 1 again anyway.

Each batch is one short transaction that deletes at most `batch` rows, skipping rows a request
has locked (`FOR UPDATE SKIP LOCKED`), so a sweep never holds a table or waits on a request.
Each batch first takes a transaction-level advisory lock, which works through a transaction
pooler too: two sweepers (a CronJob and a service's timer, or two replicas' timers) never run
a batch at once, and one that only tries (`wait=False`) leaves the round to the other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Table, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from platform_db.models import NOW_UTC, RateLimit, Session, Verification

# One key for every sweeper of this database (64-bit, as pg_advisory_xact_lock takes).
SWEEP_LOCK = int.from_bytes(hashlib.sha256(b"platform_db.sweep").digest()[:8], "big", signed=True)
DEFAULT_BATCH = 1000
DEFAULT_RATE_LIMIT_AGE = 24 * 3600.0  # seconds; far longer than any rate-limit window

_session: Table = Session.__table__  # type: ignore[attr-defined]
_verification: Table = Verification.__table__  # type: ignore[attr-defined]
_rate_limit: Table = RateLimit.__table__  # type: ignore[attr-defined]
_NOW_MS = func.floor(func.extract("epoch", func.now()) * 1000)


@dataclass(frozen=True)
class Swept:
    """How many rows one sweep deleted, per table."""

    sessions: int = 0
    verifications: int = 0
    rate_limits: int = 0
    # False when it stopped because another sweeper held the lock (only with wait=False).
    complete: bool = True

    @property
    def total(self) -> int:
        return self.sessions + self.verifications + self.rate_limits

    def __str__(self) -> str:
        return (
            f"{self.sessions} expired sessions, {self.verifications} expired verification "
            f"rows, {self.rate_limits} old rate-limit counters"
        )


async def _locked(conn: AsyncConnection, *, wait: bool) -> bool:
    if wait:
        await conn.execute(select(func.pg_advisory_xact_lock(SWEEP_LOCK)))
        return True
    return bool((await conn.execute(select(func.pg_try_advisory_xact_lock(SWEEP_LOCK)))).scalar())


async def _batch(
    engine: AsyncEngine, table: Table, old: ColumnElement[bool], batch: int, *, wait: bool
) -> int | None:
    """Delete up to `batch` rows of `table` matching `old`; None if another sweeper has the
    lock and `wait` is off."""
    doomed = select(table.c.id).where(old).limit(batch).with_for_update(skip_locked=True)
    async with engine.begin() as conn:
        if not await _locked(conn, wait=wait):
            return None
        result = await conn.execute(delete(table).where(table.c.id.in_(doomed.scalar_subquery())))
        return int(result.rowcount or 0)


async def _drain(
    engine: AsyncEngine, table: Table, old: ColumnElement[bool], batch: int, *, wait: bool
) -> tuple[int, bool]:
    """Batches until none is full: (rows deleted, whether it got to the end)."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    total = 0
    while True:
        deleted = await _batch(engine, table, old, batch, wait=wait)
        if deleted is None:
            return total, False
        total += deleted
        if deleted < batch:
            return total, True


def _old_counters(age: float) -> ColumnElement[bool]:
    return _rate_limit.c.last_request < _NOW_MS - int(age * 1000)


async def sweep_rate_limits(
    engine: AsyncEngine, age: float, *, batch: int = DEFAULT_BATCH, wait: bool = True
) -> int:
    """Only the rate-limit counters older than `age` seconds; how many went."""
    deleted, _ = await _drain(engine, _rate_limit, _old_counters(age), batch, wait=wait)
    return deleted


async def sweep(
    engine: AsyncEngine,
    *,
    batch: int = DEFAULT_BATCH,
    rate_limit_age: float = DEFAULT_RATE_LIMIT_AGE,
    wait: bool = True,
) -> Swept:
    """Delete what no one can use any more, `batch` rows a transaction, until none is left.

    With `wait` off, it stops at the first batch another sweeper holds the lock for (the
    round is theirs), and says so (`complete` False)."""
    # In the order of Swept's counts.
    targets: list[tuple[Table, ColumnElement[bool]]] = [
        (_session, _session.c.expires_at < NOW_UTC),
        (_verification, _verification.c.expires_at < NOW_UTC),
        (_rate_limit, _old_counters(rate_limit_age)),
    ]
    counts = [0, 0, 0]
    for i, (table, old) in enumerate(targets):
        counts[i], complete = await _drain(engine, table, old, batch, wait=wait)
        if not complete:
            return Swept(counts[0], counts[1], counts[2], complete=False)
    return Swept(counts[0], counts[1], counts[2])
