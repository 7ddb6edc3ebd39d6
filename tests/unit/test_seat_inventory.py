"""The seat inventory aggregate: every method that changes a seat announces it, derived from the
aggregate itself (a new method without a scenario here fails the suite)."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cinema_grpc.domain.booking.inventory import HoldOffer, LapsedHoldsExpired, SeatInventory, one_version
from cinema_grpc.domain.booking.model import (
    Booking,
    BookingRules,
    BookingState,
    ClaimedSeat,
    Hold,
    HoldState,
    RefundState,
    SaleChannel,
    SeatChange,
    SeatState,
    Ticket,
)
from cinema_grpc.domain.errors import HoldNotActive, SeatAlreadyTaken, ShowtimeHasSales
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.screening.model import (
    BusyPeriod,
    Hall,
    RowSpec,
    Seat,
    SeatKind,
    SeatLayout,
    Showtime,
    ShowtimeState,
    generate_seats,
)
from tests.fakes import FakeUnitOfWork, Store

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
RULES = BookingRules()
HALL = uuid.uuid4()
LAYOUT = SeatLayout((RowSpec("A", 6), RowSpec("B", 4, overrides={1: SeatKind.WHEELCHAIR, 2: SeatKind.COMPANION})))
SEATS = generate_seats(HALL, LAYOUT)
SHOWTIME = Showtime(
    uuid.uuid4(),
    uuid.uuid4(),
    HALL,
    uuid.uuid4(),
    BusyPeriod.for_screening(NOW + timedelta(days=1), timedelta(hours=2)),
    {kind: Money(900, "EUR") for kind in SeatKind},
    ShowtimeState.SCHEDULED,
    "",
    NOW,
)
ANA, BEN = uuid.uuid4(), uuid.uuid4()


def seat(label: str) -> Seat:
    return next(s for s in SEATS if s.label == label)


def claimed(*labels: str) -> tuple[ClaimedSeat, ...]:
    return tuple(
        ClaimedSeat(seat(x).id, seat(x).row_label, seat(x).number, seat(x).kind, Money(900, "EUR")) for x in labels
    )


def a_hold(*labels: str, expires_in: timedelta = timedelta(minutes=5), deadline: datetime | None = None) -> Hold:
    return Hold(uuid.uuid4(), SHOWTIME.id, ANA, claimed(*labels), HoldState.ACTIVE, NOW + expires_in, 0, NOW, deadline)


def a_booking(*labels: str) -> Booking:
    return Booking(
        uuid.uuid4(),
        SHOWTIME.id,
        BEN,
        uuid.uuid4(),
        tuple(Ticket(uuid.uuid4(), s, True) for s in claimed(*labels)),
        BookingState.CONFIRMED,
        SaleChannel.COUNTER,
        None,
        RefundState.NONE,
        NOW,
    )


def out_of_service(label: str) -> Seat:
    return replace(seat(label), in_service=False, out_of_service_reason="broken armrest")


def for_new_hold(*holds: Hold, taken: tuple[str, ...] = ()) -> SeatInventory:
    offer = HoldOffer(BEN, 0, SEATS, frozenset(seat(x).id for x in taken))
    return SeatInventory(SHOWTIME.id, SHOWTIME, holds=holds, offer=offer)


HELD = a_hold("A1", "A2")
LAPSED = a_hold("A5", expires_in=-timedelta(minutes=1))
PAYING = a_hold("A3", expires_in=-timedelta(minutes=1), deadline=NOW + timedelta(minutes=20))
SOLD = a_booking("A6")

# One scenario per method that changes seats or the holds and bookings behind them.
SCENARIOS: dict[str, Callable[[], tuple[SeatInventory, Callable[[SeatInventory], object]]]] = {
    "hold_seats": lambda: (for_new_hold(LAPSED), lambda inv: inv.hold_seats([seat("B1").id], RULES, NOW)),
    "hold_best_available": lambda: (
        for_new_hold(LAPSED, taken=("A1",)),
        lambda inv: inv.hold_best_available(2, SeatKind.STANDARD, RULES, NOW),
    ),
    "expire": lambda: (SeatInventory(SHOWTIME.id, None, holds=[LAPSED, HELD]), lambda inv: inv.expire(NOW)),
    "extend": lambda: (SeatInventory(SHOWTIME.id, SHOWTIME, holds=[HELD]), lambda inv: inv.extend(HELD.id, RULES, NOW)),
    "release": lambda: (SeatInventory(SHOWTIME.id, SHOWTIME, holds=[HELD]), lambda inv: inv.release(HELD.id, NOW)),
    "keep_for_payment": lambda: (
        SeatInventory(SHOWTIME.id, SHOWTIME, holds=[HELD]),
        lambda inv: inv.keep_for_payment(HELD.id, NOW + timedelta(minutes=30), NOW),
    ),
    "stop_keeping_for_payment": lambda: (
        SeatInventory(SHOWTIME.id, SHOWTIME, holds=[PAYING]),
        lambda inv: inv.stop_keeping_for_payment(PAYING.id, NOW),
    ),
    "sell": lambda: (
        SeatInventory(SHOWTIME.id, SHOWTIME, holds=[HELD]),
        lambda inv: inv.sell(HELD.id, SaleChannel.ONLINE, None, NOW),
    ),
    "cancel": lambda: (
        SeatInventory(SHOWTIME.id, SHOWTIME, bookings=[SOLD]),
        lambda inv: inv.cancel(SOLD.id, NOW, by=None, reason="changed plans"),
    ),
    "end_sales": lambda: (
        SeatInventory(SHOWTIME.id, SHOWTIME, holds=[HELD, PAYING], bookings=[SOLD]),
        lambda inv: inv.end_sales("projector broke", NOW),
    ),
    "set_seat_service": lambda: (
        SeatInventory(SHOWTIME.id, SHOWTIME, holds=[HELD, LAPSED]),
        lambda inv: inv.set_seat_service(out_of_service("A5"), NOW),
    ),
}
READS = {"find_hold", "hold_of", "booking_of", "seat_states", "holds", "bookings", "claimed_seats", "announces"}
# Methods after which watchers take a fresh seat map instead of seat changes.
NEW_SEAT_MAP = {"replace_seats"}
# Changes written in bulk, whose seat changes the storage finds and announces: proven below with
# the in-memory store, and against PostgreSQL in tests/integration/test_hold_statements.py.
BULK = {"expire_lapsed"}


def test_every_method_that_changes_the_inventory_has_a_scenario() -> None:
    public = {name for name, _ in inspect.getmembers(SeatInventory) if not name.startswith("_")}
    assert public - READS - NEW_SEAT_MAP - BULK == set(SCENARIOS)


@pytest.mark.parametrize("method", sorted(SCENARIOS))
def test_every_seat_state_change_is_announced_with_the_state_it_ends_in(method: str) -> None:
    inventory, change = SCENARIOS[method]()
    before = inventory.seat_states(NOW)
    change(inventory)
    after = inventory.seat_states(NOW)
    announced = {c.seat_id: c.state for c in one_version(inventory.changes)}
    changed = {s for s in before.keys() | after.keys() if before.get(s, SeatState.FREE) != after.get(s, SeatState.FREE)}
    assert changed <= announced.keys(), f"{method} changed seats it did not announce"
    assert announced == {s: after.get(s, SeatState.FREE) for s in announced}, f"{method} announced a wrong state"
    assert inventory.writes, f"{method} recorded nothing to write"


def test_a_new_hold_expires_lapsed_holds_first_in_the_same_version() -> None:
    inventory = for_new_hold(LAPSED)
    hold = inventory.hold_seats([seat("A4").id], RULES, NOW)
    assert one_version(inventory.changes) == (
        SeatChange(seat("A5").id, SeatState.FREE),
        SeatChange(seat("A4").id, SeatState.HELD),
    )
    assert inventory.hold_of(LAPSED.id).state is HoldState.EXPIRED
    assert hold.expires_at == NOW + RULES.hold_ttl


def test_a_wheelchair_space_is_held_with_its_companion_seat() -> None:
    hold = for_new_hold().hold_seats([seat("B1").id], RULES, NOW)
    assert [s.label for s in hold.seats] == ["B1", "B2"]


def test_a_taken_seat_refuses_the_whole_hold_and_changes_nothing() -> None:
    inventory = for_new_hold(LAPSED, taken=("A2",))
    with pytest.raises(SeatAlreadyTaken):
        inventory.hold_seats([seat("A1").id, seat("A2").id], RULES, NOW)
    assert inventory.changes == [] and inventory.writes == []


def test_releasing_twice_is_one_release() -> None:
    inventory = SeatInventory(SHOWTIME.id, SHOWTIME, holds=[HELD])
    inventory.release(HELD.id, NOW)
    inventory.release(HELD.id, NOW)
    assert len(inventory.writes) == 1
    with pytest.raises(HoldNotActive):
        inventory.extend(HELD.id, RULES, NOW)


def test_one_version_keeps_each_seat_once_with_its_last_state() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    changes = [SeatChange(a, SeatState.FREE), SeatChange(b, SeatState.HELD), SeatChange(a, SeatState.HELD)]
    assert one_version(changes) == (SeatChange(a, SeatState.HELD), SeatChange(b, SeatState.HELD))


def test_replaced_seats_are_announced_as_a_new_seat_map_without_seat_changes() -> None:
    inventory = SeatInventory(SHOWTIME.id, SHOWTIME, holds=[LAPSED])
    inventory.expire(NOW)
    inventory.replace_seats(NOW)
    assert inventory.layout_changed and inventory.announces
    assert inventory.changes == []  # they named seats of the old map
    assert len(inventory.writes) == 1  # the lapsed hold still ends


@pytest.mark.parametrize("claims", [{"holds": [HELD]}, {"bookings": [SOLD]}])
def test_seats_that_are_held_or_sold_cannot_be_replaced(claims: dict[str, list[object]]) -> None:
    inventory = SeatInventory(SHOWTIME.id, SHOWTIME, **claims)  # type: ignore[arg-type]
    with pytest.raises(ShowtimeHasSales):
        inventory.replace_seats(NOW)
    assert not inventory.announces


def test_a_seat_out_of_service_and_back_is_announced_in_each_state() -> None:
    inventory = SeatInventory(SHOWTIME.id, SHOWTIME)
    assert inventory.set_seat_service(out_of_service("A4"), NOW) is SeatState.OUT_OF_SERVICE
    assert one_version(inventory.changes) == (SeatChange(seat("A4").id, SeatState.OUT_OF_SERVICE),)
    back = SeatInventory(SHOWTIME.id, SHOWTIME)
    assert back.set_seat_service(seat("A4"), NOW) is SeatState.FREE
    assert one_version(back.changes) == (SeatChange(seat("A4").id, SeatState.FREE),)


@pytest.mark.parametrize(
    ("claims", "label", "state"),
    [({"holds": [HELD]}, "A1", SeatState.HELD), ({"bookings": [SOLD]}, "A6", SeatState.SOLD)],
)
def test_a_held_or_sold_seat_out_of_service_keeps_its_claim_and_announces_nothing(
    claims: dict[str, list[object]], label: str, state: SeatState
) -> None:
    inventory = SeatInventory(SHOWTIME.id, SHOWTIME, **claims)  # type: ignore[arg-type]
    assert inventory.set_seat_service(out_of_service(label), NOW) is state
    assert not inventory.announces
    assert inventory.writes  # the change is still the showtime's, written with the hall


def test_a_seat_freed_by_a_lapsed_hold_is_announced_out_of_service_in_the_same_version() -> None:
    inventory = SeatInventory(SHOWTIME.id, SHOWTIME, holds=[LAPSED])
    inventory.set_seat_service(out_of_service("A5"), NOW)
    assert one_version(inventory.changes) == (SeatChange(seat("A5").id, SeatState.OUT_OF_SERVICE),)
    assert inventory.hold_of(LAPSED.id).state is HoldState.EXPIRED


@pytest.mark.parametrize(
    ("claim", "end"),
    [
        (HELD, lambda inv: inv.release(HELD.id, NOW)),
        (LAPSED, lambda inv: inv.expire(NOW)),
        (SOLD, lambda inv: inv.cancel(SOLD.id, NOW, by=None, reason="changed plans")),
    ],
)
def test_a_seat_out_of_service_whose_claim_ends_is_announced_out_of_service(
    claim: Hold | Booking, end: Callable[[SeatInventory], object]
) -> None:
    if isinstance(claim, Hold):
        seat_ids = {s.seat_id for s in claim.seats}
        inventory = SeatInventory(SHOWTIME.id, SHOWTIME, holds=[claim], out_of_service=seat_ids)
    else:
        seat_ids = {t.seat.seat_id for t in claim.tickets}
        inventory = SeatInventory(SHOWTIME.id, SHOWTIME, bookings=[claim], out_of_service=seat_ids)
    end(inventory)
    announced = {c.seat_id: c.state for c in one_version(inventory.changes)}
    assert announced == dict.fromkeys(seat_ids, SeatState.OUT_OF_SERVICE)


def test_a_bulk_expiry_announces_every_seat_it_frees_and_no_other() -> None:
    also_lapsed = a_hold("B3", "B4", expires_in=-timedelta(seconds=1))
    holds = [LAPSED, HELD, PAYING, also_lapsed]
    seats = tuple(replace(s, in_service=False) if s.label == "B4" else s for s in SEATS)
    hall = Hall(HALL, SHOWTIME.cinema_id, "Hall", LAYOUT, seats, NOW, NOW)
    store = Store(showtimes={SHOWTIME.id: SHOWTIME}, halls={HALL: hall}, holds={h.id: h for h in holds})
    out = {seat("B4").id}
    before = SeatInventory(SHOWTIME.id, SHOWTIME, holds=holds, out_of_service=out).seat_states(NOW)

    async def sweep() -> SeatInventory:
        async with FakeUnitOfWork(store) as uow:
            (inventory,) = await uow.inventories.try_lock_lapsed([SHOWTIME.id])
            inventory.expire_lapsed(NOW)
            assert inventory.writes == [LapsedHoldsExpired(NOW)] and inventory.changes == []
            await uow.commit()
        return inventory

    inventory = asyncio.run(sweep())
    after = SeatInventory(SHOWTIME.id, SHOWTIME, holds=store.holds.values(), out_of_service=out).seat_states(NOW)
    ended = [h for h in holds if store.holds[h.id].state is not h.state]
    assert ended == [h for h in holds if LapsedHoldsExpired(NOW).ends(h)] == [LAPSED, also_lapsed]
    (event,) = store.published
    announced = {c.seat_id: c.state for c in event.changes}
    # Every seat of the holds it ended, as an unclaimed seat shows: free, or out of service.
    assert announced == {
        s.seat_id: SeatState.OUT_OF_SERVICE if s.seat_id in out else SeatState.FREE for h in ended for s in h.seats
    }
    changed = {s for s in before.keys() | after.keys() if before.get(s, SeatState.FREE) != after.get(s, SeatState.FREE)}
    assert changed <= announced.keys()
    assert announced == {s: after.get(s, SeatState.FREE) for s in announced}
    assert inventory.changes == list(event.changes) and inventory.version == event.version == 1


def test_a_bulk_expiry_shows_the_loaded_lapsed_holds_expired_and_is_the_inventorys_only_change() -> None:
    inventory = SeatInventory(SHOWTIME.id, SHOWTIME, holds=[LAPSED, HELD, PAYING])
    inventory.expire_lapsed(NOW)
    assert [h.state for h in inventory.holds] == [HoldState.EXPIRED, HoldState.ACTIVE, HoldState.ACTIVE]
    changed = SeatInventory(SHOWTIME.id, SHOWTIME, holds=[HELD])
    changed.release(HELD.id, NOW)
    with pytest.raises(AssertionError):
        changed.expire_lapsed(NOW)
