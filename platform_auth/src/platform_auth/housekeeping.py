"""The service's own sweeper: `platform_db.sweep` every SWEEP_INTERVAL seconds.

Every replica and worker runs one; the sweep's advisory lock lets one of them at a time do a
round (the others only try, and leave it), so many replicas cost the database no more than
one. A failed round is logged and left to the next: housekeeping never stops a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from sqlalchemy.ext.asyncio import AsyncEngine

from platform_db.sweep import sweep

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, engine: AsyncEngine, interval: float) -> None:
        self.engine, self.interval = engine, interval
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # rounds run to the end by this process (tests read it)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="platform-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        # Replicas started together start their rounds at different moments.
        await asyncio.sleep(random.uniform(0.05, 1.0) * self.interval)
        while True:
            try:
                swept = await sweep(self.engine, wait=False)
            except Exception as exc:  # the next round may succeed; never stop the service
                log.warning("sweep failed (%s); next in %.0f s", type(exc).__name__, self.interval)
            else:
                if swept.complete:
                    self.rounds += 1
                if swept.total:
                    log.info(
                        "swept %s",
                        swept,
                        extra={
                            "swept_sessions": swept.sessions,
                            "swept_verifications": swept.verifications,
                            "swept_rate_limits": swept.rate_limits,
                        },
                    )
            await asyncio.sleep(self.interval)
