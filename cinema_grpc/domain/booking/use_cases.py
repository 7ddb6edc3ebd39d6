"""Booking use cases. Every seat decision is a method of the showtime's seat inventory, loaded
locked by the unit of work, which persists it and announces the seats it changed once the
transaction has committed."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cinema_grpc.domain.access import ANONYMOUS, Caller, PermissionDenied
from cinema_grpc.domain.booking.inventory import NewHold, PlainHold, SeatInventory, check_sellable
from cinema_grpc.domain.booking.model import (
    Booking,
    BookingRules,
    BookingState,
    CounterPayment,
    Hold,
    SaleChannel,
    SeatEvent,
    SeatMap,
    SeatStatus,
)
from cinema_grpc.domain.booking.selling_rules import check_on_sale
from cinema_grpc.domain.errors import (
    BookingNotFound,
    CancellationClosed,
    HoldNotActive,
    HoldNotFound,
    ShowtimeNotFound,
    StaleDecision,
    TooManySeats,
    Violations,
    invalid,
)
from cinema_grpc.domain.idempotency import RequestKey, earlier_result, remember_result
from cinema_grpc.domain.ids import new_id
from cinema_grpc.domain.pagination import Page, PageRequest
from cinema_grpc.domain.ports import AvailabilityBus, BookingFilter, Clock, HoldFilter, UnitOfWork, WatcherLagging
from cinema_grpc.domain.screening.model import SeatKind
from cinema_grpc.domain.text import clean_text


@dataclass(frozen=True)
class HoldSeats:
    showtime_id: uuid.UUID
    seat_ids: tuple[uuid.UUID, ...]
    request: RequestKey | None = None


@dataclass(frozen=True)
class HoldBestAvailable:
    showtime_id: uuid.UUID
    count: int
    kind: SeatKind
    request: RequestKey | None = None


async def hold_seats(
    uow: UnitOfWork, clock: Clock, rules: BookingRules, caller: Caller, cmd: HoldSeats | HoldBestAvailable
) -> Hold:
    assert caller.user_id is not None
    if isinstance(cmd, HoldBestAvailable) and cmd.kind is SeatKind.COMPANION:
        raise invalid("kind", "INVALID_ENUM", "companion seats come with a wheelchair space")
    wanted = len(cmd.seat_ids) if isinstance(cmd, HoldSeats) else cmd.count
    if wanted > rules.max_seats_per_hold:
        raise TooManySeats(f"at most {rules.max_seats_per_hold} seats per hold")
    if isinstance(cmd, HoldSeats):
        # The common hold, decided and written by the storage in one statement when it is plain.
        plain = PlainHold(
            new_id(),
            cmd.showtime_id,
            caller.user_id,
            cmd.seat_ids,
            caller.is_staff,
            clock.now(),
            rules,
            cmd.request,
        )
        if (placed := await uow.place_plain_hold(plain)) is not None:
            return placed
    try:
        return await _hold(uow, clock, rules, caller, cmd, lock_first=False)
    except StaleDecision:
        # The seats changed between the read and the write: decide again under the locks.
        return await _hold(uow, clock, rules, caller, cmd, lock_first=True)


async def _hold(
    uow: UnitOfWork,
    clock: Clock,
    rules: BookingRules,
    caller: Caller,
    cmd: HoldSeats | HoldBestAvailable,
    *,
    lock_first: bool,
) -> Hold:
    assert caller.user_id is not None
    scope = "HoldSeats" if isinstance(cmd, HoldSeats) else "HoldBestAvailable"
    async with uow:
        if (earlier := await earlier_result(uow, scope, cmd.request)) is not None:
            return await own_hold(uow, caller, earlier)
        now = clock.now()
        # Holding a seat reads only the seats asked for (and the rows of requested wheelchair
        # spaces, for their companion seats); the best available needs the whole hall.
        seat_ids = cmd.seat_ids if isinstance(cmd, HoldSeats) else None
        new_hold = NewHold.of(
            caller.user_id, seat_ids, lock_first=lock_first, staff=caller.is_staff, rules=rules, now=now
        )
        inventory = await uow.inventories.get_locked(cmd.showtime_id, now, new_hold=new_hold)
        if isinstance(cmd, HoldSeats):
            hold = inventory.hold_seats(cmd.seat_ids, rules, now)
        else:
            hold = inventory.hold_best_available(cmd.count, cmd.kind, rules, now)
        await remember_result(uow, scope, cmd.request, hold.id)
        await uow.commit()
    return replace(hold, seat_map_version=inventory.version)


async def own_hold(uow: UnitOfWork, caller: Caller, hold_id: uuid.UUID) -> Hold:
    hold = await uow.booking.get_hold(hold_id)
    # Another customer's hold does not exist as far as this caller can tell.
    if hold is None or not caller.may_see(hold.customer_id):
        raise HoldNotFound(hold_id)
    return hold


async def locked_hold(uow: UnitOfWork, caller: Caller, hold_id: uuid.UUID, now: datetime) -> SeatInventory:
    """The inventory of the caller's hold's showtime, locked, with the hold loaded."""
    hold = await own_hold(uow, caller, hold_id)
    return await uow.inventories.get_locked(hold.showtime_id, now, holds=[hold_id])


async def get_hold(uow: UnitOfWork, caller: Caller, hold_id: uuid.UUID) -> Hold:
    async with uow:
        return await own_hold(uow, caller, hold_id)


async def extend_hold(uow: UnitOfWork, clock: Clock, rules: BookingRules, caller: Caller, hold_id: uuid.UUID) -> Hold:
    async with uow:
        now = clock.now()
        inventory = await locked_hold(uow, caller, hold_id, now)
        if inventory.showtime is not None:
            check_on_sale(inventory.showtime, rules.online_sales_close, now, at_counter=caller.is_staff)
        hold = inventory.extend(hold_id, rules, now)
        await uow.commit()
    return hold


async def release_hold(uow: UnitOfWork, clock: Clock, caller: Caller, hold_id: uuid.UUID) -> Hold:
    return await _release(uow, clock, caller, hold_id)


async def force_release_hold(uow: UnitOfWork, clock: Clock, caller: Caller, hold_id: uuid.UUID, reason: str) -> Hold:
    """Staff override: ends any customer's hold now, recording who and why."""
    violations = Violations()
    reason = clean_text(violations, "reason", reason, max_length=500)
    violations.raise_if_any()
    return await _release(uow, clock, caller, hold_id, override_reason=reason)


async def _release(
    uow: UnitOfWork, clock: Clock, caller: Caller, hold_id: uuid.UUID, *, override_reason: str = ""
) -> Hold:
    async with uow:
        now = clock.now()
        inventory = await locked_hold(uow, caller, hold_id, now)
        hold = inventory.release(hold_id, now, by=caller.user_id, reason=override_reason)
        await uow.commit()
    return replace(hold, seat_map_version=inventory.version)


@dataclass(frozen=True)
class SellAtCounter:
    hold_id: uuid.UUID
    payment: CounterPayment
    request: RequestKey | None = None


async def sell_hold_at_counter(uow: UnitOfWork, clock: Clock, caller: Caller, cmd: SellAtCounter) -> Booking:
    """Box office: the hold becomes a booking paid in cash or by card at the counter."""
    async with uow:
        if (earlier := await earlier_result(uow, "SellHoldAtCounter", cmd.request)) is not None:
            return await _own_booking(uow, caller, earlier)
        now = clock.now()
        inventory = await locked_hold(uow, caller, cmd.hold_id, now)
        hold = inventory.hold_of(cmd.hold_id)
        if not hold.active(now):
            raise HoldNotActive(f"the hold is {hold.shown_state(now).lower()}", subject=f"holds/{hold.id}")
        check_sellable(inventory.showtime, hold.showtime_id, now)
        booking = inventory.sell(hold.id, SaleChannel.COUNTER, cmd.payment, now)
        await remember_result(uow, "SellHoldAtCounter", cmd.request, booking.id)
        await uow.commit()
    # Read back for its ticket ids (the claim ids).
    return await get_booking(uow, caller, booking.id)


async def _own_booking(uow: UnitOfWork, caller: Caller, booking_id: uuid.UUID) -> Booking:
    booking = await uow.booking.get_booking(booking_id)
    if booking is None or not caller.may_see(booking.customer_id):
        raise BookingNotFound(booking_id)
    return booking


async def get_booking(uow: UnitOfWork, caller: Caller, booking_id: uuid.UUID) -> Booking:
    async with uow:
        return await _own_booking(uow, caller, booking_id)


async def list_bookings(uow: UnitOfWork, caller: Caller, wanted: BookingFilter, page: PageRequest) -> Page[Booking]:
    """Customers see their own history; staff may filter by customer or showtime."""
    if not caller.is_staff:
        if wanted.showtime_id is not None or (wanted.customer_id not in (None, caller.user_id)):
            raise PermissionDenied("customers list their own bookings only")
        wanted = BookingFilter(customer_id=caller.user_id)
    async with uow:
        return await uow.booking.list_bookings(wanted, page)


async def list_holds(
    uow: UnitOfWork, clock: Clock, caller: Caller, wanted: HoldFilter, page: PageRequest
) -> Page[Hold]:
    """Active holds: customers see their own (of any showtime, or of one); staff may filter by
    customer or showtime. A hold whose answer was lost is found here, and can be released."""
    if not caller.is_staff:
        if wanted.customer_id not in (None, caller.user_id):
            raise PermissionDenied("customers list their own holds only")
        wanted = HoldFilter(customer_id=caller.user_id, showtime_id=wanted.showtime_id)
    async with uow:
        return await uow.booking.list_active_holds(wanted, clock.now(), page)


async def cancel_booking(
    uow: UnitOfWork,
    clock: Clock,
    rules: BookingRules,
    caller: Caller,
    booking_id: uuid.UUID,
    reason: str,
    *,
    force: bool = False,
) -> Booking:
    """Cancels a booking for refund: customers until the cut-off, staff until the showtime
    starts; ``force`` (staff override, reason required) at any time."""
    violations = Violations()
    reason = clean_text(violations, "reason", reason, max_length=500, required=force)
    violations.raise_if_any()
    async with uow:
        booking = await _own_booking(uow, caller, booking_id)
        now = clock.now()
        inventory = await uow.inventories.get_locked(booking.showtime_id, now, bookings=[booking_id])
        cancelled = cancel_in(inventory, rules, caller, booking_id, reason, now, force=force)
        await uow.commit()
    return cancelled


def cancel_in(
    inventory: SeatInventory,
    rules: BookingRules,
    caller: Caller,
    booking_id: uuid.UUID,
    reason: str,
    now: datetime,
    *,
    force: bool,
) -> Booking:
    """Cancels the booking (loaded in the inventory) for refund and frees its seats; a cancelled
    booking stays as it is. Customers may until the cut-off before the showtime, staff until it
    starts; ``force`` skips the check."""
    booking = inventory.booking_of(booking_id)
    if booking.state is BookingState.CANCELLED:
        return booking
    assert inventory.showtime is not None
    closes = inventory.showtime.starts_at - (timedelta(0) if caller.is_staff else rules.customer_cancel_cutoff)
    if now >= closes and not force:
        raise CancellationClosed(
            f"bookings of this showtime could be cancelled until {closes.isoformat()}", subject=f"bookings/{booking.id}"
        )
    reason = reason or ("cancelled by staff" if caller.is_staff else "cancelled by the customer")
    return inventory.cancel(booking_id, now, by=caller.user_id, reason=reason)


async def seat_map(uow: UnitOfWork, clock: Clock, caller: Caller, showtime_id: uuid.UUID) -> SeatMap:
    return _as_seen_by(caller, await _full_seat_map(uow, clock, showtime_id))


async def _full_seat_map(uow: UnitOfWork, clock: Clock, showtime_id: uuid.UUID) -> SeatMap:
    async with uow:
        seat_map = await uow.booking.seat_map(showtime_id, clock.now())
    if seat_map is None:
        raise ShowtimeNotFound(showtime_id)
    return seat_map


def _as_seen_by(caller: Caller, full: SeatMap) -> SeatMap:
    """Who holds a seat, and through which hold, is for staff only."""
    if caller.is_staff:
        return full
    # Unclaimed seats are shown as they are (the same objects: see the seat map's message).
    seats = tuple(
        status if status.holder_id is None and status.hold_id is None else SeatStatus(status.seat, status.state, None)
        for status in full.seats
    )
    return replace(full, seats=seats)


class SharedSeatMapReads:
    """Watchers of one showtime that want a seat map at the same moment (a crowd connecting
    together, or every watcher of a replica after a Redis outage) share reads of it: at most one
    read per showtime is in flight, and whoever arrives meanwhile waits for the next one, which
    serves them all.

    A watcher only takes a read that started after its mark (taken once it is subscribed, or
    once its inbox was emptied), so every change the read does not show reaches the watcher as
    an event: sharing never loses one.
    """

    def __init__(self, unit_of_work: Callable[[], UnitOfWork], clock: Clock) -> None:
        self._unit_of_work = unit_of_work
        self._clock = clock
        self._counter = 0
        self._reads: dict[uuid.UUID, tuple[int, asyncio.Task[tuple[SeatMap, SeatMap]]]] = {}

    def mark(self) -> int:
        self._counter += 1
        return self._counter

    async def read(self, caller: Caller, showtime_id: uuid.UUID, mark: int) -> SeatMap:
        while True:
            current = self._reads.get(showtime_id)
            if current is None:
                task = asyncio.ensure_future(self._both_views(showtime_id))
                current = (self.mark(), task)
                self._reads[showtime_id] = current
                task.add_done_callback(functools.partial(self._finished, showtime_id, current))
            if current[0] > mark:
                # Shielded: a watcher that leaves does not cancel the read the others wait for.
                staff_view, public_view = await asyncio.shield(current[1])
                return staff_view if caller.is_staff else public_view
            # Started before this watcher's mark: wait for it to end, then take the next one.
            await asyncio.wait([current[1]])

    async def _both_views(self, showtime_id: uuid.UUID) -> tuple[SeatMap, SeatMap]:
        full = await _full_seat_map(self._unit_of_work(), self._clock, showtime_id)
        return full, _as_seen_by(ANONYMOUS, full)

    def _finished(
        self,
        showtime_id: uuid.UUID,
        entry: tuple[int, asyncio.Task[tuple[SeatMap, SeatMap]]],
        done: asyncio.Task[tuple[SeatMap, SeatMap]],
    ) -> None:
        if self._reads.get(showtime_id) is entry:
            del self._reads[showtime_id]
        if not done.cancelled():
            done.exception()  # retrieved here: whoever waits raises it, and nobody waiting is fine


async def watch_seats(
    unit_of_work: Callable[[], UnitOfWork],
    bus: AvailabilityBus,
    seat_maps: SharedSeatMapReads,
    caller: Caller,
    showtime_id: uuid.UUID,
    since_version: int,
) -> AsyncIterator[SeatMap | SeatEvent]:
    """A seat map, then the events after it in version order, without gaps or repeats. A version
    that replaced the showtime's seats (a move to another hall, a new layout) is sent as a fresh
    seat map instead, whether it arrives live or is caught up from the log."""
    if since_version < 0:
        raise invalid("since_version", "OUT_OF_RANGE", "must not be negative")
    # Subscribe first: an event published while the seat map is read is then not lost.
    watch = bus.watch(showtime_id)
    subscribed = seat_maps.mark()
    try:
        last = -1
        if since_version > 0:
            async with unit_of_work() as uow:
                if await uow.showtimes.get(showtime_id) is None:
                    raise ShowtimeNotFound(showtime_id)
                missed = await uow.booking.events_since(showtime_id, since_version)
            if missed is not None and not _replaces_seats(missed):
                for event in missed:
                    yield event
                last = missed[-1].version if missed else since_version
        if last < 0:
            snapshot = await seat_maps.read(caller, showtime_id, subscribed)
            yield snapshot
            last = snapshot.version
        while True:
            try:
                event = await watch.next()
            except WatcherLagging:
                snapshot = await seat_maps.read(caller, showtime_id, seat_maps.mark())
                yield snapshot
                last = snapshot.version
                continue
            if event.version <= last:
                continue
            if event.layout_changed:
                # Read after the event was committed, so it shows the new seats.
                snapshot = await seat_maps.read(caller, showtime_id, seat_maps.mark())
                yield snapshot
                last = snapshot.version
                continue
            if event.version > last + 1:
                # Events can arrive out of order across replicas: fill the gap from the log.
                async with unit_of_work() as uow:
                    missed = await uow.booking.events_since(showtime_id, last)
                if missed is None or _replaces_seats(missed):
                    snapshot = await seat_maps.read(caller, showtime_id, seat_maps.mark())
                    yield snapshot
                    last = snapshot.version
                    continue
                for earlier in missed:
                    if earlier.version > last:
                        yield earlier
                        last = earlier.version
                continue
            yield event
            last = event.version
    finally:
        watch.close()


def _replaces_seats(events: Iterable[SeatEvent]) -> bool:
    """Whether the seats the watcher knows are gone in one of these versions: changes listed
    after it name other seats, so only a fresh seat map is true."""
    return any(event.layout_changed for event in events)


async def release_expired_holds(
    unit_of_work: Callable[[], UnitOfWork], clock: Clock, batch: int = 50, parallel: int = 2, rounds: int = 4
) -> int:
    """Frees the seats of expired holds; returns the seats freed.

    Lists up to ``batch * parallel * rounds`` showtimes with expired holds at a time and expires
    them ``batch`` showtimes per transaction, ``parallel`` transactions at a time on disjoint
    showtimes, each taking the next batch as soon as its own has committed (none waits for the
    slowest of a round). Each locks those of its showtimes that are not busy (a showtime whose
    lock is taken is left to a later run; its expired holds count as free already), expires
    their due holds in bulk (without loading them) and records one availability version per
    showtime.
    """
    freed = 0
    listed = batch * parallel * rounds
    while True:
        async with unit_of_work() as uow:
            showtimes = await uow.booking.showtimes_with_expired_holds(clock.now(), listed)
        waiting = deque(showtimes[i : i + batch] for i in range(0, len(showtimes), batch))
        results: list[tuple[int, int]] = []
        outcomes = await asyncio.gather(
            *(_expire_waiting(unit_of_work, clock, waiting, results) for _ in range(min(parallel, len(waiting)))),
            return_exceptions=True,
        )
        # Every transaction has ended, whatever happened to any, before a failure is raised.
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        freed += sum(seats for seats, _ in results)
        swept = sum(locked for _, locked in results)
        if len(showtimes) < listed or swept == 0:
            return freed


async def _expire_waiting(
    unit_of_work: Callable[[], UnitOfWork],
    clock: Clock,
    waiting: deque[list[uuid.UUID]],
    results: list[tuple[int, int]],
) -> None:
    """Expires the waiting batches one after another until none is left."""
    try:
        while waiting:
            results.append(await _expire_showtimes(unit_of_work, clock, waiting.popleft()))
    except BaseException:
        waiting.clear()  # the others stop after their current batch
        raise


async def _expire_showtimes(
    unit_of_work: Callable[[], UnitOfWork], clock: Clock, showtimes: list[uuid.UUID]
) -> tuple[int, int]:
    """Returns the seats freed and the showtimes that could be locked."""
    async with unit_of_work() as uow:
        now = clock.now()
        inventories = await uow.inventories.try_lock_lapsed(showtimes)
        if not inventories:
            return 0, 0
        for inventory in inventories:
            inventory.expire_lapsed(now)
        await uow.commit()
    return sum(len(inventory.changes) for inventory in inventories), len(inventories)
