"""better-auth's signed session cookie: `token.base64(HMAC-SHA256(secret, token))`, URL-encoded."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote, unquote

SIGNATURE_LENGTH = 44  # standard base64 of 32 bytes, with padding


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
