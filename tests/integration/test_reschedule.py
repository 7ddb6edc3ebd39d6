"""Moving a showtime: an in-place update under the overlap constraint, refused while seats are held
or sold, with the showtime's seat lock so that no hold is decided on the slot being left."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.screening.v1 import screening_pb2 as pb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from tests.auth_client import with_token
from tests.booking_data import LAYOUT, Customer, Sale, hold, open_sale
from tests.rpc_errors import call_fails, failure
from tests.screening_data import at, grid, make_cinema, make_hall, make_movie, showtime_request, tomorrow_at

Db = psycopg.Connection[tuple[object, ...]]


def reschedule(
    showtime_id: str, start: datetime, hall_id: str = "", request_id: str = ""
) -> pb.RescheduleShowtimeRequest:
    return pb.RescheduleShowtimeRequest(
        showtime_id=showtime_id, start_time=at(start), hall_id=hall_id, request_id=request_id
    )


@pytest.fixture
def cinema(screening: ScreeningServiceStub) -> pb.Cinema:
    return make_cinema(screening)


@pytest.fixture
def hall(screening: ScreeningServiceStub, cinema: pb.Cinema) -> pb.Hall:
    return make_hall(screening, cinema.id, "Main", grid("ABCDE", 10))


@pytest.fixture
def movie(screening: ScreeningServiceStub) -> pb.Movie:
    return make_movie(screening, minutes=90)


def test_a_showtime_moves_ten_minutes_later_in_its_own_hall(
    screening: ScreeningServiceStub, hall: pb.Hall, movie: pb.Movie
) -> None:
    start = tomorrow_at(18)
    showtime = screening.CreateShowtime(showtime_request(hall, movie, start))
    moved = screening.RescheduleShowtime(reschedule(showtime.id, start + timedelta(minutes=10)))
    assert moved.id == showtime.id
    assert moved.hall_id == hall.id
    assert moved.start_time.ToDatetime(tzinfo=UTC) == start + timedelta(minutes=10)
    assert moved.end_time.ToDatetime(tzinfo=UTC) == start + timedelta(minutes=100)
    assert moved.busy_until.ToDatetime(tzinfo=UTC) == start + timedelta(minutes=130)
    assert moved.prices == showtime.prices
    assert screening.GetShowtime(pb.GetShowtimeRequest(showtime_id=showtime.id)) == moved
    # Its old slot is free for another showtime once the cleaning of the moved one allows.
    later = screening.CreateShowtime(showtime_request(hall, movie, start + timedelta(minutes=130)))
    assert later.start_time == moved.busy_until


def test_a_move_into_another_showtimes_slot_is_refused_with_free_halls_and_changes_nothing(
    screening: ScreeningServiceStub, cinema: pb.Cinema, hall: pb.Hall, movie: pb.Movie
) -> None:
    start = tomorrow_at(14)
    first = screening.CreateShowtime(showtime_request(hall, movie, start))
    second = screening.CreateShowtime(showtime_request(hall, movie, start + timedelta(hours=3)))
    same = make_hall(screening, cinema.id, "Same", grid("ABCDE", 10))
    make_hall(screening, cinema.id, "Too small", grid("AB", 10))

    failed = call_fails(screening.RescheduleShowtime, reschedule(first.id, start + timedelta(hours=2)))
    assert (failed.code, failed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SHOWTIME_OVERLAP")
    assert failed.conflict is not None
    assert failed.conflict.conflicting_showtime_id == second.id
    assert failed.conflict.conflicting_busy_until == second.busy_until
    # The hall the showtime itself occupies is not busy because of it, but is the hall asked for.
    assert [h.hall_id for h in failed.conflict.free_halls] == [same.id]
    assert screening.GetShowtime(pb.GetShowtimeRequest(showtime_id=first.id)) == first

    # One of the free halls takes it at that time.
    moved = screening.RescheduleShowtime(reschedule(first.id, start + timedelta(hours=2), same.id))
    assert (moved.hall_id, moved.start_time) == (same.id, at(start + timedelta(hours=2)))
    assert screening.CreateShowtime(showtime_request(hall, movie, start)).hall_id == hall.id


def test_a_retried_move_with_one_request_id_moves_once(
    screening: ScreeningServiceStub, hall: pb.Hall, movie: pb.Movie
) -> None:
    start = tomorrow_at(18)
    showtime = screening.CreateShowtime(showtime_request(hall, movie, start))
    request = reschedule(showtime.id, start + timedelta(minutes=30), request_id=str(uuid.uuid4()))
    first = screening.RescheduleShowtime(request)
    # Someone moves it again; the retry of the first request answers as the first call did.
    screening.RescheduleShowtime(reschedule(showtime.id, start + timedelta(hours=3)))
    retried = screening.RescheduleShowtime(request)
    assert retried.id == first.id
    assert retried.start_time == at(start + timedelta(hours=3))
    reused = call_fails(
        screening.RescheduleShowtime,
        reschedule(showtime.id, start + timedelta(hours=5), request_id=request.request_id),
    )
    assert reused.code is grpc.StatusCode.INVALID_ARGUMENT


def test_a_showtime_with_a_held_seat_cannot_move_until_the_hold_ends(
    screening: ScreeningServiceStub, sale: Sale, ana: Customer
) -> None:
    held = hold(ana, sale, "C5")
    start = sale.showtime.start_time.ToDatetime(tzinfo=UTC)
    failed = call_fails(screening.RescheduleShowtime, reschedule(sale.showtime.id, start + timedelta(minutes=10)))
    assert (failed.code, failed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SHOWTIME_HAS_SALES")
    assert failed.metadata["held_seats"] == "1"
    assert screening.GetShowtime(pb.GetShowtimeRequest(showtime_id=sale.showtime.id)) == sale.showtime
    ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id))
    moved = screening.RescheduleShowtime(reschedule(sale.showtime.id, start + timedelta(minutes=10)))
    assert moved.start_time == at(start + timedelta(minutes=10))


def test_bad_moves_are_refused_with_their_reason(
    screening: ScreeningServiceStub, cinema: pb.Cinema, hall: pb.Hall, movie: pb.Movie, db: Db
) -> None:
    showtime = screening.CreateShowtime(showtime_request(hall, movie, tomorrow_at(18)))
    past = call_fails(screening.RescheduleShowtime, reschedule(showtime.id, datetime.now(UTC) - timedelta(hours=1)))
    assert past.fields == {"start_time": "IN_PAST"}
    too_far = call_fails(screening.RescheduleShowtime, reschedule(showtime.id, datetime.now(UTC) + timedelta(days=800)))
    assert too_far.fields == {"start_time": "OUT_OF_RANGE"}
    assert call_fails(screening.RescheduleShowtime, pb.RescheduleShowtimeRequest()).fields == {
        "showtime_id": "REQUIRED",
        "start_time": "REQUIRED",
    }
    elsewhere = make_hall(screening, make_cinema(screening, "Elsewhere").id, "Far", grid("AB", 5))
    other_cinema = call_fails(screening.RescheduleShowtime, reschedule(showtime.id, tomorrow_at(20), elsewhere.id))
    assert other_cinema.fields == {"hall_id": "OTHER_CINEMA"}
    premium = make_hall(screening, cinema.id, "Premium", LAYOUT)
    unpriced = call_fails(screening.RescheduleShowtime, reschedule(showtime.id, tomorrow_at(20), premium.id))
    assert (unpriced.code, unpriced.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SHOWTIME_PRICE_MISSING")
    unknown = call_fails(screening.RescheduleShowtime, reschedule(str(uuid.uuid4()), tomorrow_at(20)))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "SHOWTIME_NOT_FOUND")

    db.execute(
        "UPDATE screening.showtimes SET starts_at = now() - interval '10 minutes',"
        " ends_at = now() + interval '80 minutes', busy_until = now() + interval '110 minutes' WHERE id = %s",
        (showtime.id,),
    )
    started = call_fails(screening.RescheduleShowtime, reschedule(showtime.id, tomorrow_at(20)))
    assert started.reason == "SHOWTIME_ALREADY_STARTED"
    other = screening.CreateShowtime(showtime_request(hall, movie, tomorrow_at(22)))
    screening.CancelShowtime(pb.CancelShowtimeRequest(showtime_id=other.id, reason="private event"))
    cancelled = call_fails(screening.RescheduleShowtime, reschedule(other.id, tomorrow_at(23)))
    assert cancelled.reason == "SHOWTIME_CANCELLED"


def test_a_customer_cannot_move_a_showtime(
    channel: grpc.Channel, ana: Customer, screening: ScreeningServiceStub, hall: pb.Hall, movie: pb.Movie
) -> None:
    showtime = screening.CreateShowtime(showtime_request(hall, movie, tomorrow_at(18)))
    as_customer = ScreeningServiceStub(with_token(channel, ana.token))
    denied = call_fails(as_customer.RescheduleShowtime, reschedule(showtime.id, tomorrow_at(19)))
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED


def _move(
    address: str, token: str, barrier: threading.Barrier, request: pb.RescheduleShowtimeRequest
) -> pb.Showtime | grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        stub = ScreeningServiceStub(with_token(channel, token))
        grpc.channel_ready_future(channel).result(timeout=10)
        barrier.wait()
        try:
            return stub.RescheduleShowtime(request, timeout=30)
        except grpc.RpcError as error:
            return error


def _hold(barrier: threading.Barrier, who: Customer, sale: Sale) -> bpb.Hold | grpc.RpcError:
    barrier.wait()
    try:
        return hold(who, sale, "C5", "C6")
    except grpc.RpcError as error:
        return error


def test_a_hold_racing_a_move_to_another_hall_never_lands_on_the_moved_showtime(
    address: str, admin_token: str, screening: ScreeningServiceStub, ana: Customer, db: Db
) -> None:
    for i in range(8):
        sale = open_sale(screening, hours_ahead=30 + 3 * i, cinema_name=f"Race {i}")
        other = make_hall(screening, sale.hall.cinema_id, "Other", LAYOUT)
        request = reschedule(sale.showtime.id, sale.showtime.start_time.ToDatetime(tzinfo=UTC), other.id)
        barrier = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            moving = pool.submit(_move, address, admin_token, barrier, request)
            holding = pool.submit(_hold, barrier, ana, sale)
            moved, held = moving.result(), holding.result()
        move_won, hold_won = isinstance(moved, pb.Showtime), isinstance(held, bpb.Hold)
        assert not (move_won and hold_won)
        hall_now = db.execute("SELECT hall_id FROM screening.showtimes WHERE id = %s", (sale.showtime.id,)).fetchone()
        claims = db.execute(
            "SELECT count(*) FROM booking.seat_claims WHERE showtime_id = %s AND status = 'HELD'",
            (sale.showtime.id,),
        ).fetchone()
        assert hall_now is not None and claims is not None
        if move_won:
            assert (str(hall_now[0]), claims[0]) == (other.id, 0)
        else:
            assert isinstance(moved, grpc.RpcError)
            assert failure(moved).reason == "SHOWTIME_HAS_SALES"
            assert str(hall_now[0]) == sale.hall.id
        if isinstance(held, bpb.Hold):
            assert claims[0] == 2
            ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id))
