"""The HTTP server settings and uvicorn's httptools protocol with the bounds it lacks.

uvicorn's httptools protocol (the fast one, used when httptools is installed) accepts headers
of any size and number, and waits for them forever: a client can grow the process by the
size of whatever it sends, or hold a connection open by sending one byte now and then. This
protocol bounds the request head (URL plus headers) in bytes and in header count, bounds
the time a client may take to send it, and refuses connections past a per-process limit.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service_kit.settings import ServerSettings


def _answer(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"code": code, "message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_TOO_LARGE = _answer(
    431, "Request Header Fields Too Large", "HEADERS_TOO_LARGE", "The request headers are too large"
)
_TIMEOUT = _answer(408, "Request Timeout", "REQUEST_TIMEOUT", "The request headers took too long")
_BUSY = _answer(503, "Service Unavailable", "TOO_MANY_CONNECTIONS", "Too many connections")


class _HeadRefused(Exception):
    pass


# The request line's bytes besides the target ("GET " and " HTTP/1.1\r\n") and the empty line
# that ends the head: counted with the callbacks' bytes, so a head's size means one thing.
_HEAD_OVERHEAD = 16


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request head bounded in size, count and time.

    Two counts bound the size. The bytes fed to the parser while a head is being read: never
    more than MAX_HEADER_BYTES at once, and a head not complete within them is refused, so the
    parser (which buffers a header until it is complete) never holds more than the limit. And
    the bytes of the head the parser hands over (target and headers), for a head that begins
    inside a piece already fed (a pipelined request).
    """

    limits: ServerSettings | None = None  # set by `serve`; read from the environment if not

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = type(self).limits
        if limits is None:
            limits = type(self).limits = ServerSettings()
        self._max_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._header_timeout = limits.header_timeout
        self._max_connections = limits.max_connections
        self._in_head = True  # the next bytes are (part of) a request line or header
        self._fed = 0  # bytes fed to the parser since this head began
        self._head_bytes = 0  # the head's bytes as the parser's callbacks hand them over
        self._head_count = 0
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._max_connections:
            transport.write(_BUSY)
            transport.close()
            return
        super().connection_made(transport)
        self._arm_head_timer()  # a client that connects and sends nothing is timed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        if self.transport is not None:  # None: refused in connection_made
            super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT)
            self.transport.close()

    def _refuse_head(self) -> None:
        self._disarm_head_timer()
        if not self.transport.is_closing():
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        while data and self._in_head:
            budget = self._max_bytes - self._fed
            piece, data = data[:budget], data[budget:]
            self._fed += len(piece)
            super().data_received(piece)
            if self.transport.is_closing():
                return
            if self._in_head and self._fed >= self._max_bytes:
                self._refuse_head()
                return
        if data:
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        # A callback's exception reaches data_received as a parser error; tell them apart.
        if self._refused:
            self._refuse_head()
            return
        super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes, self._head_count = _HEAD_OVERHEAD, 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        self._head_count += 1
        if self._head_bytes > self._max_bytes or self._head_count > self._max_headers:
            self._refused = True
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        if self._head_bytes > self._max_bytes:  # a long target and few headers
            self._refused = True
            raise _HeadRefused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head, self._fed = True, 0
        super().on_message_complete()
