"""`platform-db`: the migration commands of the shared auth tables, and their housekeeping."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from platform_db import sweep
from platform_db.trees import PLATFORM
from service_kit.cli import database_settings, main_for, subcommands
from service_kit.db import create_engine

# Installed packages may add subcommands here (the dev tools add `dev`).
PLUGINS = "platform_db.commands"


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


async def _sweep(batch: int, rate_limit_age: float) -> sweep.Swept:
    # The direct URL, as the migrations: a one-off command, on a connection of its own.
    settings = database_settings()
    direct = settings.model_copy(update={"database_url": settings.direct_url})
    engine = create_engine(direct, pooled=False)
    try:
        return await sweep.sweep(engine, batch=batch, rate_limit_age=rate_limit_age)
    finally:
        await engine.dispose()


def housekeeping(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int | None]:
    p = subcommands(parser).add_parser(
        "sweep",
        help="delete expired sessions, expired verification rows and old rate-limit counters, "
        "in bounded batches (for cron or a Kubernetes CronJob)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=sweep.DEFAULT_BATCH,
        help="rows deleted per transaction",
    )
    p.add_argument(
        "--rate-limit-age",
        type=_positive,
        default=int(sweep.DEFAULT_RATE_LIMIT_AGE),
        help="seconds since its last request after which a rate-limit counter is deleted",
    )

    def handle(args: argparse.Namespace) -> int | None:
        if args.command != "sweep":
            return None
        swept = asyncio.run(_sweep(args.batch_size, args.rate_limit_age))
        print(f"{PLATFORM.name}: swept {swept}")
        return 0

    return handle


def main(argv: Sequence[str] | None = None) -> NoReturn:
    sys.exit(
        main_for(
            PLATFORM,
            "Migrations of the shared auth tables, and their housekeeping.",
            housekeeping,
            argv=argv,
            plugins=PLUGINS,
        )
    )
