"""A served process sends its traces to a real OTLP/HTTP endpoint (one this test runs, decoding
what arrives with OpenTelemetry's own protobuf messages), in the caller's trace."""

from __future__ import annotations

import gzip
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from platform_dev.embedded import free_port
from tests.e2e.conftest import Processes
from tests.factories import sign_up
from tests.polling import poll


class Collector(ThreadingHTTPServer):
    """POST /v1/traces, as an OpenTelemetry collector takes them."""

    def __init__(self, port: int) -> None:
        self.received: list[dict[str, Any]] = []
        self.services: set[str] = set()
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for attr in resource_spans.resource.attributes:
                if attr.key == "service.name":
                    self.server.services.add(attr.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.server.received.append(
                        {
                            "name": span.name,
                            "kind": span.kind,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "attributes": {a.key: a.value for a in span.attributes},
                        }
                    )
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


SERVER, CLIENT = 2, 3  # the protobuf's SpanKind values


async def test_a_served_process_exports_its_spans_in_the_callers_trace(
    full_db: str, processes: Processes, collector: Collector
) -> None:
    proc = await processes.serve(
        "web",
        full_db,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_address[1]}",
        OTEL_SERVICE_NAME="web",
        OTEL_BSP_SCHEDULE_DELAY="100",  # ms: export at once, not every 5 s
    )
    await proc.wait_ready()
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    async with httpx.AsyncClient(base_url=proc.base_url or "", timeout=30) as client:
        token, _ = await sign_up(client, email="otel@example.com")
        client.cookies.clear()
        r = await client.get(
            "/todos",
            headers={
                "authorization": f"Bearer {token}",
                "traceparent": f"00-{trace_id}-{parent_id}-01",
            },
        )
        assert r.status_code == 200

    def ours() -> list[dict[str, Any]]:
        return [s for s in collector.received if s["trace_id"] == trace_id]

    async def arrived() -> bool:
        spans = ours()
        return any(s["kind"] == SERVER for s in spans) and any(s["kind"] == CLIENT for s in spans)

    await poll(arrived, lambda: f"spans at the collector: {collector.received}", within=30)
    (request,) = [s for s in ours() if s["kind"] == SERVER]
    assert request["parent"] == parent_id
    assert request["attributes"]["http.route"].string_value == "/todos"
    statements = [s for s in ours() if s["kind"] == CLIENT]
    assert all(s["parent"] == request["span_id"] for s in statements), statements
    assert "SELECT web.todos" in {s["name"] for s in statements}
    assert collector.services == {"web"}
    await proc.stop()
    assert "Traceback" not in proc.output(), proc.describe()
