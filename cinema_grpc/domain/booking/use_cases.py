"""Booking use cases. Every seat decision runs under the showtime's lock, in one transaction,
and announces the seats it changed once that transaction has committed."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cinema_grpc.domain.access import ANONYMOUS, Caller, PermissionDenied
from cinema_grpc.domain.booking.model import (
    Booking,
    BookingRules,
    BookingState,
    ClaimedSeat,
    CounterPayment,
    Hold,
    HoldContext,
    HoldState,
    RefundState,
    SaleChannel,
    SeatChange,
    SeatEvent,
    SeatMap,
    SeatState,
    Ticket,
    best_available,
    seat_states,
    total,
    with_companions,
)
from cinema_grpc.domain.errors import (
    BookingNotFound,
    CancellationClosed,
    HoldExtensionLimit,
    HoldNotActive,
    HoldNotFound,
    NoAdjacentSeats,
    SeatAlreadyTaken,
    ShowtimeAlreadyStarted,
    ShowtimeCancelled,
    ShowtimeNotFound,
    ShowtimePriceMissing,
    TooManyActiveHolds,
    TooManySeats,
    Violations,
    invalid,
)
from cinema_grpc.domain.idempotency import RequestKey, earlier_result, remember_result
from cinema_grpc.domain.pagination import Page, PageRequest
from cinema_grpc.domain.payment.model import check_card_amount
from cinema_grpc.domain.ports import AvailabilityBus, BookingFilter, Clock, UnitOfWork, WatcherLagging
from cinema_grpc.domain.screening.model import Seat, SeatKind, Showtime, ShowtimeState
from cinema_grpc.domain.text import clean_text


def _check_sellable(showtime: Showtime | None, showtime_id: uuid.UUID, now: datetime) -> Showtime:
    if showtime is None:
        raise ShowtimeNotFound(showtime_id)
    if showtime.state is ShowtimeState.CANCELLED:
        raise ShowtimeCancelled(f"showtime {showtime_id} is cancelled", subject=f"showtimes/{showtime_id}")
    if showtime.has_started(now):
        raise ShowtimeAlreadyStarted(f"showtime {showtime_id} has started", subject=f"showtimes/{showtime_id}")
    return showtime


async def _sellable(uow: UnitOfWork, showtime_id: uuid.UUID, now: datetime) -> Showtime:
    return _check_sellable(await uow.showtimes.get(showtime_id), showtime_id, now)


async def record_changes(uow: UnitOfWork, showtime_id: uuid.UUID, changes: list[SeatChange]) -> None:
    if changes:
        uow.announce(await uow.booking.next_version(showtime_id, changes))


def _claimed(showtime: Showtime, seats: Sequence[Seat]) -> tuple[ClaimedSeat, ...]:
    # Prices are copied from the showtime now: later price changes do not touch this claim.
    unpriced = sorted({s.kind for s in seats} - set(showtime.prices))
    if unpriced:
        raise ShowtimePriceMissing(
            f"showtime {showtime.id} has no price for seat kind {', '.join(unpriced)}",
            subject=f"showtimes/{showtime.id}",
        )
    return tuple(ClaimedSeat(s.id, s.row_label, s.number, s.kind, showtime.prices[s.kind]) for s in seats)


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
    scope = "HoldSeats" if isinstance(cmd, HoldSeats) else "HoldBestAvailable"
    async with uow:
        if (earlier := await earlier_result(uow, scope, cmd.request)) is not None:
            return await own_hold(uow, caller, earlier)
        now = clock.now()
        # Under the customer's lock, then the showtime's, then the hall's (shared, so a layout
        # change cannot retire the seats being claimed), one read: the showtime with its prices,
        # the customer's active holds, the seats asked for (all of the hall for the best
        # available; the requested ones and the rows of requested wheelchair spaces, for their
        # companion seats, otherwise) and which of them are taken. The showtime's holds that are
        # due expire in the same statement.
        context = await uow.booking.hold_context(
            caller.user_id,
            cmd.showtime_id,
            now,
            seat_ids=cmd.seat_ids if isinstance(cmd, HoldSeats) else None,
            rows_of=SeatKind.WHEELCHAIR,
        )
        showtime = _check_sellable(context.showtime, cmd.showtime_id, now)
        if context.active_holds >= rules.max_active_holds:
            raise TooManyActiveHolds(f"at most {rules.max_active_holds} active holds per customer")
        seats = _best_seats(context, cmd) if isinstance(cmd, HoldBestAvailable) else _requested_seats(context, cmd)
        if len(seats) > rules.max_seats_per_hold:
            raise TooManySeats(f"at most {rules.max_seats_per_hold} seats per hold, companion seats included")
        claimed = _claimed(showtime, seats)
        # A hold is paid by card or at the counter: refused at once if no card payment could take it.
        check_card_amount(total(claimed), f"showtimes/{showtime.id}")
        hold = Hold(
            uuid.uuid4(),
            showtime.id,
            caller.user_id,
            claimed,
            HoldState.ACTIVE,
            now + rules.hold_ttl,
            0,
            now,
        )
        changes = [*context.freed, *(SeatChange(s.id, SeatState.HELD) for s in seats)]
        uow.announce(await uow.booking.add_hold(hold, changes))
        await remember_result(uow, scope, cmd.request, hold.id)
        await uow.commit()
    return hold


def _best_seats(context: HoldContext, cmd: HoldBestAvailable) -> list[Seat]:
    block = best_available(context.seats, context.taken, cmd.count, cmd.kind)
    if block is None:
        raise NoAdjacentSeats(
            f"no {cmd.count} adjacent free {cmd.kind.lower()} seats", subject=f"showtimes/{cmd.showtime_id}"
        )
    return block


def _requested_seats(context: HoldContext, cmd: HoldSeats) -> list[Seat]:
    # Only the requested seats were read (and the rows of requested wheelchair spaces, for their
    # companion seats): holding a seat must not cost a read of the whole hall.
    by_id = {seat.id: seat for seat in context.seats}
    violations = Violations()
    for i, seat_id in enumerate(cmd.seat_ids):
        seat = by_id.get(seat_id)
        if seat is None:
            violations.add(
                f"seat_ids[{i}]", "SEAT_NOT_IN_HALL", f"seat {seat_id} is not a seat of this showtime's hall"
            )
        elif not seat.in_service:
            violations.add(f"seat_ids[{i}]", "SEAT_OUT_OF_SERVICE", f"seat {seat.label} is out of service")
    violations.raise_if_any()
    requested = [by_id[seat_id] for seat_id in cmd.seat_ids]
    wheelchair_rows = {s.row_label for s in requested if s.kind is SeatKind.WHEELCHAIR}
    row_seats = [s for s in context.seats if s.row_label in wheelchair_rows]
    clash = {str(s.id): s.label for s in requested if s.id in context.taken}
    if clash:
        raise SeatAlreadyTaken(clash)
    return with_companions(requested, row_seats, context.taken)


async def own_hold(uow: UnitOfWork, caller: Caller, hold_id: uuid.UUID, *, for_update: bool = False) -> Hold:
    hold = await uow.booking.get_hold(hold_id, for_update=for_update)
    # Another customer's hold does not exist as far as this caller can tell.
    if hold is None or not caller.may_see(hold.customer_id):
        raise HoldNotFound(hold_id)
    return hold


async def get_hold(uow: UnitOfWork, caller: Caller, hold_id: uuid.UUID) -> Hold:
    async with uow:
        return await own_hold(uow, caller, hold_id)


async def extend_hold(uow: UnitOfWork, clock: Clock, rules: BookingRules, caller: Caller, hold_id: uuid.UUID) -> Hold:
    async with uow:
        hold = await own_hold(uow, caller, hold_id)
        await uow.booking.lock_showtime(hold.showtime_id)
        hold = await own_hold(uow, caller, hold_id, for_update=True)
        now = clock.now()
        if not hold.active(now):
            raise HoldNotActive(f"the hold is {hold.shown_state(now).lower()}", subject=f"holds/{hold.id}")
        if hold.extensions_used >= rules.max_extensions:
            raise HoldExtensionLimit(f"a hold can be extended {rules.max_extensions} times")
        hold = replace(hold, expires_at=now + rules.hold_ttl, extensions_used=hold.extensions_used + 1)
        await uow.booking.extend_hold(hold)
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
        hold = await own_hold(uow, caller, hold_id)
        await uow.booking.lock_showtime(hold.showtime_id)
        hold = await own_hold(uow, caller, hold_id, for_update=True)
        now = clock.now()
        if hold.state is HoldState.RELEASED:
            return hold
        if hold.state is not HoldState.ACTIVE:
            raise HoldNotActive(f"the hold is {hold.state.lower()}", subject=f"holds/{hold.id}")
        if override_reason:
            hold = replace(hold, ended_by=caller.user_id, end_reason=override_reason)
        await uow.booking.end_hold(hold, HoldState.RELEASED, now)
        await record_changes(uow, hold.showtime_id, [SeatChange(s.seat_id, SeatState.FREE) for s in hold.seats])
        await uow.commit()
    return replace(hold, state=HoldState.RELEASED)


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
        hold = await own_hold(uow, caller, cmd.hold_id)
        await uow.booking.lock_showtime(hold.showtime_id)
        hold = await own_hold(uow, caller, cmd.hold_id, for_update=True)
        now = clock.now()
        if not hold.active(now):
            raise HoldNotActive(f"the hold is {hold.shown_state(now).lower()}", subject=f"holds/{hold.id}")
        await _sellable(uow, hold.showtime_id, now)
        booking = await book_hold(uow, hold, SaleChannel.COUNTER, cmd.payment, now)
        await remember_result(uow, "SellHoldAtCounter", cmd.request, booking.id)
        await uow.commit()
    return await get_booking(uow, caller, booking.id)


async def book_hold(
    uow: UnitOfWork, hold: Hold, channel: SaleChannel, counter_payment: CounterPayment | None, now: datetime
) -> Booking:
    """Inside the caller's transaction (showtime locked, hold active): the hold's seats become
    the tickets of a new booking. Read the booking back for its ticket ids (the claim ids)."""
    booking = Booking(
        uuid.uuid4(),
        hold.showtime_id,
        hold.customer_id,
        hold.id,
        tuple(Ticket(uuid.uuid4(), seat, True) for seat in hold.seats),
        BookingState.CONFIRMED,
        channel,
        counter_payment,
        RefundState.NONE,
        now,
    )
    await uow.booking.convert_hold(hold, booking)
    await record_changes(uow, hold.showtime_id, [SeatChange(s.seat_id, SeatState.SOLD) for s in hold.seats])
    return booking


async def _own_booking(uow: UnitOfWork, caller: Caller, booking_id: uuid.UUID, *, for_update: bool = False) -> Booking:
    booking = await uow.booking.get_booking(booking_id, for_update=for_update)
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
        await uow.booking.lock_showtime(booking.showtime_id)
        booking = await _own_booking(uow, caller, booking_id, for_update=True)
        if booking.state is BookingState.CANCELLED:
            return booking
        cancelled = await cancel_in(uow, rules, caller, booking, reason, clock.now(), force=force)
        await uow.commit()
    return cancelled


async def cancel_in(
    uow: UnitOfWork, rules: BookingRules, caller: Caller, booking: Booking, reason: str, now: datetime, *, force: bool
) -> Booking:
    """Inside the caller's transaction (showtime locked, booking locked and not cancelled):
    cancels the booking for refund and frees its seats. Customers may until the cut-off before
    the showtime, staff until it starts; ``force`` skips the check."""
    showtime = await uow.showtimes.get(booking.showtime_id)
    assert showtime is not None
    closes = showtime.starts_at - (timedelta(0) if caller.is_staff else rules.customer_cancel_cutoff)
    if now >= closes and not force:
        raise CancellationClosed(
            f"bookings of this showtime could be cancelled until {closes.isoformat()}", subject=f"bookings/{booking.id}"
        )
    cancelled = replace(
        booking,
        cancelled_by=caller.user_id,
        state=BookingState.CANCELLED,
        refund_state=RefundState.PENDING,
        cancelled_at=now,
        cancel_reason=reason or ("cancelled by staff" if caller.is_staff else "cancelled by the customer"),
        tickets=tuple(replace(t, valid=False) for t in booking.tickets),
    )
    await uow.booking.cancel_booking(cancelled, BookingState.CANCELLED, RefundState.PENDING)
    await record_changes(
        uow, booking.showtime_id, [SeatChange(t.seat.seat_id, SeatState.FREE) for t in booking.tickets]
    )
    return cancelled


async def end_sales_of_cancelled_showtime(uow: UnitOfWork, showtime: Showtime, now: datetime) -> None:
    """Inside the cancellation's transaction: holds released, bookings cancelled for refund."""
    await uow.booking.lock_showtime(showtime.id)
    changes = await uow.booking.end_showtime_sales(showtime.id, now, f"showtime cancelled: {showtime.cancel_reason}")
    await record_changes(uow, showtime.id, changes)


async def seat_map(uow: UnitOfWork, clock: Clock, caller: Caller, showtime_id: uuid.UUID) -> SeatMap:
    return _as_seen_by(caller, await _full_seat_map(uow, clock, showtime_id))


async def _full_seat_map(uow: UnitOfWork, clock: Clock, showtime_id: uuid.UUID) -> SeatMap:
    async with uow:
        # Version and claims are read in one snapshot so they agree with each other.
        await uow.snapshot()
        showtime = await uow.showtimes.get(showtime_id)
        if showtime is None:
            raise ShowtimeNotFound(showtime_id)
        hall = await uow.halls.get(showtime.hall_id)
        assert hall is not None
        version = await uow.booking.current_version(showtime_id)
        claims = await uow.booking.active_claims(showtime_id, clock.now())
    return SeatMap(showtime_id, version, seat_states(hall.seats, claims))


def _as_seen_by(caller: Caller, full: SeatMap) -> SeatMap:
    """Who holds a seat, and through which hold, is for staff only."""
    if caller.is_staff:
        return full
    return replace(full, seats=tuple(replace(status, holder_id=None, hold_id=None) for status in full.seats))


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
    """A seat map, then the events after it in version order, without gaps or repeats."""
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
            if missed is not None:
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
            if event.version > last + 1:
                # Events can arrive out of order across replicas: fill the gap from the log.
                async with unit_of_work() as uow:
                    missed = await uow.booking.events_since(showtime_id, last)
                if missed is None:
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


async def release_expired_holds(
    unit_of_work: Callable[[], UnitOfWork], clock: Clock, batch: int = 50, parallel: int = 2
) -> int:
    """Frees the seats of expired holds; returns the seats freed.

    Takes ``batch`` showtimes with expired holds per transaction, ``parallel`` transactions at a
    time on disjoint showtimes. Each locks those of its showtimes that are not busy (a showtime
    whose lock is taken is left to a later run; its expired holds count as free already),
    expires their due holds in one statement and records one availability version per showtime.
    """
    freed = 0
    while True:
        async with unit_of_work() as uow:
            showtimes = await uow.booking.showtimes_with_expired_holds(clock.now(), batch * parallel)
        groups = [showtimes[i::parallel] for i in range(parallel) if showtimes[i::parallel]]
        outcomes = await asyncio.gather(
            *(_expire_showtimes(unit_of_work, clock, group) for group in groups), return_exceptions=True
        )
        # Both transactions have ended, whatever happened to either, before a failure is raised.
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        results = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
        freed += sum(seats for seats, _ in results)
        swept = sum(locked for _, locked in results)
        if len(showtimes) < batch * parallel or swept == 0:
            return freed


async def _expire_showtimes(
    unit_of_work: Callable[[], UnitOfWork], clock: Clock, showtimes: list[uuid.UUID]
) -> tuple[int, int]:
    """Returns the seats freed and the showtimes that could be locked."""
    async with unit_of_work() as uow:
        locked = await uow.booking.try_lock_showtimes(showtimes)
        if not locked:
            return 0, 0
        events = await uow.booking.expire_due(locked, clock.now())
        for event in events:
            uow.announce(event)
        await uow.commit()
    return sum(len(event.changes) for event in events), len(locked)
