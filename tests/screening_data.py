"""Builders of screening objects through the public API, for tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from cinema.common.v1 import money_pb2
from cinema.screening.v1 import screening_pb2 as pb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub


def at(moment: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment)
    return ts


def tomorrow_at(hour: int, minute: int = 0, *, days: int = 1) -> datetime:
    """A whole-minute UTC time some days ahead, so tests never race the clock."""
    base = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return base + timedelta(days=days, hours=hour, minutes=minute)


def grid(labels: str = "ABCDE", columns: int = 10, **row: object) -> pb.SeatLayout:
    return pb.SeatLayout(rows=[pb.SeatRow(label=label, columns=columns, **row) for label in labels])  # type: ignore[arg-type]


# The time zone of the tests' cinemas: their local days are not the machine's (UTC) from
# 22:00 or 23:00 UTC on.
CINEMA_TIME_ZONE = "Europe/Berlin"


def make_cinema(stub: ScreeningServiceStub, name: str = "Odeon", time_zone: str = CINEMA_TIME_ZONE) -> pb.Cinema:
    return stub.CreateCinema(
        pb.CreateCinemaRequest(cinema=pb.Cinema(name=name, time_zone=time_zone, currency_code="EUR"))
    )


def make_hall(
    stub: ScreeningServiceStub, cinema_id: str, name: str = "Hall 1", layout: pb.SeatLayout | None = None
) -> pb.Hall:
    return stub.CreateHall(pb.CreateHallRequest(cinema_id=cinema_id, name=name, layout=layout or grid()))


def make_movie(
    stub: ScreeningServiceStub, minutes: int = 120, title: str = "Metropolis", active: bool = True
) -> pb.Movie:
    return stub.CreateMovie(
        pb.CreateMovieRequest(movie=pb.Movie(title=title, duration_minutes=minutes, rating="PG", active=active))
    )


def prices(hall: pb.Hall, amount_minor: int = 1200, currency: str = "EUR") -> list[pb.SeatPrice]:
    kinds = sorted({seat.kind for seat in hall.seats})
    return [
        pb.SeatPrice(kind=kind, price=money_pb2.Money(amount_minor=amount_minor, currency_code=currency))
        for kind in kinds
    ]


def showtime_request(hall: pb.Hall, movie: pb.Movie, start: datetime, **extra: object) -> pb.CreateShowtimeRequest:
    return pb.CreateShowtimeRequest(
        hall_id=hall.id,
        movie_id=movie.id,
        start_time=at(start),
        prices=prices(hall),
        **extra,  # type: ignore[arg-type]
    )
