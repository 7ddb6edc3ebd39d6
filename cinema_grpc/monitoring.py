"""Operational watch: health follows the database, and gauges follow the selling state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import structlog
from grpc_health.v1 import health, health_pb2
from sqlalchemy import URL, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from cinema_grpc.services.metrics import ACTIVE_HOLDS, DATABASE_UP, PAYMENTS, REFUNDS_OPEN

log = structlog.get_logger(__name__)
TOO_MANY_CONNECTIONS = "53300"

_SELLING_STATE = text(
    """
    SELECT 'holds' AS what, 'ACTIVE' AS state, count(*) AS n FROM booking.holds
     WHERE state = 'ACTIVE' AND greatest(expires_at, payment_deadline) > now()
    UNION ALL
    SELECT 'payments', state, count(*) FROM payment.payments GROUP BY state
    UNION ALL
    SELECT 'refunds', 'PENDING', count(*) FILTER (WHERE state = 'PENDING') FROM payment.refunds
    UNION ALL
    SELECT 'refunds', 'FAILED', count(*) FILTER (WHERE state = 'FAILED') FROM payment.refunds
    """
)


class DatabaseHealth:
    """Reports NOT_SERVING for every service while the database does not answer.

    The probe has a connection of its own, outside the request pool: a replica whose pool is
    busy serving is not a replica that lost its database, and must not be drained as one.
    It runs in a thread of its own and is timed there: when the machine is CPU-saturated the
    event loop is late to look at the answer, but a late look is not a database that did not
    answer, so a busy replica is not drained as a broken one.
    """

    def __init__(self, url: URL, servicer: health.aio.HealthServicer, services: Iterable[str]) -> None:
        self._engine: Engine = create_engine(
            url,
            pool_size=1,
            max_overflow=0,
            pool_pre_ping=True,
            # A database host that stopped answering mid-query is noticed as fast as one that is gone.
            connect_args={
                "connect_timeout": 2,
                "tcp_user_timeout": 2000,
                "options": "-c statement_timeout=2000",
                "application_name": "cinema-grpc-health",
            },
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="database-health")
        self._health = servicer
        self._services = ("", *services)
        self.serving = True

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._engine.dispose)

    def _answers(self, within_seconds: float) -> bool:
        """SELECT 1 on the probe's connection, within the time given, by this thread's clock."""
        started = time.monotonic()
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError as exc:
            # "Too many connections" is an answer: the database is up, only full (the request
            # pool's connections still work), and draining every replica would not help.
            return getattr(exc.orig, "sqlstate", None) == TOO_MANY_CONNECTIONS
        except (OSError, SQLAlchemyError):
            return False
        return time.monotonic() - started <= within_seconds

    async def probe(self, within_seconds: float = 2.0) -> bool:
        up = await asyncio.get_running_loop().run_in_executor(self._executor, self._answers, within_seconds)
        DATABASE_UP.set(1 if up else 0)
        if up != self.serving:
            log.warning("database reachable again" if up else "database unreachable: NOT_SERVING")
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in self._services:
                await self._health.set(name, status)
            self.serving = up
        return up


async def refresh_selling_gauges(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        rows = (await conn.execute(_SELLING_STATE)).all()
    for what, state, count in rows:
        if what == "holds":
            ACTIVE_HOLDS.set(count)
        elif what == "refunds":
            REFUNDS_OPEN.labels(state).set(count)
        else:
            PAYMENTS.labels(state).set(count)
