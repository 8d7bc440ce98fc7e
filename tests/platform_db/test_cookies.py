"""better-auth's signed session cookie, checked against Node's crypto.createHmac."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from urllib.parse import unquote

import pytest

from platform_auth.cookies import decode_cookie_value, encode_cookie_value, sign, unsign
from platform_auth.tokens import generate_token

SECRET = "test-secret-0123456789abcdef0123456789abcdef"
TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEF"
# Derived once with Node 20:
#   crypto.createHmac("sha256", SECRET).update(TOKEN).digest("base64")
# (it contains a "+", which the cookie value must URL-encode as %2B).
TOKEN_SIGNATURE = "Ps46KTZ9N6mlS8zq5OJU8+ldjlIYzk67kDlFYcpJH1Y="

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(
    NODE is None,
    reason="node is not installed, so the live cross-check with Node's crypto.createHmac "
    "cannot run (CI installs node); the committed known-answer vector still runs",
)

_NODE_SIGN = """
const crypto = require("crypto");
const {secret, tokens} = JSON.parse(require("fs").readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(tokens.map((t) => {
  const signed = t + "." + crypto.createHmac("sha256", secret).update(t).digest("base64");
  return [signed, encodeURIComponent(signed)];
})));
"""


def node_sign(secret: str, tokens: list[str]) -> list[tuple[str, str]]:
    """(signed value, encodeURIComponent(signed value)) computed by Node, for each token."""
    assert NODE is not None
    proc = subprocess.run(
        [NODE, "-e", _NODE_SIGN],
        input=json.dumps({"secret": secret, "tokens": tokens}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [(a, b) for a, b in json.loads(proc.stdout)]


def test_known_answer_vector() -> None:
    assert sign(TOKEN, SECRET) == f"{TOKEN}.{TOKEN_SIGNATURE}"
    assert unsign(f"{TOKEN}.{TOKEN_SIGNATURE}", SECRET) == TOKEN
    assert encode_cookie_value(TOKEN, SECRET) == (
        f"{TOKEN}.Ps46KTZ9N6mlS8zq5OJU8%2BldjlIYzk67kDlFYcpJH1Y%3D"
    )


def test_value_format() -> None:
    token = generate_token()
    value = sign(token, SECRET)
    assert re.fullmatch(r"[A-Za-z0-9]{32}\.[A-Za-z0-9+/]{43}=", value)
    signature = value.split(".", 1)[1]
    assert len(signature) == 44
    assert len(base64.b64decode(signature, validate=True)) == 32


def test_round_trip() -> None:
    for _ in range(20):
        token = generate_token()
        assert unsign(sign(token, SECRET), SECRET) == token
        assert decode_cookie_value(encode_cookie_value(token, SECRET), SECRET) == token


def test_cookie_value_is_url_encoded() -> None:
    # Find tokens whose signatures hold each character base64 uses beyond [A-Za-z0-9].
    seen: set[str] = set()
    for _ in range(500):
        token = generate_token()
        signed = sign(token, SECRET)
        encoded = encode_cookie_value(token, SECRET)
        assert re.fullmatch(r"[A-Za-z0-9.%]+", encoded), encoded
        assert unquote(encoded) == signed
        seen |= {c for c in "+/=" if c in signed}
        if seen == {"+", "/", "="}:
            break
    assert seen == {"+", "/", "="}


def test_tampered_token_is_rejected() -> None:
    value = sign(TOKEN, SECRET)
    token, signature = value.split(".")
    other = ("X" if token[0] != "X" else "Y") + token[1:]
    assert unsign(f"{other}.{signature}", SECRET) is None
    assert unsign(f"{token}x.{signature}", SECRET) is None


def test_tampered_signature_is_rejected() -> None:
    token, signature = sign(TOKEN, SECRET).split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for bad in [
        flipped,
        signature[:-1],  # unpadded
        signature.rstrip("=") + "A",  # 44 characters, no padding
        signature + "=",
        "",
        base64.b64encode(b"\0" * 32).decode(),
    ]:
        assert unsign(f"{token}.{bad}", SECRET) is None, bad
    assert unsign(token, SECRET) is None  # no signature at all
    assert unsign(f".{signature}", SECRET) is None  # no token at all


def test_wrong_secret_is_rejected() -> None:
    value = sign(TOKEN, SECRET)
    assert unsign(value, SECRET + "x") is None
    assert unsign(value, SECRET.upper()) is None
    assert decode_cookie_value(encode_cookie_value(TOKEN, SECRET), "another-secret" * 3) is None


def test_garbage_is_rejected_without_raising() -> None:
    for raw in ["", ".", "%", "%zz", "a.b.c", "%E0%A4%A", "\u00e9.\u00e9", "x" * 5000]:
        assert decode_cookie_value(raw, SECRET) is None


@needs_node
def test_signature_matches_node_hmac() -> None:
    tokens = [generate_token() for _ in range(30)]
    secret = "another secret with spaces, \u00fcml\u00e4uts and 32+ chars"
    expected = node_sign(secret, tokens)
    assert [(sign(t, secret), encode_cookie_value(t, secret)) for t in tokens] == expected
    for token, (signed, encoded) in zip(tokens, expected, strict=True):
        assert unsign(signed, secret) == token
        assert decode_cookie_value(encoded, secret) == token


@needs_node
def test_known_answer_vector_still_matches_node() -> None:
    assert node_sign(SECRET, [TOKEN])[0][0] == f"{TOKEN}.{TOKEN_SIGNATURE}"
