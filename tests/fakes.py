"""An in-memory unit of work for use-case tests without PostgreSQL.

It keeps what the booking use cases read and write (showtimes, halls, holds, bookings, seat
versions and events, the request log) and applies an inventory's writes only when the unit of
work commits, as the database would: a unit of work left without commit changes nothing.
Locks are not modelled (one task at a time); the real-PostgreSQL tests prove those.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from cinema_grpc.domain.booking.inventory import (
    BookingCancelled,
    HoldAdded,
    HoldEnded,
    HoldKept,
    HoldOffer,
    HoldSold,
    LapsedHoldsExpired,
    NewHold,
    PlainHold,
    SeatInventory,
    one_version,
)
from cinema_grpc.domain.booking.model import (
    ActiveClaim,
    Booking,
    Hold,
    HoldState,
    SeatChange,
    SeatEvent,
    SeatMap,
    SeatState,
    seat_states,
)
from cinema_grpc.domain.errors import SeatAlreadyTaken, StaleDecision
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.pagination import Page, PageRequest
from cinema_grpc.domain.ports import HoldFilter, RecordedRequest
from cinema_grpc.domain.screening.model import (
    BusyPeriod,
    Hall,
    RowSpec,
    SeatKind,
    SeatLayout,
    Showtime,
    ShowtimeState,
    generate_seats,
)


class FakeClock:
    def __init__(self, now: datetime | None = None) -> None:
        self.current = now or datetime(2030, 6, 1, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


@dataclass
class Store:
    """What the database would hold."""

    showtimes: dict[uuid.UUID, Showtime] = field(default_factory=dict)
    halls: dict[uuid.UUID, Hall] = field(default_factory=dict)
    holds: dict[uuid.UUID, Hold] = field(default_factory=dict)
    bookings: dict[uuid.UUID, Booking] = field(default_factory=dict)
    versions: dict[uuid.UUID, int] = field(default_factory=dict)
    events: dict[uuid.UUID, list[SeatEvent]] = field(default_factory=dict)
    requests: dict[tuple[str, str], RecordedRequest] = field(default_factory=dict)
    published: list[SeatEvent] = field(default_factory=list)
    # This many new holds decided without locks find, when written, that the seats changed.
    stale_decisions: int = 0
    new_holds: list[NewHold] = field(default_factory=list)

    def add_showtime(
        self, *rows: RowSpec, starts_at: datetime, prices: dict[SeatKind, Money] | None = None
    ) -> Showtime:
        hall_id = uuid.uuid4()
        layout = SeatLayout(rows)
        hall = Hall(hall_id, uuid.uuid4(), "Hall", layout, generate_seats(hall_id, layout), starts_at, starts_at)
        self.halls[hall_id] = hall
        showtime = Showtime(
            uuid.uuid4(),
            hall.cinema_id,
            hall_id,
            uuid.uuid4(),
            BusyPeriod.for_screening(starts_at, timedelta(hours=2)),
            prices if prices is not None else {kind: Money(1000, "EUR") for kind in SeatKind},
            ShowtimeState.SCHEDULED,
            "",
            starts_at,
        )
        self.showtimes[showtime.id] = showtime
        return showtime

    def claims(self, showtime_id: uuid.UUID, now: datetime) -> list[ActiveClaim]:
        """Seats sold, or held by a hold that has not lapsed."""
        found = [
            ActiveClaim(seat.seat_id, SeatState.HELD, hold.customer_id, hold.id)
            for hold in self.holds.values()
            if hold.showtime_id == showtime_id and hold.active(now)
            for seat in hold.seats
        ]
        found += [
            ActiveClaim(ticket.seat.seat_id, SeatState.SOLD, booking.customer_id, booking.hold_id)
            for booking in self.bookings.values()
            if booking.showtime_id == showtime_id and booking.state.value == "CONFIRMED"
            for ticket in booking.tickets
            if ticket.valid
        ]
        return found


class FakeInventories:
    def __init__(self, store: Store) -> None:
        self._store = store
        self.seen: list[SeatInventory] = []

    async def get_locked(
        self,
        showtime_id: uuid.UUID,
        now: datetime,
        *,
        holds: Collection[uuid.UUID] = (),
        bookings: Collection[uuid.UUID] = (),
        new_hold: NewHold | None = None,
        all_sales: bool = False,
    ) -> SeatInventory:
        store = self._store
        showtime = store.showtimes.get(showtime_id)
        mine = [h for h in store.holds.values() if h.showtime_id == showtime_id]
        offer = None
        if new_hold is not None:
            store.new_holds.append(new_hold)
            loaded = [h for h in mine if h.state is HoldState.ACTIVE and not h.active(now)]
            offer = self._offer(showtime, new_hold, now)
        else:
            loaded = [h for h in mine if h.id in holds or (all_sales and h.state is HoldState.ACTIVE)]
        sales = [
            b
            for b in store.bookings.values()
            if b.showtime_id == showtime_id and (b.id in bookings or (all_sales and b.state.value == "CONFIRMED"))
        ]
        inventory = SeatInventory(showtime_id, showtime, holds=loaded, bookings=sales, offer=offer)
        self.seen.append(inventory)
        return inventory

    def _offer(self, showtime: Showtime | None, new_hold: NewHold, now: datetime) -> HoldOffer:
        store = self._store
        active = sum(1 for h in store.holds.values() if h.customer_id == new_hold.customer_id and h.active(now))
        if showtime is None:
            return HoldOffer(new_hold.customer_id, active, (), frozenset())
        seats = store.halls[showtime.hall_id].seats
        if new_hold.seat_ids is not None:
            asked = [s for s in seats if s.id in new_hold.seat_ids]
            rows = {s.row_label for s in asked if s.kind is SeatKind.WHEELCHAIR}
            seats = tuple(s for s in seats if s.id in new_hold.seat_ids or s.row_label in rows)
        claimed = {claim.seat_id for claim in store.claims(showtime.id, now)}
        return HoldOffer(new_hold.customer_id, active, seats, frozenset(s.id for s in seats if s.id in claimed))

    async def try_lock_lapsed(self, showtime_ids: Collection[uuid.UUID]) -> list[SeatInventory]:
        found = [SeatInventory(showtime_id, None) for showtime_id in showtime_ids]
        self.seen += found
        return found

    def _out_of_service(self, showtime_id: uuid.UUID) -> set[uuid.UUID]:
        showtime = self._store.showtimes.get(showtime_id)
        hall = self._store.halls.get(showtime.hall_id) if showtime is not None else None
        return {seat.id for seat in hall.seats if not seat.in_service} if hall is not None else set()

    def flush(self) -> list[SeatEvent]:
        """All or nothing, as a transaction: a refused claim leaves the store as it was."""
        before = (dict(self._store.holds), dict(self._store.bookings))
        try:
            return self._apply()
        except (SeatAlreadyTaken, StaleDecision):
            self._store.holds, self._store.bookings = before
            raise

    def _apply(self) -> list[SeatEvent]:
        store = self._store
        if store.stale_decisions and store.new_holds and not store.new_holds[-1].lock_first:
            store.stale_decisions -= 1
            raise StaleDecision("the seats changed while the hold was decided; decide again")
        events = []
        for inventory in self.seen:
            freed = []  # by a bulk expiry: announced as the database announces them
            for write in inventory.writes:
                match write:
                    case HoldAdded(hold):
                        taken = {c.seat_id for c in store.claims(hold.showtime_id, hold.created_at)}
                        clash = {str(s.seat_id): s.label for s in hold.seats if s.seat_id in taken}
                        if clash:  # the unique index on active claims
                            raise SeatAlreadyTaken(clash)
                        store.holds[hold.id] = hold
                    case HoldEnded(hold) | HoldKept(hold):
                        store.holds[hold.id] = hold
                    case HoldSold(hold, booking):
                        store.holds[hold.id] = hold
                        store.bookings[booking.id] = booking
                    case BookingCancelled(booking):
                        store.bookings[booking.id] = booking
                    case LapsedHoldsExpired():
                        out = self._out_of_service(inventory.showtime_id)
                        for hold in [h for h in store.holds.values() if h.showtime_id == inventory.showtime_id]:
                            if write.ends(hold):
                                store.holds[hold.id] = replace(hold, state=HoldState.EXPIRED)
                                freed += [
                                    SeatChange(
                                        s.seat_id, SeatState.OUT_OF_SERVICE if s.seat_id in out else SeatState.FREE
                                    )
                                    for s in hold.seats
                                ]
            if freed:
                inventory.changes = freed
            if inventory.announces:
                version = store.versions.get(inventory.showtime_id, 0) + 1
                store.versions[inventory.showtime_id] = version
                event = SeatEvent(
                    inventory.showtime_id,
                    version,
                    one_version(inventory.changes),
                    layout_changed=inventory.layout_changed,
                )
                inventory.version = version
                store.events.setdefault(inventory.showtime_id, []).append(event)
                events.append(event)
        self.seen = []
        return events


class FakeBookingReads:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def get_hold(self, hold_id: uuid.UUID) -> Hold | None:
        return self._store.holds.get(hold_id)

    async def get_booking(self, booking_id: uuid.UUID) -> Booking | None:
        return self._store.bookings.get(booking_id)

    async def list_active_holds(self, hold_filter: HoldFilter, now: datetime, page: PageRequest) -> Page[Hold]:
        holds = sorted(
            (
                h
                for h in self._store.holds.values()
                if h.active(now)
                and hold_filter.customer_id in (None, h.customer_id)
                and hold_filter.showtime_id in (None, h.showtime_id)
            ),
            key=lambda h: (h.created_at, h.id),
            reverse=True,
        )
        if page.after is not None:
            holds = [h for h in holds if (h.created_at.isoformat(), str(h.id)) < page.after]
        return Page.of(holds[: page.size + 1], page, lambda h: (h.created_at.isoformat(), str(h.id)))

    async def mark_refunded(self, booking_id: uuid.UUID) -> None:
        booking = self._store.bookings[booking_id]
        if booking.state.value == "CANCELLED":
            self._store.bookings[booking_id] = replace(booking, refund_state=type(booking.refund_state).REFUNDED)

    async def showtimes_with_expired_holds(self, now: datetime, limit: int) -> list[uuid.UUID]:
        due = {h.showtime_id for h in self._store.holds.values() if h.state is HoldState.ACTIVE and not h.active(now)}
        return sorted(due)[:limit]

    async def current_version(self, showtime_id: uuid.UUID) -> int:
        return self._store.versions.get(showtime_id, 0)

    async def seat_map(self, showtime_id: uuid.UUID, now: datetime) -> SeatMap | None:
        showtime = self._store.showtimes.get(showtime_id)
        if showtime is None:
            return None
        seats = self._store.halls[showtime.hall_id].seats
        version = self._store.versions.get(showtime_id, 0)
        return SeatMap(showtime_id, version, seat_states(seats, self._store.claims(showtime_id, now)))

    async def events_since(self, showtime_id: uuid.UUID, version: int) -> list[SeatEvent] | None:
        if version > self._store.versions.get(showtime_id, 0):
            return None
        return [e for e in self._store.events.get(showtime_id, []) if e.version > version]


class FakeShowtimes:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, showtime_id: uuid.UUID, *, for_update: bool = False) -> Showtime | None:
        return self._store.showtimes.get(showtime_id)


class FakeHalls:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, hall_id: uuid.UUID, *, for_update: bool = False) -> Hall | None:
        return self._store.halls.get(hall_id)


class FakeRequestLog:
    def __init__(self, store: Store) -> None:
        self._store = store
        self.recorded: dict[tuple[str, str], RecordedRequest] = {}

    async def lock_and_find(self, scope: str, request_id: str) -> RecordedRequest | None:
        return self._store.requests.get((scope, request_id))

    async def record(self, scope: str, request_id: str, fingerprint: str, resource_id: uuid.UUID) -> None:
        self.recorded[(scope, request_id)] = RecordedRequest(fingerprint, resource_id)


class FakeUnitOfWork:
    """The booking side of ``UnitOfWork`` in memory: commit applies what the inventories it
    loaded wrote, records their changes as versions and publishes them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.commits = 0

    async def __aenter__(self) -> Self:
        self.inventories = FakeInventories(self.store)
        self.booking = FakeBookingReads(self.store)
        self.showtimes = FakeShowtimes(self.store)
        self.halls = FakeHalls(self.store)
        self.requests = FakeRequestLog(self.store)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.inventories.seen = []

    async def commit(self) -> None:
        events = self.inventories.flush()
        self.store.requests.update(self.requests.recorded)
        self.commits += 1
        self.store.published += events

    async def snapshot(self) -> None:
        pass

    async def place_plain_hold(self, plain: PlainHold) -> Hold | None:
        # No one-statement path in memory: every hold is decided by the inventory.
        return None
