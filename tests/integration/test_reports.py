"""Staff reports: occupancy of a showtime, top movies and revenue per local day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import psycopg
import pytest
from google.type import date_pb2

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.reports.v1 import reports_pb2 as rpb
from cinema.reports.v1.reports_pb2_grpc import ReportsServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from tests.auth_client import with_token
from tests.booking_data import Customer, Sale, hold
from tests.rpc_errors import call_fails
from tests.screening_data import CINEMA_TIME_ZONE, make_hall, make_movie, showtime_request

Db = psycopg.Connection[tuple[object, ...]]


def reports(channel: grpc.Channel, who: Customer) -> ReportsServiceStub:
    return ReportsServiceStub(with_token(channel, who.token))


def sell(who: Customer, clerk: Customer, sale: Sale, *labels: str) -> bpb.Booking:
    held = hold(who, sale, *labels)
    return clerk.booking.SellHoldAtCounter(
        bpb.SellHoldAtCounterRequest(hold_id=held.id, payment=bpb.COUNTER_PAYMENT_CASH)
    )


def today() -> date_pb2.Date:
    """The cinema's local day: the reports count days in the cinema's time zone."""
    now = datetime.now(ZoneInfo(CINEMA_TIME_ZONE))
    return date_pb2.Date(year=now.year, month=now.month, day=now.day)


def test_occupancy_counts_sold_held_free_and_broken_seats(
    screening: ScreeningServiceStub, channel: grpc.Channel, ana: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    sell(ana, clerk, sale, "B1", "B2", "B3")
    hold(ana, sale, "C1")
    expired = hold(ana, sale, "C2")
    db.execute(
        "UPDATE booking.seat_claims SET expires_at = now() - interval '1 second' WHERE hold_id = %s", (expired.id,)
    )
    screening.SetSeatService(
        spb.SetSeatServiceRequest(hall_id=sale.hall.id, seat_id=sale.seat("D1"), in_service=False, reason="x")
    )
    occupancy = reports(channel, clerk).GetShowtimeOccupancy(
        rpb.GetShowtimeOccupancyRequest(showtime_id=sale.showtime.id)
    )
    assert (occupancy.seats, occupancy.sold, occupancy.held, occupancy.out_of_service, occupancy.free) == (
        60,
        3,
        1,
        1,
        55,
    )
    assert occupancy.sold_percent == pytest.approx(100 * 3 / 59, abs=0.01)
    assert occupancy.sold_percent + occupancy.held_percent + occupancy.free_percent == pytest.approx(100, abs=0.05)


def test_top_movies_rank_by_tickets_or_revenue(
    screening: ScreeningServiceStub, channel: grpc.Channel, ana: Customer, clerk: Customer, sale: Sale
) -> None:
    other_hall = make_hall(screening, sale.showtime.cinema_id, "Second")
    pricey = make_movie(screening, title="Expensive")
    request = showtime_request(
        other_hall, pricey, datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
    )
    for price in request.prices:
        price.price.amount_minor = 5000
    second = Sale(screening.CreateShowtime(request), other_hall)
    sell(ana, clerk, sale, "B1", "B2", "B3")
    sell(ana, clerk, second, "A1")
    by_tickets = reports(channel, clerk).ListTopMovies(
        rpb.ListTopMoviesRequest(cinema_id=sale.showtime.cinema_id, start_date=today(), end_date=today())
    )
    assert [(m.title, m.tickets, m.revenue.amount_minor) for m in by_tickets.movies] == [
        ("Metropolis", 3, 3600),
        ("Expensive", 1, 5000),
    ]
    by_revenue = reports(channel, clerk).ListTopMovies(
        rpb.ListTopMoviesRequest(
            cinema_id=sale.showtime.cinema_id,
            start_date=today(),
            end_date=today(),
            ranking=rpb.RANKING_REVENUE,
            limit=1,
        )
    )
    assert [m.title for m in by_revenue.movies] == ["Expensive"]


def test_revenue_by_day_counts_valid_tickets_of_the_sale_day(
    channel: grpc.Channel, ana: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    sell(ana, clerk, sale, "B1", "B2")
    cancelled = sell(ana, clerk, sale, "B3")
    clerk.booking.CancelBooking(bpb.CancelBookingRequest(booking_id=cancelled.id))
    old = sell(ana, clerk, sale, "B4")
    db.execute("UPDATE booking.bookings SET created_at = created_at - interval '3 days' WHERE id = %s", (old.id,))
    start = datetime.now(ZoneInfo(CINEMA_TIME_ZONE)) - timedelta(days=7)
    report = reports(channel, clerk).GetRevenueByDay(
        rpb.GetRevenueByDayRequest(
            cinema_id=sale.showtime.cinema_id,
            start_date=date_pb2.Date(year=start.year, month=start.month, day=start.day),
            end_date=today(),
        )
    )
    assert [(d.tickets, d.revenue.amount_minor, d.revenue.currency_code) for d in report.days] == [
        (1, 1200, "EUR"),
        (2, 2400, "EUR"),
    ]


def test_reports_are_for_staff_and_refuse_bad_ranges(
    channel: grpc.Channel, ana: Customer, clerk: Customer, sale: Sale
) -> None:
    denied = call_fails(
        reports(channel, ana).GetShowtimeOccupancy, rpb.GetShowtimeOccupancyRequest(showtime_id=sale.showtime.id)
    )
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED
    backwards = call_fails(
        reports(channel, clerk).GetRevenueByDay,
        rpb.GetRevenueByDayRequest(
            cinema_id=sale.showtime.cinema_id, start_date=today(), end_date=date_pb2.Date(year=2000, month=1, day=1)
        ),
    )
    assert backwards.fields == {"end_date": "OUT_OF_RANGE"}
    missing = call_fails(
        reports(channel, clerk).ListTopMovies, rpb.ListTopMoviesRequest(cinema_id=sale.showtime.cinema_id)
    )
    assert missing.fields == {"start_date": "REQUIRED", "end_date": "REQUIRED"}
