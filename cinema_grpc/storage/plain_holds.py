"""The plain hold in one statement: booking.hold_plain_seats (migration 0020) on a connection of a
small pool of its own, in autocommit, the statement prepared once per connection.

No session, no unit of work, no transaction opened or closed by the client: the statement is
its own transaction, so a hold costs one round trip and its locks live only while PostgreSQL
runs it. What it cannot decide it leaves to the seat inventory (None).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg_pool

from cinema_grpc.domain.booking.inventory import PlainHold
from cinema_grpc.domain.booking.model import ClaimedSeat, Hold, SeatEvent
from cinema_grpc.domain.errors import Contention, DomainError, SeatAlreadyTaken, StorageUnavailable
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.payment.model import CARD_AMOUNT_CEILING_MINOR
from cinema_grpc.domain.screening.model import SeatKind
from cinema_grpc.storage.locks import LockNamespace, advisory_key

HOLD_STATEMENT = "SELECT * FROM booking.hold_plain_seats(" + ", ".join(["%s"] * 21) + ")"


def driver_error(exc: psycopg.Error) -> DomainError | None:
    """The domain error a driver failure means to a caller, or None for a bug (INTERNAL)."""
    if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.DeadlockDetected):
        return Contention("the resource is busy; retry shortly")
    if isinstance(exc, psycopg.errors.SerializationFailure):
        return Contention("a concurrent change got in the way; retry")
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return Contention("the database did not answer in time; retry shortly")
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.AdminShutdown | psycopg.errors.CannotConnectNow):
        return StorageUnavailable("the database is unreachable; retry later")
    return None


def statement_params(plain: PlainHold) -> tuple[Any, ...]:
    """HOLD_STATEMENT's parameters for a plain hold."""
    rules = plain.rules
    request = plain.request
    scope = f"{plain.scope}/{request.owner}" if request is not None else None
    return (
        advisory_key(LockNamespace.REQUEST_ID, f"{scope}:{request.request_id}") if request is not None else None,
        scope,
        request.request_id if request is not None else None,
        request.fingerprint if request is not None else None,
        advisory_key(LockNamespace.CUSTOMER_HOLDS, str(plain.customer_id)),
        advisory_key(LockNamespace.SHOWTIME_SEATS, str(plain.showtime_id)),
        plain.showtime_id,
        plain.customer_id,
        list(plain.seat_ids),
        plain.staff,
        plain.now,
        rules.online_sales_close,
        rules.max_active_holds,
        plain.now - rules.hold_rate_window,
        rules.max_holds_per_window,
        plain.now - rules.rehold_cooldown,
        rules.max_seats_per_hold,
        rules.max_seats_per_showtime,
        CARD_AMOUNT_CEILING_MINOR,
        plain.hold_id,
        plain.expires_at,
    )


class PlainHolds:
    """Places plain holds (see PlainHold) through a pool of autocommit connections."""

    def __init__(self, conninfo: str, connect_args: dict[str, Any], *, size: int, timeout: float) -> None:
        self._conninfo = conninfo
        self._connect_args = {**connect_args, "autocommit": True}
        self._size = size
        self._timeout = timeout
        self._pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._opening = asyncio.Lock()

    async def _opened(self) -> psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] = psycopg_pool.AsyncConnectionPool(
                    self._conninfo,
                    kwargs=self._connect_args,
                    min_size=1,
                    max_size=self._size,
                    timeout=self._timeout,
                    name="cinema-grpc-holds",
                    open=False,
                )
                await pool.open(wait=False)
                self._pool = pool
        return self._pool

    @property
    def size(self) -> int:
        return self._size

    def usage(self) -> tuple[int, int, int]:
        """Connections in use, idle, and calls waiting for one (zeros until the first hold)."""
        if self._pool is None:
            return 0, 0, 0
        stats = self._pool.get_stats()
        idle = stats.get("pool_available", 0)
        return stats.get("pool_size", 0) - idle, idle, stats.get("requests_waiting", 0)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def place(self, plain: PlainHold) -> tuple[Hold, SeatEvent] | None:
        """The hold and its seat event, or None (nothing written). Raises SeatAlreadyTaken."""
        params = statement_params(plain)
        pool = await self._opened()
        try:
            async with pool.connection() as connection:
                cursor = await connection.execute(HOLD_STATEMENT, params, prepare=True)
                row = await cursor.fetchone()
        except psycopg_pool.PoolTimeout as exc:
            raise Contention("the server is busy; retry shortly") from exc
        except psycopg.Error as exc:
            if (error := driver_error(exc)) is not None:
                raise error from exc
            raise
        assert row is not None
        outcome, version, recorded_at, seat_ids, labels, numbers, kinds, amounts, currencies = row
        if outcome == "TAKEN":
            raise SeatAlreadyTaken(
                {
                    str(seat_id): f"{label}{number}"
                    for seat_id, label, number in zip(seat_ids, labels, numbers, strict=True)
                }
            )
        if outcome != "HELD":
            return None
        return plain.placed(_claimed(seat_ids, labels, numbers, kinds, amounts, currencies), int(version), recorded_at)


def _claimed(
    seat_ids: Sequence[uuid.UUID],
    labels: Sequence[str],
    numbers: Sequence[int],
    kinds: Sequence[str],
    amounts: Sequence[int],
    currencies: Sequence[str],
) -> list[ClaimedSeat]:
    return [
        ClaimedSeat(seat_id, label, number, SeatKind(kind), Money(amount, currency))
        for seat_id, label, number, kind, amount, currency in zip(
            seat_ids, labels, numbers, kinds, amounts, currencies, strict=True
        )
    ]
