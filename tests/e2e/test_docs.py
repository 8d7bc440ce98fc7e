"""/docs as a browser sees it (headless Chromium), and the OpenAPI document behind it."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.e2e.conftest import Processes, clean_env, run

SERVICES = ("web", "trading")
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
ERROR_BODY = "#/components/schemas/ErrorBody"
SIGN_IN = "/api/auth/sign-in/email"


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not installed, and the /docs page test needs it: "
            "`apt-get install -y chromium` (CI's .ci/run installs it)"
        )
    return path


class DocsDom(HTMLParser):
    """What Swagger UI rendered: operations, the Authorize button, the page's assets."""

    def __init__(self) -> None:
        super().__init__()
        self.operations: set[tuple[str, str]] = set()
        self.assets: list[str] = []
        self.authorize_buttons = 0
        self._method: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "div" and "opblock" in classes:
            found = [c.removeprefix("opblock-") for c in classes if c.startswith("opblock-")]
            self._method = next((m for m in found if m in HTTP_METHODS), None)
        if "opblock-summary-path" in classes and a.get("data-path") and self._method:
            self.operations.add((self._method, str(a["data-path"])))
        if tag == "button" and "authorize" in classes:
            self.authorize_buttons += 1
        if tag == "script" and a.get("src"):
            self.assets.append(str(a["src"]))
        if tag == "link" and a.get("href"):
            self.assets.append(str(a["href"]))


async def render(browser: str, url: str, profile: Path) -> str:
    """The DOM of `url` after Swagger UI has run, as headless Chromium dumps it."""
    args = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
        "--dump-dom", url,
    ]  # fmt: skip
    code, out, err = await run(args, clean_env(), within=120)
    assert code == 0, f"chromium exited with {code}:\n{err[-3000:]}"
    return out


@pytest.fixture(params=SERVICES)
def service_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def test_docs_page_renders_every_operation_from_the_service_itself(
    service_name: str, full_db: str, processes: Processes, tmp_path: Path
) -> None:
    browser = chromium()  # before anything else: a missing browser fails here, clearly
    served = await processes.serve(service_name, full_db)
    await served.wait_ready()
    assert served.base_url is not None
    base = served.base_url
    dom = DocsDom()
    dom.feed(await render(browser, f"{base}/docs", tmp_path / "chromium-profile"))

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        spec = await openapi(client)
    expected = {(m, p) for p, ops in spec["paths"].items() for m in ops if m in HTTP_METHODS}
    assert expected <= dom.operations, (
        f"operations in the spec but not on the page: {sorted(expected - dom.operations)}"
    )
    for op in [
        ("post", "/todos"),
        ("get", "/todos/{todo_id}"),
        ("post", SIGN_IN),
    ]:
        assert op in dom.operations, sorted(dom.operations)
    assert dom.authorize_buttons == 1, "no Authorize button: the bearer scheme is not shown"

    # Swagger UI's script and stylesheet come from the service, not from a CDN.
    scripts = [a for a in dom.assets if a.endswith(".js")]
    styles = [a for a in dom.assets if a.endswith(".css")]
    assert scripts, dom.assets
    assert styles, dom.assets
    async with httpx.AsyncClient(timeout=30) as client:
        for asset in dom.assets:
            absolute = urljoin(f"{base}/docs", asset)
            assert urlsplit(absolute).netloc == urlsplit(base).netloc, asset
            r = await client.get(absolute)
            assert r.status_code == 200, (asset, r.status_code)
            assert r.content, asset


def ref(schema: dict[str, Any] | None) -> str | None:
    return schema.get("$ref") if schema else None


def json_schema(part: dict[str, Any]) -> dict[str, Any] | None:
    schema: dict[str, Any] | None = (
        part.get("content", {}).get("application/json", {}).get("schema")
    )
    return schema


# The OpenAPI document and the error bodies come from the same app in process (`service_client`).
async def test_openapi_declares_models_errors_and_bearer_auth(
    service_client: httpx.AsyncClient,
) -> None:
    spec = await openapi(service_client)
    schemes = spec["components"]["securitySchemes"]
    bearer = [name for name, s in schemes.items() if s == s | {"type": "http", "scheme": "bearer"}]
    assert bearer, schemes
    components = spec["components"]["schemas"]

    todo_ops = [
        (method, path, op)
        for path, ops in spec["paths"].items()
        if path == "/todos" or path.startswith("/todos/")
        for method, op in ops.items()
    ]
    assert {(m, p) for m, p, _ in todo_ops} == {
        ("post", "/todos"),
        ("get", "/todos"),
        ("get", "/todos/{todo_id}"),
        ("patch", "/todos/{todo_id}"),
        ("delete", "/todos/{todo_id}"),
    }
    for method, path, op in todo_ops:
        where = f"{method.upper()} {path}"
        assert any(name in req for req in op.get("security", []) for name in bearer), where
        if method in ("post", "patch"):
            body = ref(json_schema(op["requestBody"]))
            assert body is not None, where
            assert body.rsplit("/", 1)[-1] in components, where
        success = [code for code in op["responses"] if code.startswith("2")]
        assert len(success) == 1, where
        if success[0] != "204":
            model = ref(json_schema(op["responses"][success[0]]))
            assert model is not None, where
            assert model.rsplit("/", 1)[-1] in components, where
        errors = {"401", "422"} | ({"404"} if "{todo_id}" in path else set())
        assert errors <= set(op["responses"]), (where, sorted(op["responses"]))
        for code in sorted(errors):
            declared = ref(json_schema(op["responses"][code]))
            assert declared == ERROR_BODY, f"{where} documents {code} as {declared}"


async def test_error_bodies_match_the_documented_error_schema(
    service_client: httpx.AsyncClient,
) -> None:
    """What the service answers for 401, 404 and 422 has the shape the spec declares."""
    spec = await openapi(service_client)
    client = service_client
    r = await client.post(
        "/api/auth/sign-up/email",
        json={"name": "Ed", "email": "ed@example.com", "password": "password-ed-1"},
    )
    assert r.status_code == 200, r.text
    auth = {"authorization": f"Bearer {r.json()['token']}"}
    client.cookies.clear()
    answers = {
        ("get", "/todos", "401"): await client.get("/todos"),
        ("get", "/todos/{todo_id}", "404"): await client.get("/todos/nope", headers=auth),
        ("post", "/todos", "422"): await client.post("/todos", json={}, headers=auth),
        ("get", "/todos", "422"): await client.get("/todos?limit=0", headers=auth),
        ("patch", "/todos/{todo_id}", "422"): await client.patch(
            "/todos/nope", json={"title": None}, headers=auth
        ),
    }
    for (method, path, code), r in answers.items():
        assert str(r.status_code) == code, (method, path, r.text)
        declared = ref(json_schema(spec["paths"][path][method]["responses"][code]))
        assert declared is not None, (method, path, code)
        schema = spec["components"]["schemas"][declared.rsplit("/", 1)[-1]]
        body = r.json()
        missing = set(schema.get("required", [])) - set(body)
        unknown = set(body) - set(schema.get("properties", {}))
        assert not missing, (
            f"{method.upper()} {path} {code}: documented as {declared}, "
            f"the answer lacks {sorted(missing)}: {body}"
        )
        assert not unknown, f"{method.upper()} {path} {code}: undocumented fields {sorted(unknown)}"
