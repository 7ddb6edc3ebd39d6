"""A showtime ready for sale and signed-in customers, for booking tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import psycopg

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.identity.v1 import identity_pb2 as ipb
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from tests.auth_client import sign_in, with_token
from tests.screening_data import make_cinema, make_hall, make_movie, showtime_request

# Row A has a wheelchair space at column 1 with its companion at 2; rows B-E are standard,
# row F premium.
LAYOUT = spb.SeatLayout(
    rows=[
        spb.SeatRow(
            label="A",
            columns=10,
            overrides=[
                spb.SeatKindOverride(column=1, kind=spb.SEAT_KIND_WHEELCHAIR),
                spb.SeatKindOverride(column=2, kind=spb.SEAT_KIND_COMPANION),
            ],
        ),
        *(spb.SeatRow(label=label, columns=10) for label in "BCDE"),
        spb.SeatRow(label="F", columns=10, kind=spb.SEAT_KIND_PREMIUM),
    ]
)


@dataclass
class Sale:
    """A scheduled showtime and its hall."""

    showtime: spb.Showtime
    hall: spb.Hall

    def seat(self, label: str) -> str:
        return next(s.id for s in self.hall.seats if f"{s.row_label}{s.number}" == label)

    def seats(self, *labels: str) -> list[str]:
        return [self.seat(label) for label in labels]


# A showtime this soon has its doors open and its customers' cancellations closed, and stays
# ahead for as long as any test runs.
SOON_MINUTES = 40


def open_sale(
    screening: ScreeningServiceStub, hours_ahead: int = 30, cinema_name: str = "Odeon", *, soon: bool = False
) -> Sale:
    """A showtime on the hour ``hours_ahead`` hours on, or ``SOON_MINUTES`` minutes on (``soon``)."""
    cinema = make_cinema(screening, cinema_name)
    hall = make_hall(screening, cinema.id, "Main", LAYOUT)
    movie = make_movie(screening, minutes=100)
    now = datetime.now(UTC)
    if soon:  # not on the hour: the next hour may be seconds away
        start = (now + timedelta(minutes=SOON_MINUTES)).replace(second=0, microsecond=0)
    else:
        start = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours_ahead)
    showtime = screening.CreateShowtime(showtime_request(hall, movie, start))
    return Sale(showtime, hall)


@dataclass
class Customer:
    user: ipb.User
    token: str
    booking: BookingServiceStub


def customer(channel: grpc.Channel, db: psycopg.Connection[tuple[object, ...]], *roles: str) -> Customer:
    user, pair = sign_in(channel, db, *roles)
    return Customer(user, pair.access_token, BookingServiceStub(with_token(channel, pair.access_token)))


def hold(who: Customer, sale: Sale, *labels: str, request_id: str = "") -> bpb.Hold:
    return who.booking.HoldSeats(
        bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=sale.seats(*labels), request_id=request_id)
    )


def states(seat_map: bpb.SeatMap, sale: Sale) -> dict[str, int]:
    """Seat label -> state, for the seats that are not free."""
    labels = {s.id: f"{s.row_label}{s.number}" for s in sale.hall.seats}
    return {labels[s.seat_id]: s.state for s in seat_map.seats if s.state != bpb.SEAT_STATE_FREE}
