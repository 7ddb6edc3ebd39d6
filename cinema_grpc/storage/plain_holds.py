"""The plain hold in one statement: booking.hold_plain_seats (migration 0020) on a connection of a
small pool of its own, in autocommit, the statement prepared once per connection.

No session, no unit of work, no transaction opened or closed by the client: a hold costs one
round trip and its locks live only while PostgreSQL runs it. What the statement cannot decide it
leaves to the seat inventory (None).

Holds that arrive while every connection is busy wait in a queue, and a connection that comes
free takes the queued holds together (``HoldBatches``): their statements go in one pipeline and
commit together, in one transaction (BEGIN and COMMIT in the pipeline, one round trip): stopped
before its COMMIT is sent, the batch rolls back, whatever PostgreSQL already ran. A lone hold is its
own transaction, as before; a busy server pays one round trip, one commit and one wake-up of
the event loop for several holds. A batch first takes every advisory lock its holds will take,
all at once in the one lock order (request ids, then customers, then showtimes, each in key
order), so two batches, or a batch and any other transaction, never wait for each other in a
circle. In one process, a batch never takes a hold whose keys a running batch holds: it would
only wait for it. If the database refuses a batch (a lock or statement timeout, a deadlock with
another replica's transaction, any error in one of its holds), nothing of it was written and
each of its holds is placed again alone, with its own answer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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
# A batch's locks, in the order of the array (a function scan yields its rows in order).
LOCK_STATEMENT = "SELECT count(pg_advisory_xact_lock(key)) FROM unnest(%s::bigint[]) AS key"


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


# Where statement_params puts the request-id, customer and showtime lock keys (in the lock
# order), and the hold's id.
KEY_POSITIONS = (0, 4, 5)
HOLD_ID_POSITION = 19


def lock_keys(params: Sequence[tuple[Any, ...]]) -> list[int]:
    """Every advisory key the holds of these statement parameters take, in the one lock order:
    request ids, customers, showtimes (LockNamespace), each class in key order."""
    keys: list[int] = []
    for position in KEY_POSITIONS:
        keys.extend(sorted({hold[position] for hold in params if hold[position] is not None}))
    return keys


Item = TypeVar("Item")


class HoldBatches(Generic[Item]):
    """Holds waiting for a connection, in the order they came, taken in batches of at most
    ``limit``. A batch takes no hold that shares a lock key with a batch still running (it would
    only wait for it to commit); such a hold keeps its place, and no later hold that shares a key
    with it goes before it: holds of one customer or one showtime go in the order they came.
    With a limit of 1 every hold goes as soon as a connection is free, as before batches: the
    holds of a busy showtime queue for its lock in PostgreSQL, each on its connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: deque[tuple[Item, tuple[int, ...]]] = deque()
        self._running: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self._waiting)

    def put(self, item: Item, keys: Sequence[int]) -> None:
        self._waiting.append((item, tuple(keys)))

    def put_first(self, items: Sequence[tuple[Item, Sequence[int]]]) -> None:
        """Holds that were taken and must go again: before every waiting hold, in this order."""
        self._waiting.extendleft((item, tuple(keys)) for item, keys in reversed(items))

    def remove(self, item: Item) -> bool:
        """Takes a hold out of the queue; False if it is not waiting (taken by a batch)."""
        for entry in self._waiting:
            if entry[0] is item:
                self._waiting.remove(entry)
                return True
        return False

    def take(self) -> list[Item]:
        """The next batch (empty if every waiting hold shares a key with a running batch); its
        keys count as running until ``done``."""
        if self.limit == 1:
            # Every hold its own transaction, sent at once: PostgreSQL's locks order them.
            return [self._waiting.popleft()[0]] if self._waiting else []
        batch: list[tuple[Item, tuple[int, ...]]] = []
        kept: deque[tuple[Item, tuple[int, ...]]] = deque()
        kept_keys: set[int] = set()  # no hold overtakes an earlier one that shares a key with it
        while self._waiting and len(batch) < self.limit:
            entry = self._waiting.popleft()
            if any(key in self._running or key in kept_keys for key in entry[1]):
                kept.append(entry)
                kept_keys.update(entry[1])
            else:
                batch.append(entry)
        kept.extend(self._waiting)
        self._waiting = kept
        for _, keys in batch:
            self._running.update(keys)
        return [item for item, _ in batch]

    def done(self, keys: Iterable[Sequence[int]]) -> None:
        """A batch committed or failed: the keys of its holds are free."""
        if self.limit == 1:
            return
        for hold_keys in keys:
            for key in hold_keys:
                self._running[key] -= 1
                if self._running[key] <= 0:
                    del self._running[key]


@dataclass(eq=False)
class _Waiting:
    """A hold's statement parameters, its lock keys, and the future of its row."""

    params: tuple[Any, ...]
    keys: tuple[int, ...] = field(init=False)
    future: asyncio.Future[Any] = field(init=False)
    batch: asyncio.Task[None] | None = None  # the batch that took it

    @property
    def hold_id(self) -> uuid.UUID:
        hold_id: uuid.UUID = self.params[HOLD_ID_POSITION]
        return hold_id

    def __post_init__(self) -> None:
        self.keys = tuple(self.params[p] for p in KEY_POSITIONS if self.params[p] is not None)
        self.future = asyncio.get_running_loop().create_future()

    def answer(self, row: Any = None, error: BaseException | None = None) -> None:
        if self.future.done():  # the caller is gone (cancelled, timed out)
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(row)


class PlainHolds:
    """Places plain holds (see PlainHold) through a pool of autocommit connections, in batches
    of at most ``batch_size`` when holds queue for a connection (1: each hold alone)."""

    def __init__(
        self,
        conninfo: str,
        connect_args: dict[str, Any],
        *,
        size: int,
        timeout: float,
        batch_size: int = 16,
    ) -> None:
        self._conninfo = conninfo
        self._connect_args = {**connect_args, "autocommit": True}
        self._size = size
        self._timeout = timeout
        self._pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._opening = asyncio.Lock()
        self._queue: HoldBatches[_Waiting] = HoldBatches(batch_size)
        self._running: set[asyncio.Task[None]] = set()
        self._batches: dict[asyncio.Task[None], list[_Waiting]] = {}
        # The recovery of a stopped batch, and the batch's holds: their keys stay taken until
        # the holds not written are back first in the queue, so no later hold overtakes them.
        self._recovering: dict[asyncio.Task[None], list[_Waiting]] = {}
        self._closed = False
        # Told of each batch (a lone hold too): its size, and whether the database refused it
        # and its holds were placed again, each alone.
        self.on_batch: Callable[[int, bool], None] | None = None

    async def _opened(self) -> psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise StorageUnavailable("the server is shutting down; retry on another")
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
        """Connections in use, idle (none before the first hold), and holds waiting for one."""
        if self._pool is None:
            return 0, 0, len(self._queue)
        stats = self._pool.get_stats()
        idle = stats.get("pool_available", 0)
        return stats.get("pool_size", 0) - idle, idle, len(self._queue)

    async def close(self) -> None:
        """Lets the running batches finish, then closes the connections; a hold placed after it
        is refused."""
        self._closed = True
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def place(self, plain: PlainHold) -> tuple[Hold, SeatEvent] | None:
        """The hold and its seat event, or None (nothing written). Raises SeatAlreadyTaken."""
        waiting = _Waiting(statement_params(plain))
        self._queue.put(waiting, waiting.keys)
        self._dispatch()
        try:
            # A hold still queued when the pool's timeout is up is refused, as a call that waits
            # that long for a connection; one that a batch took gets its batch's answer.
            # (asyncio.wait: a caller stopped meanwhile leaves the future to the finally below.)
            done, _ = await asyncio.wait((waiting.future,), timeout=self._timeout)
            if not done and self._queue.remove(waiting):
                waiting.future.cancel()
                raise Contention("the server is busy; retry shortly")
            await asyncio.wait((waiting.future,))
            row = waiting.future.result()
        except psycopg_pool.PoolTimeout as exc:
            raise Contention("the server is busy; retry shortly") from exc
        except psycopg.Error as exc:
            if (error := driver_error(exc)) is not None:
                raise error from exc
            raise
        finally:
            if not waiting.future.done():
                # The caller was stopped (its deadline, the server's time limit): nothing of
                # its request may be kept. Still queued, no batch takes it; taken, its batch is
                # stopped (PostgreSQL cancels the statement running, and the transaction with
                # it) and the batch's other holds are placed again.
                waiting.future.cancel()
                if not self._queue.remove(waiting) and waiting.batch is not None:
                    if not waiting.batch.cancelling():
                        # Once, however many of the batch's callers stop: a second stop would
                        # cut psycopg's cancel request short, and it would close the connection
                        # instead, leaving PostgreSQL to run what it had received (a COMMIT too).
                        waiting.batch.cancel()
                    # The caller hears that it was stopped once PostgreSQL has stopped the
                    # statement: a hold it was told nothing of must not be written after.
                    await asyncio.wait((waiting.batch,))
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

    def _dispatch(self) -> None:
        """Starts a batch on each free connection while holds wait that can go."""
        while len(self._running) < self._size and (batch := self._queue.take()):
            task = self._start(self._run(batch))
            self._batches[task] = batch
            for waiting in batch:
                waiting.batch = task

    def _start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._running.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A batch (or the recovery of a stopped one) is over, however it ended, even stopped
        before it began: its keys are free, and no hold of it is left without an answer."""
        self._running.discard(task)
        if (recovered := self._recovering.pop(task, None)) is not None:
            self._queue.done(waiting.keys for waiting in recovered)
            if task.cancelled() or task.exception() is not None:  # shut down midway: no caller hangs
                for waiting in recovered:
                    if not self._queue.remove(waiting):
                        waiting.answer(error=StorageUnavailable("the hold was stopped; retry with the same request_id"))
        else:
            batch = self._batches.pop(task, [])
            unanswered = [waiting for waiting in batch if not waiting.future.done()]
            if unanswered and task.cancelled():
                # Stopped for a caller that is gone: the others go again, unless it committed.
                self._recovering[self._start(self._after_stop(unanswered))] = batch
            else:
                self._queue.done(waiting.keys for waiting in batch)
                if unanswered and (error := task.exception()) is not None:  # a bug: no caller hangs
                    for waiting in unanswered:
                        waiting.answer(error=error)
        self._dispatch()

    async def _run(self, batch: list[_Waiting]) -> None:
        pool = await self._opened()
        answered = len(batch) > 1 and await self._together(pool, batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), len(batch) > 1 and not answered)
        if answered:
            return
        if len(batch) == 1:  # a lone hold, in this task: its caller, if stopped, stops it
            await self._alone(pool, batch[0])
            return
        # A refused batch's holds, side by side, each on a connection of its own: a hold that
        # waits for a lock until lock_timeout does not make the others wait after it. Each in a
        # task of its own, which a stopped caller stops alone.
        loop = asyncio.get_running_loop()
        alone = []
        for waiting in batch:
            waiting.batch = loop.create_task(self._alone(pool, waiting))
            alone.append(waiting.batch)
        await asyncio.gather(*alone, return_exceptions=True)

    async def _after_stop(self, left: list[_Waiting]) -> None:
        """A stopped batch's holds whose callers still wait: each goes again first in the queue,
        unless its hold was written (the stop came after the commit): then its answer is lost."""
        try:
            pool = await self._opened()
            async with pool.connection() as connection:
                cursor = await connection.execute(
                    "SELECT id FROM booking.holds WHERE id = ANY(%s)", ([waiting.hold_id for waiting in left],)
                )
                written = {row[0] for row in await cursor.fetchall()}
        except Exception as exc:  # noqa: BLE001 - the database's refusal or a bug: each caller hears it
            for waiting in left:
                waiting.answer(error=exc)
            return
        left = [waiting for waiting in left if not waiting.future.done()]  # callers stopped meanwhile: not again
        for waiting in left:
            if waiting.hold_id in written:
                waiting.answer(error=StorageUnavailable("the hold's answer was lost; retry with the same request_id"))
        self._queue.put_first([(waiting, waiting.keys) for waiting in left if waiting.hold_id not in written])

    async def _together(
        self, pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]], batch: list[_Waiting]
    ) -> bool:
        """The batch in one transaction. False if the database refused it: nothing of it was
        written and no hold has its answer yet."""
        try:
            async with pool.connection() as connection:
                try:
                    # An explicit transaction, not the pipeline's implicit one: the pipeline
                    # ends with a Sync however its block ends, and a Sync commits an implicit
                    # transaction. Stopped while it sends (a caller's deadline), the batch
                    # rolls back what PostgreSQL already ran of it.
                    async with connection.pipeline(), connection.transaction():
                        await connection.execute(LOCK_STATEMENT, (lock_keys([w.params for w in batch]),), prepare=True)
                        cursors = [
                            await connection.execute(HOLD_STATEMENT, waiting.params, prepare=True) for waiting in batch
                        ]
                    rows = [await cursor.fetchone() for cursor in cursors]
                except psycopg.Error as exc:
                    if connection.broken or exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P")):
                        # The connection failed: whether the batch committed is unknown, so it
                        # is not placed again (a caller may retry with its request id).
                        raise
                    return False
                # Answered before the connection goes back: a stop while it does would make
                # a committed batch's answers lost.
                for waiting, row in zip(batch, rows, strict=True):
                    waiting.answer(row)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            for waiting in batch:
                waiting.answer(error=exc)
        return True

    async def _alone(
        self, pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]], waiting: _Waiting
    ) -> None:
        try:
            async with pool.connection() as connection:
                cursor = await connection.execute(HOLD_STATEMENT, waiting.params, prepare=True)
                waiting.answer(await cursor.fetchone())
        except Exception as exc:  # noqa: BLE001 - the database's refusal or a bug: the caller hears it
            waiting.answer(error=exc)


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
