"""better-auth's signed session cookie: `token.base64(HMAC-SHA256(secret, token))`, URL-encoded."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import quote, unquote

from starlette.requests import cookie_parser

SIGNATURE_LENGTH = 44  # standard base64 of 32 bytes, with padding


def read_cookies(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's cookies: every `Cookie` header, merged in order (a later one wins).

    The one reader of cookies, for authentication and the origin check alike, so a request
    cannot carry a cookie that one of them sees and the other does not. The parser is
    Starlette's lenient one: it does not stop at a malformed cookie placed first.
    """
    jar: dict[str, str] = {}
    for name, value in headers:
        if name == b"cookie":
            jar.update(cookie_parser(value.decode("latin-1")))
    return jar


def sign(token: str, secret: str) -> str:
    mac = hmac.new(secret.encode(), token.encode(), hashlib.sha256).digest()
    return f"{token}.{base64.b64encode(mac).decode()}"


def unsign(value: str, secret: str) -> str | None:
    """The token inside a signed value, or None if the signature does not match."""
    token, sep, signature = value.rpartition(".")
    if not sep or not token or len(signature) != SIGNATURE_LENGTH or not signature.endswith("="):
        return None
    expected = sign(token, secret).rpartition(".")[2]
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return None
    return token


def encode_cookie_value(token: str, secret: str) -> str:
    return quote(sign(token, secret), safe="")


def decode_cookie_value(raw: str, secret: str) -> str | None:
    return unsign(unquote(raw), secret)
