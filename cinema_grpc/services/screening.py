"""cinema.screening.v1.ScreeningService: converts messages and calls the screening use cases."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import date as date_type

from cachetools import TTLCache
from google.protobuf.message import Message

from cinema.screening.v1 import screening_pb2 as pb
from cinema.screening.v1 import screening_pb2_grpc
from cinema_grpc.domain.errors import DomainError, HallSuggestion, ShowtimeOverlap, Violations
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.pagination import page_request
from cinema_grpc.domain.ports import Clock, MovieFilter, UnitOfWork
from cinema_grpc.domain.screening import use_cases as uc
from cinema_grpc.domain.screening.model import (
    MAX_COLUMNS,
    Cinema,
    Hall,
    Movie,
    RowSpec,
    Seat,
    SeatKind,
    SeatLayout,
    Showtime,
    ShowtimeState,
)
from cinema_grpc.services.access import current_caller
from cinema_grpc.services.convert import (
    Context,
    money,
    parse_id,
    parse_money,
    parse_time,
    request_key_of,
    require_id,
    timestamp,
)
from cinema_grpc.services.status import register_details

_KINDS: dict[pb.SeatKind.ValueType, SeatKind] = {
    pb.SEAT_KIND_STANDARD: SeatKind.STANDARD,
    pb.SEAT_KIND_PREMIUM: SeatKind.PREMIUM,
    pb.SEAT_KIND_WHEELCHAIR: SeatKind.WHEELCHAIR,
    pb.SEAT_KIND_COMPANION: SeatKind.COMPANION,
}
KIND_NUMBERS = {kind: number for number, kind in _KINDS.items()}
_STATES = {ShowtimeState.SCHEDULED: pb.SHOWTIME_STATE_SCHEDULED, ShowtimeState.CANCELLED: pb.SHOWTIME_STATE_CANCELLED}


# ---------------------------------------------------------------- requests -> domain


def seat_kind(
    violations: Violations, field: str, value: pb.SeatKind.ValueType, *, default: SeatKind | None = None
) -> SeatKind:
    if value == pb.SEAT_KIND_UNSPECIFIED and default is not None:
        return default
    kind = _KINDS.get(value)
    if kind is None:
        violations.add(field, "INVALID_ENUM", "must be a seat kind: STANDARD, PREMIUM, WHEELCHAIR or COMPANION")
        return SeatKind.STANDARD
    return kind


def _layout(violations: Violations, message: pb.SeatLayout, field: str = "layout") -> SeatLayout:
    rows = []
    for i, row in enumerate(message.rows):
        path = f"{field}.rows[{i}]"
        overrides: dict[int, SeatKind] = {}
        for j, override in enumerate(row.overrides):
            if override.column in overrides:
                violations.add(
                    f"{path}.overrides[{j}].column", "DUPLICATE", f"column {override.column} is overridden twice"
                )
            overrides[override.column] = seat_kind(violations, f"{path}.overrides[{j}].kind", override.kind)
        if len(row.gap_columns) > MAX_COLUMNS:
            violations.add(f"{path}.gap_columns", "OUT_OF_RANGE", f"at most {MAX_COLUMNS} gaps")
        rows.append(
            RowSpec(
                label=row.label,
                columns=row.columns,
                kind=seat_kind(violations, f"{path}.kind", row.kind, default=SeatKind.STANDARD),
                gap_columns=frozenset(row.gap_columns),
                overrides=overrides,
            )
        )
    return SeatLayout(tuple(rows))


def _prices(violations: Violations, request: pb.CreateShowtimeRequest) -> list[tuple[SeatKind, Money]]:
    prices = []
    for i, price in enumerate(request.prices):
        kind = seat_kind(violations, f"prices[{i}].kind", price.kind)
        amount = parse_money(violations, f"prices[{i}].price", price, "price")
        if amount is not None:
            prices.append((kind, amount))
    return prices


# ---------------------------------------------------------------- domain -> responses


def cinema_message(cinema: Cinema) -> pb.Cinema:
    return pb.Cinema(
        id=str(cinema.id),
        name=cinema.name,
        time_zone=cinema.time_zone,
        currency_code=cinema.currency,
        create_time=timestamp(cinema.created_at),
    )


def layout_message(layout: SeatLayout) -> pb.SeatLayout:
    return pb.SeatLayout(
        rows=[
            pb.SeatRow(
                label=row.label,
                columns=row.columns,
                kind=KIND_NUMBERS[row.kind],
                gap_columns=sorted(row.gap_columns),
                overrides=[
                    pb.SeatKindOverride(column=column, kind=KIND_NUMBERS[kind])
                    for column, kind in sorted(row.overrides.items())
                ],
            )
            for row in layout.rows
        ]
    )


def seat_message(seat: Seat) -> pb.Seat:
    return pb.Seat(
        id=str(seat.id),
        row_label=seat.row_label,
        number=seat.number,
        column=seat.column,
        kind=KIND_NUMBERS[seat.kind],
        in_service=seat.in_service,
        out_of_service_reason=seat.out_of_service_reason,
    )


def hall_message(hall: Hall) -> pb.Hall:
    return pb.Hall(
        id=str(hall.id),
        cinema_id=str(hall.cinema_id),
        name=hall.name,
        layout=layout_message(hall.layout),
        seats=[seat_message(seat) for seat in hall.seats],
        seat_count=hall.seat_count,
        create_time=timestamp(hall.created_at),
        update_time=timestamp(hall.updated_at),
    )


def movie_message(movie: Movie) -> pb.Movie:
    return pb.Movie(
        id=str(movie.id),
        title=movie.title,
        duration_minutes=movie.duration_minutes,
        rating=movie.rating,
        active=movie.active,
        create_time=timestamp(movie.created_at),
        update_time=timestamp(movie.updated_at),
    )


def showtime_message(showtime: Showtime) -> pb.Showtime:
    return pb.Showtime(
        id=str(showtime.id),
        cinema_id=str(showtime.cinema_id),
        hall_id=str(showtime.hall_id),
        movie_id=str(showtime.movie_id),
        start_time=timestamp(showtime.period.starts_at),
        end_time=timestamp(showtime.period.ends_at),
        busy_until=timestamp(showtime.period.busy_until),
        prices=[
            pb.SeatPrice(kind=KIND_NUMBERS[kind], price=money(price))
            for kind, price in sorted(showtime.prices.items(), key=lambda item: KIND_NUMBERS[item[0]])
        ],
        state=_STATES[showtime.state],
        cancel_reason=showtime.cancel_reason,
        create_time=timestamp(showtime.created_at),
    )


def suggestion_message(hall: HallSuggestion) -> pb.HallSuggestion:
    return pb.HallSuggestion(hall_id=hall.hall_id, name=hall.name, seat_count=hall.seat_count)


def _conflict_details(error: DomainError) -> list[Message]:
    if not isinstance(error, ShowtimeOverlap):
        return []
    conflict = error.conflict
    return [
        pb.ShowtimeConflict(
            conflicting_showtime_id=conflict.showtime_id,
            conflicting_start_time=timestamp(conflict.starts_at),
            conflicting_busy_until=timestamp(conflict.busy_until),
            free_halls=[suggestion_message(h) for h in conflict.free_halls],
        )
    ]


register_details(_conflict_details)


# ---------------------------------------------------------------- servicer


class ShowtimeAnswers:
    """GetShowtime's answers, kept for ``seconds``: a showtime page read by a crowd costs one read
    of the database per replica and period, not one per call.

    A change made through this replica forgets its showtime at once, and a read that began
    before any change is not kept. Another replica's change shows here within ``seconds``; what
    matters is decided by the database whatever this says (a hold of a cancelled showtime is
    refused by the hold itself).
    """

    def __init__(self, seconds: float, size: int = 10_000) -> None:
        self._kept: TTLCache[uuid.UUID, pb.Showtime] | None = (
            TTLCache(maxsize=size, ttl=seconds, timer=time.monotonic) if seconds > 0 else None
        )
        self._changes = 0

    async def get(self, showtime_id: uuid.UUID, read: Callable[[], Awaitable[Showtime]]) -> pb.Showtime:
        if self._kept is None:
            return showtime_message(await read())
        if (kept := self._kept.get(showtime_id)) is not None:
            return kept
        changes = self._changes
        message = showtime_message(await read())
        if changes == self._changes:
            self._kept[showtime_id] = message
        return message

    def changed(self, showtime: Showtime) -> pb.Showtime:
        """Forgets the showtime (a change was committed); returns its message."""
        self._changes += 1
        if self._kept is not None:
            self._kept.pop(showtime.id, None)
        return showtime_message(showtime)


class ScreeningServicer(screening_pb2_grpc.ScreeningServiceServicer):
    def __init__(self, unit_of_work: Callable[[], UnitOfWork], clock: Clock, showtime_cache_seconds: float) -> None:
        self._uow = unit_of_work
        self._clock = clock
        self._showtimes = ShowtimeAnswers(showtime_cache_seconds)

    async def CreateCinema(self, request: pb.CreateCinemaRequest, context: Context) -> pb.Cinema:
        violations = Violations()
        key = request_key_of(violations, request, current_caller().owner_key())
        violations.raise_if_any()
        cinema = request.cinema
        cmd = uc.CreateCinema(cinema.name, cinema.time_zone, cinema.currency_code, key)
        return cinema_message(await uc.create_cinema(self._uow(), self._clock, cmd))

    async def GetCinema(self, request: pb.GetCinemaRequest, context: Context) -> pb.Cinema:
        cinema_id = require_id("cinema_id", request.cinema_id)
        return cinema_message(await uc.get_cinema(self._uow(), cinema_id))

    async def ListCinemas(self, request: pb.ListCinemasRequest, context: Context) -> pb.ListCinemasResponse:
        page = page_request(request.page_size, request.page_token, "ListCinemas")
        result = await uc.list_cinemas(self._uow(), page)
        return pb.ListCinemasResponse(
            cinemas=[cinema_message(c) for c in result.items], next_page_token=result.next_page_token(page)
        )

    async def CreateHall(self, request: pb.CreateHallRequest, context: Context) -> pb.Hall:
        violations = Violations()
        cinema_id = parse_id(violations, "cinema_id", request.cinema_id)
        key = request_key_of(violations, request, current_caller().owner_key())
        layout = _layout(violations, request.layout)
        violations.raise_if_any()
        assert cinema_id is not None
        cmd = uc.CreateHall(cinema_id, request.name, layout, key)
        return hall_message(await uc.create_hall(self._uow(), self._clock, cmd))

    async def GetHall(self, request: pb.GetHallRequest, context: Context) -> pb.Hall:
        hall_id = require_id("hall_id", request.hall_id)
        return hall_message(await uc.get_hall(self._uow(), hall_id))

    async def ListHalls(self, request: pb.ListHallsRequest, context: Context) -> pb.ListHallsResponse:
        cinema_id = require_id("cinema_id", request.cinema_id)
        page = page_request(request.page_size, request.page_token, "ListHalls", cinema_id)
        result = await uc.list_halls(self._uow(), cinema_id, page)
        return pb.ListHallsResponse(
            halls=[hall_message(h) for h in result.items], next_page_token=result.next_page_token(page)
        )

    async def RenameHall(self, request: pb.RenameHallRequest, context: Context) -> pb.Hall:
        hall_id = require_id("hall_id", request.hall_id)
        return hall_message(await uc.rename_hall(self._uow(), self._clock, hall_id, request.name))

    async def ReplaceHallLayout(self, request: pb.ReplaceHallLayoutRequest, context: Context) -> pb.Hall:
        violations = Violations()
        hall_id = parse_id(violations, "hall_id", request.hall_id)
        layout = _layout(violations, request.layout)
        violations.raise_if_any()
        assert hall_id is not None
        return hall_message(await uc.replace_hall_layout(self._uow(), self._clock, hall_id, layout))

    async def SetSeatService(self, request: pb.SetSeatServiceRequest, context: Context) -> pb.Seat:
        violations = Violations()
        hall_id = parse_id(violations, "hall_id", request.hall_id)
        seat_id = parse_id(violations, "seat_id", request.seat_id)
        violations.raise_if_any()
        assert hall_id is not None and seat_id is not None
        cmd = uc.SetSeatService(hall_id, seat_id, request.in_service, request.reason)
        return seat_message(await uc.set_seat_service(self._uow(), self._clock, cmd))

    async def CreateMovie(self, request: pb.CreateMovieRequest, context: Context) -> pb.Movie:
        violations = Violations()
        key = request_key_of(violations, request, current_caller().owner_key())
        violations.raise_if_any()
        m = request.movie
        fields = uc.MovieFields(m.title, m.duration_minutes, m.rating, m.active)
        return movie_message(await uc.create_movie(self._uow(), self._clock, fields, key))

    async def GetMovie(self, request: pb.GetMovieRequest, context: Context) -> pb.Movie:
        movie_id = require_id("movie_id", request.movie_id)
        return movie_message(await uc.get_movie(self._uow(), movie_id))

    async def ListMovies(self, request: pb.ListMoviesRequest, context: Context) -> pb.ListMoviesResponse:
        violations = Violations()
        if len(request.title_contains) > 200:
            violations.add("title_contains", "TOO_LONG", "must be at most 200 characters")
        violations.raise_if_any()
        movie_filter = MovieFilter(request.active_only, request.title_contains.strip())
        page = page_request(request.page_size, request.page_token, "ListMovies", movie_filter)
        result = await uc.list_movies(self._uow(), movie_filter, page)
        return pb.ListMoviesResponse(
            movies=[movie_message(m) for m in result.items], next_page_token=result.next_page_token(page)
        )

    async def UpdateMovie(self, request: pb.UpdateMovieRequest, context: Context) -> pb.Movie:
        movie_id = require_id("movie.id", request.movie.id)
        m = request.movie
        fields = uc.MovieFields(m.title, m.duration_minutes, m.rating, m.active)
        mask = frozenset(request.update_mask.paths)
        return movie_message(await uc.update_movie(self._uow(), self._clock, movie_id, fields, mask))

    async def CreateShowtime(self, request: pb.CreateShowtimeRequest, context: Context) -> pb.Showtime:
        violations = Violations()
        hall_id = parse_id(violations, "hall_id", request.hall_id)
        movie_id = parse_id(violations, "movie_id", request.movie_id)
        starts_at = parse_time(violations, "start_time", request, "start_time")
        if not request.prices:
            violations.add("prices", "REQUIRED", "price every seat kind of the hall")
        prices = _prices(violations, request)
        key = request_key_of(violations, request, current_caller().owner_key())
        violations.raise_if_any()
        assert hall_id is not None and movie_id is not None and starts_at is not None
        cmd = uc.CreateShowtime(hall_id, movie_id, starts_at, prices, key)
        return showtime_message(await uc.create_showtime(self._uow(), self._clock, cmd))

    async def GetShowtime(self, request: pb.GetShowtimeRequest, context: Context) -> pb.Showtime:
        showtime_id = require_id("showtime_id", request.showtime_id)
        return await self._showtimes.get(showtime_id, lambda: uc.get_showtime(self._uow(), showtime_id))

    async def ListShowtimes(self, request: pb.ListShowtimesRequest, context: Context) -> pb.ListShowtimesResponse:
        violations = Violations()
        cinema_id = parse_id(violations, "cinema_id", request.cinema_id, required=False)
        movie_id = parse_id(violations, "movie_id", request.movie_id, required=False)
        hall_id = parse_id(violations, "hall_id", request.hall_id, required=False)
        local_date = None
        if request.HasField("date"):
            try:
                local_date = date_type(request.date.year, request.date.month, request.date.day)
            except ValueError:
                violations.add("date", "INVALID_DATE", "must be a full calendar date")
        violations.raise_if_any()
        query = uc.ListShowtimes(cinema_id, movie_id, hall_id, local_date, request.include_cancelled)
        page = page_request(request.page_size, request.page_token, "ListShowtimes", query)
        result = await uc.list_showtimes(self._uow(), query, page)
        return pb.ListShowtimesResponse(
            showtimes=[showtime_message(s) for s in result.items], next_page_token=result.next_page_token(page)
        )

    async def CancelShowtime(self, request: pb.CancelShowtimeRequest, context: Context) -> pb.Showtime:
        showtime_id = require_id("showtime_id", request.showtime_id)
        return self._showtimes.changed(await uc.cancel_showtime(self._uow(), self._clock, showtime_id, request.reason))

    async def RescheduleShowtime(self, request: pb.RescheduleShowtimeRequest, context: Context) -> pb.Showtime:
        violations = Violations()
        showtime_id = parse_id(violations, "showtime_id", request.showtime_id)
        starts_at = parse_time(violations, "start_time", request, "start_time")
        hall_id = parse_id(violations, "hall_id", request.hall_id, required=False)
        key = request_key_of(violations, request, current_caller().owner_key())
        violations.raise_if_any()
        assert showtime_id is not None and starts_at is not None
        cmd = uc.RescheduleShowtime(showtime_id, starts_at, hall_id, key)
        return self._showtimes.changed(await uc.reschedule_showtime(self._uow(), self._clock, cmd))

    async def FindFreeHalls(self, request: pb.FindFreeHallsRequest, context: Context) -> pb.FindFreeHallsResponse:
        violations = Violations()
        cinema_id = parse_id(violations, "cinema_id", request.cinema_id)
        starts_at = parse_time(violations, "start_time", request, "start_time")
        violations.raise_if_any()
        assert cinema_id is not None and starts_at is not None
        query = uc.FindFreeHalls(cinema_id, starts_at, request.duration_minutes, request.min_seats)
        halls = await uc.find_free_halls(self._uow(), query)
        return pb.FindFreeHallsResponse(halls=[suggestion_message(h) for h in halls])
