"""Traces, opt-in: OpenTelemetry when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and `OTEL_SDK_DISABLED` is not `true`.

FastAPI's own OpenTelemetry makes each request's span (kind SERVER: method, route template,
status), continuing the trace of a W3C `traceparent` header when the request has one; its
`auto_configure` sets up the SDK and the OTLP/HTTP exporter from the standard `OTEL_*`
variables (service name, headers, batch delay...). The kit adds a span (kind CLIENT) per
database statement, for its compiled statements and for SQLAlchemy's: named after the
operation and the table, with the statement's SQL, which holds placeholders, never values.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

TRACER_NAME = "service_kit"
_SPAN_KEY = "service_kit.span"


def telemetry(tracing: bool) -> dict[str, Any]:
    """FastAPI's `telemetry=` for an app: tracing or nothing (metrics and logs are the kit's)."""
    return {
        "tracing": tracing,
        "metrics": False,
        "logs": False,
        "auto_configure": tracing,
        # A span per request and per statement; none per dependency.
        "operation_spans": False,
    }


def tracer() -> Tracer:
    return trace.get_tracer(TRACER_NAME)


def span_name(sql: str) -> str:
    """`SELECT web.todos`: the statement's operation and its first table (the semantic
    conventions' `{db.operation.name} {db.collection.name}`)."""
    words = sql.replace("(", " ").split()
    if not words:
        return "SQL"
    operation = words[0].upper()
    lowered = [w.lower() for w in words]
    before_table = {"SELECT": "from", "DELETE": "from", "INSERT": "into", "UPDATE": "update"}
    marker = before_table.get(operation)
    if marker in lowered and (index := lowered.index(marker) + 1) < len(words):
        return f"{operation} {words[index].replace(chr(34), '')}"
    return operation


def attributes(sql: str) -> dict[str, str]:
    return {"db.system.name": "postgresql", "db.query.text": sql}


def instrument(engine: AsyncEngine, spans: Tracer) -> None:
    """A span around every statement SQLAlchemy sends on `engine`."""
    sync = engine.sync_engine

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        span = spans.start_span(
            span_name(statement), kind=SpanKind.CLIENT, attributes=attributes(statement)
        )
        conn.info.setdefault(_SPAN_KEY, []).append(span)

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        stack = conn.info.get(_SPAN_KEY)
        if stack:
            stack.pop().end()

    def failed(context: Any) -> None:
        stack = context.connection.info.get(_SPAN_KEY) if context.connection else None
        if stack:
            span = stack.pop()
            span.set_status(Status(StatusCode.ERROR, type(context.original_exception).__name__))
            span.end()

    event.listen(sync, "before_cursor_execute", before)
    event.listen(sync, "after_cursor_execute", after)
    event.listen(sync, "handle_error", failed)
