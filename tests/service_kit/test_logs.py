"""Log lines (service_kit.logs): which format, and what a JSON line holds."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from uvicorn.config import LOGGING_CONFIG

from service_kit.access_log import request_id
from service_kit.logs import JsonFormatter, handler, json_config, resolve
from service_kit.settings import ServerSettings


@pytest.mark.parametrize(
    ("log_format", "environment", "chosen"),
    [
        (None, None, "json"),
        (None, "production", "json"),
        (None, "test", "json"),
        (None, "development", "text"),
        ("text", "production", "text"),
        ("JSON", "development", "json"),
        ("", "development", "text"),
    ],
)
def test_json_unless_development_or_told(
    log_format: str | None, environment: str | None, chosen: str
) -> None:
    assert resolve(log_format, environment) == chosen
    values = {"LOG_FORMAT": log_format, "ENVIRONMENT": environment}
    settings = ServerSettings.model_validate({k: v for k, v in values.items() if v is not None})
    assert settings.log_lines == chosen


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json or text"):
        resolve("xml", None)
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        ServerSettings.model_validate({"LOG_FORMAT": "xml"})


def one_line(logger: logging.Logger, emit: Any) -> dict[str, Any]:
    stream = io.StringIO()
    out = handler(stream, "json", "%(message)s")
    logger.addHandler(out)
    logger.propagate = False
    try:
        emit()
    finally:
        logger.removeHandler(out)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    line: dict[str, Any] = json.loads(lines[0])
    return line


def test_a_json_line_has_the_fields_the_extras_and_the_request_id() -> None:
    logger = logging.getLogger("tests.logs.fields")
    token = request_id.set("rid-42")
    try:
        line = one_line(
            logger,
            lambda: logger.warning(
                'client "%s" said %d', "GET /x", 7, extra={"route": "/x", "status": 401}
            ),
        )
    finally:
        request_id.reset(token)
    stamp = line.pop("time")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), stamp
    assert abs(datetime.fromisoformat(stamp) - datetime.now(UTC)) < timedelta(seconds=5)
    assert line == {
        "level": "warning",
        "logger": "tests.logs.fields",
        "message": 'client "GET /x" said 7',
        "request_id": "rid-42",
        "route": "/x",
        "status": 401,
    }


def test_an_exception_stays_on_its_line() -> None:
    logger = logging.getLogger("tests.logs.exception")

    def emit() -> None:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("it failed")

    line = one_line(logger, emit)
    assert line["message"] == "it failed"
    assert line["request_id"] == "-"  # outside a request
    assert line["exception"].startswith("Traceback (most recent call last)")
    assert "RuntimeError: boom" in line["exception"]


def test_uvicorns_config_turned_to_json_configures_every_logger() -> None:
    config = json_config(json.loads(json.dumps(LOGGING_CONFIG)), "info")
    assert all(spec == {"()": JsonFormatter} for spec in config["formatters"].values())
    assert all("request_id" in spec["filters"] for spec in config["handlers"].values())
    stream = io.StringIO()
    for spec in config["handlers"].values():
        spec.pop("stream")
    root, uvicorn = logging.getLogger(), logging.getLogger("uvicorn")
    saved = (root.handlers[:], root.level, uvicorn.handlers[:], uvicorn.propagate)
    try:
        logging.config.dictConfig(config)
        for h in [*root.handlers, *uvicorn.handlers]:
            assert isinstance(h, logging.StreamHandler)
            h.setStream(stream)
        logging.getLogger("service_kit.somewhere").info("from the app")
        logging.getLogger("uvicorn.error").info("from the server")
    finally:
        root.handlers[:], uvicorn.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        uvicorn.propagate = saved[3]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["logger"], x["message"]) for x in lines] == [
        ("service_kit.somewhere", "from the app"),
        ("uvicorn.error", "from the server"),
    ]
