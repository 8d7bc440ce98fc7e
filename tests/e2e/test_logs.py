"""A served process's log: JSON lines by default outside development, text when told, the
request id on the access line and on the response."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Proc, Processes

RID = "trace-me-42"


async def exercise(proc: Proc) -> httpx.Response:
    """Wait for `proc`, then one unauthenticated GET /todos with our request id; stop it."""
    await proc.wait_ready()
    async with httpx.AsyncClient(base_url=proc.base_url or "", timeout=30) as client:
        r = await client.get("/todos/some-id", headers={"x-request-id": RID})
    await proc.stop()
    return r


async def test_json_lines_by_default(full_db: str, processes: Processes) -> None:
    proc = await processes.serve("web", full_db, ENVIRONMENT="production", ACCESS_LOG="1")
    r = await exercise(proc)
    assert r.status_code == 401
    assert r.headers["x-request-id"] == RID

    lines: list[dict[str, Any]] = []
    for raw in proc.output().splitlines():
        if raw.strip():
            lines.append(json.loads(raw))  # every line of stdout and stderr is one object
    assert lines, proc.describe()
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= set(line), line

    access = [x for x in lines if x["logger"] == "service_kit.access"]
    assert len(access) >= 2, lines  # the readiness polls and ours
    ours = [x for x in access if x["request_id"] == RID]
    assert len(ours) == 1, access
    (line,) = ours
    assert line["method"] == "GET"
    assert line["route"] == "/todos/{todo_id}"  # the template: no id from the path
    assert line["status"] == 401
    assert line["client"] == "127.0.0.1"
    assert isinstance(line["duration_ms"], int | float)
    assert line["level"] == "info"
    assert "some-id" not in json.dumps(line)

    by_logger = {x["logger"] for x in lines}
    assert "uvicorn.error" in by_logger  # the server's own lines
    serving = [x for x in lines if "serving on" in x["message"]]
    assert serving, lines
    assert serving[0]["url"] == proc.base_url
    assert all(x["request_id"] == "-" for x in serving)


async def test_text_when_told(full_db: str, processes: Processes) -> None:
    proc = await processes.serve("web", full_db, LOG_FORMAT="text", ACCESS_LOG="1")
    r = await exercise(proc)
    assert r.status_code == 401
    out = proc.output()
    access = [line for line in out.splitlines() if f"request_id={RID}" in line]
    assert len(access) == 1, out
    assert '"GET /todos/{todo_id}" 401' in access[0]
    for raw in out.splitlines():
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)


async def test_development_is_text(full_db: str, processes: Processes) -> None:
    proc = await processes.serve("web", full_db, ENVIRONMENT="development", ACCESS_LOG="1")
    await exercise(proc)
    assert f"request_id={RID}" in proc.output(), proc.describe()


async def test_an_unknown_format_stops_the_command(full_db: str, processes: Processes) -> None:
    proc = await processes.serve("web", full_db, LOG_FORMAT="xml")
    assert await proc.wait(within=60) == 2
    assert "LOG_FORMAT must be json or text" in proc.output()
    assert "Traceback" not in proc.output()
