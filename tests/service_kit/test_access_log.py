"""The request id and the access line (service_kit.access_log), on a small app."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from service_kit.access_log import ACCESS_LOGGER, AccessLogMiddleware, RequestIdFilter

GENERATED = re.compile(r"[0-9a-f]{16}")
inner = logging.getLogger("tests.access_log.inner")


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        inner.warning("looking up an item")
        return {"id": item_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    return app


class Records:
    """The records of the running test (caplog's list is replaced between phases)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def __iter__(self) -> Iterator[logging.LogRecord]:
        return iter(self.caplog.records)


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Records:
    caplog.set_level(logging.INFO)
    # As `serve` configures it: the filter on the handler puts the id on each record.
    caplog.handler.addFilter(RequestIdFilter())
    return Records(caplog)


def client(app: FastAPI, *, enabled: bool = True) -> httpx.AsyncClient:
    # Around the whole app, as the kit's app puts it (outside Starlette's error middleware).
    wrapped = AccessLogMiddleware(app, enabled=enabled, secret_path_segments=("reset-password",))
    transport = httpx.ASGITransport(
        app=wrapped, raise_app_exceptions=False, client=("203.0.113.9", 1)
    )
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def access(records: Records) -> list[logging.LogRecord]:
    return [r for r in records if r.name == ACCESS_LOGGER]


async def test_a_sane_request_id_is_kept_and_echoed(records: Records) -> None:
    async with client(make_app()) as c:
        r = await c.get("/items/42", headers={"x-request-id": "trace-abc_123/x"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "trace-abc_123/x"
    (line,) = access(records)
    assert line.request_id == "trace-abc_123/x"  # type: ignore[attr-defined]
    # A record made inside the handler carries the request's id too.
    (mine,) = [rec for rec in records if rec.name == inner.name]
    assert mine.request_id == "trace-abc_123/x"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "given",
    ["", "a" * 129, "has space", "tab\there", "caf\u00e9", "line\r\nbreak"],
    ids=["empty", "too-long", "space", "tab", "non-ascii", "crlf"],
)
async def test_an_insane_request_id_is_replaced(records: Records, given: str) -> None:
    async with client(make_app()) as c:
        r = await c.get("/items/1", headers=[(b"x-request-id", given.encode())])
    echoed = r.headers["x-request-id"]
    assert GENERATED.fullmatch(echoed), echoed
    assert access(records)[0].request_id == echoed  # type: ignore[attr-defined]


async def test_every_answer_has_its_own_id(records: Records) -> None:
    async with client(make_app()) as c:
        answers = [await c.get("/items/1"), await c.get("/nowhere"), await c.get("/boom")]
    assert [a.status_code for a in answers] == [200, 404, 500]
    ids = [a.headers["x-request-id"] for a in answers]
    assert len(set(ids)) == 3
    assert all(GENERATED.fullmatch(i) for i in ids)


async def test_the_line_names_the_route_template_not_the_path(
    records: Records,
) -> None:
    async with client(make_app()) as c:
        await c.get("/items/secret-looking-id?q=1")
        await c.get("/api/auth/reset-password/the-token?callbackURL=x")
        await c.get("/nowhere?token=abc&x=1")
    lines = access(records)
    assert [(r.method, r.route, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("GET", "/items/{item_id}", 200),
        ("GET", "/api/auth/reset-password/[redacted]", 404),
        ("GET", "/nowhere", 404),
    ]
    text = "\n".join(r.getMessage() for r in lines)
    assert "secret-looking-id" not in text
    assert "the-token" not in text
    assert "abc" not in text
    assert '203.0.113.9 "GET /items/{item_id}" 200 ' in lines[0].getMessage()
    assert lines[0].client == "203.0.113.9"  # type: ignore[attr-defined]
    assert lines[0].duration_ms >= 0  # type: ignore[attr-defined]


async def test_off_means_no_line_but_still_an_id(records: Records) -> None:
    async with client(make_app(), enabled=False) as c:
        r = await c.get("/items/1")
    assert GENERATED.fullmatch(r.headers["x-request-id"])
    assert access(records) == []


async def test_every_answer_of_a_service_has_an_id(
    service_client: httpx.AsyncClient, records: Records
) -> None:
    """On a service's app, answers from the routes, the auth, the host check and an error the
    app did not expect each carry an id, and each has its access line."""
    app = service_client._transport.app  # type: ignore[attr-defined]
    ours = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url=str(service_client.base_url),
    )

    async def fail() -> None:
        raise RuntimeError("unexpected")

    app.router.add_api_route("/test-boom", fail)
    async with ours:
        answers = [
            await ours.get("/healthz"),
            await ours.get("/todos"),  # no session
            await ours.get("/nowhere"),
            await ours.get("/todos", headers={"host": "evil.example"}),
            await ours.get("/test-boom"),
        ]
    assert [a.status_code for a in answers] == [200, 401, 404, 400, 500]
    ids = [a.headers.get("x-request-id", "") for a in answers]
    assert all(GENERATED.fullmatch(i) for i in ids), ids
    logged = {r.request_id: r.status for r in access(records)}  # type: ignore[attr-defined]
    assert logged == dict(zip(ids, [200, 401, 404, 400, 500], strict=True))
