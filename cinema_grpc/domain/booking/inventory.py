"""A showtime's seat inventory: the one consistency boundary of seat decisions.

It is loaded under the showtime's locks (``uow.inventories.get_locked``) and changed only through
its methods. Each method checks its rule, records the writes to make and appends the seat changes
that watchers must be told about; the unit of work persists the writes, records the changes as the
showtime's next availability version and publishes them once the transaction has committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from cinema_grpc.domain.booking.model import (
    Booking,
    BookingRules,
    BookingState,
    ClaimedSeat,
    CounterPayment,
    Hold,
    HoldState,
    RefundState,
    SaleChannel,
    SeatChange,
    SeatEvent,
    SeatState,
    Ticket,
    best_available,
    total,
    with_companions,
)
from cinema_grpc.domain.booking.selling_rules import (
    check_cooldown,
    check_hold_rate,
    check_on_sale,
    check_showtime_share,
    cooling_seats,
)
from cinema_grpc.domain.errors import (
    BookingNotFound,
    HoldExtensionLimit,
    HoldNotActive,
    HoldNotFound,
    NoAdjacentSeats,
    SeatAlreadyTaken,
    ShowtimeAlreadyStarted,
    ShowtimeCancelled,
    ShowtimeHasSales,
    ShowtimeNotFound,
    ShowtimePriceMissing,
    TooManyActiveHolds,
    TooManySeats,
    Violations,
)
from cinema_grpc.domain.ids import new_id
from cinema_grpc.domain.payment.model import check_card_amount
from cinema_grpc.domain.screening.model import Seat, SeatKind, Showtime, ShowtimeState

if TYPE_CHECKING:
    from cinema_grpc.domain.idempotency import RequestKey


@dataclass(frozen=True)
class NewHold:
    """Asks ``get_locked`` to prepare a new hold of the customer: the customer's lock is taken
    before the showtime's (the active-hold limit counts across showtimes), the hall's layout is
    share-locked, and the seats asked for (``None``: every seat of the hall) are read with which of
    them are taken, plus every seat in the rows of requested wheelchair spaces (their companions)."""

    customer_id: uuid.UUID
    seat_ids: tuple[uuid.UUID, ...] | None
    # False: read without locks, and the locks are taken with the writes, where the decision is
    # checked (StaleDecision if what it read changed). True: locked before the read, as every
    # other change; a decision taken so cannot go stale.
    lock_first: bool = False
    # Staff at the box office: the customer limits (online sales cut-off, hold rate, seats per
    # showtime, re-hold cooldown) do not apply, and nothing is read for them.
    staff: bool = False
    # For the limits: the customer's holds started after ``rate_since`` (the newest
    # ``rate_limit`` of them), and their holds of the showtime that ended after ``cooldown_since``.
    rate_since: datetime | None = None
    rate_limit: int = 0
    cooldown_since: datetime | None = None

    @classmethod
    def of(
        cls,
        customer_id: uuid.UUID,
        seat_ids: tuple[uuid.UUID, ...] | None,
        *,
        lock_first: bool,
        staff: bool,
        rules: BookingRules,
        now: datetime,
    ) -> NewHold:
        if staff:
            return cls(customer_id, seat_ids, lock_first, staff=True)
        return cls(
            customer_id,
            seat_ids,
            lock_first,
            rate_since=now - rules.hold_rate_window,
            rate_limit=rules.max_holds_per_window,
            cooldown_since=now - rules.rehold_cooldown,
        )


@dataclass(frozen=True)
class PlainHold:
    """A hold of named seats that the storage may decide and write in one statement, when it is
    plain (``UnitOfWork.place_plain_hold``): the seats of the showtime's hall, in service, none a
    wheelchair space, none claimed or cooling down for the customer, the customer within every
    limit of ``rules``, the showtime on sale, no lapsed hold of it left to expire, no earlier
    request with its request id. The storage may only say yes where ``SeatInventory.hold_seats``
    would: anything else it leaves to the inventory."""

    hold_id: uuid.UUID
    showtime_id: uuid.UUID
    customer_id: uuid.UUID
    seat_ids: tuple[uuid.UUID, ...]
    staff: bool  # the box office: the customer limits do not apply (see NewHold)
    now: datetime
    rules: BookingRules
    # The request's id, fingerprint and owner (idempotency) and its scope ("HoldSeats").
    request: RequestKey | None = None
    scope: str = "HoldSeats"

    @property
    def expires_at(self) -> datetime:
        return self.now + self.rules.hold_ttl

    def placed(self, seats: Sequence[ClaimedSeat], version: int, recorded_at: datetime) -> tuple[Hold, SeatEvent]:
        """The hold as placed (its seats in the order asked) and the seat event that announces
        it: every seat HELD, in the showtime's ``version``."""
        hold = Hold(
            self.hold_id,
            self.showtime_id,
            self.customer_id,
            tuple(seats),
            HoldState.ACTIVE,
            self.expires_at,
            0,
            self.now,
            seat_map_version=version,
        )
        changes = tuple(SeatChange(seat.seat_id, SeatState.HELD) for seat in hold.seats)
        return hold, SeatEvent(self.showtime_id, version, changes, recorded_at)


@dataclass(frozen=True)
class HoldOffer:
    """What a new hold is decided on, read in one snapshot under its locks."""

    customer_id: uuid.UUID
    active_holds: int  # the customer's holds that are active now, on any showtime
    seats: tuple[Seat, ...]  # the hall's current seats that were asked for, in layout order
    taken: frozenset[uuid.UUID]  # which of those are sold, or held by a hold that has not lapsed
    staff: bool = False  # the customer limits do not apply (see NewHold)
    recent_holds: tuple[datetime, ...] = ()  # when the customer's latest holds started, newest first
    seats_of_customer: int = 0  # seats of the showtime the customer holds (unlapsed) or bought
    # Seats of the showtime the customer held until recently: seat -> when that hold ended.
    recently_ended: tuple[tuple[uuid.UUID, datetime], ...] = ()


# ---------------------------------------------------------------- what the unit of work writes


@dataclass(frozen=True)
class HoldAdded:
    hold: Hold


@dataclass(frozen=True)
class HoldEnded:
    """Released or expired (``hold.state``); its held seats are free."""

    hold: Hold
    at: datetime


@dataclass(frozen=True)
class HoldKept:
    """Its expiry, extensions or payment deadline changed; its claims last until ``kept_until``."""

    hold: Hold


@dataclass(frozen=True)
class HoldSold:
    hold: Hold
    booking: Booking


@dataclass(frozen=True)
class BookingCancelled:
    booking: Booking


@dataclass(frozen=True)
class SeatServiceSet:
    """The seat was taken out of service or put back. The seat row is the hall's, written by the
    hall repository in the same transaction; the showtime only records its next version."""

    seat: Seat


@dataclass(frozen=True)
class LapsedHoldsExpired:
    """Every hold of the showtime that has lapsed by ``at`` expires and its held seats are free,
    written in bulk by the storage without loading the holds: the storage announces the seats it
    frees in the showtime's next version, each as an unclaimed seat shows (FREE, or
    OUT_OF_SERVICE), so they need not be known here."""

    at: datetime

    def ends(self, hold: Hold) -> bool:
        """Whether it expires this hold: active, and past its expiry and any payment deadline."""
        return hold.state is HoldState.ACTIVE and not hold.active(self.at)


InventoryWrite = HoldAdded | HoldEnded | HoldKept | HoldSold | BookingCancelled | SeatServiceSet | LapsedHoldsExpired


def check_sellable(showtime: Showtime | None, showtime_id: uuid.UUID, now: datetime) -> Showtime:
    if showtime is None:
        raise ShowtimeNotFound(showtime_id)
    if showtime.state is ShowtimeState.CANCELLED:
        raise ShowtimeCancelled(f"showtime {showtime_id} is cancelled", subject=f"showtimes/{showtime_id}")
    if showtime.has_started(now):
        raise ShowtimeAlreadyStarted(f"showtime {showtime_id} has started", subject=f"showtimes/{showtime_id}")
    return showtime


class SeatInventory:
    """The holds and bookings of one showtime that a change needs, loaded under its lock.

    Lapsed holds (active, but past ``kept_until``) that were loaded are expired by the first
    method that decides about seats, in the same version as the decision.
    """

    def __init__(
        self,
        showtime_id: uuid.UUID,
        showtime: Showtime | None,
        *,
        holds: Iterable[Hold] = (),
        bookings: Iterable[Booking] = (),
        offer: HoldOffer | None = None,
        out_of_service: Iterable[uuid.UUID] = (),
    ) -> None:
        self.showtime_id = showtime_id
        self.showtime = showtime
        self._holds = {hold.id: hold for hold in holds}
        self._bookings = {booking.id: booking for booking in bookings}
        self._offer = offer
        # Seats known to be out of service (loaded among the claimed seats, or set here), and
        # seats put back in service here: seat -> in service.
        self._in_service: dict[uuid.UUID, bool] = dict.fromkeys(out_of_service, False)
        self.writes: list[InventoryWrite] = []
        self.changes: list[SeatChange] = []
        # Its seats were replaced by other seats: its next version tells watchers to start over.
        self.layout_changed = False
        # The availability version its changes were recorded as, once the unit of work committed.
        self.version = 0

    # ------------------------------------------------------------ reading

    @property
    def holds(self) -> tuple[Hold, ...]:
        return tuple(self._holds.values())

    @property
    def bookings(self) -> tuple[Booking, ...]:
        return tuple(self._bookings.values())

    def find_hold(self, hold_id: uuid.UUID) -> Hold | None:
        return self._holds.get(hold_id)

    def hold_of(self, hold_id: uuid.UUID) -> Hold:
        hold = self._holds.get(hold_id)
        if hold is None:
            raise HoldNotFound(hold_id)
        return hold

    def booking_of(self, booking_id: uuid.UUID) -> Booking:
        booking = self._bookings.get(booking_id)
        if booking is None:
            raise BookingNotFound(booking_id)
        return booking

    def seat_states(self, now: datetime) -> dict[uuid.UUID, SeatState]:
        """The seats claimed by what is loaded, as a watcher should see them now: held by a hold
        that has not lapsed, or sold. A seat known to be out of service and not claimed is out
        of service; any other seat it knows of is free."""
        states: dict[uuid.UUID, SeatState] = {
            seat_id: SeatState.FREE if in_service else SeatState.OUT_OF_SERVICE
            for seat_id, in_service in self._in_service.items()
        }
        for hold in self._holds.values():
            for seat in hold.seats:
                states.setdefault(seat.seat_id, SeatState.FREE)
                if hold.active(now):
                    states[seat.seat_id] = SeatState.HELD
        for booking in self._bookings.values():
            for ticket in booking.tickets:
                states.setdefault(ticket.seat.seat_id, SeatState.FREE)
                if booking.state is BookingState.CONFIRMED and ticket.valid:
                    states[ticket.seat.seat_id] = SeatState.SOLD
        if self._offer is not None:
            for offered in self._offer.seats:
                states.setdefault(offered.id, SeatState.HELD if offered.id in self._offer.taken else SeatState.FREE)
        return states

    # ------------------------------------------------------------ changing

    def _record(self, write: InventoryWrite, seats: Iterable[uuid.UUID], state: SeatState) -> None:
        self.writes.append(write)
        for seat_id in seats:
            # A seat whose claim ends shows as the seat map shows an unclaimed seat.
            if state is SeatState.FREE and not self._in_service.get(seat_id, True):
                self.changes.append(SeatChange(seat_id, SeatState.OUT_OF_SERVICE))
            else:
                self.changes.append(SeatChange(seat_id, state))

    def _put_hold(self, hold: Hold) -> Hold:
        self._holds[hold.id] = hold
        return hold

    def expire(self, now: datetime) -> int:
        """Ends the loaded holds that have lapsed (EXPIRED) and frees their seats; returns how many."""
        lapsed = [h for h in self._holds.values() if h.state is HoldState.ACTIVE and not h.active(now)]
        for hold in lapsed:
            ended = self._put_hold(replace(hold, state=HoldState.EXPIRED))
            self._record(HoldEnded(ended, now), (s.seat_id for s in hold.seats), SeatState.FREE)
        return len(lapsed)

    def expire_lapsed(self, now: datetime) -> None:
        """Ends every hold of the showtime that has lapsed by ``now``, loaded or not, in one bulk
        change (the sweeper's: many showtimes' holds, none of them loaded one by one). The seats
        it frees are announced by the storage, which finds them as it writes the change; a
        loaded lapsed hold is shown EXPIRED here too. Recorded alone: a unit of work that
        expires in bulk changes nothing else."""
        assert not self.writes, "a bulk expiry is the only change of its inventory"
        expiry = LapsedHoldsExpired(now)
        for hold in list(self._holds.values()):
            if expiry.ends(hold):
                self._put_hold(replace(hold, state=HoldState.EXPIRED))
        self.writes.append(expiry)

    def hold_seats(self, seat_ids: Sequence[uuid.UUID], rules: BookingRules, now: datetime) -> Hold:
        """Holds these seats (and the free companion seat beside each wheelchair space) for the
        customer of the offer this inventory was loaded with."""
        offer = self._open_offer(now, rules)
        by_id = {seat.id: seat for seat in offer.seats}
        violations = Violations()
        for i, seat_id in enumerate(seat_ids):
            seat = by_id.get(seat_id)
            if seat is None:
                violations.add(
                    f"seat_ids[{i}]", "SEAT_NOT_IN_HALL", f"seat {seat_id} is not a seat of this showtime's hall"
                )
            elif not seat.in_service:
                violations.add(f"seat_ids[{i}]", "SEAT_OUT_OF_SERVICE", f"seat {seat.label} is out of service")
        violations.raise_if_any()
        if not offer.staff:
            cooling = cooling_seats(dict(offer.recently_ended), rules, now)
            check_cooldown(seat_ids, cooling, {s.id: s.label for s in offer.seats}, now)
        requested = [by_id[seat_id] for seat_id in seat_ids]
        wheelchair_rows = {s.row_label for s in requested if s.kind is SeatKind.WHEELCHAIR}
        row_seats = [s for s in offer.seats if s.row_label in wheelchair_rows]
        clash = {str(s.id): s.label for s in requested if s.id in offer.taken}
        if clash:
            raise SeatAlreadyTaken(clash)
        return self._new_hold(offer, with_companions(requested, row_seats, offer.taken), rules, now)

    def hold_best_available(self, count: int, kind: SeatKind, rules: BookingRules, now: datetime) -> Hold:
        """Holds the best block of ``count`` adjacent free seats of ``kind`` (wheelchair spaces
        each with their companion seat)."""
        offer = self._open_offer(now, rules)
        # Seats the customer held until moments ago are not offered to them again yet.
        cooling = frozenset() if offer.staff else frozenset(cooling_seats(dict(offer.recently_ended), rules, now))
        block = best_available(offer.seats, offer.taken | cooling, count, kind)
        if block is None:
            raise NoAdjacentSeats(
                f"no {count} adjacent free {kind.lower()} seats", subject=f"showtimes/{self.showtime_id}"
            )
        return self._new_hold(offer, block, rules, now)

    def _open_offer(self, now: datetime, rules: BookingRules) -> HoldOffer:
        assert self._offer is not None, "load the inventory with a NewHold to hold seats"
        showtime = check_sellable(self.showtime, self.showtime_id, now)
        if not self._offer.staff:
            check_on_sale(showtime, rules.online_sales_close, now, at_counter=False)
        if self._offer.active_holds >= rules.max_active_holds:
            raise TooManyActiveHolds(f"at most {rules.max_active_holds} active holds per customer")
        if not self._offer.staff:
            check_hold_rate(self._offer.recent_holds, rules, now)
        return self._offer

    def _new_hold(self, offer: HoldOffer, seats: Sequence[Seat], rules: BookingRules, now: datetime) -> Hold:
        if len(seats) > rules.max_seats_per_hold:
            raise TooManySeats(f"at most {rules.max_seats_per_hold} seats per hold, companion seats included")
        if not offer.staff:
            check_showtime_share(offer.seats_of_customer, len(seats), rules)
        showtime = self.showtime
        assert showtime is not None
        # Prices are copied from the showtime now: later price changes do not touch this claim.
        unpriced = sorted({s.kind for s in seats} - set(showtime.prices))
        if unpriced:
            raise ShowtimePriceMissing(
                f"showtime {showtime.id} has no price for seat kind {', '.join(unpriced)}",
                subject=f"showtimes/{showtime.id}",
            )
        claimed = tuple(ClaimedSeat(s.id, s.row_label, s.number, s.kind, showtime.prices[s.kind]) for s in seats)
        # A hold is paid by card or at the counter: refused at once if no card payment could take it.
        check_card_amount(total(claimed), f"showtimes/{showtime.id}")
        self.expire(now)
        hold = self._put_hold(
            Hold(
                new_id(),
                showtime.id,
                offer.customer_id,
                claimed,
                HoldState.ACTIVE,
                now + rules.hold_ttl,
                0,
                now,
            )
        )
        self._offer = replace(
            offer,
            active_holds=offer.active_holds + 1,
            taken=offer.taken | {s.seat_id for s in claimed},
            recent_holds=(now, *offer.recent_holds),
            seats_of_customer=offer.seats_of_customer + len(claimed),
        )
        self._record(HoldAdded(hold), (s.seat_id for s in claimed), SeatState.HELD)
        return hold

    def _active(self, hold_id: uuid.UUID, now: datetime) -> Hold:
        hold = self.hold_of(hold_id)
        if not hold.active(now):
            raise HoldNotActive(f"the hold is {hold.shown_state(now).lower()}", subject=f"holds/{hold.id}")
        return hold

    def extend(self, hold_id: uuid.UUID, rules: BookingRules, now: datetime) -> Hold:
        hold = self._active(hold_id, now)
        if hold.extensions_used >= rules.max_extensions:
            raise HoldExtensionLimit(f"a hold can be extended {rules.max_extensions} times")
        extended = self._put_hold(
            replace(hold, expires_at=now + rules.hold_ttl, extensions_used=hold.extensions_used + 1)
        )
        self._record(HoldKept(extended), (), SeatState.HELD)
        return extended

    def release(self, hold_id: uuid.UUID, now: datetime, *, by: uuid.UUID | None = None, reason: str = "") -> Hold:
        """Ends the hold now and frees its seats; a released hold stays as it is. ``reason``
        (with ``by``) records a staff override."""
        hold = self.hold_of(hold_id)
        if hold.state is HoldState.RELEASED:
            return hold
        if hold.state is not HoldState.ACTIVE:
            raise HoldNotActive(f"the hold is {hold.state.lower()}", subject=f"holds/{hold.id}")
        if reason:
            hold = replace(hold, ended_by=by, end_reason=reason)
        released = self._put_hold(replace(hold, state=HoldState.RELEASED))
        self._record(HoldEnded(released, now), (s.seat_id for s in hold.seats), SeatState.FREE)
        return released

    def keep_for_payment(self, hold_id: uuid.UUID, deadline: datetime, now: datetime) -> Hold:
        """The seats stay held while money is in flight, until ``deadline`` at the latest."""
        hold = self._active(hold_id, now)
        kept = self._put_hold(replace(hold, payment_deadline=deadline))
        self._record(HoldKept(kept), (), SeatState.HELD)
        return kept

    def stop_keeping_for_payment(self, hold_id: uuid.UUID, now: datetime) -> Hold:
        """The payment failed: the hold lasts until its own expiry again (its seats are free now
        if that has passed). A hold that is no longer active is left as it is."""
        hold = self.hold_of(hold_id)
        if hold.state is not HoldState.ACTIVE:
            return hold
        was_held = hold.active(now)
        kept = self._put_hold(replace(hold, payment_deadline=None))
        freed = (s.seat_id for s in hold.seats) if was_held and not kept.active(now) else ()
        self._record(HoldKept(kept), freed, SeatState.FREE)
        return kept

    def sell(
        self, hold_id: uuid.UUID, channel: SaleChannel, counter_payment: CounterPayment | None, now: datetime
    ) -> Booking:
        """The hold's seats become the tickets of a new booking (the hold must still be ACTIVE;
        whether it may have lapsed is the caller's rule)."""
        hold = self.hold_of(hold_id)
        if hold.state is not HoldState.ACTIVE:
            raise HoldNotActive(f"the hold is {hold.state.lower()}", subject=f"holds/{hold.id}")
        booking = Booking(
            new_id(),
            hold.showtime_id,
            hold.customer_id,
            hold.id,
            tuple(Ticket(new_id(), seat, True) for seat in hold.seats),
            BookingState.CONFIRMED,
            channel,
            counter_payment,
            RefundState.NONE,
            now,
        )
        converted = self._put_hold(replace(hold, state=HoldState.CONVERTED))
        self._bookings[booking.id] = booking
        self._record(HoldSold(converted, booking), (s.seat_id for s in hold.seats), SeatState.SOLD)
        return booking

    def cancel(self, booking_id: uuid.UUID, now: datetime, *, by: uuid.UUID | None, reason: str) -> Booking:
        """Cancels the booking for refund; its tickets stop being valid and their seats are free.
        A cancelled booking stays as it is."""
        booking = self.booking_of(booking_id)
        if booking.state is BookingState.CANCELLED:
            return booking
        cancelled = replace(
            booking,
            cancelled_by=by,
            state=BookingState.CANCELLED,
            refund_state=RefundState.PENDING,
            cancelled_at=now,
            cancel_reason=reason[:500],
            tickets=tuple(replace(t, valid=False) for t in booking.tickets),
        )
        self._bookings[booking.id] = cancelled
        self._record(BookingCancelled(cancelled), (t.seat.seat_id for t in booking.tickets), SeatState.FREE)
        return cancelled

    def set_seat_service(self, seat: Seat, now: datetime) -> SeatState:
        """The seat of the showtime's hall was taken out of service or put back (loaded with all
        its sales); returns its state as the seat map shows it now. A hold or ticket of the seat
        stands: the seat map keeps showing it held or sold, so watchers are told of a change
        only when the seat is not claimed."""
        self.expire(now)  # a lapsed hold does not hide the change
        self._in_service[seat.id] = seat.in_service
        state = self.seat_states(now)[seat.id]
        claimed = state in (SeatState.HELD, SeatState.SOLD)
        self._record(SeatServiceSet(seat), () if claimed else (seat.id,), state)
        return state

    def claimed_seats(self, now: datetime) -> tuple[int, int]:
        """How many of the loaded seats are held (by a hold that has not lapsed) and sold."""
        held = sum(len(hold.seats) for hold in self._holds.values() if hold.active(now))
        sold = sum(1 for booking in self._bookings.values() for ticket in booking.tickets if ticket.valid)
        return held, sold

    def replace_seats(self, now: datetime) -> None:
        """The showtime is now shown with other seats (it moved to another hall, or its hall's
        layout was regenerated); only while nothing is held or sold (loaded with all its sales),
        since a claim names a seat of the old map. Its next version announces the new layout
        instead of seat changes, so every watcher, live or catching up, takes a fresh seat map."""
        held, sold = self.claimed_seats(now)
        if held or sold:
            raise ShowtimeHasSales(
                f"{held} seat(s) of showtime {self.showtime_id} are held and {sold} sold; "
                "its seats can change once they are released or refunded",
                subject=f"showtimes/{self.showtime_id}",
                metadata={"held_seats": str(held), "sold_seats": str(sold)},
            )
        self.changes.clear()  # the fresh seat map shows every seat as it is now
        self.layout_changed = True

    @property
    def announces(self) -> bool:
        """Whether its next version has something to tell watchers."""
        return bool(self.changes) or self.layout_changed

    def end_sales(self, reason: str, now: datetime) -> None:
        """For a cancelled showtime (loaded with all its sales): every active hold is released,
        every booking cancelled for refund."""
        for hold in list(self._holds.values()):
            if hold.state is HoldState.ACTIVE:
                self.release(hold.id, now)
        for booking in list(self._bookings.values()):
            if booking.state is BookingState.CONFIRMED:
                self.cancel(booking.id, now, by=None, reason=reason)


def one_version(changes: Sequence[SeatChange]) -> tuple[SeatChange, ...]:
    """The changes of one transaction as one version: each seat once, with its last state, in the
    order the seats first changed."""
    last: dict[uuid.UUID, SeatState] = {}
    for change in changes:
        last[change.seat_id] = change.state  # a key keeps its first position
    return tuple(SeatChange(seat_id, state) for seat_id, state in last.items())
