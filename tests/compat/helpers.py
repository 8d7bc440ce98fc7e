"""What the better-auth compatibility tests share: the servers, the client runner, formats."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import asyncpg

from tests.conftest import TEST_SECRET
from tests.pg import plain_url

NODE_DIR = Path(__file__).resolve().parent / "node"
BETTER_AUTH_VERSION = "1.7.25"
# The page the browser-like client runs on; every server trusts it (as a deployment trusts
# its front end) and the client sends it as Origin, as a browser does.
APP_ORIGIN = "http://localhost:3000"
NODE_MISSING = (
    "Node.js is missing (node and npm must be on PATH): the better-auth compatibility "
    "tests need it to run better-auth itself"
)
SESSION_COOKIE = "better-auth.session_token"

ID = re.compile(r"^[A-Za-z0-9]{32}$")
PASSWORD_HASH = re.compile(r"^[0-9a-f]{32}:[0-9a-f]{128}$")
USER_KEYS = {"id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt"}
SESSION_KEYS = {
    "id", "token", "userId", "expiresAt", "ipAddress", "userAgent", "createdAt", "updatedAt",
}  # fmt: skip

JSON = dict[str, Any]


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Stack:
    """The servers of one test, all on `db_url` with the same secret."""

    db_url: str
    better_auth: Server
    ours: dict[str, Server] = field(default_factory=dict)
    cookie_name: str = SESSION_COOKIE

    @property
    def ba(self) -> str:
        return self.better_auth.url

    @property
    def web(self) -> str:
        return self.ours["web"].url

    @property
    def trading(self) -> str:
        return self.ours["trading"].url

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(plain_url(self.db_url))
        try:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows
        finally:
            await conn.close()


async def run_client(steps: list[JSON], origin: str = APP_ORIGIN) -> list[JSON]:
    """Run steps through better-auth's own client (node/client.mjs); one result per step."""
    process = await asyncio.create_subprocess_exec(
        "node",
        "client.mjs",
        cwd=NODE_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    payload = json.dumps({"origin": origin, "steps": steps}).encode()
    stdout, stderr = await asyncio.wait_for(process.communicate(payload), timeout=60)
    if process.returncode != 0:
        raise AssertionError(f"client.mjs failed ({process.returncode}):\n{stderr.decode()}")
    result: list[JSON] = json.loads(stdout)["steps"]
    return result


def step(base: str, call: str, args: JSON | None = None, **options: object) -> JSON:
    out: JSON = {"base": base, "call": call, **options}
    if args is not None:
        out["args"] = args
    return out


def signed(token: str, secret: str = TEST_SECRET) -> str:
    """better-auth's signed form, computed here independently of both implementations."""
    mac = hmac.new(secret.encode(), token.encode(), hashlib.sha256).digest()
    return f"{token}.{base64.b64encode(mac).decode()}"


def cookie_value(token: str) -> str:
    return quote(signed(token), safe="")


def date(value: object) -> datetime:
    """A Date the client produced (tagged by client.mjs) as an aware datetime."""
    assert isinstance(value, dict), f"not a Date: {value!r}"
    assert set(value) == {"$date"}, f"not a Date: {value!r}"
    return datetime.fromisoformat(str(value["$date"]).replace("Z", "+00:00"))


def as_ms(value: datetime) -> datetime:
    """A naive-UTC database timestamp as JavaScript holds it: aware, milliseconds."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def set_cookies(result: JSON) -> dict[str, dict[str, str]]:
    """The Set-Cookie lines of a client step: name -> {"value": ..., attribute: value}."""
    cookies: dict[str, dict[str, str]] = {}
    for line in result["setCookie"]:
        pair, *attrs = (part.strip() for part in line.split(";"))
        name, _, value = pair.partition("=")
        parsed = {"value": unquote(value.strip('"'))}
        for attr in attrs:
            key, _, val = attr.partition("=")
            parsed[key.lower()] = val
        cookies[name] = parsed
    return cookies
