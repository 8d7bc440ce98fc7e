"""Waiting for an effect that arrives on its own (a NOTIFY, a process starting): bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest


async def poll(
    check: Callable[[], Awaitable[bool]],
    what: str | Callable[[], str],
    within: float = 5.0,
    interval: float = 0.05,
) -> None:
    """Wait until `check` holds, at most `within` seconds; fail naming `what` otherwise."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within:.0f}s: {what if isinstance(what, str) else what()}")
        await asyncio.sleep(interval)
