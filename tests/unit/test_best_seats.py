"""Choosing the best block of adjacent seats, wheelchair spaces with companions, and the
bounded inbox of a watcher."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from cinema_grpc.adapters.availability_bus import LocalHub
from cinema_grpc.domain.booking.model import SeatEvent, best_available, with_companions
from cinema_grpc.domain.ports import WatcherLagging
from cinema_grpc.domain.screening.model import RowSpec, SeatKind, SeatLayout, generate_seats

HALL = uuid.uuid4()


def hall(*rows: RowSpec) -> list:  # type: ignore[type-arg]
    return list(generate_seats(HALL, SeatLayout(rows)))


def labels(seats: list | None) -> list[str]:  # type: ignore[type-arg]
    assert seats is not None
    return [s.label for s in seats]


def taken(seats: list, *wanted: str) -> set[uuid.UUID]:  # type: ignore[type-arg]
    return {s.id for s in seats if s.label in wanted}


def test_an_empty_hall_gives_the_middle_of_a_row_two_thirds_back() -> None:
    seats = hall(*(RowSpec(label, 9) for label in "ABCDEF"))
    assert labels(best_available(seats, set(), 3, SeatKind.STANDARD)) == ["D4", "D5", "D6"]


def test_a_block_never_spans_an_aisle() -> None:
    seats = hall(RowSpec("A", 7, gap_columns=frozenset({4})))
    assert labels(best_available(seats, set(), 3, SeatKind.STANDARD)) == ["A1", "A2", "A3"]
    assert best_available(seats, set(), 4, SeatKind.STANDARD) is None


def test_a_block_that_strands_a_single_seat_is_avoided_when_another_exists() -> None:
    # Row A: 1 2 3 4 5 [6 taken] 7 8 9 10. Taking 2..5 would strand 1; taking 7..10 strands nothing.
    seats = hall(RowSpec("A", 10))
    block = best_available(seats, taken(seats, "A6"), 4, SeatKind.STANDARD)
    assert labels(block) == ["A7", "A8", "A9", "A10"]


def test_a_stranding_block_is_taken_when_it_is_the_only_one() -> None:
    seats = hall(RowSpec("A", 4))
    # Free: A1 A2 A3. Either pair strands one seat; the one nearer the middle wins.
    assert labels(best_available(seats, taken(seats, "A4"), 2, SeatKind.STANDARD)) == ["A2", "A3"]


def test_only_seats_of_the_asked_kind_count() -> None:
    seats = hall(RowSpec("A", 6), RowSpec("B", 6, kind=SeatKind.PREMIUM))
    assert labels(best_available(seats, set(), 2, SeatKind.PREMIUM)) == ["B3", "B4"]
    assert best_available(seats, set(), 7, SeatKind.PREMIUM) is None


def test_out_of_service_seats_are_never_chosen() -> None:
    seats = hall(RowSpec("A", 3))
    seats = [s if s.number != 2 else type(s)(**{**s.__dict__, "in_service": False}) for s in seats]
    assert best_available(seats, set(), 2, SeatKind.STANDARD) is None


def test_a_wheelchair_space_comes_with_its_companion_seat() -> None:
    seats = hall(
        RowSpec(
            "A",
            6,
            overrides={1: SeatKind.WHEELCHAIR, 2: SeatKind.COMPANION, 5: SeatKind.COMPANION, 6: SeatKind.WHEELCHAIR},
        )
    )
    chosen = labels(best_available(seats, set(), 2, SeatKind.WHEELCHAIR))
    assert sorted(chosen) == ["A1", "A2", "A5", "A6"]
    assert best_available(seats, taken(seats, "A2", "A5"), 1, SeatKind.WHEELCHAIR) is None


def test_a_requested_wheelchair_space_brings_its_free_companion() -> None:
    seats = hall(RowSpec("A", 4, overrides={1: SeatKind.WHEELCHAIR, 2: SeatKind.COMPANION}))
    wheelchair = [s for s in seats if s.label == "A1"]
    assert labels(with_companions(wheelchair, seats, set())) == ["A1", "A2"]
    assert labels(with_companions(wheelchair, seats, taken(seats, "A2"))) == ["A1"]


def event(showtime: uuid.UUID, version: int) -> SeatEvent:
    return SeatEvent(showtime, version, ())


def test_a_watcher_that_falls_behind_is_told_to_start_over_and_others_are_not_affected() -> None:
    async def scenario() -> None:
        hub = LocalHub(capacity=3)
        showtime = uuid.uuid4()
        slow, fast = hub.watch(showtime), hub.watch(showtime)
        other = hub.watch(uuid.uuid4())
        received = []
        for version in range(1, 11):
            hub.deliver([event(showtime, version)])
            received.append((await fast.next()).version)
        assert received == list(range(1, 11))
        with pytest.raises(WatcherLagging):
            await slow.next()
        hub.deliver([event(showtime, 11)])
        assert (await slow.next()).version == 11
        assert other.pending == 0
        for watch in (slow, fast, other):
            watch.close()
        assert hub.watcher_count == 0

    asyncio.run(scenario())


def test_a_companion_seat_serves_one_wheelchair_space_only() -> None:
    seats = hall(RowSpec("A", 3, overrides={1: SeatKind.WHEELCHAIR, 2: SeatKind.COMPANION, 3: SeatKind.WHEELCHAIR}))
    assert best_available(seats, set(), 2, SeatKind.WHEELCHAIR) is None
    one = labels(best_available(seats, set(), 1, SeatKind.WHEELCHAIR))
    assert len(one) == 2 and "A2" in one
