"""The process's log lines: one JSON object per line, or text for a person at a terminal.

`LOG_FORMAT=json|text` chooses; unset, it is text in development (`ENVIRONMENT=development`)
and JSON everywhere else, since a log collector reads what a deployed process writes. A JSON
line always has `time` (UTC, milliseconds), `level`, `logger`, `message` and `request_id`
(`-` outside a request), then whatever the record carries as `extra` (the access line's
`client`, `method`, `route`, `status`, `duration_ms`), and `exception` when there is one.
What the kit logs never holds a token or a secret (the access line names the route
template, not the path); the format adds nothing to what each record says.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from service_kit.access_log import RequestIdFilter

LogFormat = Literal["json", "text"]
FORMATS: tuple[LogFormat, ...] = ("json", "text")

# What every LogRecord has: everything else on a record came as `extra`. (`color_message` is
# uvicorn's copy of the message with terminal colours.)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "request_id",
    "color_message",
    "taskName",
}


def resolve(log_format: str | None, environment: str | None) -> LogFormat:
    """LOG_FORMAT when it is set; otherwise text in development, JSON elsewhere."""
    if log_format:
        chosen = log_format.strip().lower()
        if chosen not in FORMATS:
            raise ValueError(f"LOG_FORMAT must be json or text, not {log_format!r}")
        return "json" if chosen == "json" else "text"
    return "text" if environment == "development" else "json"


def from_environ(environ: Mapping[str, str] = os.environ) -> LogFormat:
    return resolve(environ.get("LOG_FORMAT"), environ.get("ENVIRONMENT"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    _second = -1
    _stamp = ""

    def _time(self, created: float) -> str:
        # The access log writes a line a request: the date and time to the second are
        # formatted once a second, the milliseconds each time.
        second = int(created)
        if second != self._second:
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def handler(stream: Any, log_format: LogFormat, text_format: str) -> logging.Handler:
    """A stream handler writing `log_format`, with the request id on each record."""
    out = logging.StreamHandler(stream)
    out.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(text_format))
    out.addFilter(RequestIdFilter())
    return out


def json_config(config: dict[str, Any], level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` (uvicorn's, say) turned to JSON lines: every formatter
    JSON, the request id on every handler, and the root logger (the app's own loggers)
    writing through the first handler."""
    config["formatters"] = {name: {"()": JsonFormatter} for name in config["formatters"]}
    config.setdefault("filters", {})["request_id"] = {"()": RequestIdFilter}
    for spec in config["handlers"].values():
        spec["filters"] = sorted({*spec.get("filters", ()), "request_id"})
    first = next(iter(config["handlers"]))
    config["root"] = {"handlers": [first], "level": level.upper()}
    return config
