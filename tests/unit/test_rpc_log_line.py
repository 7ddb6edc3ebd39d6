"""The per-RPC log line is rendered directly, and reads exactly as the structured logging chain
would have written it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from cinema_grpc import log_config
from cinema_grpc.log_config import configure_logging, write_json_line


@pytest.fixture
def json_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """JSON logging at INFO into a buffer; the logging setup is put back afterwards."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(log_config, "_json_handler", None)
    level = root.level
    configure_logging("INFO", "json")
    buffer = io.StringIO()
    root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()


def test_the_rpc_line_has_the_fields_and_order_of_a_structured_line(json_lines: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(request_id="r-1", rpc="/cinema.booking.v1.BookingService/HoldSeats")
    fields = {"user_id": "u-1", "code": "OK", "reason": None, "duration_ms": 1.25}
    structlog.get_logger("cinema_grpc.rpc").info("rpc", **fields)
    assert write_json_line("cinema_grpc.rpc", "rpc", fields)
    chain, direct = (json.loads(line) for line in json_lines.getvalue().splitlines())
    assert chain.pop("timestamp").endswith("Z") and direct.pop("timestamp").endswith("Z")
    assert list(direct.items()) == list(chain.items())
    assert direct["request_id"] == "r-1" and direct["level"] == "info" and direct["logger"] == "cinema_grpc.rpc"


def test_the_rpc_line_follows_the_log_level(json_lines: io.StringIO) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    assert write_json_line("cinema_grpc.rpc", "rpc", {"code": "OK"})
    assert json_lines.getvalue() == ""


def test_console_output_is_left_to_the_structured_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_config, "_json_handler", None)
    assert not write_json_line("cinema_grpc.rpc", "rpc", {"code": "OK"})
