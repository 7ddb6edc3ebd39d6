"""Booking use cases on the in-memory unit of work: the rules, the idempotency and the events,
without PostgreSQL (the integration tests prove the same against the database)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

import pytest

from cinema_grpc.domain.access import Caller, PermissionDenied, Role
from cinema_grpc.domain.booking import use_cases as uc
from cinema_grpc.domain.booking.model import BookingRules, BookingState, CounterPayment, HoldState, SeatState
from cinema_grpc.domain.errors import (
    CancellationClosed,
    HoldExtensionLimit,
    HoldNotActive,
    HoldNotFound,
    RequestIdReused,
    SeatAlreadyTaken,
    TooManyActiveHolds,
)
from cinema_grpc.domain.idempotency import RequestKey
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.pagination import page_request
from cinema_grpc.domain.ports import HoldFilter
from cinema_grpc.domain.screening.model import RowSpec, SeatKind, Showtime
from tests.fakes import FakeClock, FakeUnitOfWork, Store

T = TypeVar("T")
RULES = BookingRules()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class Cinema:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = Store()
        self.showtime = self.store.add_showtime(
            RowSpec("A", 8),
            RowSpec("B", 4, overrides={1: SeatKind.WHEELCHAIR, 2: SeatKind.COMPANION}),
            starts_at=self.clock.now() + timedelta(days=2),
        )
        self.ana = Caller(uuid.uuid4(), frozenset({Role.CUSTOMER}))
        self.ben = Caller(uuid.uuid4(), frozenset({Role.CUSTOMER}))
        self.clerk = Caller(uuid.uuid4(), frozenset({Role.STAFF}))

    def uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self.store)

    def seat(self, label: str, showtime: Showtime | None = None) -> uuid.UUID:
        hall = self.store.halls[(showtime or self.showtime).hall_id]
        return next(s.id for s in hall.seats if s.label == label)

    def hold(self, caller: Caller, *labels: str, request: RequestKey | None = None) -> uc.Hold:
        cmd = uc.HoldSeats(self.showtime.id, tuple(self.seat(x) for x in labels), request)
        return run(uc.hold_seats(self.uow(), self.clock, RULES, caller, cmd))

    def states(self) -> dict[str, SeatState]:
        """The seat map as a watcher that applied every published event sees it."""
        hall = self.store.halls[self.showtime.hall_id]
        by_id = {s.id: s.label for s in hall.seats}
        seen = {label: SeatState.FREE for label in by_id.values()}
        for event in self.store.published:
            for change in event.changes:
                seen[by_id[change.seat_id]] = change.state
        return {label: state for label, state in seen.items() if state is not SeatState.FREE}


@pytest.fixture
def cinema() -> Cinema:
    return Cinema()


def test_a_hold_claims_its_seats_and_announces_them_once_committed(cinema: Cinema) -> None:
    hold = cinema.hold(cinema.ana, "A3", "A4")
    assert [s.label for s in hold.seats] == ["A3", "A4"]
    assert hold.total == Money(2000, "EUR")
    assert cinema.states() == {"A3": SeatState.HELD, "A4": SeatState.HELD}
    assert [e.version for e in cinema.store.published] == [1]


def test_two_customers_cannot_hold_the_same_seat(cinema: Cinema) -> None:
    cinema.hold(cinema.ana, "A3")
    with pytest.raises(SeatAlreadyTaken):
        cinema.hold(cinema.ben, "A2", "A3")
    assert cinema.states() == {"A3": SeatState.HELD}
    assert len(cinema.store.published) == 1


def test_a_wheelchair_space_brings_its_companion_seat(cinema: Cinema) -> None:
    hold = cinema.hold(cinema.ana, "B1")
    assert [s.label for s in hold.seats] == ["B1", "B2"]


def test_the_best_available_block_is_held(cinema: Cinema) -> None:
    cmd = uc.HoldBestAvailable(cinema.showtime.id, 2, SeatKind.STANDARD)
    hold = run(uc.hold_seats(cinema.uow(), cinema.clock, RULES, cinema.ana, cmd))
    assert [s.label for s in hold.seats] == ["B3", "B4"]  # two thirds back


def test_a_retry_with_the_same_request_id_returns_the_first_hold(cinema: Cinema) -> None:
    key = RequestKey("r-1", "fingerprint", str(cinema.ana.user_id))
    first = cinema.hold(cinema.ana, "A1", request=key)
    again = cinema.hold(cinema.ana, "A1", request=key)
    assert again.id == first.id
    assert len(cinema.store.holds) == 1
    with pytest.raises(RequestIdReused):
        cinema.hold(cinema.ana, "A2", request=replace(key, fingerprint="other"))


def test_prices_are_frozen_when_the_seat_is_held(cinema: Cinema) -> None:
    hold = cinema.hold(cinema.ana, "A1")
    cinema.store.showtimes[cinema.showtime.id] = replace(cinema.showtime, prices={SeatKind.STANDARD: Money(5, "EUR")})
    sold = run(
        uc.sell_hold_at_counter(
            cinema.uow(), cinema.clock, cinema.clerk, uc.SellAtCounter(hold.id, CounterPayment.CASH)
        )
    )
    assert sold.total == Money(1000, "EUR")


def test_a_customer_has_at_most_three_active_holds(cinema: Cinema) -> None:
    for label in ("A1", "A2", "A3"):
        cinema.hold(cinema.ana, label)
    with pytest.raises(TooManyActiveHolds):
        cinema.hold(cinema.ana, "A4")


def test_a_lapsed_hold_is_expired_in_the_version_of_the_next_hold(cinema: Cinema) -> None:
    lapsed = cinema.hold(cinema.ana, "A1")
    cinema.clock.advance(RULES.hold_ttl + timedelta(seconds=1))
    cinema.hold(cinema.ben, "A1", "A2")
    assert cinema.store.holds[lapsed.id].state is HoldState.EXPIRED
    assert [len(e.changes) for e in cinema.store.published] == [1, 2]
    assert cinema.states() == {"A1": SeatState.HELD, "A2": SeatState.HELD}


def test_releasing_frees_the_seats_and_another_customer_cannot_release(cinema: Cinema) -> None:
    hold = cinema.hold(cinema.ana, "A1")
    with pytest.raises(HoldNotFound):
        run(uc.release_hold(cinema.uow(), cinema.clock, cinema.ben, hold.id))
    released = run(uc.release_hold(cinema.uow(), cinema.clock, cinema.ana, hold.id))
    again = run(uc.release_hold(cinema.uow(), cinema.clock, cinema.ana, hold.id))
    assert released.state is again.state is HoldState.RELEASED
    assert cinema.states() == {}
    assert len(cinema.store.published) == 2  # held, freed: releasing twice announces once


def test_a_hold_is_extended_at_most_twice(cinema: Cinema) -> None:
    hold = cinema.hold(cinema.ana, "A1")
    for _ in range(RULES.max_extensions):
        cinema.clock.advance(timedelta(minutes=1))
        extended = run(uc.extend_hold(cinema.uow(), cinema.clock, RULES, cinema.ana, hold.id))
        assert extended.expires_at == cinema.clock.now() + RULES.hold_ttl
    with pytest.raises(HoldExtensionLimit):
        run(uc.extend_hold(cinema.uow(), cinema.clock, RULES, cinema.ana, hold.id))
    assert len(cinema.store.published) == 1  # an extension changes no seat


def test_a_counter_sale_sells_the_seats_and_refuses_a_lapsed_hold(cinema: Cinema) -> None:
    hold = cinema.hold(cinema.ana, "A1")
    booking = run(
        uc.sell_hold_at_counter(
            cinema.uow(), cinema.clock, cinema.clerk, uc.SellAtCounter(hold.id, CounterPayment.CASH)
        )
    )
    assert booking.state is BookingState.CONFIRMED
    assert cinema.store.holds[hold.id].state is HoldState.CONVERTED
    assert cinema.states() == {"A1": SeatState.SOLD}
    lapsed = cinema.hold(cinema.ana, "A2")
    cinema.clock.advance(RULES.hold_ttl)
    with pytest.raises(HoldNotActive):
        run(
            uc.sell_hold_at_counter(
                cinema.uow(), cinema.clock, cinema.clerk, uc.SellAtCounter(lapsed.id, CounterPayment.CASH)
            )
        )


def test_a_customer_cancels_until_the_cut_off_and_staff_until_the_start(cinema: Cinema) -> None:
    hold = cinema.hold(cinema.ana, "A1")
    booking = run(
        uc.sell_hold_at_counter(
            cinema.uow(), cinema.clock, cinema.clerk, uc.SellAtCounter(hold.id, CounterPayment.CASH)
        )
    )
    cinema.clock.current = cinema.showtime.starts_at - RULES.customer_cancel_cutoff
    with pytest.raises(CancellationClosed):
        run(uc.cancel_booking(cinema.uow(), cinema.clock, RULES, cinema.ana, booking.id, ""))
    assert cinema.states() == {"A1": SeatState.SOLD}
    cancelled = run(uc.cancel_booking(cinema.uow(), cinema.clock, RULES, cinema.clerk, booking.id, ""))
    assert cancelled.state is BookingState.CANCELLED and cancelled.cancel_reason == "cancelled by staff"
    assert cinema.states() == {}


def test_the_sweeper_expires_lapsed_holds_with_one_version_per_showtime(cinema: Cinema) -> None:
    cinema.hold(cinema.ana, "A1", "A2")
    cinema.hold(cinema.ben, "A5")
    cinema.clock.advance(RULES.hold_ttl)
    freed = run(uc.release_expired_holds(cinema.uow, cinema.clock))
    assert freed == 3
    assert [e.version for e in cinema.store.published] == [1, 2, 3]
    assert cinema.states() == {}
    assert run(uc.release_expired_holds(cinema.uow, cinema.clock)) == 0


def test_a_refused_request_writes_and_announces_nothing(cinema: Cinema) -> None:
    cinema.hold(cinema.ana, "A3")
    with pytest.raises(SeatAlreadyTaken):
        cinema.hold(cinema.ben, "A1", "A3")
    assert {h.customer_id for h in cinema.store.holds.values()} == {cinema.ana.user_id}


def test_a_hold_whose_seats_changed_before_it_was_written_is_decided_again_under_the_locks(cinema: Cinema) -> None:
    cinema.store.stale_decisions = 1
    hold = cinema.hold(cinema.ana, "A1")
    assert [h.lock_first for h in cinema.store.new_holds] == [False, True]
    assert cinema.store.holds == {hold.id: cinema.store.holds[hold.id]}
    assert [e.version for e in cinema.store.published] == [1]


def test_customers_list_only_their_own_active_holds_newest_first(cinema: Cinema) -> None:
    first = cinema.hold(cinema.ana, "A1")
    cinema.clock.advance(timedelta(seconds=1))
    second = cinema.hold(cinema.ana, "A2")
    cinema.clock.advance(timedelta(seconds=1))
    theirs = cinema.hold(cinema.ben, "A3")
    page = page_request(0, "", "ListHolds")

    def listed(caller: Caller, wanted: HoldFilter) -> list[uuid.UUID]:
        return [h.id for h in run(uc.list_holds(cinema.uow(), cinema.clock, caller, wanted, page)).items]

    assert listed(cinema.ana, HoldFilter()) == [second.id, first.id]
    assert listed(cinema.ana, HoldFilter(showtime_id=cinema.showtime.id)) == [second.id, first.id]
    assert listed(cinema.clerk, HoldFilter(showtime_id=cinema.showtime.id)) == [theirs.id, second.id, first.id]
    assert listed(cinema.clerk, HoldFilter(customer_id=cinema.ben.user_id)) == [theirs.id]
    with pytest.raises(PermissionDenied):
        listed(cinema.ana, HoldFilter(customer_id=cinema.ben.user_id))
    cinema.clock.advance(RULES.hold_ttl)
    assert listed(cinema.ana, HoldFilter()) == []  # lapsed holds are not listed, swept or not
