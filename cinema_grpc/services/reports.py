"""cinema.reports.v1.ReportsService: occupancy, top movies and revenue for staff."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from google.type import date_pb2

from cinema.reports.v1 import reports_pb2 as pb
from cinema.reports.v1 import reports_pb2_grpc
from cinema_grpc.domain import reports as uc
from cinema_grpc.domain.admission import use_cases as admission
from cinema_grpc.domain.errors import Violations
from cinema_grpc.domain.ports import Clock, UnitOfWork
from cinema_grpc.services.admission import VERDICTS
from cinema_grpc.services.convert import Context, money, parse_id, require_id

_RANKINGS = {
    pb.RANKING_UNSPECIFIED: uc.Ranking.TICKETS,
    pb.RANKING_TICKETS: uc.Ranking.TICKETS,
    pb.RANKING_REVENUE: uc.Ranking.REVENUE,
}


def _date(violations: Violations, field: str, request: object, name: str) -> date | None:
    if not request.HasField(name):  # type: ignore[attr-defined]
        return None
    value: date_pb2.Date = getattr(request, name)
    try:
        return date(value.year, value.month, value.day)
    except ValueError:
        violations.add(field, "INVALID_DATE", "must be a full calendar date")
        return None


class ReportsServicer(reports_pb2_grpc.ReportsServiceServicer):
    def __init__(self, unit_of_work: Callable[[], UnitOfWork], clock: Clock) -> None:
        self._uow = unit_of_work
        self._clock = clock

    async def GetShowtimeOccupancy(
        self, request: pb.GetShowtimeOccupancyRequest, context: Context
    ) -> pb.ShowtimeOccupancy:
        showtime_id = require_id("showtime_id", request.showtime_id)
        o = await uc.showtime_occupancy(self._uow(), showtime_id, self._clock.now())
        return pb.ShowtimeOccupancy(
            showtime_id=str(o.showtime_id),
            seats=o.seats,
            sold=o.sold,
            held=o.held,
            free=o.free,
            out_of_service=o.out_of_service,
            sold_percent=o.percent(o.sold),
            held_percent=o.percent(o.held),
            free_percent=o.percent(o.free),
            admitted=o.admitted,
            no_shows=o.no_shows,
        )

    async def GetShowtimeAdmissions(
        self, request: pb.GetShowtimeAdmissionsRequest, context: Context
    ) -> pb.ShowtimeAdmissions:
        showtime_id = require_id("showtime_id", request.showtime_id)
        summary = await admission.showtime_admissions(self._uow(), showtime_id, self._clock.now())
        return pb.ShowtimeAdmissions(
            showtime_id=str(summary.showtime_id),
            tickets=summary.tickets,
            admitted=summary.admitted,
            not_admitted=summary.not_admitted,
            ended=summary.ended,
            refused=[
                pb.VerdictCount(verdict=VERDICTS[verdict], scans=count)
                for verdict, count in sorted(summary.refused.items(), key=lambda item: VERDICTS[item[0]])
            ],
            undone=summary.undone,
        )

    async def ListTopMovies(self, request: pb.ListTopMoviesRequest, context: Context) -> pb.ListTopMoviesResponse:
        violations = Violations()
        cinema_id = parse_id(violations, "cinema_id", request.cinema_id)
        start = _date(violations, "start_date", request, "start_date")
        end = _date(violations, "end_date", request, "end_date")
        ranking = _RANKINGS.get(request.ranking)
        if ranking is None:
            violations.add("ranking", "INVALID_ENUM", "must be RANKING_TICKETS or RANKING_REVENUE")
        violations.raise_if_any()
        assert cinema_id is not None and ranking is not None
        movies = await uc.top_movies(self._uow(), cinema_id, start, end, request.limit, ranking)
        return pb.ListTopMoviesResponse(
            movies=[
                pb.MovieSales(movie_id=str(m.movie_id), title=m.title, tickets=m.tickets, revenue=money(m.revenue))
                for m in movies
            ]
        )

    async def GetRevenueByDay(self, request: pb.GetRevenueByDayRequest, context: Context) -> pb.GetRevenueByDayResponse:
        violations = Violations()
        cinema_id = parse_id(violations, "cinema_id", request.cinema_id)
        start = _date(violations, "start_date", request, "start_date")
        end = _date(violations, "end_date", request, "end_date")
        violations.raise_if_any()
        assert cinema_id is not None
        days = await uc.revenue_by_day(self._uow(), cinema_id, start, end)
        return pb.GetRevenueByDayResponse(
            days=[
                pb.DayRevenue(
                    date=date_pb2.Date(year=d.day.year, month=d.day.month, day=d.day.day),
                    tickets=d.tickets,
                    revenue=money(d.revenue),
                )
                for d in days
            ]
        )
