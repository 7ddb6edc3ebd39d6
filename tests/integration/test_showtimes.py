"""Showtimes: the no-overlap rule with the cleaning buffer, decided by the database under
concurrency, suggestions of free halls, listing by local day, cancellation."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest
from google.type import date_pb2

from cinema.common.v1 import money_pb2
from cinema.screening.v1 import screening_pb2 as pb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from tests.auth_client import with_token
from tests.integration.test_cinemas_and_movies import count
from tests.rpc_errors import call_fails, failure
from tests.screening_data import at, grid, make_cinema, make_hall, make_movie, showtime_request, tomorrow_at

Db = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def cinema(screening: ScreeningServiceStub) -> pb.Cinema:
    return make_cinema(screening)


@pytest.fixture
def hall(screening: ScreeningServiceStub, cinema: pb.Cinema) -> pb.Hall:
    return make_hall(screening, cinema.id, "Main", grid("ABCDE", 10))


@pytest.fixture
def movie(screening: ScreeningServiceStub) -> pb.Movie:
    return make_movie(screening, minutes=90)


def test_a_showtime_ends_after_the_movie_and_keeps_the_hall_busy_for_cleaning(
    screening: ScreeningServiceStub, hall: pb.Hall, movie: pb.Movie, cinema: pb.Cinema
) -> None:
    start = tomorrow_at(18)
    showtime = screening.CreateShowtime(showtime_request(hall, movie, start))
    assert showtime.cinema_id == cinema.id
    assert showtime.state == pb.SHOWTIME_STATE_SCHEDULED
    assert showtime.end_time.ToDatetime(tzinfo=UTC) == start + timedelta(minutes=90)
    assert showtime.busy_until.ToDatetime(tzinfo=UTC) == start + timedelta(minutes=120)
    assert [(p.kind, p.price.amount_minor, p.price.currency_code) for p in showtime.prices] == [
        (pb.SEAT_KIND_STANDARD, 1200, "EUR")
    ]
    assert screening.GetShowtime(pb.GetShowtimeRequest(showtime_id=showtime.id)) == showtime


@pytest.mark.parametrize("minutes_after", [0, 45, 90, 119])
def test_a_showtime_inside_another_ones_movie_or_cleaning_is_refused_with_free_halls(
    screening: ScreeningServiceStub, cinema: pb.Cinema, hall: pb.Hall, movie: pb.Movie, db: Db, minutes_after: int
) -> None:
    start = tomorrow_at(18)
    first = screening.CreateShowtime(showtime_request(hall, movie, start))
    bigger = make_hall(screening, cinema.id, "Bigger", grid("ABCDEFG", 10))
    same = make_hall(screening, cinema.id, "Same", grid("ABCDE", 10))
    make_hall(screening, cinema.id, "Too small", grid("AB", 10))
    busy = make_hall(screening, cinema.id, "Busy", grid("ABCDEFGH", 10))
    screening.CreateShowtime(showtime_request(busy, movie, start + timedelta(minutes=minutes_after)))

    failed = call_fails(
        screening.CreateShowtime, showtime_request(hall, movie, start + timedelta(minutes=minutes_after))
    )
    assert failed.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failed.reason == "SHOWTIME_OVERLAP"
    assert failed.metadata["conflicting_showtime_id"] == first.id
    assert failed.conflict is not None
    assert failed.conflict.conflicting_showtime_id == first.id
    assert failed.conflict.conflicting_busy_until == first.busy_until
    assert [h.hall_id for h in failed.conflict.free_halls] == [same.id, bigger.id]
    assert count(db, "screening.showtimes") == 2


def test_showtimes_separated_by_the_cleaning_buffer_all_fit(
    screening: ScreeningServiceStub, hall: pb.Hall, movie: pb.Movie
) -> None:
    start = tomorrow_at(10)
    created = [
        screening.CreateShowtime(showtime_request(hall, movie, start + timedelta(minutes=120 * i))) for i in range(5)
    ]
    assert [s.busy_until for s in created[:-1]] == [s.start_time for s in created[1:]]


def test_a_cancelled_showtime_frees_its_slot(screening: ScreeningServiceStub, hall: pb.Hall, movie: pb.Movie) -> None:
    start = tomorrow_at(18)
    first = screening.CreateShowtime(showtime_request(hall, movie, start))
    assert screening.GetShowtime(pb.GetShowtimeRequest(showtime_id=first.id)) == first  # now kept in memory
    cancelled = screening.CancelShowtime(pb.CancelShowtimeRequest(showtime_id=first.id, reason="projector broken"))
    assert (cancelled.state, cancelled.cancel_reason) == (pb.SHOWTIME_STATE_CANCELLED, "projector broken")
    # Through the replica that cancelled it, at once (not once the kept answer runs out).
    assert screening.GetShowtime(pb.GetShowtimeRequest(showtime_id=first.id)) == cancelled
    again = screening.CancelShowtime(pb.CancelShowtimeRequest(showtime_id=first.id, reason="twice"))
    assert again == cancelled
    assert screening.CreateShowtime(showtime_request(hall, movie, start)).id != first.id


def test_fifty_concurrent_creates_of_overlapping_slots_in_one_hall_have_exactly_one_winner(
    address: str,
    admin_token: str,
    screening: ScreeningServiceStub,
    cinema: pb.Cinema,
    hall: pb.Hall,
    movie: pb.Movie,
    db: Db,
) -> None:
    other = make_hall(screening, cinema.id, "Other", grid("ABCDEF", 10))
    start = tomorrow_at(18)
    barrier = threading.Barrier(50)

    def create(i: int) -> pb.Showtime | grpc.RpcError:
        with grpc.insecure_channel(address) as channel:
            stub = ScreeningServiceStub(with_token(channel, admin_token))
            grpc.channel_ready_future(channel).result(timeout=10)
            request = showtime_request(hall, movie, start + timedelta(minutes=i))
            barrier.wait()
            try:
                return stub.CreateShowtime(request, timeout=30)
            except grpc.RpcError as error:
                return error

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(create, range(50)))
    winners = [r for r in results if isinstance(r, pb.Showtime)]
    losers = [failure(r) for r in results if isinstance(r, grpc.RpcError)]
    assert len(winners) == 1
    assert len(losers) == 49
    assert {(f.code, f.reason) for f in losers} == {(grpc.StatusCode.FAILED_PRECONDITION, "SHOWTIME_OVERLAP")}
    assert all(f.conflict is not None and f.conflict.conflicting_showtime_id == winners[0].id for f in losers)
    assert all([h.hall_id for h in f.conflict.free_halls] == [other.id] for f in losers if f.conflict)
    assert count(db, "screening.showtimes") == 1


def test_concurrent_retries_of_one_request_create_one_showtime(
    address: str, admin_token: str, hall: pb.Hall, movie: pb.Movie, db: Db
) -> None:
    request = showtime_request(hall, movie, tomorrow_at(18), request_id=str(uuid.uuid4()))

    def create(_: int) -> str:
        with grpc.insecure_channel(address) as channel:
            return str(ScreeningServiceStub(with_token(channel, admin_token)).CreateShowtime(request, timeout=30).id)

    with ThreadPoolExecutor(10) as pool:
        ids = set(pool.map(create, range(10)))
    assert len(ids) == 1
    assert count(db, "screening.showtimes") == 1


def test_bad_showtime_requests_name_every_bad_field(
    screening: ScreeningServiceStub, hall: pb.Hall, movie: pb.Movie, db: Db
) -> None:
    past = call_fails(screening.CreateShowtime, showtime_request(hall, movie, datetime.now(UTC) - timedelta(hours=1)))
    assert past.fields == {"start_time": "IN_PAST"}
    too_far = call_fails(
        screening.CreateShowtime, showtime_request(hall, movie, datetime.now(UTC) + timedelta(days=800))
    )
    assert too_far.fields == {"start_time": "OUT_OF_RANGE"}
    empty = call_fails(screening.CreateShowtime, pb.CreateShowtimeRequest())
    assert empty.fields == {
        "hall_id": "REQUIRED",
        "movie_id": "REQUIRED",
        "start_time": "REQUIRED",
        "prices": "REQUIRED",
    }
    request = showtime_request(hall, movie, tomorrow_at(18))
    del request.prices[:]
    request.prices.append(
        pb.SeatPrice(kind=pb.SEAT_KIND_STANDARD, price=money_pb2.Money(amount_minor=-5, currency_code="EUR"))
    )
    request.prices.append(
        pb.SeatPrice(kind=pb.SEAT_KIND_PREMIUM, price=money_pb2.Money(amount_minor=5, currency_code="USD"))
    )
    prices = call_fails(screening.CreateShowtime, request)
    assert prices.fields == {
        "prices[0].price.amount_minor": "OUT_OF_RANGE",
        "prices[1].price.currency_code": "CURRENCY_MISMATCH",
    }
    request = showtime_request(hall, movie, tomorrow_at(18))
    request.prices[0].kind = pb.SEAT_KIND_PREMIUM
    missing = call_fails(screening.CreateShowtime, request)
    assert missing.fields == {"prices": "MISSING_PRICE"}
    assert count(db, "screening.showtimes") == 0


def test_an_inactive_movie_cannot_be_scheduled(screening: ScreeningServiceStub, hall: pb.Hall) -> None:
    retired = make_movie(screening, active=False)
    failed = call_fails(screening.CreateShowtime, showtime_request(hall, retired, tomorrow_at(18)))
    assert (failed.code, failed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MOVIE_INACTIVE")


def test_a_started_showtime_cannot_be_cancelled(
    screening: ScreeningServiceStub, hall: pb.Hall, movie: pb.Movie, db: Db
) -> None:
    showtime = screening.CreateShowtime(showtime_request(hall, movie, tomorrow_at(18)))
    db.execute(
        "UPDATE screening.showtimes SET starts_at = now() - interval '10 minutes',"
        " ends_at = now() + interval '80 minutes', busy_until = now() + interval '110 minutes' WHERE id = %s",
        (showtime.id,),
    )
    failed = call_fails(screening.CancelShowtime, pb.CancelShowtimeRequest(showtime_id=showtime.id, reason="late"))
    assert (failed.code, failed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SHOWTIME_ALREADY_STARTED")


def test_showtimes_are_listed_by_local_day_of_the_cinema(screening: ScreeningServiceStub, movie: pb.Movie) -> None:
    tokyo = make_cinema(screening, "Tokyo", "Asia/Tokyo")
    hall = make_hall(screening, tokyo.id)
    day = (datetime.now(UTC) + timedelta(days=3)).date()
    # 23:30 UTC the evening before is 08:30 in Tokyo; 15:30 UTC is 00:30 the next Tokyo day.
    evening_before = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(minutes=30)
    times = [evening_before, evening_before + timedelta(hours=4), evening_before + timedelta(hours=16)]
    created = [screening.CreateShowtime(showtime_request(hall, movie, t)) for t in times]
    listed = screening.ListShowtimes(
        pb.ListShowtimesRequest(cinema_id=tokyo.id, date=date_pb2.Date(year=day.year, month=day.month, day=day.day))
    )
    assert [s.id for s in listed.showtimes] == [created[0].id, created[1].id]


def test_listing_by_day_needs_a_cinema_and_a_real_date(screening: ScreeningServiceStub, cinema: pb.Cinema) -> None:
    no_cinema = call_fails(
        screening.ListShowtimes, pb.ListShowtimesRequest(date=date_pb2.Date(year=2027, month=1, day=1))
    )
    assert no_cinema.fields == {"cinema_id": "REQUIRED"}
    bad_date = call_fails(
        screening.ListShowtimes,
        pb.ListShowtimesRequest(cinema_id=cinema.id, date=date_pb2.Date(year=2027, month=2, day=30)),
    )
    assert bad_date.fields == {"date": "INVALID_DATE"}


def test_showtimes_are_listed_in_start_order_page_by_page_without_cancelled_ones(
    screening: ScreeningServiceStub, hall: pb.Hall, movie: pb.Movie
) -> None:
    created = [
        screening.CreateShowtime(showtime_request(hall, movie, tomorrow_at(9) + timedelta(hours=2 * i)))
        for i in range(5)
    ]
    screening.CancelShowtime(pb.CancelShowtimeRequest(showtime_id=created[2].id, reason="private event"))
    seen: list[str] = []
    token = ""
    while True:
        page = screening.ListShowtimes(pb.ListShowtimesRequest(hall_id=hall.id, page_size=2, page_token=token))
        seen += [s.id for s in page.showtimes]
        token = page.next_page_token
        if not token:
            break
    assert seen == [created[i].id for i in (0, 1, 3, 4)]
    everything = screening.ListShowtimes(pb.ListShowtimesRequest(hall_id=hall.id, include_cancelled=True))
    assert len(everything.showtimes) == 5


def test_free_halls_for_a_slot_are_found_directly(
    screening: ScreeningServiceStub, cinema: pb.Cinema, hall: pb.Hall, movie: pb.Movie
) -> None:
    small = make_hall(screening, cinema.id, "Small", grid("AB", 5))
    start = tomorrow_at(18)
    screening.CreateShowtime(showtime_request(hall, movie, start))
    found = screening.FindFreeHalls(
        pb.FindFreeHallsRequest(cinema_id=cinema.id, start_time=at(start), duration_minutes=60)
    )
    assert [h.hall_id for h in found.halls] == [small.id]
    later = screening.FindFreeHalls(
        pb.FindFreeHallsRequest(
            cinema_id=cinema.id, start_time=at(start + timedelta(hours=2)), duration_minutes=60, min_seats=20
        )
    )
    assert [h.hall_id for h in later.halls] == [hall.id]
    bad = call_fails(screening.FindFreeHalls, pb.FindFreeHallsRequest(cinema_id=cinema.id, start_time=at(start)))
    assert bad.fields == {"duration_minutes": "OUT_OF_RANGE"}


def test_the_database_itself_refuses_an_overlapping_showtime(
    screening: ScreeningServiceStub, hall: pb.Hall, movie: pb.Movie, db: Db
) -> None:
    first = screening.CreateShowtime(showtime_request(hall, movie, tomorrow_at(18)))
    with pytest.raises(psycopg.errors.ExclusionViolation):
        db.execute(
            "INSERT INTO screening.showtimes (id, cinema_id, hall_id, hall_key, movie_id, starts_at, ends_at,"
            " busy_until, state, created_at)"
            " SELECT gen_random_uuid(), cinema_id, hall_id, hall_key, movie_id, busy_until - interval '1 minute',"
            " busy_until + interval '1 hour', busy_until + interval '90 minutes', 'SCHEDULED', now()"
            " FROM screening.showtimes WHERE id = %s",
            (first.id,),
        )
