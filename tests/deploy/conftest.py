from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.deploy.stack import Stack


@pytest.fixture
async def stack(empty_db: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """Processes on a new, empty database (as a fresh `pgdata` volume); all stopped at the end."""
    s = Stack(empty_db, tmp_path)
    try:
        yield s
    finally:
        await s.stop_all()
