"""Traces (service_kit.tracing) in process, into the SDK's in-memory exporter;
tests/e2e/test_tracing.py sends a served process's to a real OTLP/HTTP endpoint."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service_kit.tracing import span_name
from tests.conftest import auth_settings, running
from tests.factories import PASSWORD, sign_up
from web.app import SERVICE as WEB

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (set once: OpenTelemetry allows no other), emptied."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


def children(found: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in found if s.parent is not None and s.parent.span_id == parent.context.span_id]


def server_span(found: list[ReadableSpan], route: str) -> ReadableSpan:
    (span,) = [
        s
        for s in found
        if s.kind == SpanKind.SERVER and (s.attributes or {}).get("http.route") == route
    ]
    return span


async def test_a_span_per_request_and_per_statement_in_the_callers_trace(
    full_db: str, spans: InMemorySpanExporter
) -> None:
    settings = auth_settings(full_db, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    app = WEB.create_app(settings)
    async with running(app) as client:
        email = "traced@example.com"
        token, _ = await sign_up(client, email=email)
        client.cookies.clear()
        header, trace_id, parent_id = traceparent()
        r = await client.get(
            "/todos", headers={"authorization": f"Bearer {token}", "traceparent": header}
        )
        assert r.status_code == 200
    found = list(spans.get_finished_spans())

    listed = server_span(found, "/todos")
    assert listed.context is not None
    assert f"{listed.context.trace_id:032x}" == trace_id  # the caller's trace, continued
    assert listed.parent is not None
    assert f"{listed.parent.span_id:016x}" == parent_id
    assert (listed.attributes or {})["http.response.status_code"] == 200
    # The todo query (a compiled statement on the driver), and the session's lookup unless
    # the cache answered it (SQLAlchemy's): each a child of the request's span.
    statements = {s.name: s for s in children(found, listed) if s.kind == SpanKind.CLIENT}
    assert set(statements) <= {"SELECT web.todos", "SELECT session"}, statements
    query = statements["SELECT web.todos"]
    sql = str((query.attributes or {})["db.query.text"])
    assert "$1" in sql
    assert (query.attributes or {})["db.system.name"] == "postgresql"

    # The sign-up's statements go through SQLAlchemy's ORM: spans of the same request too.
    signed_up = server_span(found, "/api/auth/sign-up/email")
    names = {s.name for s in children(found, signed_up)}
    assert {"INSERT user", "INSERT account", "INSERT session"} <= names, names
    everything = " ".join(str(s.attributes) for s in found)
    for secret in (email, PASSWORD, token):  # statements carry placeholders, never values
        assert secret not in everything


async def test_no_endpoint_no_spans(full_db: str, spans: InMemorySpanExporter) -> None:
    async with running(WEB.create_app(auth_settings(full_db))) as client:
        assert (await client.get("/todos")).status_code == 401
    assert [s for s in spans.get_finished_spans() if s.name.startswith(("GET", "SELECT"))] == []


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        ("SELECT todos.id FROM web.todos WHERE todos.user_id = $1", "SELECT web.todos"),
        ('INSERT INTO "user" (id, name) VALUES ($1, $2)', "INSERT user"),
        ("UPDATE session SET expires_at=$1 WHERE session.id = $2", "UPDATE session"),
        ("DELETE FROM verification WHERE id IN (SELECT 1)", "DELETE verification"),
        ("SELECT pg_notify($1, '')", "SELECT"),
        ("", "SQL"),
    ],
)
def test_span_names(sql: str, name: str) -> None:
    assert span_name(sql) == name
