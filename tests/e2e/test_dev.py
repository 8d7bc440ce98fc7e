"""`platform-db dev`, the local run command: embedded Postgres, migrations, services, Ctrl-C."""

from __future__ import annotations

import asyncio
import re
import signal
import stat
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

import httpx

from platform_dev.embedded import EmbeddedPostgres, free_port
from tests.e2e.conftest import Proc, Processes, clean_env, command, listening

STARTUP_BOUND = 240.0  # initdb, Postgres, three migration trees, two services, on a busy machine
EXIT_BOUND = 60.0
PASSWORD = "dev-password-1"
DOCS_LINE = re.compile(r"^\s+(\S+)\s+(http://\S+/docs)\s*$", re.MULTILINE)
POSTGRES_LINE = re.compile(
    r"^postgres: postgresql://\S+@127\.0\.0\.1:(\d+)/\S+ \(data in (.+)\)$", re.M
)


@dataclass
class DevRun:
    proc: Proc
    urls: dict[str, str]  # service -> base URL
    postgres_port: int


def two_ports() -> tuple[int, int]:
    web = free_port()
    trading = free_port()
    while trading == web:
        trading = free_port()
    return web, trading


async def start_dev(processes: Processes, cwd: Path, data: Path, name: str) -> DevRun:
    """`platform-db dev` without DATABASE_URL, until it says it is ready."""
    web_port, trading_port = two_ports()
    env = clean_env(WEB_PORT=str(web_port), TRADING_PORT=str(trading_port))
    assert "DATABASE_URL" not in env
    args = [command("platform-db"), "dev", "--data-dir", str(data)]
    proc = await processes.start(name, args, env, cwd=cwd)
    await proc.wait_for_output("Ready.", within=STARTUP_BOUND)
    urls = {"web": f"http://127.0.0.1:{web_port}", "trading": f"http://127.0.0.1:{trading_port}"}
    for base in urls.values():
        await proc.wait_for_output(f"{base}/docs", within=30)
    out = proc.output()
    printed = dict(DOCS_LINE.findall(out.split("Ready.", 1)[1]))
    assert printed == {name: f"{base}/docs" for name, base in urls.items()}, proc.describe()
    pg = POSTGRES_LINE.search(out)
    assert pg is not None, proc.describe()
    assert Path(pg.group(2)) == (data / "postgres").resolve(), proc.describe()
    return DevRun(proc=proc, urls=urls, postgres_port=int(pg.group(1)))


async def check_served(run: DevRun) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for name, base in run.urls.items():
            r = await client.get(f"{base}/docs")
            assert r.status_code == 200, (name, r.text)
            assert "swagger-ui" in r.text, name
            r = await client.get(f"{base}/readyz")
            assert r.status_code == 200, (name, r.text)
            body = r.json()
            assert body["status"] == "ready", body
            assert set(body["trees"]) == {"platform-db", name}, body


async def ctrl_c(run: DevRun) -> str:
    """Press Ctrl-C (SIGINT to the foreground process group); return the final output."""
    run.proc.signal_group(signal.SIGINT)
    code = await run.proc.wait(within=EXIT_BOUND)
    assert code == 0, run.proc.describe()
    out = run.proc.output()
    assert "postgres: stopped" in out, run.proc.describe()
    assert "Traceback" not in out, run.proc.describe()
    for port in (*(int(u.rsplit(":", 1)[1]) for u in run.urls.values()), run.postgres_port):
        assert not listening(port), f"something still listens on {port}: {run.proc.describe()}"
    return out


def session_cookie(response: httpx.Response) -> str:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    names = [n for n in jar if n.endswith("better-auth.session_token")]
    assert len(names) == 1, response.headers.get_list("set-cookie")
    return f"{names[0]}={jar[names[0]].coded_value}"


async def test_dev_runs_everything_stops_on_ctrl_c_and_keeps_data(
    tmp_path: Path, processes: Processes
) -> None:
    cwd = tmp_path / "project"
    cwd.mkdir()
    data = tmp_path / "data"
    try:
        first = await start_dev(processes, cwd, data, "dev-1")
        await check_served(first)
        secret = data / "auth_secret"
        assert secret.exists()
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(
                f"{first.urls['web']}/api/auth/sign-up/email",
                json={"name": "Dev", "email": "dev@example.com", "password": PASSWORD},
            )
            assert r.status_code == 200, r.text
            token = r.json()["token"]
            client.cookies.clear()
            r = await client.post(
                f"{first.urls['trading']}/todos",
                json={"title": "kept between runs"},
                headers={"authorization": f"Bearer {token}"},
            )
            assert r.status_code == 201, r.text
            r = await client.post(
                f"{first.urls['trading']}/api/auth/sign-in/email",
                json={"email": "dev@example.com", "password": PASSWORD},
            )
            assert r.status_code == 200, r.text
            cookie = session_cookie(r)
        await ctrl_c(first)
        # Nothing was written to the working directory: the data lives in --data-dir.
        assert list(cwd.iterdir()) == []

        second = await start_dev(processes, cwd, data, "dev-2")
        await check_served(second)
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(
                f"{second.urls['web']}/api/auth/sign-in/email",
                json={"email": "dev@example.com", "password": PASSWORD},
            )
            assert r.status_code == 200, r.text
            client.cookies.clear()
            # The session and the todo of run 1 are still there; so is the cookie secret.
            r = await client.get(
                f"{second.urls['trading']}/todos", headers={"authorization": f"Bearer {token}"}
            )
            assert r.status_code == 200, r.text
            assert [t["title"] for t in r.json()["items"]] == ["kept between runs"]
            r = await client.get(
                f"{second.urls['web']}/api/auth/get-session", headers={"cookie": cookie}
            )
            assert r.status_code == 200, r.text
            assert r.json() is not None
            assert r.json()["user"]["email"] == "dev@example.com"
        await ctrl_c(second)
    finally:
        await processes.stop_all()
        # Whatever happened above, the embedded server of this data dir does not outlive the test.
        await asyncio.to_thread(EmbeddedPostgres(data / "postgres").stop)
