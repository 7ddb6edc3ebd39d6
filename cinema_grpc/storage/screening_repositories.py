"""Repositories of the screening area: rows in, domain entities out."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cinema_grpc.domain.errors import CinemaNameTaken, HallNameTaken, HallSuggestion
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.pagination import Page, PageRequest, bad_page_token
from cinema_grpc.domain.ports import HallSlotTaken, MovieFilter, RecordedRequest, ShowtimeFilter
from cinema_grpc.domain.screening.model import (
    BusyPeriod,
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
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from cinema_grpc.storage.lone_read import read_rows
from cinema_grpc.storage.rows import (
    CinemaRow,
    HallRow,
    MovieRow,
    RequestLogRow,
    SeatRow,
    ShowtimePriceRow,
    ShowtimeRow,
)


def _after(columns: tuple[Any, ...], page: PageRequest, parse: tuple[Any, ...]) -> ColumnElement[bool] | None:
    """Keyset condition: rows strictly after the last row of the previous page."""
    if page.after is None:
        return None
    try:
        values = tuple(convert(raw) for convert, raw in zip(parse, page.after, strict=True))
    except ValueError as exc:
        raise bad_page_token() from exc
    return tuple_(*columns) > tuple_(*values)


def _by_name(name: str, entity_id: uuid.UUID) -> tuple[str, ...]:
    return (name.lower(), str(entity_id))


# ---------------------------------------------------------------- cinemas


def _cinema(row: CinemaRow) -> Cinema:
    return Cinema(row.id, row.name, row.time_zone, row.currency, row.created_at)


class SqlCinemaRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, cinema: Cinema) -> None:
        inserted = await self._session.scalar(
            insert(CinemaRow)
            .values(
                id=cinema.id,
                name=cinema.name,
                time_zone=cinema.time_zone,
                currency=cinema.currency,
                created_at=cinema.created_at,
            )
            .on_conflict_do_nothing()
            .returning(CinemaRow.id)
        )
        if inserted is None:
            raise CinemaNameTaken(f"a cinema named {cinema.name!r} exists already")

    async def get(self, cinema_id: uuid.UUID) -> Cinema | None:
        row = await self._session.get(CinemaRow, cinema_id)
        return _cinema(row) if row else None

    async def list_page(self, page: PageRequest) -> Page[Cinema]:
        key = (func.lower(CinemaRow.name), CinemaRow.id)
        query = select(CinemaRow).order_by(*key).limit(page.size + 1)
        if (after := _after(key, page, (str, uuid.UUID))) is not None:
            query = query.where(after)
        cinemas = [_cinema(row) for row in await self._session.scalars(query)]
        return Page.of(cinemas, page, lambda c: _by_name(c.name, c.id))


# ---------------------------------------------------------------- halls


def _layout_json(layout: SeatLayout) -> dict[str, Any]:
    return {
        "rows": [
            {
                "label": row.label,
                "columns": row.columns,
                "kind": row.kind.value,
                "gap_columns": sorted(row.gap_columns),
                "overrides": {str(column): kind.value for column, kind in sorted(row.overrides.items())},
            }
            for row in layout.rows
        ]
    }


def _layout(data: dict[str, Any]) -> SeatLayout:
    return SeatLayout(
        tuple(
            RowSpec(
                label=row["label"],
                columns=row["columns"],
                kind=SeatKind(row["kind"]),
                gap_columns=frozenset(row["gap_columns"]),
                overrides={int(column): SeatKind(kind) for column, kind in row["overrides"].items()},
            )
            for row in data["rows"]
        )
    )


def _seat(row: SeatRow) -> Seat:
    return Seat(
        row.id,
        row.hall_id,
        row.row_label,
        row.number,
        row.grid_column,
        SeatKind(row.kind),
        row.in_service,
        row.out_of_service_reason,
    )


def _seat_values(hall: Hall) -> list[dict[str, Any]]:
    row_index = {row.label: i for i, row in enumerate(hall.layout.rows)}
    return [
        {
            "id": seat.id,
            "hall_id": hall.id,
            "row_index": row_index[seat.row_label],
            "row_label": seat.row_label,
            "number": seat.number,
            "grid_column": seat.column,
            "kind": seat.kind.value,
            "in_service": seat.in_service,
            "out_of_service_reason": seat.out_of_service_reason,
        }
        for seat in hall.seats
    ]


class SqlHallRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, hall: Hall) -> None:
        inserted = await self._session.scalar(
            insert(HallRow)
            .values(
                id=hall.id,
                cinema_id=hall.cinema_id,
                name=hall.name,
                layout=_layout_json(hall.layout),
                created_at=hall.created_at,
                updated_at=hall.updated_at,
            )
            .on_conflict_do_nothing()
            .returning(HallRow.id)
        )
        if inserted is None:
            raise HallNameTaken(f"this cinema has a hall named {hall.name!r} already")
        await self._session.execute(insert(SeatRow), _seat_values(hall))

    async def get(self, hall_id: uuid.UUID, *, for_update: bool = False) -> Hall | None:
        query = select(HallRow).where(HallRow.id == hall_id)
        if for_update:
            query = query.with_for_update()
        row = await self._session.scalar(query)
        if row is None:
            return None
        return (await self._with_seats([row]))[0]

    async def share_lock(self, hall_id: uuid.UUID) -> None:
        # Conflicts with the FOR UPDATE of a layout change, not with other sales.
        await self._session.execute(select(HallRow.id).where(HallRow.id == hall_id).with_for_update(read=True))

    async def list_page(self, cinema_id: uuid.UUID, page: PageRequest) -> Page[Hall]:
        key = (func.lower(HallRow.name), HallRow.id)
        query = select(HallRow).where(HallRow.cinema_id == cinema_id).order_by(*key).limit(page.size + 1)
        if (after := _after(key, page, (str, uuid.UUID))) is not None:
            query = query.where(after)
        halls = await self._with_seats(list(await self._session.scalars(query)))
        return Page.of(halls, page, lambda h: _by_name(h.name, h.id))

    async def _with_seats(self, rows: list[HallRow]) -> list[Hall]:
        if not rows:
            return []
        seats: dict[uuid.UUID, list[Seat]] = defaultdict(list)
        query = (
            select(SeatRow)
            .where(SeatRow.hall_id.in_([row.id for row in rows]), SeatRow.retired_at.is_(None))
            .order_by(SeatRow.hall_id, SeatRow.row_index, SeatRow.grid_column)
        )
        for seat_row in await self._session.scalars(query):
            seats[seat_row.hall_id].append(_seat(seat_row))
        return [
            Hall(
                row.id,
                row.cinema_id,
                row.name,
                _layout(row.layout),
                tuple(seats[row.id]),
                row.created_at,
                row.updated_at,
            )
            for row in rows
        ]

    async def rename(self, hall: Hall) -> None:
        taken = await self._session.scalar(
            select(HallRow.id).where(
                HallRow.cinema_id == hall.cinema_id,
                func.lower(HallRow.name) == hall.name.lower(),
                HallRow.id != hall.id,
            )
        )
        if taken is not None:
            raise HallNameTaken(f"this cinema has a hall named {hall.name!r} already")
        await self._session.execute(
            update(HallRow).where(HallRow.id == hall.id).values(name=hall.name, updated_at=hall.updated_at)
        )

    # Every change of a hall's seats also writes the hall's row, in the same transaction: seat
    # maps keep a hall's seats until the row's stamp changes (see hall_seats).
    async def replace_seats(self, hall: Hall) -> None:
        await self._session.execute(
            update(SeatRow)
            .where(SeatRow.hall_id == hall.id, SeatRow.retired_at.is_(None))
            .values(retired_at=hall.updated_at)
        )
        await self._session.execute(
            update(HallRow)
            .where(HallRow.id == hall.id)
            .values(layout=_layout_json(hall.layout), updated_at=hall.updated_at)
        )
        await self._session.execute(insert(SeatRow), _seat_values(hall))

    async def update_seat(self, seat: Seat, updated_at: datetime) -> None:
        await self._session.execute(
            update(SeatRow)
            .where(SeatRow.id == seat.id)
            .values(in_service=seat.in_service, out_of_service_reason=seat.out_of_service_reason)
        )
        await self._session.execute(update(HallRow).where(HallRow.id == seat.hall_id).values(updated_at=updated_at))

    async def seats(
        self, hall_id: uuid.UUID, *, seat_ids: Collection[uuid.UUID] = (), rows: Collection[str] = ()
    ) -> tuple[Seat, ...]:
        query = (
            select(SeatRow)
            .where(SeatRow.hall_id == hall_id, SeatRow.retired_at.is_(None))
            .order_by(SeatRow.row_index, SeatRow.grid_column)
        )
        if seat_ids:
            query = query.where(SeatRow.id.in_(list(seat_ids)))
        if rows:
            query = query.where(SeatRow.row_label.in_(list(rows)))
        return tuple(_seat(row) for row in await self._session.scalars(query))

    async def capacities(self, cinema_id: uuid.UUID) -> list[HallSuggestion]:
        in_service = func.count(SeatRow.id).filter(SeatRow.in_service, SeatRow.retired_at.is_(None))
        query = (
            select(HallRow.id, HallRow.name, in_service)
            .outerjoin(SeatRow, SeatRow.hall_id == HallRow.id)
            .where(HallRow.cinema_id == cinema_id)
            .group_by(HallRow.id)
        )
        return [
            HallSuggestion(str(hall_id), name, count) for hall_id, name, count in await self._session.execute(query)
        ]


# ---------------------------------------------------------------- movies


def _movie(row: MovieRow) -> Movie:
    return Movie(row.id, row.title, row.duration_minutes, row.rating, row.active, row.created_at, row.updated_at)


class SqlMovieRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, movie: Movie) -> None:
        self._session.add(
            MovieRow(
                id=movie.id,
                title=movie.title,
                duration_minutes=movie.duration_minutes,
                rating=movie.rating,
                active=movie.active,
                created_at=movie.created_at,
                updated_at=movie.updated_at,
            )
        )
        await self._session.flush()

    async def get(self, movie_id: uuid.UUID, *, for_update: bool = False) -> Movie | None:
        query = select(MovieRow).where(MovieRow.id == movie_id)
        if for_update:
            query = query.with_for_update()
        row = await self._session.scalar(query)
        return _movie(row) if row else None

    async def list_page(self, movie_filter: MovieFilter, page: PageRequest) -> Page[Movie]:
        key = (func.lower(MovieRow.title), MovieRow.id)
        query = select(MovieRow).order_by(*key).limit(page.size + 1)
        if movie_filter.active_only:
            query = query.where(MovieRow.active)
        if movie_filter.title_contains:
            pattern = movie_filter.title_contains.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(func.lower(MovieRow.title).contains(pattern, autoescape=False))
        if (after := _after(key, page, (str, uuid.UUID))) is not None:
            query = query.where(after)
        movies = [_movie(row) for row in await self._session.scalars(query)]
        return Page.of(movies, page, lambda m: _by_name(m.title, m.id))

    async def update(self, movie: Movie) -> None:
        await self._session.execute(
            update(MovieRow)
            .where(MovieRow.id == movie.id)
            .values(
                title=movie.title,
                duration_minutes=movie.duration_minutes,
                rating=movie.rating,
                active=movie.active,
                updated_at=movie.updated_at,
            )
        )


# ---------------------------------------------------------------- showtimes


# SQLSTATE of an exclusion constraint refusing a row (showtimes_no_overlap).
_EXCLUSION_VIOLATION = "23P01"


def _busy_during(starts_at: datetime, busy_until: datetime, besides: uuid.UUID | None = None) -> ColumnElement[bool]:
    # The same half-open test as the exclusion constraint, so it can use the same answer.
    condition = and_(
        ShowtimeRow.state == ShowtimeState.SCHEDULED.value,
        ShowtimeRow.starts_at < busy_until,
        ShowtimeRow.busy_until > starts_at,
    )
    return condition if besides is None else and_(condition, ShowtimeRow.id != besides)


# A showtime with its prices, in plain SQL (the table aliased ``showtime``), read back with showtime_of.
SHOWTIME_COLUMNS = """
showtime.cinema_id, showtime.hall_id, showtime.movie_id, showtime.starts_at, showtime.ends_at,
showtime.busy_until, showtime.state, showtime.cancel_reason, showtime.created_at,
(SELECT json_agg(json_build_array(price.kind, price.amount_minor, price.currency))
 FROM screening.showtime_prices AS price WHERE price.showtime_id = showtime.id)
"""

# GetShowtime reads nothing else: one statement.
_SHOWTIME = f"SELECT {SHOWTIME_COLUMNS} FROM screening.showtimes AS showtime WHERE showtime.id = %(showtime_id)s"


def showtime_of(showtime_id: uuid.UUID, columns: Sequence[Any]) -> Showtime:
    """The showtime from the values of SHOWTIME_COLUMNS, in their order."""
    (cinema_id, hall_id, movie_id, starts_at, ends_at, busy_until, state, cancel_reason, created_at, prices) = columns
    return Showtime(
        showtime_id,
        cinema_id,
        hall_id,
        movie_id,
        BusyPeriod(starts_at, ends_at, busy_until),
        {SeatKind(kind): Money(amount, currency) for kind, amount, currency in prices or ()},
        ShowtimeState(state),
        cancel_reason,
        created_at,
    )


class SqlShowtimeRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, showtime: Showtime) -> None:
        hall_key = select(HallRow.key).where(HallRow.id == showtime.hall_id).scalar_subquery()
        # DO NOTHING without a target also covers the exclusion constraint: no row back means
        # the database found the hall busy.
        inserted = await self._session.scalar(
            insert(ShowtimeRow)
            .values(
                id=showtime.id,
                cinema_id=showtime.cinema_id,
                hall_id=showtime.hall_id,
                hall_key=hall_key,
                movie_id=showtime.movie_id,
                starts_at=showtime.period.starts_at,
                ends_at=showtime.period.ends_at,
                busy_until=showtime.period.busy_until,
                state=showtime.state.value,
                cancel_reason=showtime.cancel_reason,
                created_at=showtime.created_at,
            )
            .on_conflict_do_nothing()
            .returning(ShowtimeRow.id)
        )
        if inserted is None:
            raise HallSlotTaken(str(showtime.hall_id))
        await self._session.execute(
            insert(ShowtimePriceRow),
            [
                {
                    "showtime_id": showtime.id,
                    "kind": kind.value,
                    "amount_minor": price.amount_minor,
                    "currency": price.currency,
                }
                for kind, price in showtime.prices.items()
            ],
        )

    async def get(self, showtime_id: uuid.UUID, *, for_update: bool = False) -> Showtime | None:
        if not for_update:
            # Plain SQL in the driver's paramstyle: no ORM entities on the hot read.
            rows = await read_rows(self._session, _SHOWTIME, {"showtime_id": showtime_id})
            return showtime_of(showtime_id, rows[0]) if rows else None
        query = select(ShowtimeRow).where(ShowtimeRow.id == showtime_id).with_for_update()
        row = await self._session.scalar(query)
        if row is None:
            return None
        return (await self._with_prices([row]))[0]

    async def list_page(self, showtime_filter: ShowtimeFilter, page: PageRequest) -> Page[Showtime]:
        f = showtime_filter
        key = (ShowtimeRow.starts_at, ShowtimeRow.id)
        query = select(ShowtimeRow).order_by(*key).limit(page.size + 1)
        conditions: list[ColumnElement[bool]] = []
        if f.cinema_id is not None:
            conditions.append(ShowtimeRow.cinema_id == f.cinema_id)
        if f.movie_id is not None:
            conditions.append(ShowtimeRow.movie_id == f.movie_id)
        if f.hall_id is not None:
            conditions.append(ShowtimeRow.hall_id == f.hall_id)
        if f.starts_from is not None:
            conditions.append(ShowtimeRow.starts_at >= f.starts_from)
        if f.starts_before is not None:
            conditions.append(ShowtimeRow.starts_at < f.starts_before)
        if not f.include_cancelled:
            conditions.append(ShowtimeRow.state == ShowtimeState.SCHEDULED.value)
        if (after := _after(key, page, (datetime.fromisoformat, uuid.UUID))) is not None:
            conditions.append(after)
        if conditions:
            query = query.where(*conditions)
        showtimes = await self._with_prices(list(await self._session.scalars(query)))
        return Page.of(showtimes, page, lambda s: (s.starts_at.isoformat(), str(s.id)))

    async def _with_prices(self, rows: list[ShowtimeRow]) -> list[Showtime]:
        if not rows:
            return []
        prices: dict[uuid.UUID, dict[SeatKind, Money]] = defaultdict(dict)
        query = select(ShowtimePriceRow).where(ShowtimePriceRow.showtime_id.in_([row.id for row in rows]))
        for price in await self._session.scalars(query):
            prices[price.showtime_id][SeatKind(price.kind)] = Money(price.amount_minor, price.currency)
        return [
            Showtime(
                row.id,
                row.cinema_id,
                row.hall_id,
                row.movie_id,
                BusyPeriod(row.starts_at, row.ends_at, row.busy_until),
                prices[row.id],
                ShowtimeState(row.state),
                row.cancel_reason,
                row.created_at,
            )
            for row in rows
        ]

    async def update_state(self, showtime: Showtime) -> None:
        await self._session.execute(
            update(ShowtimeRow)
            .where(ShowtimeRow.id == showtime.id)
            .values(state=showtime.state.value, cancel_reason=showtime.cancel_reason)
        )

    async def move(self, showtime: Showtime) -> None:
        hall_key = select(HallRow.key).where(HallRow.id == showtime.hall_id).scalar_subquery()
        statement = (
            update(ShowtimeRow)
            .where(ShowtimeRow.id == showtime.id)
            .values(
                hall_id=showtime.hall_id,
                hall_key=hall_key,
                starts_at=showtime.period.starts_at,
                ends_at=showtime.period.ends_at,
                busy_until=showtime.period.busy_until,
            )
        )
        # An UPDATE has no ON CONFLICT: the savepoint keeps the transaction usable when the
        # exclusion constraint refuses the new slot, so the caller can say what is in the way.
        try:
            async with self._session.begin_nested():
                await self._session.execute(statement)
        except IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) != _EXCLUSION_VIOLATION:
                raise
            raise HallSlotTaken(str(showtime.hall_id)) from exc

    async def first_overlapping(
        self, hall_id: uuid.UUID, starts_at: datetime, busy_until: datetime, *, besides: uuid.UUID | None = None
    ) -> Showtime | None:
        query = (
            select(ShowtimeRow)
            .where(ShowtimeRow.hall_id == hall_id, _busy_during(starts_at, busy_until, besides))
            .order_by(ShowtimeRow.starts_at)
            .limit(1)
        )
        row = await self._session.scalar(query)
        return (await self._with_prices([row]))[0] if row else None

    async def busy_hall_ids(
        self, cinema_id: uuid.UUID, starts_at: datetime, busy_until: datetime, *, besides: uuid.UUID | None = None
    ) -> set[str]:
        query = select(ShowtimeRow.hall_id).where(
            ShowtimeRow.cinema_id == cinema_id, _busy_during(starts_at, busy_until, besides)
        )
        return {str(hall_id) for hall_id in await self._session.scalars(query)}

    async def upcoming_for_hall(self, hall_id: uuid.UUID, now: datetime) -> list[Showtime]:
        query = select(ShowtimeRow).where(
            ShowtimeRow.hall_id == hall_id,
            ShowtimeRow.state == ShowtimeState.SCHEDULED.value,
            ShowtimeRow.ends_at > now,
        )
        return await self._with_prices(list(await self._session.scalars(query)))


# ---------------------------------------------------------------- request log


class SqlRequestLog:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def lock_and_find(self, scope: str, request_id: str) -> RecordedRequest | None:
        key = advisory_key(LockNamespace.REQUEST_ID, f"{scope}:{request_id}")
        await self._session.execute(select(func.pg_advisory_xact_lock(key)))
        row = await self._session.get(RequestLogRow, (scope, request_id))
        return RecordedRequest(row.fingerprint, row.resource_id) if row else None

    async def prune(self, older_than: datetime, limit: int) -> int:
        doomed = (
            select(RequestLogRow.scope, RequestLogRow.request_id)
            .where(RequestLogRow.created_at < older_than)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        result = await self._session.execute(
            delete(RequestLogRow).where(tuple_(RequestLogRow.scope, RequestLogRow.request_id).in_(doomed))
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def record(self, scope: str, request_id: str, fingerprint: str, resource_id: uuid.UUID) -> None:
        await self._session.execute(
            insert(RequestLogRow).values(
                scope=scope, request_id=request_id, fingerprint=fingerprint, resource_id=resource_id
            )
        )
