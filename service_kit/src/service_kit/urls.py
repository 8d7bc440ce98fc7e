"""The one redirect-target check and the one redirect builder.

Every route that redirects, or hands a URL back for the client to follow, parses the target
here. The target is read the way a browser's URL parser (WHATWG) reads it, not the way
`urllib` does: leading and trailing C0 controls and spaces are stripped, ASCII tab and
newlines are removed anywhere, and a backslash is a slash before the query. So `"/\\t/evil"`
is seen as the `//evil` a browser would follow, and refused. The Location is then built from
the parsed, checked parts, never from the raw string.

What is accepted, deliberately narrow: a path on this site (`/…`, not `//…`), or an absolute
`http(s)://host[:port]/…` whose origin is allowed. Anything whose resolution is subtle
(scheme-relative, `https:host`, userinfo, IPv6 literals, non-ASCII or percent-encoded hosts
that do not decode to a plain name, relative paths) is refused rather than guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlencode

from starlette.responses import Response


class UnsafeTarget(ValueError):
    """A redirect target that is not a path here or an allowed origin, as a browser reads it."""


_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))
_TAB_AND_NEWLINES = str.maketrans("", "", "\t\n\r")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)*")
_DEFAULT_PORTS = {"http": 80, "https": 443}

# WHATWG's percent-encode sets: what a browser itself encodes in each part.
_C0 = {chr(c) for c in range(0x20)} | {" ", "\x7f"}
_FRAGMENT_SET = frozenset(_C0 | {'"', "<", ">", "`"})
_QUERY_SET = frozenset(_C0 | {'"', "#", "<", ">", "'"})
_PATH_SET = frozenset(_QUERY_SET - {"'"} | {"?", "`", "{", "}"})


def _encode(part: str, unsafe: frozenset[str]) -> str:
    out = []
    for ch in part:
        if ch in unsafe or ord(ch) > 0x7E:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out)


def browser_form(raw: str) -> str:
    """`raw` as a browser's URL parser first rewrites it, before any parsing."""
    # The parser reads scalar values (a JavaScript string becomes a USVString): a surrogate
    # pair is one character and a lone surrogate is U+FFFD, so it is encoded as a browser
    # would encode it, not as the surrogate's own (invalid) UTF-8 bytes.
    url = raw.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    url = url.strip(_C0_AND_SPACE).translate(_TAB_AND_NEWLINES)
    # Backslash is a path separator for http(s) (and for a relative URL on an http(s) page),
    # up to the query; inside the query and fragment it is a plain character.
    cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=len(url))
    return url[:cut].replace("\\", "/") + url[cut:]


@dataclass(frozen=True)
class RedirectTarget:
    """A checked target: `origin` is None for a path on this site."""

    origin: str | None
    path: str
    query: str | None
    fragment: str | None

    def url(self, **params: str) -> str:
        """The Location to send: the checked parts, with `params` added to the query."""
        query = self.query
        if params:
            extra = urlencode(params)
            query = f"{query}&{extra}" if query else extra
        out = (self.origin or "") + _encode(self.path, _PATH_SET)
        if query is not None:
            out += "?" + _encode(query, _QUERY_SET)
        if self.fragment is not None:
            out += "#" + _encode(self.fragment, _FRAGMENT_SET)
        return out


def _split_rest(rest: str) -> tuple[str, str | None, str | None]:
    """`path?query#fragment` into its three parts (query and fragment None when absent)."""
    fragment = None
    if "#" in rest:
        rest, fragment = rest.split("#", 1)
    query = None
    if "?" in rest:
        rest, query = rest.split("?", 1)
    return rest, query, fragment


def _origin(scheme: str, authority: str) -> str | None:
    """The origin of `scheme://authority` as a browser serialises it; None if not plain."""
    if "@" in authority or authority.startswith("["):
        return None
    host, sep, port_text = authority.rpartition(":")
    if not sep:
        host, port_text = authority, ""
    host = unquote(host, errors="strict") if "%" in host else host
    if not host.isascii():
        return None
    host = host.lower()
    if not _HOST.fullmatch(host):
        return None
    if port_text:
        # ASCII digits only: `isdigit` also takes "²" and "٤", which a browser refuses. Leading
        # zeros are allowed, and dropped before `int`, which reads at most 4300 digits.
        if not port_text.isascii() or not port_text.isdigit():
            return None
        digits = port_text.lstrip("0") or "0"
        if len(digits) > 5 or int(digits) > 65535:
            return None
        port = int(digits)
        if port != _DEFAULT_PORTS[scheme]:
            return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def origin_of(url: str) -> str | None:
    """The normalised origin of an absolute http(s) URL, or None."""
    url = browser_form(url)
    match = _SCHEME.match(url)
    if match is None:
        return None
    scheme = match.group()[:-1].lower()
    rest = url[match.end() :]
    if scheme not in _DEFAULT_PORTS or not rest.startswith("//") or rest.startswith("///"):
        return None
    authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    try:
        return _origin(scheme, authority)
    except UnicodeDecodeError:
        return None


def parse_target(raw: str, allowed_origins: Iterable[str]) -> RedirectTarget:
    """Check `raw` as a browser would resolve it; raise UnsafeTarget if it leaves."""
    url = browser_form(raw)
    if url.startswith("/"):
        if url.startswith("//"):
            raise UnsafeTarget(raw)
        path, query, fragment = _split_rest(url)
        return RedirectTarget(None, path, query, fragment)
    origin = origin_of(url)
    if origin is None or origin not in set(allowed_origins):
        raise UnsafeTarget(raw)
    match = _SCHEME.match(url)
    assert match is not None
    rest = url[match.end() + 2 :]
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    path, query, fragment = _split_rest(rest[cut:])
    return RedirectTarget(origin, path or "/", query, fragment)


class Redirect(Response):
    """A 302 to a checked target. The Location is already encoded as a browser would encode
    it; Starlette's RedirectResponse would quote it a second time."""

    def __init__(self, target: RedirectTarget, **params: str) -> None:
        super().__init__(status_code=302, headers={"location": target.url(**params)})
