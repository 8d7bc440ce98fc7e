"""better-auth 1.7.25's own server (tests/compat/node/server.mjs, Node) on the benchmark's
database: the same tables, sessions and password hashes as our service reads, so its auth
routes are measured beside ours in the same run. Only where Node and npm are installed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from bench.procs import Server
from platform_dev.embedded import free_port
from platform_dev.npm import NpmError, node_missing, npm_ci

NODE_PROJECT = Path(__file__).resolve().parent.parent / "tests" / "compat" / "node"


def unavailable() -> str | None:
    """Why better-auth cannot run here, or None."""
    if node_missing():
        return "Node or npm is not installed, so better-auth's own server was not measured."
    try:
        npm_ci(NODE_PROJECT)
    except NpmError as exc:
        return f"better-auth could not be installed (npm ci failed), so it was not measured: {exc}"
    return None


def start(
    database_url: str,
    secret: str,
    pool_size: int,
    log: Path,
    cpus: frozenset[int] | None,
    inherited: Mapping[str, str] = os.environ,
) -> Server:
    """better-auth as an app beside ours runs it: the Drizzle adapter, email and password, the
    bearer plugin, no rate limits (as ours in the benchmark), in production mode."""
    port = free_port()
    env = {
        **{k: v for k, v in inherited.items() if k not in ("DATABASE_URL", "BETTER_AUTH_SECRET")},
        "DATABASE_URL": database_url,
        "BETTER_AUTH_SECRET": secret,
        "PORT": str(port),
        "POOL_SIZE": str(pool_size),
        "NODE_ENV": "production",
        "BETTER_AUTH_TELEMETRY": "0",
        "RATE_LIMITS": "",
    }
    server = Server("better-auth", ["node", str(NODE_PROJECT / "server.mjs")], env, port, log, cpus)
    return server
