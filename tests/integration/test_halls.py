"""Halls and their seat grids: atomic creation, layouts, seats out of service, relayout rules."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest

from cinema.screening.v1 import screening_pb2 as pb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from tests.integration.test_cinemas_and_movies import count
from tests.rpc_errors import call_fails
from tests.screening_data import grid, make_cinema, make_hall, make_movie, showtime_request, tomorrow_at

Db = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def cinema(screening: ScreeningServiceStub) -> pb.Cinema:
    return make_cinema(screening)


def test_a_hall_is_created_with_its_whole_seat_grid(screening: ScreeningServiceStub, cinema: pb.Cinema, db: Db) -> None:
    layout = pb.SeatLayout(
        rows=[
            pb.SeatRow(
                label="A",
                columns=6,
                gap_columns=[3],
                overrides=[
                    pb.SeatKindOverride(column=1, kind=pb.SEAT_KIND_WHEELCHAIR),
                    pb.SeatKindOverride(column=2, kind=pb.SEAT_KIND_COMPANION),
                ],
            ),
            pb.SeatRow(label="B", columns=6, kind=pb.SEAT_KIND_PREMIUM),
        ]
    )
    hall = make_hall(screening, cinema.id, "Grand", layout)
    assert hall.seat_count == 11
    assert [(s.row_label, s.number, s.column) for s in hall.seats[:5]] == [
        ("A", 1, 1),
        ("A", 2, 2),
        ("A", 3, 4),
        ("A", 4, 5),
        ("A", 5, 6),
    ]
    assert [s.kind for s in hall.seats[:3]] == [pb.SEAT_KIND_WHEELCHAIR, pb.SEAT_KIND_COMPANION, pb.SEAT_KIND_STANDARD]
    assert {s.kind for s in hall.seats if s.row_label == "B"} == {pb.SEAT_KIND_PREMIUM}
    assert all(s.in_service for s in hall.seats)
    assert screening.GetHall(pb.GetHallRequest(hall_id=hall.id)) == hall
    assert count(db, "screening.seats") == 11


@pytest.fixture
def seat_failure_trigger(db: Db) -> Iterator[None]:
    """Makes the database fail on the 37th seat of any hall: a failure in mid-generation."""
    db.execute(
        """
        CREATE FUNCTION screening.fail_on_seat_37() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.row_label = 'D' AND NEW.number = 7 THEN
                RAISE EXCEPTION 'injected seat failure';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER fail_on_seat_37 BEFORE INSERT ON screening.seats
            FOR EACH ROW EXECUTE FUNCTION screening.fail_on_seat_37();
        """
    )
    yield
    db.execute("DROP TRIGGER fail_on_seat_37 ON screening.seats; DROP FUNCTION screening.fail_on_seat_37()")


@pytest.mark.usefixtures("seat_failure_trigger")
def test_a_failure_in_the_middle_of_seat_generation_leaves_no_hall_and_no_seats(
    screening: ScreeningServiceStub, cinema: pb.Cinema, db: Db
) -> None:
    failed = call_fails(
        screening.CreateHall, pb.CreateHallRequest(cinema_id=cinema.id, name="Doomed", layout=grid("ABCDE", 10))
    )
    assert failed.code is grpc.StatusCode.INTERNAL
    assert failed.reason == "INTERNAL"
    assert failed.metadata["correlation_id"] in failed.message
    assert "injected" not in failed.message and "Traceback" not in failed.message
    assert count(db, "screening.halls") == 0
    assert count(db, "screening.seats") == 0


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (pb.SeatLayout(), {"layout.rows": "REQUIRED"}),
        (grid("A", 0), {"layout.rows[0].columns": "OUT_OF_RANGE"}),
        (grid("A", 10_000), {"layout.rows[0].columns": "OUT_OF_RANGE"}),
        (grid("AB", 5, kind=99), {"layout.rows[0].kind": "INVALID_ENUM", "layout.rows[1].kind": "INVALID_ENUM"}),
        (
            pb.SeatLayout(rows=[pb.SeatRow(label="A", columns=5, overrides=[pb.SeatKindOverride(column=2)])]),
            {"layout.rows[0].overrides[0].kind": "INVALID_ENUM"},
        ),
    ],
)
def test_bad_layouts_are_refused_with_the_field_and_nothing_is_written(
    screening: ScreeningServiceStub, cinema: pb.Cinema, db: Db, layout: pb.SeatLayout, expected: dict[str, str]
) -> None:
    failed = call_fails(screening.CreateHall, pb.CreateHallRequest(cinema_id=cinema.id, name="Bad", layout=layout))
    assert failed.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failed.fields == expected
    assert count(db, "screening.halls") == 0


def test_a_hall_of_an_unknown_cinema_is_refused(screening: ScreeningServiceStub, db: Db) -> None:
    failed = call_fails(
        screening.CreateHall, pb.CreateHallRequest(cinema_id=str(uuid.uuid4()), name="X", layout=grid())
    )
    assert failed.code is grpc.StatusCode.NOT_FOUND
    assert failed.reason == "CINEMA_NOT_FOUND"
    assert count(db, "screening.seats") == 0


def test_hall_names_are_unique_within_a_cinema_only(screening: ScreeningServiceStub, cinema: pb.Cinema) -> None:
    make_hall(screening, cinema.id, "Hall 1")
    failed = call_fails(screening.CreateHall, pb.CreateHallRequest(cinema_id=cinema.id, name="hall 1", layout=grid()))
    assert failed.code is grpc.StatusCode.ALREADY_EXISTS
    assert failed.reason == "HALL_NAME_TAKEN"
    other = make_cinema(screening, "Other")
    assert make_hall(screening, other.id, "Hall 1").name == "Hall 1"


def test_a_hall_is_renamed_unless_the_name_is_taken(screening: ScreeningServiceStub, cinema: pb.Cinema) -> None:
    first = make_hall(screening, cinema.id, "One")
    make_hall(screening, cinema.id, "Two")
    renamed = screening.RenameHall(pb.RenameHallRequest(hall_id=first.id, name="Uno"))
    assert renamed.name == "Uno"
    assert renamed.update_time.ToDatetime() >= first.update_time.ToDatetime()
    failed = call_fails(screening.RenameHall, pb.RenameHallRequest(hall_id=first.id, name="TWO"))
    assert failed.reason == "HALL_NAME_TAKEN"


def test_halls_are_listed_with_their_seats(screening: ScreeningServiceStub, cinema: pb.Cinema) -> None:
    make_hall(screening, cinema.id, "B", grid("AB", 3))
    make_hall(screening, cinema.id, "A", grid("A", 2))
    halls = screening.ListHalls(pb.ListHallsRequest(cinema_id=cinema.id)).halls
    assert [(h.name, len(h.seats)) for h in halls] == [("A", 2), ("B", 6)]


def test_a_seat_out_of_service_is_not_counted_and_says_why(screening: ScreeningServiceStub, cinema: pb.Cinema) -> None:
    hall = make_hall(screening, cinema.id)
    seat = hall.seats[3]
    changed = screening.SetSeatService(
        pb.SetSeatServiceRequest(hall_id=hall.id, seat_id=seat.id, in_service=False, reason="broken armrest")
    )
    assert (changed.in_service, changed.out_of_service_reason) == (False, "broken armrest")
    assert screening.GetHall(pb.GetHallRequest(hall_id=hall.id)).seat_count == hall.seat_count - 1
    back = screening.SetSeatService(pb.SetSeatServiceRequest(hall_id=hall.id, seat_id=seat.id, in_service=True))
    assert (back.in_service, back.out_of_service_reason) == (True, "")


def test_taking_a_seat_out_of_service_needs_a_reason_and_a_seat_of_that_hall(
    screening: ScreeningServiceStub, cinema: pb.Cinema
) -> None:
    hall = make_hall(screening, cinema.id, "One")
    other = make_hall(screening, cinema.id, "Two")
    no_reason = call_fails(
        screening.SetSeatService, pb.SetSeatServiceRequest(hall_id=hall.id, seat_id=hall.seats[0].id)
    )
    assert no_reason.fields == {"reason": "REQUIRED"}
    wrong_hall = call_fails(
        screening.SetSeatService, pb.SetSeatServiceRequest(hall_id=hall.id, seat_id=other.seats[0].id, in_service=True)
    )
    assert (wrong_hall.code, wrong_hall.reason) == (grpc.StatusCode.NOT_FOUND, "SEAT_NOT_FOUND")


def claim(
    db: Db, showtime_id: str, seat_id: str, status: str = "HELD", expires_in: timedelta = timedelta(minutes=10)
) -> None:
    """Writes a hold with one seat claim directly, in the given state."""
    expires_at = datetime.now(UTC) + expires_in
    hold_id, booking_id = uuid.uuid4(), uuid.uuid4()
    hold_state = {"HELD": "ACTIVE", "RELEASED": "RELEASED", "SOLD": "CONVERTED"}[status]
    db.execute(
        "INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, created_at, ended_at)"
        " VALUES (%s, %s, %s, %s, %s, now(), CASE WHEN %s = 'ACTIVE' THEN NULL ELSE now() END)",
        (hold_id, showtime_id, uuid.uuid4(), hold_state, expires_at, hold_state),
    )
    if status == "SOLD":
        db.execute(
            "INSERT INTO booking.bookings (id, showtime_id, customer_id, hold_id, state, channel, counter_payment,"
            " refund_state, created_at, ticket_count, total_minor, currency)"
            " VALUES (%s, %s, %s, %s, 'CONFIRMED', 'COUNTER', 'CASH', 'NONE', now(), 1, 1200, 'EUR')",
            (booking_id, showtime_id, uuid.uuid4(), hold_id),
        )
    db.execute(
        "INSERT INTO booking.seat_claims"
        " (id, hold_id, booking_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, 1200, 'EUR', %s, now())",
        (
            uuid.uuid4(),
            hold_id,
            booking_id if status == "SOLD" else None,
            showtime_id,
            seat_id,
            status,
            expires_at if status == "HELD" else None,
        ),
    )


def test_a_new_layout_regenerates_the_seats_and_keeps_the_old_ones_retired(
    screening: ScreeningServiceStub, cinema: pb.Cinema, db: Db
) -> None:
    hall = make_hall(screening, cinema.id, layout=grid("AB", 4))
    relaid = screening.ReplaceHallLayout(pb.ReplaceHallLayoutRequest(hall_id=hall.id, layout=grid("ABC", 5)))
    assert relaid.seat_count == 15
    assert not {s.id for s in relaid.seats} & {s.id for s in hall.seats}
    assert count(db, "screening.seats WHERE retired_at IS NOT NULL") == 8


def test_a_new_layout_is_refused_while_an_upcoming_showtime_has_a_hold_or_ticket(
    screening: ScreeningServiceStub, cinema: pb.Cinema, db: Db
) -> None:
    hall = make_hall(screening, cinema.id, layout=grid("AB", 4))
    showtime = screening.CreateShowtime(showtime_request(hall, make_movie(screening), tomorrow_at(18)))
    claim(db, showtime.id, hall.seats[0].id, "SOLD")
    failed = call_fails(screening.ReplaceHallLayout, pb.ReplaceHallLayoutRequest(hall_id=hall.id, layout=grid("A", 3)))
    assert failed.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failed.reason == "HALL_HAS_CLAIMS"
    assert failed.preconditions == [("HALL_HAS_CLAIMS", f"halls/{hall.id}")]
    assert screening.GetHall(pb.GetHallRequest(hall_id=hall.id)).seats == hall.seats


def test_an_expired_hold_does_not_block_a_new_layout(
    screening: ScreeningServiceStub, cinema: pb.Cinema, db: Db
) -> None:
    hall = make_hall(screening, cinema.id, layout=grid("AB", 4))
    showtime = screening.CreateShowtime(showtime_request(hall, make_movie(screening), tomorrow_at(18)))
    claim(db, showtime.id, hall.seats[0].id, "HELD", expires_in=timedelta(minutes=-1))
    claim(db, showtime.id, hall.seats[1].id, "RELEASED")
    relaid = screening.ReplaceHallLayout(pb.ReplaceHallLayoutRequest(hall_id=hall.id, layout=grid("A", 3)))
    assert relaid.seat_count == 3


def test_a_new_layout_with_a_seat_kind_an_upcoming_showtime_has_no_price_for_is_refused(
    screening: ScreeningServiceStub, cinema: pb.Cinema
) -> None:
    hall = make_hall(screening, cinema.id, layout=grid("AB", 4))
    screening.CreateShowtime(showtime_request(hall, make_movie(screening), tomorrow_at(18)))
    failed = call_fails(
        screening.ReplaceHallLayout,
        pb.ReplaceHallLayoutRequest(hall_id=hall.id, layout=grid("A", 3, kind=pb.SEAT_KIND_PREMIUM)),
    )
    assert failed.reason == "SHOWTIME_PRICE_MISSING"
