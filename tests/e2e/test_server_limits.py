"""The HTTP server's bounds, against real `web serve` processes, byte by byte on raw sockets.

One process per configuration, started together once for the module: each test uses only
the process whose settings it is about, and leaves it as it found it (no connection of a
test outlives it). Every loop is bounded in count and in time; all traffic is 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import Proc, Processes
from tests.pg import create_database, drop_database

HOST = "127.0.0.1"
MiB = 1024 * 1024

# name -> the settings of its process (on top of the e2e defaults).
CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "small_heads": {"MAX_HEADER_BYTES": "4096"},
    "slow_heads": {"HEADER_TIMEOUT": "1"},
    "few_connections": {"MAX_CONNECTIONS": "5", "HEADER_TIMEOUT": "30"},
    "behind_proxy": {"FORWARDED_ALLOW_IPS": "127.0.0.1"},
}


@dataclass
class Server:
    proc: Proc

    @property
    def base_url(self) -> str:
        assert self.proc.base_url is not None
        return self.proc.base_url

    @property
    def port(self) -> int:
        port = urlsplit(self.base_url).port
        assert port is not None
        return port

    def alive(self) -> None:
        assert self.proc.returncode is None, self.proc.describe()
        assert "Traceback" not in self.proc.output(), self.proc.describe()


@pytest.fixture(scope="module")
async def servers(
    admin_url: str, full_template: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Server]]:
    """One `web serve` per entry of CONFIGS, on one database, started concurrently."""
    url = await create_database(admin_url, template=full_template)
    procs = Processes(tmp_path_factory.mktemp("server-limits"))
    try:
        started = {
            name: await procs.serve("web", url, port=None, **env) for name, env in CONFIGS.items()
        }
        await asyncio.gather(*(p.wait_ready() for p in started.values()))
        yield {name: Server(p) for name, p in started.items()}
    finally:
        await procs.stop_all()
        await drop_database(admin_url, url)


# -- bytes on the wire --------------------------------------------------------------------


def head(port: int, *headers: str, path: str = "/healthz", method: str = "GET") -> bytes:
    """A request head: request line, Host, `headers`, the empty line."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def head_of_size(port: int, size: int) -> bytes:
    """A GET /healthz head of exactly `size` bytes (padded by one header)."""
    bare = len(head(port, "X-Pad: "))
    data = head(port, "X-Pad: " + "a" * (size - bare))
    assert len(data) == size
    return data


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)

    def json(self) -> Any:
        return json.loads(self.body)


def parse_head(top: bytes) -> tuple[int, dict[str, str]]:
    """The status and headers of a response head (without its empty line)."""
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split(" ", 2)[1]), headers


def parse(raw: bytes) -> Response:
    """The first whole response (head and Content-Length body) in `raw`."""
    top, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw[:200]!r}"
    status, headers = parse_head(top)
    length = int(headers.get("content-length", "0"))
    assert len(rest) >= length, f"short body in {raw[:200]!r}"
    return Response(status, headers, rest[:length])


async def read_response(reader: asyncio.StreamReader, within: float = 5.0) -> Response:
    """The next response on a kept-alive connection (Content-Length framed)."""
    async with asyncio.timeout(within):
        top = await reader.readuntil(b"\r\n\r\n")
        status, headers = parse_head(top.removesuffix(b"\r\n\r\n"))
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Response(status, headers, body)


async def read_to_eof(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything the server sends until it closes (fail if it does not within `within`)."""
    data = b""
    async with asyncio.timeout(within):
        for _ in range(10_000):
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
    pytest.fail(f"the server sent more than 10000 pieces without closing: {data[:200]!r}")


@contextlib.asynccontextmanager
async def connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.wait_closed(), 5)


async def exchange(port: int, data: bytes, within: float = 5.0) -> Response:
    """Send `data` on a new connection and parse the first answer."""
    async with connection(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        return await read_response(reader, within)


async def refused(port: int, data: bytes, within: float = 5.0) -> Response:
    """Send `data` on a new connection; the server must answer once and close."""
    async with connection(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        raw = await read_to_eof(reader, within)
    answer = parse(raw)
    assert answer.headers.get("connection") == "close", answer
    return answer


@dataclass
class Pushed:
    sent: int  # bytes the kernel took before the server closed (or the bound was reached)
    answer: bytes  # what the server wrote back before closing
    closed: bool  # whether the server closed the connection


async def push_head(
    port: int, start: bytes, filler: bytes, total: int, within: float = 15.0
) -> Pushed:
    """Send `start` then `filler` repeatedly, up to `total` bytes, until the server closes.

    A plain non-blocking socket, not a stream: a stream's transport, failing to write once
    the server has reset the connection, closes itself and drops the answer the kernel holds.
    """
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + within
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), 5)
        sent, piece = 0, start
        try:
            for _ in range(total // len(filler) + 2):
                if sent >= total or time.monotonic() > deadline:
                    break
                await asyncio.wait_for(loop.sock_sendall(sock, piece), deadline - time.monotonic())
                sent += len(piece)
                piece = filler
        except (ConnectionError, TimeoutError):
            pass  # the server closed (or stopped reading: `closed` tells which)
        answer, closed = b"", False
        try:
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                for _ in range(1000):
                    chunk = await loop.sock_recv(sock, 65536)
                    if not chunk:
                        closed = True
                        break
                    answer += chunk
        except ConnectionError:
            closed = True
        except TimeoutError:
            pass
    return Pushed(sent, answer, closed)


def rss_kib(pid: int) -> int:
    """The resident set size of `pid`, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def serving_pid(server: Server) -> int:
    """The pid of the process that holds the listening socket: the console script itself."""
    pid = server.proc.pid
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[1].endswith(b"/web"), argv
    assert b"serve" in argv, argv
    children = [
        Path(task, "children").read_text().split() for task in Path(f"/proc/{pid}/task").iterdir()
    ]
    assert not any(children), f"uvicorn runs workers under {pid}: {children}"
    return pid


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    for _ in range(1000):
        if await check():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {within:.0f}s: {what}")


def too_large(answer: Response) -> None:
    assert answer.status == 431, answer
    assert answer.json()["code"] == "HEADERS_TOO_LARGE", answer.body


# -- the size of the head -----------------------------------------------------------------


async def test_an_8_mb_header_is_refused_without_reading_it(servers: dict[str, Server]) -> None:
    """An 8 MB header value, sent in chunks, gets 431 and a closed connection."""
    server = servers["default"]
    start = head(server.port).removesuffix(b"\r\n") + b"X-Big: "
    pushed = await push_head(server.port, start, b"a" * 65536, total=8 * MiB)
    assert pushed.closed, pushed
    too_large(parse(pushed.answer))
    assert (await exchange(server.port, head(server.port))).status == 200
    server.alive()


async def test_four_64_mb_heads_at_once_do_not_grow_the_process(
    servers: dict[str, Server],
) -> None:
    """Four connections pushing 64 MB of header each grow the server by less than 20 MiB."""
    server = servers["default"]
    pid = serving_pid(server)
    start = head(server.port).removesuffix(b"\r\n") + b"X-Big: "
    # Warm up (allocator arenas, first oversized read), then measure from there.
    await push_head(server.port, start, b"a" * 65536, total=MiB)
    baseline = rss_kib(pid)
    samples = [baseline]
    done = asyncio.Event()

    async def sample() -> None:
        for _ in range(3000):
            samples.append(rss_kib(pid))
            if done.is_set():
                return
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        pushes = await asyncio.gather(
            *(push_head(server.port, start, b"b" * 65536, total=64 * MiB) for _ in range(4))
        )
    finally:
        done.set()
        await sampler
    samples.append(rss_kib(pid))
    for pushed in pushes:
        assert pushed.closed, pushed
        too_large(parse(pushed.answer))
    growth = max(samples) - baseline
    sent = [p.sent // 1024 for p in pushes]
    assert growth < 20 * 1024, f"RSS {baseline} KiB -> peak {max(samples)} KiB; sent KiB {sent}"
    assert (await exchange(server.port, head(server.port))).status == 200
    server.alive()


async def test_a_head_under_the_default_limit_is_served(servers: dict[str, Server]) -> None:
    """A 15000-byte header passes the default 16 KiB bound."""
    server = servers["default"]
    answer = await exchange(server.port, head(server.port, "X-Pad: " + "a" * (15000 - 9)))
    assert answer.status == 200, answer
    assert answer.json() == {"status": "ok"}


async def test_max_header_bytes_is_read_from_the_environment(
    servers: dict[str, Server],
) -> None:
    """MAX_HEADER_BYTES=4096: a head of exactly 4096 bytes passes, one more byte is refused."""
    server = servers["small_heads"]
    assert (await exchange(server.port, head_of_size(server.port, 4096))).status == 200
    too_large(await refused(server.port, head_of_size(server.port, 4097)))
    too_large(await refused(server.port, head(server.port, "X-Pad: " + "a" * 5000)))
    # Byte by byte it is the same bound.
    async with connection(server.port) as (reader, writer):
        data = head_of_size(server.port, 4097)
        for i in range(0, len(data) - 1, 512):
            writer.write(data[i : i + 512])
            await writer.drain()
            await asyncio.sleep(0)
        too_large(parse(await read_to_eof(reader)))
    server.alive()


async def test_a_pipelined_head_is_bounded_like_the_first(servers: dict[str, Server]) -> None:
    """A second, oversized head in the same write as a first request is refused too."""
    server = servers["small_heads"]
    port = server.port
    big = head(port, "X-Pad: " + "a" * 6000)
    body = b"x" * 5000
    post = head(port, f"Content-Length: {len(body)}", method="POST") + body
    for first in (head(port), post):
        async with connection(port) as (reader, writer):
            writer.write(first + big)
            await writer.drain()
            raw = await read_to_eof(reader)
        answers: list[Response] = []
        for _ in range(3):
            if not raw:
                break
            answer = parse(raw)
            answers.append(answer)
            raw = raw.partition(b"\r\n\r\n")[2][len(answer.body) :]
        # The refusal may overtake the first answer (uvicorn answers a bad head at once).
        assert answers, "no answer at all"
        too_large(answers[-1])
        assert [a.status for a in answers[:-1]] in ([], [200], [405]), answers
    # Two pipelined heads under the bound each, over it together, are both served.
    pair = head_of_size(port, 3000) * 2
    async with connection(port) as (reader, writer):
        writer.write(pair)
        await writer.drain()
        assert (await read_response(reader)).status == 200
        assert (await read_response(reader)).status == 200
    server.alive()


async def test_header_count_is_bounded(servers: dict[str, Server]) -> None:
    """More than MAX_HEADERS (100) headers get 431; 50, or exactly 100, are served."""
    server = servers["default"]
    port = server.port

    def with_headers(n: int) -> bytes:  # Host is one of the n
        return head(port, *(f"X-H{i}: {i}" for i in range(n - 1)))

    too_large(await refused(port, with_headers(150)))
    too_large(await refused(port, with_headers(101)))
    assert (await exchange(port, with_headers(100))).status == 200
    assert (await exchange(port, with_headers(50))).status == 200
    server.alive()


# -- the time of the head -----------------------------------------------------------------


async def drip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, every: float, bound: int
) -> bytes:
    """Send a header one byte per `every` s (at most `bound` bytes); what the server says."""
    for byte in (b"X-Drip: " + b"a" * bound)[:bound]:
        writer.write(bytes([byte]))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            async with asyncio.timeout(every):
                first = await reader.read(65536)
        except TimeoutError:
            continue
        return first + await read_to_eof(reader) if first else b""
    pytest.fail(f"still open after {bound} bytes, one per {every}s")


async def test_a_slow_head_is_cut_off(servers: dict[str, Server]) -> None:
    """HEADER_TIMEOUT=1: a header sent a byte per 0.3 s gets 408 within about a second."""
    server = servers["slow_heads"]
    started = time.monotonic()
    async with connection(server.port) as (reader, writer):
        writer.write(head(server.port).removesuffix(b"\r\n"))
        await writer.drain()
        raw = await drip(reader, writer, every=0.3, bound=20)
    elapsed = time.monotonic() - started
    answer = parse(raw)
    assert answer.status == 408, answer
    assert answer.json()["code"] == "REQUEST_TIMEOUT", answer.body
    assert 0.8 <= elapsed <= 3.0, elapsed
    server.alive()


async def test_a_slow_second_head_is_cut_off(servers: dict[str, Server]) -> None:
    """The bound applies again to each request of a kept-alive connection."""
    server = servers["slow_heads"]
    async with connection(server.port) as (reader, writer):
        writer.write(head(server.port))
        await writer.drain()
        assert (await read_response(reader)).status == 200
        started = time.monotonic()
        writer.write(head(server.port).removesuffix(b"\r\n"))
        await writer.drain()
        raw = await drip(reader, writer, every=0.3, bound=20)
    elapsed = time.monotonic() - started
    assert parse(raw).status == 408, raw
    assert 0.8 <= elapsed <= 3.0, elapsed


async def test_a_silent_connection_is_closed(servers: dict[str, Server]) -> None:
    """HEADER_TIMEOUT=1: a connection that sends nothing is closed within a few seconds."""
    server = servers["slow_heads"]
    started = time.monotonic()
    async with connection(server.port) as (reader, _writer):
        raw = await read_to_eof(reader, within=5)
    elapsed = time.monotonic() - started
    assert raw == b"" or parse(raw).status == 408, raw
    assert 0.8 <= elapsed <= 3.0, elapsed
    server.alive()


# -- the number of connections ------------------------------------------------------------


async def test_connections_past_max_connections_are_refused(
    servers: dict[str, Server],
) -> None:
    """MAX_CONNECTIONS=5: a 6th connection gets 503 and is closed; the 5 are served."""
    server = servers["few_connections"]
    port = server.port
    async with contextlib.AsyncExitStack() as stack:
        idle = [await stack.enter_async_context(connection(port)) for _ in range(5)]
        async with connection(port) as (reader, _writer):
            raw = await read_to_eof(reader)
        answer = parse(raw)
        assert answer.status == 503, answer
        assert answer.json()["code"] == "TOO_MANY_CONNECTIONS", answer.body
        # Each of the five admitted is served, one after the other, all five still open.
        for reader, writer in idle:
            writer.write(head(port))
            await writer.drain()
            assert (await read_response(reader)).status == 200
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:

        async def served() -> bool:
            try:
                return (await client.get("/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await until(served, within=5, what="a request served once the five were closed")
    server.alive()


# -- whose address counts -----------------------------------------------------------------


async def session_address(base_url: str) -> str:
    """Sign up with X-Forwarded-For: 203.0.113.7; the address the session was recorded with."""
    email = f"limits-{uuid.uuid4().hex[:10]}@example.com"
    body = {"name": "Limits", "email": email, "password": "correct horse battery"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        r = await client.post(
            "/api/auth/sign-up/email", json=body, headers={"X-Forwarded-For": "203.0.113.7"}
        )
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        r = await client.get(
            "/api/auth/list-sessions", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200, r.text
        sessions = r.json()
    assert len(sessions) == 1, sessions
    address: str = sessions[0]["ipAddress"]
    return address


async def test_forwarded_for_is_not_trusted_by_default(servers: dict[str, Server]) -> None:
    """Without FORWARDED_ALLOW_IPS the peer's address counts, not X-Forwarded-For."""
    assert await session_address(servers["default"].base_url) == HOST


async def test_forwarded_for_is_trusted_from_forwarded_allow_ips(
    servers: dict[str, Server],
) -> None:
    """FORWARDED_ALLOW_IPS=127.0.0.1: a local proxy's X-Forwarded-For is believed."""
    assert await session_address(servers["behind_proxy"].base_url) == "203.0.113.7"


# -- the happy path -----------------------------------------------------------------------


async def test_keep_alive_and_pipelining_are_unaffected(servers: dict[str, Server]) -> None:
    """Sequential requests on one connection, and pipelined ones in one write, are served."""
    server = servers["default"]
    port = server.port
    async with connection(port) as (reader, writer):
        for _ in range(5):
            writer.write(head(port))
            await writer.drain()
            answer = await read_response(reader)
            assert answer.status == 200, answer
            assert answer.json() == {"status": "ok"}
        writer.write(head(port) + head(port, path="/readyz"))
        await writer.drain()
        assert (await read_response(reader)).json() == {"status": "ok"}
        assert (await read_response(reader)).json()["status"] == "ready"
        # Bodies between heads (Content-Length, chunked) do not count towards the next head.
        body = b"x" * 20000
        post = head(port, f"Content-Length: {len(body)}", method="POST") + body
        chunked = head(port, "Transfer-Encoding: chunked", method="POST")
        chunked += b"4e20\r\n" + body + b"\r\n0\r\n\r\n"
        writer.write(post + chunked + head_of_size(port, 16000))
        await writer.drain()
        assert [(await read_response(reader)).status for _ in range(3)] == [405, 405, 200]
    server.alive()
