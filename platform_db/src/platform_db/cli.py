"""`platform-db`: the migration commands of the shared auth tables, their housekeeping and the
operator's account commands."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from platform_db import admin, sweep
from platform_db.trees import PLATFORM
from service_kit.cli import database_settings, main_for, positive_int, subcommands
from service_kit.db import create_engine

# Installed packages may add subcommands here (the dev tools add `dev`).
PLUGINS = "platform_db.commands"
T = TypeVar("T")


@asynccontextmanager
async def _engine() -> AsyncIterator[AsyncEngine]:
    # The direct URL, as the migrations: a one-off command, on connections of its own.
    settings = database_settings()
    direct = settings.model_copy(update={"database_url": settings.direct_url})
    engine = create_engine(direct, pooled=False)
    try:
        yield engine
    finally:
        await engine.dispose()


def _run(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        async with _engine() as engine:
            return await work(engine)

    return asyncio.run(run())


def _json(value: Any) -> str:
    return json.dumps(dataclasses.asdict(value), default=str, indent=2)


def _user_line(u: admin.UserSummary) -> str:
    verified = "verified" if u.email_verified else "unverified"
    return (
        f"{u.email}  {u.name!r}  id={u.id}  {verified}  created {u.created_at:%Y-%m-%d %H:%M}Z  "
        f"{u.live_sessions} live session(s)"
    )


def _users(args: argparse.Namespace) -> int:
    if args.action == "list":
        found = _run(lambda e: admin.list_users(e, search=args.search, limit=args.limit))
        if args.json:
            print(json.dumps([dataclasses.asdict(u) for u in found], default=str, indent=2))
        else:
            for u in found:
                print(_user_line(u))
            full = len(found) == args.limit
            print(f"{len(found)} user(s)" + (" (--limit for more)" if full else ""))
        return 0
    try:
        if args.action == "show":
            detail = _run(lambda e: admin.show_user(e, args.email))
            if args.json:
                print(_json(detail))
                return 0
            print(_user_line(detail.user))
            print(f"sign-in methods: {', '.join(detail.sign_in_methods) or '(none)'}")
            for s in detail.sessions:
                print(
                    f"  session {s.id}  from {s.ip_address or '-'}  since "
                    f"{s.created_at:%Y-%m-%d %H:%M}Z  until {s.expires_at:%Y-%m-%d %H:%M}Z  "
                    f"{(s.user_agent or '-')[:60]}"
                )
            return 0
        if not args.yes:
            print(
                f"error: deleting {args.email} also deletes every row of theirs in every "
                "service; add --yes to do it",
                file=sys.stderr,
            )
            return 1
        deleted = _run(lambda e: admin.delete_user(e, args.email))
        rows = ", ".join(f"{n} from {t}" for t, n in deleted.rows.items() if n) or "no other rows"
        print(f"deleted {deleted.user.email} (id {deleted.user.id}): {rows}")
        return 0
    except admin.NoSuchUser as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _sessions(args: argparse.Namespace) -> int:
    try:
        ended = _run(lambda e: admin.revoke_sessions(e, args.user))
    except admin.NoSuchUser as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"revoked {ended} session(s) of {args.user.strip().lower()}: every service refuses them")
    return 0


def operations(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int | None]:
    """`sweep`, `users` and `sessions`: what an operator runs on the shared tables."""
    sub = subcommands(parser)
    p = sub.add_parser(
        "sweep",
        help="delete expired sessions, expired verification rows and old rate-limit counters, "
        "in bounded batches (for cron or a Kubernetes CronJob)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=sweep.DEFAULT_BATCH, help="rows per transaction"
    )
    p.add_argument(
        "--rate-limit-age",
        type=positive_int,
        default=int(sweep.DEFAULT_RATE_LIMIT_AGE),
        help="seconds since its last request after which a rate-limit counter is deleted",
    )

    users = sub.add_parser("users", help="find, show or delete users")
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("list", help="users, newest first")
    p.add_argument("--search", help="a part of the email or the name")
    p.add_argument("--limit", type=positive_int, default=50)
    p.add_argument("--json", action="store_true", help="as JSON")
    p = actions.add_parser("show", help="one user: sign-in methods and live sessions")
    p.add_argument("email")
    p.add_argument("--json", action="store_true", help="as JSON")
    p = actions.add_parser(
        "delete", help="delete a user and, through the foreign keys, every service's rows of theirs"
    )
    p.add_argument("email")
    p.add_argument("--yes", action="store_true", help="really delete")

    sessions = sub.add_parser("sessions", help="end sessions")
    actions = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("revoke", help="end every session of a user, in every service at once")
    p.add_argument("--user", required=True, metavar="EMAIL")

    def handle(args: argparse.Namespace) -> int | None:
        if args.command == "sweep":
            swept = _run(
                lambda e: sweep.sweep(e, batch=args.batch_size, rate_limit_age=args.rate_limit_age)
            )
            print(f"{PLATFORM.name}: swept {swept}")
            return 0
        if args.command == "users":
            return _users(args)
        if args.command == "sessions":
            return _sessions(args)
        return None

    return handle


def main(argv: Sequence[str] | None = None) -> NoReturn:
    sys.exit(
        main_for(
            PLATFORM,
            "Migrations of the shared auth tables, their housekeeping, and account commands.",
            operations,
            argv=argv,
            plugins=PLUGINS,
        )
    )
