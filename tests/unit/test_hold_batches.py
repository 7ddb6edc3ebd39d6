"""Holds queued for a connection go in batches in the order they came; a hold whose lock keys a
running batch holds keeps its place for the next batch, also when that batch was stopped; a
batch takes its locks in the one lock order of the system; whatever goes wrong, each caller
hears of it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from cinema_grpc.domain.booking.inventory import PlainHold
from cinema_grpc.domain.booking.model import BookingRules
from cinema_grpc.domain.errors import Contention
from cinema_grpc.domain.idempotency import RequestKey
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from cinema_grpc.storage.plain_holds import (
    HOLD_ID_POSITION,
    HOLD_STATEMENT,
    LOCK_STATEMENT,
    HoldBatches,
    PlainHolds,
    lock_keys,
    statement_params,
)


def test_batches_take_the_waiting_holds_in_order_up_to_the_limit() -> None:
    queue: HoldBatches[str] = HoldBatches(3)
    for name, key in zip("abcde", range(5), strict=True):
        queue.put(name, [key])
    assert queue.take() == ["a", "b", "c"]
    assert queue.take() == ["d", "e"]
    assert queue.take() == [] and len(queue) == 0


def test_holds_of_one_batch_may_share_keys() -> None:
    queue: HoldBatches[str] = HoldBatches(10)
    queue.put("a", [1, 2])
    queue.put("b", [1, 3])
    assert queue.take() == ["a", "b"]


def test_a_hold_sharing_a_key_with_a_running_batch_keeps_its_place_for_the_next() -> None:
    queue: HoldBatches[str] = HoldBatches(10)
    queue.put("a", [1, 2])
    assert queue.take() == ["a"]
    queue.put("b", [2, 5])  # waits for a's showtime (2)
    queue.put("c", [3, 4])
    queue.put("d", [5])  # shares a key with b, which came first: waits behind it
    queue.put("e", [6])
    assert queue.take() == ["c", "e"]
    assert len(queue) == 2 and queue.take() == []
    queue.done([[1, 2]])  # a committed
    assert queue.take() == ["b", "d"]  # in their places, together
    queue.put("f", [5])
    assert queue.take() == []  # b and d still run with key 5
    queue.done([[3, 4], [6]])
    assert queue.take() == []
    queue.done([[2, 5], [5]])
    assert queue.take() == ["f"]


def test_a_waiting_hold_can_be_taken_out_but_not_once_a_batch_has_it() -> None:
    queue: HoldBatches[str] = HoldBatches(1)
    queue.put("a", [1])
    queue.put("b", [2])
    assert queue.take() == ["a"]
    assert not queue.remove("a")
    assert queue.remove("b") and len(queue) == 0


def test_a_batch_takes_request_then_customer_then_showtime_locks_each_in_key_order() -> None:
    rules = BookingRules()
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    customers = [uuid.uuid4() for _ in range(3)]
    showtimes = [uuid.uuid4() for _ in range(2)]
    holds = [
        PlainHold(
            uuid.uuid4(),
            showtimes[i % 2],
            customers[i % 3],
            (uuid.uuid4(),),
            False,
            now,
            rules,
            RequestKey(f"r{i}", "fingerprint", str(customers[i % 3])) if i % 2 else None,
        )
        for i in range(6)
    ]
    keys = lock_keys([statement_params(hold) for hold in holds])
    requests = sorted(
        advisory_key(LockNamespace.REQUEST_ID, f"HoldSeats/{hold.request.owner}:{hold.request.request_id}")
        for hold in holds
        if hold.request is not None
    )
    by_customer = sorted(advisory_key(LockNamespace.CUSTOMER_HOLDS, str(c)) for c in customers)
    by_showtime = sorted(advisory_key(LockNamespace.SHOWTIME_SEATS, str(s)) for s in showtimes)
    assert keys == requests + by_customer + by_showtime


def test_with_a_limit_of_one_every_hold_goes_as_soon_as_a_connection_is_free() -> None:
    queue: HoldBatches[str] = HoldBatches(1)
    queue.put("a", [1, 2])
    queue.put("b", [2, 3])  # the same showtime: it queues for the lock in PostgreSQL
    assert queue.take() == ["a"]
    assert queue.take() == ["b"]
    queue.done([[1, 2], [2, 3]])
    assert queue.take() == []


def hold(customer: uuid.UUID, showtime: uuid.UUID) -> PlainHold:
    return PlainHold(
        uuid.uuid4(), showtime, customer, (uuid.uuid4(),), False, datetime(2026, 12, 2, 12, tzinfo=UTC), BookingRules()
    )


class Cursor:
    def __init__(self, row: Any = None) -> None:
        self.row = row

    async def fetchone(self) -> Any:
        return self.row

    async def fetchall(self) -> list[Any]:
        return []  # the recovery of a stopped batch: none of its holds was written


class Database:
    """A stand-in for the holds' pool: each hold statement records the hold's name and waits
    until its gate (and a batch's lock statement until the "lock" gate) is open; ``fail`` says
    what a statement raises, in a batch or alone, instead."""

    def __init__(self, names: dict[uuid.UUID, str]) -> None:
        self.names = names
        self.statements: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.fail: dict[bool, BaseException] = {}
        self.in_batch = False

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Database]:
        await asyncio.sleep(0)
        yield self

    broken = False

    @contextlib.asynccontextmanager
    async def pipeline(self) -> AsyncIterator[None]:
        self.in_batch = True
        try:
            yield
        finally:
            self.in_batch = False

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def execute(self, query: str, params: Any = None, prepare: bool = False) -> Cursor:
        if (error := self.fail.get(self.in_batch)) is not None:
            raise error
        if query == LOCK_STATEMENT:
            await self.gate("lock").wait()
        elif query == HOLD_STATEMENT:
            name = self.names[params[HOLD_ID_POSITION]]
            self.statements.append(name)
            await self.gate(name).wait()
            return Cursor(("DECIDE", *[None] * 8))  # left to the seat inventory: place() answers None
        return Cursor()


def plain_holds(database: Database, monkeypatch: pytest.MonkeyPatch, *, size: int, batch_size: int) -> PlainHolds:
    holds = PlainHolds("", {}, size=size, timeout=30, batch_size=batch_size)

    async def opened() -> Database:
        return database

    monkeypatch.setattr(holds, "_opened", opened)
    return holds


def test_the_holds_of_a_stopped_batch_go_again_before_any_later_hold_that_shares_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a, b and c ask for seats of one showtime, in this order, while two other holds have both
    # connections. a and b go as a batch; c waits for their showtime. b's caller is stopped
    # while the batch waits for its locks: the batch is stopped, and a goes again, before c.
    showtime = uuid.uuid4()
    asked = {"f1": hold(uuid.uuid4(), uuid.uuid4()), "f2": hold(uuid.uuid4(), uuid.uuid4())}
    asked |= {name: hold(uuid.uuid4(), showtime) for name in "abc"}
    database = Database({plain.hold_id: name for name, plain in asked.items()})

    async def run() -> list[str]:
        holds = plain_holds(database, monkeypatch, size=2, batch_size=2)
        calls = {}
        for name, plain in asked.items():
            calls[name] = asyncio.ensure_future(holds.place(plain))
            await asyncio.sleep(0.01)
        database.gate("f1").set()
        database.gate("f2").set()
        await asyncio.sleep(0.05)  # a and b wait for their locks, c for their showtime
        calls["b"].cancel()
        await asyncio.sleep(0.05)
        for name in ("lock", "a", "c"):
            database.gate(name).set()
        done, _ = await asyncio.wait(calls.values(), timeout=5)
        assert len(done) == 5 and calls["b"].cancelled()
        assert [calls[name].result() for name in ("f1", "f2", "a", "c")] == [None] * 4
        return database.statements

    assert asyncio.run(run()) == ["f1", "f2", "a", "c"]


@pytest.mark.parametrize(
    ("error", "heard"),
    [(RuntimeError("a bug"), RuntimeError), (psycopg.errors.QueryCanceled("statement timeout"), Contention)],
)
def test_whatever_a_hold_alone_raises_its_caller_hears_it(
    error: Exception, heard: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first hold goes alone; the two behind it go as a batch, which the database refuses
    # (a lock timeout), so each of them goes again alone. Alone, each meets the error.
    asked = [hold(uuid.uuid4(), uuid.uuid4()) for _ in range(3)]
    database = Database({plain.hold_id: str(i) for i, plain in enumerate(asked)})
    database.fail = {True: psycopg.errors.LockNotAvailable("lock timeout"), False: error}

    async def run() -> list[BaseException | None]:
        holds = plain_holds(database, monkeypatch, size=1, batch_size=4)
        calls = [asyncio.ensure_future(holds.place(plain)) for plain in asked]
        done, _ = await asyncio.wait(calls, timeout=5)
        assert len(done) == 3, "a caller never heard of its hold"
        return [call.exception() for call in calls]

    raised = asyncio.run(run())
    assert all(isinstance(exc, heard) for exc in raised), raised


def test_a_batch_is_stopped_once_however_many_of_its_callers_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two holds go as a batch, which waits for its locks. Its first caller is stopped; while the
    # batch sends PostgreSQL its cancel request, the second caller is stopped too. A second stop
    # of the batch would cut the cancel request short (psycopg then closes the connection, and
    # PostgreSQL may still run what it had received).
    asked = [hold(uuid.uuid4(), uuid.uuid4()) for _ in range(3)]
    database = Database({plain.hold_id: str(i) for i, plain in enumerate(asked)})
    calls: list[asyncio.Future[Any]] = []
    interrupted: list[bool] = []
    execute = database.execute

    async def cancel_request_on_stop(query: str, params: Any = None, prepare: bool = False) -> Cursor:
        try:
            return await execute(query, params, prepare)
        except asyncio.CancelledError:
            if query == LOCK_STATEMENT:
                calls[2].cancel()  # the batch's second caller stops meanwhile
                try:
                    await asyncio.sleep(0.05)  # the cancel request on its way
                    interrupted.append(False)
                except asyncio.CancelledError:
                    interrupted.append(True)
            raise

    monkeypatch.setattr(database, "execute", cancel_request_on_stop)

    async def run() -> None:
        holds = plain_holds(database, monkeypatch, size=1, batch_size=4)
        calls.extend(asyncio.ensure_future(holds.place(plain)) for plain in asked)
        await asyncio.sleep(0.05)  # the first alone, the two others as a batch at its locks
        database.gate("0").set()
        await asyncio.sleep(0.05)
        calls[1].cancel()
        done, _ = await asyncio.wait(calls, timeout=5)
        assert len(done) == 3 and calls[1].cancelled() and calls[2].cancelled()

    asyncio.run(run())
    assert interrupted == [False]
