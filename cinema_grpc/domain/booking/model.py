"""Booking entities and the pure rules about them: holds, tickets, seat states, best seats."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cinema_grpc.domain.money import Money
from cinema_grpc.domain.screening.model import Seat, SeatKind


class HoldState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"
    CONVERTED = "CONVERTED"


class BookingState(enum.StrEnum):
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


class SaleChannel(enum.StrEnum):
    COUNTER = "COUNTER"
    ONLINE = "ONLINE"


class CounterPayment(enum.StrEnum):
    CASH = "CASH"
    CARD_PRESENT = "CARD_PRESENT"


class RefundState(enum.StrEnum):
    NONE = "NONE"
    PENDING = "PENDING"
    REFUNDED = "REFUNDED"


class SeatState(enum.StrEnum):
    FREE = "FREE"
    HELD = "HELD"
    SOLD = "SOLD"
    OUT_OF_SERVICE = "OUT_OF_SERVICE"


@dataclass(frozen=True)
class BookingRules:
    """The configurable limits of selling."""

    hold_ttl: timedelta = timedelta(minutes=10)
    max_extensions: int = 2
    max_seats_per_hold: int = 10
    max_active_holds: int = 3
    # Customers may cancel until this long before the showtime; staff until it starts.
    customer_cancel_cutoff: timedelta = timedelta(hours=2)
    # Online sales (customers' holds, extensions and card payments) close this long before the
    # showtime starts; the box office sells until the start.
    online_sales_close: timedelta = timedelta(0)
    # After a customer's hold of a seat ended (released or expired), the same customer may not
    # hold that seat again for this long (others may at once).
    rehold_cooldown: timedelta = timedelta(minutes=5)
    # Holds one customer may start per hold_rate_window (across showtimes).
    max_holds_per_window: int = 20
    hold_rate_window: timedelta = timedelta(hours=1)
    # Seats one customer may have held or bought at once for one showtime.
    max_seats_per_showtime: int = 10


@dataclass(frozen=True)
class ClaimedSeat:
    """A seat with the price frozen when it was claimed."""

    seat_id: uuid.UUID
    row_label: str
    number: int
    kind: SeatKind
    price: Money

    @property
    def label(self) -> str:
        return f"{self.row_label}{self.number}"


def total(seats: Iterable[ClaimedSeat]) -> Money:
    prices = [seat.price for seat in seats]
    result = Money(0, prices[0].currency)
    for price in prices:
        result = result + price
    return result


@dataclass(frozen=True)
class Hold:
    id: uuid.UUID
    showtime_id: uuid.UUID
    customer_id: uuid.UUID
    seats: tuple[ClaimedSeat, ...]
    state: HoldState
    expires_at: datetime
    extensions_used: int
    created_at: datetime
    # While a card payment is in flight the hold lives at least until then (a hard limit).
    payment_deadline: datetime | None = None
    # A staff member who ended it on the customer's behalf, and why.
    ended_by: uuid.UUID | None = None
    end_reason: str = ""
    # The availability version in which the answer that returns this hold announced a change
    # of its seats (0: that answer changed none).
    seat_map_version: int = 0

    @property
    def total(self) -> Money:
        return total(self.seats)

    @property
    def kept_until(self) -> datetime:
        if self.payment_deadline is not None and self.payment_deadline > self.expires_at:
            return self.payment_deadline
        return self.expires_at

    def active(self, now: datetime) -> bool:
        return self.state is HoldState.ACTIVE and now < self.kept_until

    def shown_state(self, now: datetime) -> HoldState:
        """EXPIRED as soon as the time is up, even before the sweeper has run."""
        if self.state is HoldState.ACTIVE and now >= self.kept_until:
            return HoldState.EXPIRED
        return self.state


@dataclass(frozen=True)
class Ticket:
    id: uuid.UUID
    seat: ClaimedSeat
    valid: bool


@dataclass(frozen=True)
class Booking:
    id: uuid.UUID
    showtime_id: uuid.UUID
    customer_id: uuid.UUID
    hold_id: uuid.UUID
    tickets: tuple[Ticket, ...]
    state: BookingState
    channel: SaleChannel
    counter_payment: CounterPayment | None
    refund_state: RefundState
    created_at: datetime
    cancelled_at: datetime | None = None
    cancel_reason: str = ""
    cancelled_by: uuid.UUID | None = None

    @property
    def total(self) -> Money:
        return total(ticket.seat for ticket in self.tickets)

    def with_refund(self, refund_state: RefundState) -> Booking:
        return replace(self, refund_state=refund_state)


@dataclass(frozen=True)
class SeatChange:
    seat_id: uuid.UUID
    state: SeatState


@dataclass(frozen=True)
class SeatEvent:
    """The seat changes of one version of a showtime's availability."""

    showtime_id: uuid.UUID
    version: int
    changes: tuple[SeatChange, ...]
    # When the version was recorded (the time of the transaction that made it).
    recorded_at: datetime | None = None
    # The showtime's seats are other seats from this version on (it moved to another hall, or
    # its hall's layout was regenerated): a watcher drops its seat map and takes a fresh one.
    # Such an event lists no seat changes.
    layout_changed: bool = False


@dataclass(frozen=True)
class SeatStatus:
    seat: Seat
    state: SeatState
    holder_id: uuid.UUID | None
    hold_id: uuid.UUID | None = None


@dataclass(frozen=True)
class SeatMap:
    showtime_id: uuid.UUID
    version: int
    seats: tuple[SeatStatus, ...]


@dataclass(frozen=True)
class ActiveClaim:
    seat_id: uuid.UUID
    state: SeatState  # HELD or SOLD
    holder_id: uuid.UUID
    hold_id: uuid.UUID


def seat_states(seats: Sequence[Seat], claims: Collection[ActiveClaim]) -> tuple[SeatStatus, ...]:
    by_seat = {claim.seat_id: claim for claim in claims}
    statuses = []
    for seat in seats:
        claim = by_seat.get(seat.id)
        if claim is not None:
            statuses.append(SeatStatus(seat, claim.state, claim.holder_id, claim.hold_id))
        elif not seat.in_service:
            statuses.append(SeatStatus(seat, SeatState.OUT_OF_SERVICE, None))
        else:
            statuses.append(SeatStatus(seat, SeatState.FREE, None))
    return tuple(statuses)


# ---------------------------------------------------------------- best available


def _rows(seats: Sequence[Seat]) -> list[list[Seat]]:
    rows: dict[str, list[Seat]] = {}
    for seat in seats:  # seats come in layout order: row by row, column by column
        rows.setdefault(seat.row_label, []).append(seat)
    return list(rows.values())


def _row_rank(index: int, count: int) -> float:
    # The best rows are about two thirds back from the screen.
    return abs(index - (count - 1) * 0.65)


def _runs(row: Sequence[Seat], usable: set[uuid.UUID]) -> list[list[Seat]]:
    """Maximal runs of usable seats in neighbouring columns (a gap column breaks a run)."""
    runs: list[list[Seat]] = []
    current: list[Seat] = []
    for seat in row:
        if seat.id in usable and current and seat.column == current[-1].column + 1:
            current.append(seat)
        else:
            if current:
                runs.append(current)
            current = [seat] if seat.id in usable else []
    if current:
        runs.append(current)
    return runs


def best_available(
    seats: Sequence[Seat], taken: Collection[uuid.UUID], count: int, kind: SeatKind
) -> list[Seat] | None:
    """The best block of ``count`` adjacent free seats of ``kind``, or None.

    Blocks that would strand a single free seat are chosen only when no other block exists;
    then better rows, then blocks nearer the middle of their row.
    """
    if kind is SeatKind.WHEELCHAIR:
        return _wheelchair_spaces(seats, taken, count)
    rows = _rows(seats)
    free = {s.id for s in seats if s.in_service and s.id not in taken and s.kind is kind}
    best: tuple[tuple[bool, float, float], list[Seat]] | None = None
    for index, row in enumerate(rows):
        middle = (row[0].column + row[-1].column) / 2
        for run in _runs(row, free):
            for start in range(len(run) - count + 1):
                block = run[start : start + count]
                strands = start == 1 or len(run) - (start + count) == 1
                centre = (block[0].column + block[-1].column) / 2
                score = (strands, _row_rank(index, len(rows)), abs(centre - middle))
                if best is None or score < best[0]:
                    best = (score, block)
    return best[1] if best else None


def companion_of(seat: Seat, row: Sequence[Seat], usable: Collection[uuid.UUID]) -> Seat | None:
    """The usable companion seat right beside a wheelchair space, if any."""
    for other in row:
        if other.kind is SeatKind.COMPANION and abs(other.column - seat.column) == 1 and other.id in usable:
            return other
    return None


def _wheelchair_spaces(seats: Sequence[Seat], taken: Collection[uuid.UUID], count: int) -> list[Seat] | None:
    rows = _rows(seats)
    usable = {s.id for s in seats if s.in_service and s.id not in taken}
    spaces = [
        (_row_rank(index, len(rows)), seat.column, seat, row)
        for index, row in enumerate(rows)
        for seat in row
        if seat.kind is SeatKind.WHEELCHAIR and seat.id in usable
    ]
    chosen: list[Seat] = []
    for _, _, seat, row in sorted(spaces, key=lambda space: (space[0], space[1])):
        # A companion seat serves one wheelchair space only.
        companion = companion_of(seat, row, usable)
        if companion is not None:
            chosen += [seat, companion]
            usable.discard(companion.id)
            if len(chosen) == 2 * count:
                return chosen
    return None


def with_companions(requested: Sequence[Seat], hall_seats: Sequence[Seat], taken: Collection[uuid.UUID]) -> list[Seat]:
    """The requested seats plus the free companion seat beside each requested wheelchair space
    (``hall_seats`` must hold at least the rows of the requested wheelchair spaces)."""
    chosen = list(requested)
    ids = {s.id for s in chosen}
    usable = {s.id for s in hall_seats if s.in_service and s.id not in taken} - ids
    rows = {row[0].row_label: row for row in _rows(hall_seats)}
    for seat in requested:
        if seat.kind is SeatKind.WHEELCHAIR and seat.row_label in rows:
            companion = companion_of(seat, rows[seat.row_label], usable)
            if companion is not None:
                chosen.append(companion)
                usable.discard(companion.id)
    return chosen
