"""Staff reports: occupancy of a showtime, top movies, revenue by day. Read-only use cases,
each over one consistent snapshot."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from cinema_grpc.domain.errors import CinemaNotFound, ShowtimeNotFound, Violations
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.ports import UnitOfWork

MAX_REPORT_DAYS = 366


class Ranking(enum.StrEnum):
    TICKETS = "TICKETS"
    REVENUE = "REVENUE"


@dataclass(frozen=True)
class Occupancy:
    showtime_id: uuid.UUID
    seats: int
    sold: int
    held: int
    out_of_service: int
    # Sold tickets checked in at the door, and whether the showtime has ended.
    admitted: int = 0
    ended: bool = False

    @property
    def no_shows(self) -> int:
        """Sold tickets never checked in, once the showtime has ended."""
        return self.sold - self.admitted if self.ended else 0

    @property
    def free(self) -> int:
        return self.seats - self.out_of_service - self.sold - self.held

    def percent(self, count: int) -> float:
        in_service = self.seats - self.out_of_service
        return round(100 * count / in_service, 2) if in_service else 0.0


@dataclass(frozen=True)
class MovieSales:
    movie_id: uuid.UUID
    title: str
    tickets: int
    revenue: Money


@dataclass(frozen=True)
class DayRevenue:
    day: date
    tickets: int
    revenue: Money


def _day_range(violations: Violations, start: date | None, end: date | None) -> None:
    if start is None:
        violations.add("start_date", "REQUIRED", "must be a full calendar date")
    if end is None:
        violations.add("end_date", "REQUIRED", "must be a full calendar date")
    if start is not None and end is not None:
        if end < start:
            violations.add("end_date", "OUT_OF_RANGE", "must not be before start_date")
        elif (end - start).days >= MAX_REPORT_DAYS:
            violations.add("end_date", "OUT_OF_RANGE", f"a report covers at most {MAX_REPORT_DAYS} days")


async def _sale_window(uow: UnitOfWork, cinema_id: uuid.UUID, start: date, end: date) -> tuple[datetime, datetime, str]:
    cinema = await uow.cinemas.get(cinema_id)
    if cinema is None:
        raise CinemaNotFound(cinema_id)
    begin, _ = cinema.local_day_bounds(start.year, start.month, start.day)
    last = end + timedelta(days=1)
    finish, _ = cinema.local_day_bounds(last.year, last.month, last.day)
    return begin, finish, cinema.time_zone


async def showtime_occupancy(uow: UnitOfWork, showtime_id: uuid.UUID, now: datetime) -> Occupancy:
    async with uow:
        await uow.snapshot()
        occupancy = await uow.reports.occupancy(showtime_id, now)
    if occupancy is None:
        raise ShowtimeNotFound(showtime_id)
    return occupancy


async def top_movies(
    uow: UnitOfWork, cinema_id: uuid.UUID, start: date | None, end: date | None, limit: int, ranking: Ranking
) -> list[MovieSales]:
    violations = Violations()
    _day_range(violations, start, end)
    if not 0 <= limit <= 100:
        violations.add("limit", "OUT_OF_RANGE", "must be 1 to 100 (0 means 10)")
    violations.raise_if_any()
    assert start is not None and end is not None
    async with uow:
        await uow.snapshot()
        begin, finish, _ = await _sale_window(uow, cinema_id, start, end)
        return await uow.reports.top_movies(cinema_id, begin, finish, limit or 10, ranking)


async def revenue_by_day(
    uow: UnitOfWork, cinema_id: uuid.UUID, start: date | None, end: date | None
) -> list[DayRevenue]:
    violations = Violations()
    _day_range(violations, start, end)
    violations.raise_if_any()
    assert start is not None and end is not None
    async with uow:
        await uow.snapshot()
        begin, finish, zone = await _sale_window(uow, cinema_id, start, end)
        return await uow.reports.revenue_by_day(cinema_id, begin, finish, zone)
