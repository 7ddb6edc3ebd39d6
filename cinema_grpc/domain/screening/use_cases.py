"""Screening use cases: each takes a unit of work and a command and runs in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import TypeVar

from cinema_grpc.domain.errors import (
    CinemaNotFound,
    Contention,
    HallHasClaims,
    HallNotFound,
    HallSuggestion,
    MovieInactive,
    MovieNotFound,
    NotFound,
    SeatNotFound,
    ShowtimeAlreadyStarted,
    ShowtimeCancelled,
    ShowtimeConflict,
    ShowtimeHasSales,
    ShowtimeNotFound,
    ShowtimeOverlap,
    ShowtimePriceMissing,
    Violations,
    invalid,
)
from cinema_grpc.domain.idempotency import RequestKey, earlier_result, remember_result
from cinema_grpc.domain.ids import new_id
from cinema_grpc.domain.money import Money, is_currency_code
from cinema_grpc.domain.pagination import Page, PageRequest
from cinema_grpc.domain.ports import Clock, HallSlotTaken, MovieFilter, ShowtimeFilter, UnitOfWork
from cinema_grpc.domain.screening.model import (
    MAX_DURATION_MINUTES,
    MAX_SCHEDULE_AHEAD,
    BusyPeriod,
    Cinema,
    Hall,
    Movie,
    Seat,
    SeatKind,
    SeatLayout,
    Showtime,
    ShowtimeState,
    choose_free_halls,
    generate_seats,
    price_violations,
    zone_of,
)
from cinema_grpc.domain.text import clean_text

T = TypeVar("T")

# ---------------------------------------------------------------- cinemas


@dataclass(frozen=True)
class CreateCinema:
    name: str
    time_zone: str
    currency: str
    request: RequestKey | None = None


async def create_cinema(uow: UnitOfWork, clock: Clock, cmd: CreateCinema) -> Cinema:
    violations = Violations()
    name = clean_text(violations, "cinema.name", cmd.name, max_length=100)
    if zone_of(cmd.time_zone) is None:
        violations.add("cinema.time_zone", "UNKNOWN_TIME_ZONE", "must be an IANA time zone such as Europe/Berlin")
    if not is_currency_code(cmd.currency):
        violations.add("cinema.currency_code", "INVALID_FORMAT", "must be an ISO 4217 code such as EUR")
    violations.raise_if_any()
    async with uow:
        if (earlier := await earlier_result(uow, "CreateCinema", cmd.request)) is not None:
            return await _cinema(uow, earlier)
        cinema = Cinema(new_id(), name, cmd.time_zone, cmd.currency, clock.now())
        await uow.cinemas.add(cinema)
        await remember_result(uow, "CreateCinema", cmd.request, cinema.id)
        await uow.commit()
    return cinema


async def get_cinema(uow: UnitOfWork, cinema_id: uuid.UUID) -> Cinema:
    async with uow:
        return await _cinema(uow, cinema_id)


async def list_cinemas(uow: UnitOfWork, page: PageRequest) -> Page[Cinema]:
    async with uow:
        return await uow.cinemas.list_page(page)


def _found(entity: T | None, missing: type[NotFound], entity_id: uuid.UUID) -> T:
    if entity is None:
        raise missing(entity_id)
    return entity


async def _cinema(uow: UnitOfWork, cinema_id: uuid.UUID) -> Cinema:
    return _found(await uow.cinemas.get(cinema_id), CinemaNotFound, cinema_id)


# ---------------------------------------------------------------- halls


@dataclass(frozen=True)
class CreateHall:
    cinema_id: uuid.UUID
    name: str
    layout: SeatLayout
    request: RequestKey | None = None


async def create_hall(uow: UnitOfWork, clock: Clock, cmd: CreateHall) -> Hall:
    violations = Violations()
    name = clean_text(violations, "name", cmd.name, max_length=100)
    violations.extend(cmd.layout.violations().items)
    violations.raise_if_any()
    async with uow:
        if (earlier := await earlier_result(uow, "CreateHall", cmd.request)) is not None:
            return await _hall(uow, earlier)
        await _cinema(uow, cmd.cinema_id)
        hall_id = new_id()
        now = clock.now()
        hall = Hall(hall_id, cmd.cinema_id, name, cmd.layout, generate_seats(hall_id, cmd.layout), now, now)
        # The hall row and every seat row go into this one transaction: a failure on any
        # seat leaves no hall behind.
        await uow.halls.add(hall)
        await remember_result(uow, "CreateHall", cmd.request, hall.id)
        await uow.commit()
    return hall


async def get_hall(uow: UnitOfWork, hall_id: uuid.UUID) -> Hall:
    async with uow:
        return await _hall(uow, hall_id)


async def list_halls(uow: UnitOfWork, cinema_id: uuid.UUID, page: PageRequest) -> Page[Hall]:
    async with uow:
        await _cinema(uow, cinema_id)
        return await uow.halls.list_page(cinema_id, page)


async def rename_hall(uow: UnitOfWork, clock: Clock, hall_id: uuid.UUID, new_name: str) -> Hall:
    violations = Violations()
    name = clean_text(violations, "name", new_name, max_length=100)
    violations.raise_if_any()
    async with uow:
        hall = replace(await _hall(uow, hall_id, for_update=True), name=name, updated_at=clock.now())
        await uow.halls.rename(hall)
        await uow.commit()
    return hall


async def replace_hall_layout(uow: UnitOfWork, clock: Clock, hall_id: uuid.UUID, layout: SeatLayout) -> Hall:
    layout.violations().raise_if_any()
    async with uow:
        now = clock.now()
        # The seats' locks of its upcoming showtimes (in one order) before the hall's row lock, as
        # every seat decision takes them: no hold is decided on the old seats while this is, and
        # every open seat stream of those showtimes is told to take the new seat map.
        upcoming = sorted(await uow.showtimes.upcoming_for_hall(hall_id, now), key=lambda s: s.id)
        inventories = [await uow.inventories.get_locked(s.id, now, all_sales=True) for s in upcoming]
        # The row lock on the hall keeps new showtimes (and moves) out of it until this commits.
        hall = await _hall(uow, hall_id, for_update=True)
        if {s.id for s in await uow.showtimes.upcoming_for_hall(hall_id, now)} - {s.id for s in upcoming}:
            raise Contention("a showtime was scheduled in this hall meanwhile; retry the layout change")
        claims = 0
        for inventory in inventories:
            inventory.expire(now)  # lapsed holds do not keep the old layout
            claims += sum(inventory.claimed_seats(now))
        if claims:
            raise HallHasClaims(
                f"{claims} seat(s) of upcoming showtimes of this hall are held or sold; "
                "the layout can change once they are released or the showtimes are over",
                subject=f"halls/{hall_id}",
                metadata={"active_claims": str(claims)},
            )
        seats = generate_seats(hall_id, layout)
        new_kinds = {seat.kind for seat in seats}
        for showtime in upcoming:
            unpriced = sorted(new_kinds - set(showtime.prices))
            if unpriced:
                raise ShowtimePriceMissing(
                    f"showtime {showtime.id} has no price for seat kind {', '.join(unpriced)}",
                    subject=f"showtimes/{showtime.id}",
                )
        hall = replace(hall, layout=layout, seats=seats, updated_at=now)
        await uow.halls.replace_seats(hall)
        for inventory in inventories:
            inventory.replace_seats(now)
        await uow.commit()
    return hall


@dataclass(frozen=True)
class SetSeatService:
    hall_id: uuid.UUID
    seat_id: uuid.UUID
    in_service: bool
    reason: str


async def set_seat_service(uow: UnitOfWork, clock: Clock, cmd: SetSeatService) -> Seat:
    violations = Violations()
    reason = clean_text(violations, "reason", cmd.reason, max_length=200, required=not cmd.in_service)
    violations.raise_if_any()
    async with uow:
        now = clock.now()
        # The seats' locks of the hall's upcoming showtimes (in one order) before the hall's row
        # lock, as ReplaceHallLayout takes them: no hold is decided on the seat while its service
        # changes, and every open seat stream of those showtimes is told of it.
        upcoming = sorted(await uow.showtimes.upcoming_for_hall(cmd.hall_id, now), key=lambda s: s.id)
        inventories = [await uow.inventories.get_locked(s.id, now, all_sales=True) for s in upcoming]
        # The row lock on the hall keeps new showtimes (and moves) out of it until this commits.
        hall = await _hall(uow, cmd.hall_id, for_update=True)
        seat = hall.seat(cmd.seat_id)
        if seat is None:
            raise SeatNotFound(cmd.seat_id)
        if {s.id for s in await uow.showtimes.upcoming_for_hall(cmd.hall_id, now)} - {s.id for s in upcoming}:
            raise Contention("a showtime was scheduled in this hall meanwhile; retry the seat change")
        changed = seat.in_service != cmd.in_service
        seat = replace(seat, in_service=cmd.in_service, out_of_service_reason="" if cmd.in_service else reason)
        await uow.halls.update_seat(seat, now)
        if changed:  # a new reason alone changes no seat map
            for inventory in inventories:
                inventory.set_seat_service(seat, now)
        await uow.commit()
    return seat


async def _hall(uow: UnitOfWork, hall_id: uuid.UUID, *, for_update: bool = False) -> Hall:
    return _found(await uow.halls.get(hall_id, for_update=for_update), HallNotFound, hall_id)


# ---------------------------------------------------------------- movies


@dataclass(frozen=True)
class MovieFields:
    title: str
    duration_minutes: int
    rating: str
    active: bool


MOVIE_FIELDS = frozenset({"title", "duration_minutes", "rating", "active"})


def _movie_violations(fields: MovieFields, names: frozenset[str], prefix: str) -> tuple[Violations, MovieFields]:
    violations = Violations()
    title = fields.title
    rating = fields.rating
    if "title" in names:
        title = clean_text(violations, f"{prefix}.title", fields.title, max_length=200)
    if "rating" in names:
        rating = clean_text(violations, f"{prefix}.rating", fields.rating, max_length=20, required=False)
    if "duration_minutes" in names and not 1 <= fields.duration_minutes <= MAX_DURATION_MINUTES:
        violations.add(f"{prefix}.duration_minutes", "OUT_OF_RANGE", f"must be 1 to {MAX_DURATION_MINUTES}")
    return violations, replace(fields, title=title, rating=rating)


async def create_movie(uow: UnitOfWork, clock: Clock, fields: MovieFields, request: RequestKey | None = None) -> Movie:
    violations, fields = _movie_violations(fields, MOVIE_FIELDS, "movie")
    violations.raise_if_any()
    async with uow:
        if (earlier := await earlier_result(uow, "CreateMovie", request)) is not None:
            return await _movie(uow, earlier)
        now = clock.now()
        movie = Movie(new_id(), fields.title, fields.duration_minutes, fields.rating, fields.active, now, now)
        await uow.movies.add(movie)
        await remember_result(uow, "CreateMovie", request, movie.id)
        await uow.commit()
    return movie


async def update_movie(
    uow: UnitOfWork, clock: Clock, movie_id: uuid.UUID, fields: MovieFields, mask: frozenset[str]
) -> Movie:
    violations = Violations()
    if not mask:
        violations.add("update_mask", "REQUIRED", "name the fields to change")
    for name in sorted(mask - MOVIE_FIELDS):
        violations.add("update_mask", "UNKNOWN_FIELD", f"{name} cannot be changed")
    field_violations, fields = _movie_violations(fields, mask & MOVIE_FIELDS, "movie")
    violations.extend(field_violations.items)
    violations.raise_if_any()
    async with uow:
        movie = await _movie(uow, movie_id, for_update=True)
        changes = {name: getattr(fields, name) for name in mask}
        movie = replace(movie, **changes, updated_at=clock.now())
        await uow.movies.update(movie)
        await uow.commit()
    return movie


async def get_movie(uow: UnitOfWork, movie_id: uuid.UUID) -> Movie:
    async with uow:
        return await _movie(uow, movie_id)


async def list_movies(uow: UnitOfWork, movie_filter: MovieFilter, page: PageRequest) -> Page[Movie]:
    async with uow:
        return await uow.movies.list_page(movie_filter, page)


async def _movie(uow: UnitOfWork, movie_id: uuid.UUID, *, for_update: bool = False) -> Movie:
    return _found(await uow.movies.get(movie_id, for_update=for_update), MovieNotFound, movie_id)


# ---------------------------------------------------------------- showtimes


def _check_start_time(starts_at: datetime, now: datetime) -> None:
    """A showtime starts in the future, at most two years ahead."""
    violations = Violations()
    if starts_at <= now:
        violations.add("start_time", "IN_PAST", "must be in the future")
    elif starts_at > now + MAX_SCHEDULE_AHEAD:
        violations.add("start_time", "OUT_OF_RANGE", "must be within two years")
    violations.raise_if_any()


@dataclass(frozen=True)
class CreateShowtime:
    hall_id: uuid.UUID
    movie_id: uuid.UUID
    starts_at: datetime
    prices: Sequence[tuple[SeatKind, Money]]
    request: RequestKey | None = None


async def create_showtime(uow: UnitOfWork, clock: Clock, cmd: CreateShowtime) -> Showtime:
    now = clock.now()
    _check_start_time(cmd.starts_at, now)
    async with uow:
        if (earlier := await earlier_result(uow, "CreateShowtime", cmd.request)) is not None:
            return await _showtime(uow, earlier)
        await uow.halls.share_lock(cmd.hall_id)  # the layout (and its seat kinds) stays as read
        hall = await _hall(uow, cmd.hall_id)
        movie = await _movie(uow, cmd.movie_id)
        cinema = await _cinema(uow, hall.cinema_id)
        price_violations(cmd.prices, hall.seat_kinds, cinema.currency).raise_if_any()
        if not movie.active:
            raise MovieInactive(f"movie {movie.id} is not active", subject=f"movies/{movie.id}")
        period = BusyPeriod.for_screening(cmd.starts_at, movie.duration)
        showtime = Showtime(
            new_id(),
            cinema.id,
            hall.id,
            movie.id,
            period,
            dict(cmd.prices),
            ShowtimeState.SCHEDULED,
            "",
            now,
        )
        # The exclusion constraint decides; this read only produces a helpful answer
        # without paying for a failed insert in the common case.
        in_the_way = await uow.showtimes.first_overlapping(hall.id, period.starts_at, period.busy_until)
        if in_the_way is None:
            try:
                await uow.showtimes.add(showtime)
            except HallSlotTaken:
                in_the_way = await uow.showtimes.first_overlapping(hall.id, period.starts_at, period.busy_until)
                if in_the_way is None:  # the winner was cancelled meanwhile; let the client retry
                    raise
        if in_the_way is not None:
            free = await _free_halls(uow, hall.cinema_id, period, hall.seat_count, exclude=hall.id)
            raise ShowtimeOverlap(
                ShowtimeConflict(str(in_the_way.id), in_the_way.starts_at, in_the_way.period.busy_until, free)
            )
        await remember_result(uow, "CreateShowtime", cmd.request, showtime.id)
        await uow.commit()
    return showtime


async def get_showtime(uow: UnitOfWork, showtime_id: uuid.UUID) -> Showtime:
    async with uow:
        return await _showtime(uow, showtime_id)


@dataclass(frozen=True)
class ListShowtimes:
    cinema_id: uuid.UUID | None
    movie_id: uuid.UUID | None
    hall_id: uuid.UUID | None
    local_date: date | None
    include_cancelled: bool


async def list_showtimes(uow: UnitOfWork, query: ListShowtimes, page: PageRequest) -> Page[Showtime]:
    if query.local_date is not None and query.cinema_id is None:
        raise invalid("cinema_id", "REQUIRED", "a day is a day in one cinema's time zone")
    async with uow:
        starts_from = starts_before = None
        if query.local_date is not None and query.cinema_id is not None:
            cinema = await _cinema(uow, query.cinema_id)
            d = query.local_date
            starts_from, starts_before = cinema.local_day_bounds(d.year, d.month, d.day)
        showtime_filter = ShowtimeFilter(
            cinema_id=query.cinema_id,
            movie_id=query.movie_id,
            hall_id=query.hall_id,
            starts_from=starts_from,
            starts_before=starts_before,
            include_cancelled=query.include_cancelled,
        )
        return await uow.showtimes.list_page(showtime_filter, page)


async def cancel_showtime(uow: UnitOfWork, clock: Clock, showtime_id: uuid.UUID, reason: str) -> Showtime:
    violations = Violations()
    reason = clean_text(violations, "reason", reason, max_length=500)
    violations.raise_if_any()
    async with uow:
        now = clock.now()
        # The seats' lock before the row lock, as every seat decision takes them.
        inventory = await uow.inventories.get_locked(showtime_id, now, all_sales=True)
        showtime = await _showtime(uow, showtime_id, for_update=True)
        if showtime.state is ShowtimeState.CANCELLED:
            return showtime
        if showtime.has_started(now):
            raise ShowtimeAlreadyStarted(
                f"showtime {showtime.id} started at {showtime.starts_at.isoformat()}",
                subject=f"showtimes/{showtime.id}",
            )
        showtime = showtime.cancelled(reason)
        await uow.showtimes.update_state(showtime)
        # Its holds are released, its bookings cancelled for refund.
        inventory.end_sales(f"showtime cancelled: {showtime.cancel_reason}", now)
        await uow.commit()
    return showtime


@dataclass(frozen=True)
class RescheduleShowtime:
    showtime_id: uuid.UUID
    starts_at: datetime
    hall_id: uuid.UUID | None = None  # None: the showtime's own hall
    request: RequestKey | None = None


async def reschedule_showtime(uow: UnitOfWork, clock: Clock, cmd: RescheduleShowtime) -> Showtime:
    """Moves a showtime with no held or sold seat to another slot (and hall) of its cinema. Its
    own current slot does not block the move: the row is updated in place under the overlap
    constraint, so the database still refuses a clash with any other showtime."""
    now = clock.now()
    _check_start_time(cmd.starts_at, now)
    async with uow:
        if (earlier := await earlier_result(uow, "RescheduleShowtime", cmd.request)) is not None:
            return await _showtime(uow, earlier)
        # The seats' lock before the row lock, as every seat decision takes them: no hold can
        # be decided on the old slot while the move is, and none is left when it commits.
        inventory = await uow.inventories.get_locked(cmd.showtime_id, now, all_sales=True)
        showtime = await _showtime(uow, cmd.showtime_id, for_update=True)
        subject = f"showtimes/{showtime.id}"
        if showtime.state is ShowtimeState.CANCELLED:
            raise ShowtimeCancelled(f"showtime {showtime.id} is cancelled", subject=subject)
        if showtime.has_started(now):
            raise ShowtimeAlreadyStarted(
                f"showtime {showtime.id} started at {showtime.starts_at.isoformat()}", subject=subject
            )
        inventory.expire(now)  # lapsed holds do not keep it in place
        held, sold = inventory.claimed_seats(now)
        if held or sold:
            raise ShowtimeHasSales(
                f"{held} seat(s) of showtime {showtime.id} are held and {sold} sold; "
                "it can move once they are released or refunded",
                subject=subject,
                metadata={"held_seats": str(held), "sold_seats": str(sold)},
            )
        hall_id = cmd.hall_id or showtime.hall_id
        await uow.halls.share_lock(hall_id)  # the layout (and its seat kinds) stays as read
        hall = await _hall(uow, hall_id)
        if hall.cinema_id != showtime.cinema_id:
            raise invalid("hall_id", "OTHER_CINEMA", "must be a hall of the showtime's cinema")
        unpriced = sorted(hall.seat_kinds - set(showtime.prices))
        if unpriced:
            raise ShowtimePriceMissing(
                f"showtime {showtime.id} has no price for seat kind {', '.join(unpriced)} of hall {hall.name}",
                subject=subject,
            )
        period = BusyPeriod.for_screening(cmd.starts_at, showtime.period.ends_at - showtime.period.starts_at)
        moved = replace(showtime, hall_id=hall.id, period=period)
        in_the_way = await uow.showtimes.first_overlapping(
            hall.id, period.starts_at, period.busy_until, besides=showtime.id
        )
        if in_the_way is None:
            try:
                await uow.showtimes.move(moved)
            except HallSlotTaken:
                in_the_way = await uow.showtimes.first_overlapping(
                    hall.id, period.starts_at, period.busy_until, besides=showtime.id
                )
                if in_the_way is None:  # the winner was cancelled meanwhile; let the client retry
                    raise
        if in_the_way is not None:
            free = await _free_halls(uow, hall.cinema_id, period, hall.seat_count, exclude=hall.id, besides=showtime.id)
            raise ShowtimeOverlap(
                ShowtimeConflict(str(in_the_way.id), in_the_way.starts_at, in_the_way.period.busy_until, free)
            )
        if hall.id != showtime.hall_id:
            inventory.replace_seats(now)  # open seat streams switch to the new hall's seats
        await remember_result(uow, "RescheduleShowtime", cmd.request, showtime.id)
        await uow.commit()
    return moved


@dataclass(frozen=True)
class FindFreeHalls:
    cinema_id: uuid.UUID
    starts_at: datetime
    duration_minutes: int
    min_seats: int


async def find_free_halls(uow: UnitOfWork, query: FindFreeHalls) -> tuple[HallSuggestion, ...]:
    violations = Violations()
    if not 1 <= query.duration_minutes <= MAX_DURATION_MINUTES:
        violations.add("duration_minutes", "OUT_OF_RANGE", f"must be 1 to {MAX_DURATION_MINUTES}")
    if query.min_seats < 0:
        violations.add("min_seats", "OUT_OF_RANGE", "must not be negative")
    violations.raise_if_any()
    period = BusyPeriod.for_screening(query.starts_at, timedelta(minutes=query.duration_minutes))
    async with uow:
        await _cinema(uow, query.cinema_id)
        return await _free_halls(uow, query.cinema_id, period, query.min_seats)


async def _free_halls(
    uow: UnitOfWork,
    cinema_id: uuid.UUID,
    period: BusyPeriod,
    min_seats: int,
    *,
    exclude: uuid.UUID | None = None,
    besides: uuid.UUID | None = None,
) -> tuple[HallSuggestion, ...]:
    """``besides``: a showtime being moved, which does not make its own hall busy."""
    capacities = await uow.halls.capacities(cinema_id)
    busy = await uow.showtimes.busy_hall_ids(cinema_id, period.starts_at, period.busy_until, besides=besides)
    return choose_free_halls(capacities, busy, min_seats=min_seats, exclude_hall_id=str(exclude) if exclude else None)


async def _showtime(uow: UnitOfWork, showtime_id: uuid.UUID, *, for_update: bool = False) -> Showtime:
    return _found(await uow.showtimes.get(showtime_id, for_update=for_update), ShowtimeNotFound, showtime_id)
