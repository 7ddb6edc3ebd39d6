"""Demo data: one cinema with three halls, four movies and a week of showtimes.

Safe to run again: every object is created under a fixed request_id, so a second run returns
what the first created, and a run on a later day only adds the days that are new.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, time, timedelta

from cinema_grpc.domain.errors import ShowtimeOverlap
from cinema_grpc.domain.idempotency import RequestKey
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.ports import Clock, UnitOfWork
from cinema_grpc.domain.screening import use_cases as uc
from cinema_grpc.domain.screening.model import RowSpec, SeatKind, SeatLayout

_NAMESPACE = uuid.UUID("6f1c1d2e-8a52-4c1e-9d7e-3b7f0d6c2a10")


def _key(*parts: object) -> RequestKey:
    return RequestKey(str(uuid.uuid5(_NAMESPACE, "/".join(map(str, parts)))), "seed-demo", "seed-demo")


def _rows(
    labels: str, columns: int, *, gaps: frozenset[int] = frozenset(), kind: SeatKind = SeatKind.STANDARD
) -> list[RowSpec]:
    return [RowSpec(label, columns, kind, gaps) for label in labels]


LAYOUTS = {
    "Hall 1": SeatLayout(
        (
            *_rows("ABCDEFGH", 14, gaps=frozenset({4, 11})),
            *_rows("JK", 14, gaps=frozenset({4, 11}), kind=SeatKind.PREMIUM),
        )
    ),
    "Hall 2": SeatLayout(
        (
            RowSpec(
                "A",
                10,
                overrides={
                    1: SeatKind.WHEELCHAIR,
                    2: SeatKind.COMPANION,
                    9: SeatKind.COMPANION,
                    10: SeatKind.WHEELCHAIR,
                },
            ),
            *_rows("BCDEFG", 10),
            *_rows("H", 10, kind=SeatKind.PREMIUM),
        )
    ),
    "Studio": SeatLayout(tuple(_rows("ABCDE", 8))),
}
MOVIES = [
    ("The Last Projectionist", 118, "PG-13"),
    ("Harbour Lights", 97, "PG"),
    ("Night Train to Lisbon Redux", 142, "R"),
    ("Paper Planets", 88, "G"),
]
PRICES = {
    SeatKind.STANDARD: 1150,
    SeatKind.PREMIUM: 1490,
    SeatKind.WHEELCHAIR: 1150,
    SeatKind.COMPANION: 0,
}
DAILY_SLOTS = (time(14, 0), time(17, 30), time(21, 0))


async def seed_demo(unit_of_work: Callable[[], UnitOfWork], clock: Clock, days: int = 7) -> dict[str, int]:
    """Creates the demo data that is missing; returns how many showtimes exist for the week."""
    cinema = await uc.create_cinema(
        unit_of_work(), clock, uc.CreateCinema("Demo Cinema", "Europe/Berlin", "EUR", _key("cinema"))
    )
    halls = [
        await uc.create_hall(unit_of_work(), clock, uc.CreateHall(cinema.id, name, layout, _key("hall", name)))
        for name, layout in LAYOUTS.items()
    ]
    movies = [
        await uc.create_movie(unit_of_work(), clock, uc.MovieFields(title, minutes, rating, True), _key("movie", title))
        for title, minutes, rating in MOVIES
    ]
    today = clock.now().astimezone(cinema.zone).date()
    showtimes = 0
    for day in range(days):
        local_day = today + timedelta(days=day)
        for h, hall in enumerate(halls):
            for s, slot in enumerate(DAILY_SLOTS):
                starts_at = datetime.combine(local_day, slot, tzinfo=cinema.zone)
                if starts_at <= clock.now():
                    continue
                movie = movies[(day + h + s) % len(movies)]
                prices = [(kind, Money(PRICES[kind], "EUR")) for kind in sorted(hall.seat_kinds)]
                cmd = uc.CreateShowtime(
                    hall.id, movie.id, starts_at, prices, _key("showtime", hall.name, local_day, slot)
                )
                try:
                    await uc.create_showtime(unit_of_work(), clock, cmd)
                except ShowtimeOverlap:
                    continue  # someone scheduled this hall by hand; leave their showtime alone
                showtimes += 1
    return {"halls": len(halls), "movies": len(movies), "showtimes": showtimes}
