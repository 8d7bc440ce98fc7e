"""Redirect targets against a real WHATWG URL parser (Node's `URL`), and the one builder.

`service_kit.urls` promises that a target is read the way a browser reads it and that no
accepted target leaves the allowed origins. Hypothesis throws tricky strings at `parse_target`
and, for every target it accepts, Node's `URL` (the browser's parser) must agree: the raw
target resolves on-site, the built Location resolves to the same URL, and a Location with
parameters added stays on-site and carries them. A rejected target asserts nothing: the
check is allowed to be narrower than a browser.

The last tests make sure no other module builds a redirect by hand, so that check is the
only way a Location leaves this service.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import shutil
import subprocess
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.responses import RedirectResponse, Response

from platform_auth.app import create_app
from service_kit.urls import Redirect, RedirectTarget, UnsafeTarget, parse_target
from tests.conftest import auth_settings
from trading.app import SERVICE as TRADING
from web.app import SERVICE as WEB

REPO = Path(__file__).resolve().parents[2]
BASE = "https://testserver/api/auth/reset-password/tok"
BASE_ORIGIN = "https://testserver"
ALLOWED = frozenset({"https://testserver", "https://app.example.com", "http://127.0.0.1:8001"})

# One Node process for the module: each stdin line is `[input, base]` (base may be null),
# each answer one line. `JSON.stringify` escapes what could break a line, and Python's
# `json.dumps` sends pure ASCII, so a line is always one message.
_NODE_URL = r"""
const rl = require("readline").createInterface({input: process.stdin});
rl.on("line", (line) => {
  const [input, base] = JSON.parse(line);
  let out;
  try {
    const u = base === null ? new URL(input) : new URL(input, base);
    out = {ok: true, origin: u.origin, href: u.href};
  } catch (e) {
    out = {ok: false};
  }
  process.stdout.write(JSON.stringify(out) + "\n");
});
"""

Resolve = Callable[[str, str | None], dict[str, Any]]


@pytest.fixture(scope="module")
def node_url() -> Iterator[Resolve]:
    """`resolve(input, base)`: what Node's WHATWG `URL` makes of `input` against `base`."""
    node = shutil.which("node")
    if node is None:
        pytest.skip(
            "Node is missing: these tests check redirect targets against Node's WHATWG URL "
            "parser (install node 20+; CI has it)"
        )
    proc = subprocess.Popen(
        [node, "-e", _NODE_URL],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        bufsize=1,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def resolve(url: str, base: str | None) -> dict[str, Any]:
        stdin.write(json.dumps([url, base]) + "\n")
        stdin.flush()
        line = stdout.readline()
        assert line, f"node exited with {proc.poll()}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    try:
        yield resolve
    finally:
        stdin.close()
        proc.wait(timeout=10)


def check_target(resolve: Resolve, raw: str) -> RedirectTarget | None:
    """Assert every promise for `raw`: rejected cleanly, or accepted and on-site in Node."""
    try:
        target = parse_target(raw, ALLOWED)
    except UnsafeTarget:
        return None  # narrower than a browser is allowed
    expected = BASE_ORIGIN if target.origin is None else target.origin
    assert expected in ALLOWED

    seen = resolve(raw, BASE)
    assert seen["ok"], f"accepted {raw!r}, which a browser cannot parse"
    assert seen["origin"] in ALLOWED, f"accepted {raw!r}, which a browser reads as {seen}"
    assert seen["origin"] == expected

    location = target.url()
    if target.origin is not None:
        # An absolute Location must stand on its own, without a base.
        assert resolve(location, None) == {"ok": True, "origin": expected, "href": seen["href"]}
    built = resolve(location, BASE)
    assert built["ok"], f"{raw!r} built as {location!r}, which a browser cannot parse"
    assert built["origin"] == expected, f"{raw!r} built as {location!r}: {built}"
    assert built["href"] == seen["href"], f"{raw!r} built as {location!r}"

    with_token = target.url(token="T")
    after = resolve(with_token, BASE)
    assert after["ok"], f"{raw!r} with a token built as {with_token!r}: unparsable"
    assert after["origin"] == expected, f"{raw!r} with a token built as {with_token!r}"
    assert "T" in parse_qs(urlsplit(after["href"]).query).get("token", []), with_token
    return target


# --- generated targets --------------------------------------------------------------------

PIECES = [
    *["/", "\\", "\t", "\n", "\r", " ", "\x00", "\x0b", "\x1f", "\x7f"],
    *["@", ":", "//", "///", ".", "..", "%2f", "%2F", "%5c", "%09", "%2e", "%40"],
    *["?", "#", "&", "=", "é", "\uff45", "\u3002", "\u200b"],
    *["evil.example", "app.example.com", "testserver", "127.0.0.1", "127.1", "0x7f.1"],
    *[":8001", ":443", ":80", ":0443", "https:", "http:", "HTTPS:", "javascript:", "data:"],
    *["[::1]", "user@"],
    # Beyond ASCII: digits Python's str.isdigit takes and a browser's port does not, and a
    # lone surrogate (a JavaScript string turns it into U+FFFD before parsing).
    *["\u0664\u0664\u0663", "\u00b2", "\ud800"],
]
ORIGIN_PREFIXES = [
    *sorted(ALLOWED),
    "https://APP.example.com",
    "HTTPS://app.example.com:443",
    "https://app.example.com:0443",
    "http://127.0.0.1:08001",
    "https:\\\\testserver",
    " https://testserver",
    "https://test\tserver",
    "https://app%2eexample.com",
]

# An authority built from parts: what is allowed hides in the scheme, the host or the port.
_AUTHORITY = st.tuples(
    st.sampled_from(["https:", "http:", "HTTPS:", " https:", "ht\ttps:"]),
    st.sampled_from(["//", "\\\\", "/\\", "///", "/"]),
    st.sampled_from(
        [
            *["app.example.com", "APP.example.com", "testserver", "127.0.0.1", "127.1"],
            *["app%2eexample.com", "%61pp.example.com", "app.example.com.", "test\nserver"],
            *["evil.example", "app.example.com.evil.example", "app.example.com@evil.example"],
            *["user@testserver", "[::1]", "\uff45vil.example", "testserver\u3002"],
        ]
    ),
    st.sampled_from(
        [
            *["", ":", ":443", ":0443", ":80", ":8001", ":08001", ":65536", ":-1", ": 443"],
            *[":\u0664\u0664\u0663", ":\u00b2", ":4\u00b2", ":8001\u00b9"],
        ]
    ),
).map("".join)

_piece = st.sampled_from(PIECES)
_small_text = st.text(alphabet="/\\\t\n\r @:.%?#&=aeé0123456789xX-_", max_size=4)
_junk = st.lists(st.one_of(_piece, _small_text), max_size=8).map("".join)
TARGETS = st.one_of(
    _junk,
    st.tuples(st.sampled_from(ORIGIN_PREFIXES), _junk).map("".join),
    st.tuples(_AUTHORITY, _junk).map("".join),
    st.tuples(st.sampled_from(["/", "/a", "/./", "/../", "/%2e%2e/", "//", "/\\"]), _junk).map(
        "".join
    ),
    st.tuples(st.sampled_from(["https://", "http://", "https:", "\\\\"]), _junk).map("".join),
)
# An allowed origin, then junk: straight after the host (where it may change the origin) or
# after the start of the path, query or fragment (where it must not).
ALLOWED_WITH_JUNK = st.tuples(
    st.sampled_from(sorted(ALLOWED)), st.sampled_from(["", "", "/", "?", "#", "\\"]), _junk
).map("".join)

PROPERTY = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _kind(target: RedirectTarget | None) -> str:
    """For the statistics (`--hypothesis-show-statistics`): how much was accepted."""
    if target is None:
        return "rejected"
    return "accepted: a path" if target.origin is None else "accepted: an absolute URL"


@settings(PROPERTY, max_examples=1000)
@given(raw=TARGETS)
def test_accepted_targets_resolve_on_site_in_a_browser(node_url: Resolve, raw: str) -> None:
    event(_kind(check_target(node_url, raw)))


@PROPERTY
@given(raw=ALLOWED_WITH_JUNK)
def test_allowed_origin_with_junk_stays_on_site(node_url: Resolve, raw: str) -> None:
    event(_kind(check_target(node_url, raw)))


# --- known forms --------------------------------------------------------------------------

ATTACKS = [
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r/evil.example",
    "\t//evil.example",
    " //evil.example",
    "/\\evil.example",
    "\\/evil.example",
    "https:evil.example",
    "https:/evil.example",
    "https:///evil.example",
    "https://evil.example",
    "https://app.example.com@evil.example",
    "https://evil.example\\@app.example.com",
    "https://app.example.com.evil.example",
    "javascript:alert(1)",
    "//evil.example",
    "https://evil%2eexample",
]


@pytest.mark.parametrize("raw", ATTACKS)
def test_attack_forms_are_rejected(node_url: Resolve, raw: str) -> None:
    with pytest.raises(UnsafeTarget):
        parse_target(raw, ALLOWED)
    # And the test's premise: the ones a browser can follow, it follows elsewhere or to a
    # relative path nobody asked for.
    seen = node_url(raw, BASE)
    assert not seen["ok"] or seen["origin"] not in ALLOWED or "evil" in seen["href"]


@pytest.mark.parametrize(
    ("raw", "params", "location"),
    [
        ("/dashboard", {}, "/dashboard"),
        ("/a?b=1#c", {"token": "T"}, "/a?b=1&token=T#c"),
        ("https://APP.example.com:443/x", {}, "https://app.example.com/x"),
        ("  /ok\t", {}, "/ok"),
    ],
)
def test_accepted_forms_build_exact_location(
    node_url: Resolve, raw: str, params: dict[str, str], location: str
) -> None:
    assert parse_target(raw, ALLOWED).url(**params) == location
    assert check_target(node_url, raw) is not None


# Found by the properties above: a port in digits that are not ASCII, which `str.isdigit`
# takes and a browser refuses (or `int` cannot read), a port longer than `int` reads from a
# string, and lone surrogates (a browser reads U+FFFD; they were encoded as their own bytes).
@pytest.mark.parametrize(
    "raw",
    [
        "https://app.example.com:\u0664\u0664\u0663/x",
        "https://app.example.com:\u00b2/x",
        "https://app.example.com:" + "0" * 5000 + "443/x",
        "/\ud800",
        "/a?\ud800#\udfff",
        "/\ud83d\ude00",
    ],
)
def test_regressions(node_url: Resolve, raw: str) -> None:
    check_target(node_url, raw)


# --- the one builder ----------------------------------------------------------------------

URLS_MODULE = REPO / "service_kit" / "src" / "service_kit" / "urls.py"
_REDIRECT_STATUS = re.compile(r"HTTP_3\d\d_\w+")


def _is_redirect_status(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int) and 300 <= node.value < 400
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return bool(_REDIRECT_STATUS.fullmatch(name))


def _created_routes(tree: ast.AST) -> set[int]:
    """The nodes of routes declared `status_code=201`: their Location names what was created
    (a browser follows a Location only on a 30x), so it is not a redirect."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            isinstance(d, ast.Call) and any(_is_created(k) for k in d.keywords)
            for d in node.decorator_list
        ):
            inside.update(id(n) for n in ast.walk(node))
    return inside


def _is_created(keyword: ast.keyword) -> bool:
    value = keyword.value
    name = value.attr if isinstance(value, ast.Attribute) else getattr(value, "id", None)
    return keyword.arg == "status_code" and (
        name == "HTTP_201_CREATED" or (isinstance(value, ast.Constant) and value.value == 201)
    )


def hand_built_redirects(source: str) -> list[str]:
    """Where `source` builds a redirect itself: RedirectResponse, a Location header, a 30x."""
    tree = ast.parse(source)
    created = _created_routes(tree)
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and any(
            a.name == "RedirectResponse" for a in node.names
        ):
            found.append(f"{line}: imports RedirectResponse")
        elif isinstance(node, ast.Name | ast.Attribute) and (
            getattr(node, "id", None) == "RedirectResponse"
            or getattr(node, "attr", None) == "RedirectResponse"
        ):
            found.append(f"{line}: uses RedirectResponse")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str | bytes)
            and node.value.lower() in ("location", b"location")
            and id(node) not in created
        ):
            found.append(f"{line}: names the location header")
        elif isinstance(node, ast.Call):
            statuses = [k.value for k in node.keywords if k.arg == "status_code"]
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else ""
            callee = getattr(node.func, "id", callee)
            if callee.endswith("Response") and len(node.args) > 1:
                statuses.append(node.args[1])
            if any(_is_redirect_status(s) for s in statuses):
                found.append(f"{line}: a call with a redirect status")
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            if (
                value is not None
                and any(getattr(t, "attr", None) == "status_code" for t in targets)
                and _is_redirect_status(value)
            ):
                found.append(f"{line}: sets a redirect status")
    return found


@pytest.mark.parametrize(
    "source",
    [
        "from starlette.responses import RedirectResponse",
        "import fastapi\nr = fastapi.responses.RedirectResponse('/x')",
        "r = Response(headers={'Location': '/x'})",
        "r.headers['location'] = '/x'",
        "r = Response(status_code=302)",
        "r = Response(None, 307)",
        "r = Response(status_code=status.HTTP_303_SEE_OTHER)",
        "r.status_code = 301",
    ],
)
def test_the_scan_finds_hand_built_redirects(source: str) -> None:
    assert hand_built_redirects(source)


def test_the_scan_allows_the_location_of_a_created_resource() -> None:
    created = (
        "@router.post('', status_code=status.HTTP_201_CREATED)\n"
        "async def create(response: Response) -> None:\n"
        "    response.headers['Location'] = '/todos/1'\n"
    )
    assert hand_built_redirects(created) == []
    assert hand_built_redirects(created.replace("HTTP_201_CREATED", "HTTP_302_FOUND"))
    assert hand_built_redirects(created.replace("HTTP_201_CREATED", "HTTP_200_OK"))


def test_no_module_but_urls_builds_a_redirect() -> None:
    roots = [*sorted(REPO.glob("*/src")), *sorted((REPO / "services").glob("*/src"))]
    files = sorted(p for root in roots for p in root.rglob("*.py"))
    assert URLS_MODULE in files
    assert len(roots) >= 6
    offenders = {
        str(path.relative_to(REPO)): found
        for path in files
        if path != URLS_MODULE and (found := hand_built_redirects(path.read_text("utf-8")))
    }
    assert offenders == {}, "redirect only through service_kit.urls.Redirect"


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, into included routers (FastAPI keeps those as a branch per include)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _api_routes(included.routes)


def _classes_in(hint: object) -> Iterator[type]:
    """The classes a return annotation names (`get_type_hints` has dropped `Annotated`)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            yield from _classes_in(arg)
    elif isinstance(hint, type):
        yield hint


_MENTIONS_REDIRECT = re.compile(r"\bRedirect(?:Response)?\b|\bHTTP_3\d\d|status_code=3\d\d")


def _apps() -> list[FastAPI]:
    config = auth_settings("postgresql://u:p@127.0.0.1:1/db")
    return [
        create_app(title="t", settings=config),
        WEB.create_app(config),
        TRADING.create_app(config),
    ]


def test_every_redirecting_route_returns_the_one_redirect() -> None:
    ours = ("service_kit.", "platform_db.", "platform_auth.", "web.", "trading.")
    redirecting: set[str] = set()
    for app in _apps():
        for route in _api_routes(app.routes):
            endpoint = route.endpoint
            if not endpoint.__module__.startswith(ours):
                continue  # FastAPI's own docs pages
            returns = list(_classes_in(typing.get_type_hints(endpoint).get("return")))
            responses = [c for c in returns if issubclass(c, Response)]
            response_class: object = getattr(route.response_class, "value", route.response_class)
            assert not (
                isinstance(response_class, type) and issubclass(response_class, RedirectResponse)
            ), route.path
            mentions = (
                any(issubclass(c, Redirect | RedirectResponse) for c in responses)
                or any(300 <= int(code) < 400 for code in route.responses if str(code).isdigit())
                or bool(_MENTIONS_REDIRECT.search(inspect.getsource(endpoint)))
            )
            if not mentions:
                continue
            name = f"{endpoint.__module__}.{endpoint.__qualname__}"
            assert Redirect in responses, f"{name} redirects without returning Redirect"
            assert set(responses) == {Redirect}, f"{name} returns {responses}"
            redirecting.add(endpoint.__name__)
    # The scan is not vacuous: the mail links that redirect were found.
    assert {"verify_email", "reset_password_link"} <= redirecting
