"""A real PgBouncer in transaction mode for a test (platform_dev.pgbouncer), failing the test
with the install line when Debian's pgbouncer is missing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from platform_dev.pgbouncer import MISSING, PgBouncer, PgBouncerError, binary
from platform_dev.pgbouncer import pgbouncer as start_pgbouncer

__all__ = ["PgBouncer", "pgbouncer"]


@contextlib.contextmanager
def pgbouncer(admin_url: str, directory: Path) -> Iterator[PgBouncer]:
    # Fewer server connections than the test's clients, on purpose.
    if binary() is None:
        pytest.fail(MISSING, pytrace=False)
    try:
        with start_pgbouncer(admin_url, directory, pool_size=4) as bouncer:
            yield bouncer
    except PgBouncerError as exc:
        pytest.fail(str(exc), pytrace=False)
