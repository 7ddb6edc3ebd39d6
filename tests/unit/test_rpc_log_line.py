"""The per-RPC log line is rendered directly, and reads exactly as the structured logging chain
would have written it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest
import structlog

from cinema_grpc import log_config
from cinema_grpc.log_config import configure_logging, render_json, write_json_line


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


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        'quotes " and \\ and \n and \x00',
        "ünïcödé ✓ 🎬",
        None,
        True,
        False,
        0,
        -12345678901234567890,
        1.25,
        0.1 + 0.2,
        1e300,
        float("nan"),
        float("inf"),
        -float("inf"),
        uuid.UUID(int=7),
        ["a", 1, None],
        {"nested": [1.5]},
        (1, 2),
    ],
)
def test_a_line_is_rendered_as_json_dumps_renders_it(value: object) -> None:
    record = {"user_id": value, "code": "OK", "reason": None, "duration_ms": 0.5, "event": "rpc", "ü": value}
    assert render_json(record) == json.dumps(record, default=repr)


def test_lines_of_one_loop_turn_are_written_together_and_in_order(json_lines: io.StringIO) -> None:
    writes: list[str] = []
    real_write = json_lines.write

    def write(text: str) -> int:
        writes.append(text)
        return real_write(text)

    json_lines.write = write  # type: ignore[method-assign]

    async def turn() -> None:
        for code in ("OK", "NOT_FOUND"):
            assert write_json_line("cinema_grpc.rpc", "rpc", {"code": code})
        assert writes == []  # not yet: at the end of the turn
        await asyncio.sleep(0)
        assert len(writes) == 1
        assert write_json_line("cinema_grpc.rpc", "rpc", {"code": "ABORTED"})
        # A record logged the usual way comes after the lines written before it.
        structlog.get_logger("cinema_grpc.test").warning("after")
        await asyncio.sleep(0)

    asyncio.run(turn())
    events = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    assert [e.get("code", e["event"]) for e in events] == ["OK", "NOT_FOUND", "ABORTED", "after"]
