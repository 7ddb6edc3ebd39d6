"""A seat map's message is made of each seat's serialized piece: it is the very message the
fields make one by one, for staff (who holds what) and for everybody else."""

from __future__ import annotations

import uuid

from cinema.booking.v1 import booking_pb2 as pb
from cinema_grpc.domain.booking.model import SeatMap, SeatState, SeatStatus
from cinema_grpc.domain.screening.model import Seat, SeatKind
from cinema_grpc.services.booking import _SEAT_STATES, seat_map_message
from cinema_grpc.services.screening import KIND_NUMBERS


def one_by_one(seat_map: SeatMap) -> pb.SeatMap:
    return pb.SeatMap(
        showtime_id=str(seat_map.showtime_id),
        version=seat_map.version,
        seats=[
            pb.SeatAvailability(
                seat_id=str(s.seat.id),
                row_label=s.seat.row_label,
                number=s.seat.number,
                column=s.seat.column,
                kind=KIND_NUMBERS[s.seat.kind],
                state=_SEAT_STATES[s.state],
                holder_id=str(s.holder_id) if s.holder_id else "",
                hold_id=str(s.hold_id) if s.hold_id else "",
            )
            for s in seat_map.seats
        ],
    )


def seats() -> list[Seat]:
    hall = uuid.uuid4()
    kinds = list(SeatKind)
    return [
        Seat(uuid.uuid4(), hall, label, number, number + (number > 3), kinds[number % len(kinds)], number != 2, "")
        for label in "AB"
        for number in range(1, 7)
    ]


def test_the_message_of_a_seat_map_is_the_message_of_its_fields() -> None:
    hall = seats()
    holder, hold = uuid.uuid4(), uuid.uuid4()
    unclaimed = [SeatStatus(s, SeatState.FREE if s.in_service else SeatState.OUT_OF_SERVICE, None) for s in hall]
    staff = list(unclaimed)
    staff[0] = SeatStatus(hall[0], SeatState.HELD, holder, hold)
    staff[7] = SeatStatus(hall[7], SeatState.SOLD, holder, hold)
    public = list(unclaimed)
    public[0] = SeatStatus(hall[0], SeatState.HELD, None)
    public[7] = SeatStatus(hall[7], SeatState.SOLD, None)
    showtime = uuid.uuid4()
    # Twice each: the second time from the pieces made the first time.
    for statuses in (unclaimed, staff, public, unclaimed, staff, public):
        seat_map = SeatMap(showtime, 2**40 + 3, tuple(statuses))
        built = seat_map_message(seat_map)
        assert built == one_by_one(seat_map)
        assert built.SerializeToString() == one_by_one(seat_map).SerializeToString()
    assert seat_map_message(SeatMap(showtime, 0, ())) == pb.SeatMap(showtime_id=str(showtime))


def test_a_seat_shows_the_state_it_is_in_now_whatever_it_was_shown_in_before() -> None:
    hall = seats()
    showtime = uuid.uuid4()
    for state in (SeatState.FREE, SeatState.HELD, SeatState.SOLD, SeatState.OUT_OF_SERVICE, SeatState.FREE):
        seat_map = SeatMap(showtime, 1, tuple(SeatStatus(s, state, None) for s in hall))
        assert {s.state for s in seat_map_message(seat_map).seats} == {_SEAT_STATES[state]}
