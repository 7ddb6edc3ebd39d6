"""Screening entities and the pure rules about them: seat grids, busy periods, free halls."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cinema_grpc.domain.errors import HallSuggestion, Violations
from cinema_grpc.domain.ids import new_id
from cinema_grpc.domain.money import Money

# After every showtime the hall is cleaned; nothing else may start in it before then.
CLEANING_BUFFER = timedelta(minutes=30)

MAX_ROWS = 100
MAX_COLUMNS = 100
MAX_SEATS_PER_HALL = 5000
MAX_DURATION_MINUTES = 600
MAX_SCHEDULE_AHEAD = timedelta(days=730)
_ROW_LABEL = re.compile(r"^[A-Za-z0-9]{1,8}$")


class SeatKind(enum.StrEnum):
    STANDARD = "STANDARD"
    PREMIUM = "PREMIUM"
    WHEELCHAIR = "WHEELCHAIR"
    COMPANION = "COMPANION"


class ShowtimeState(enum.StrEnum):
    SCHEDULED = "SCHEDULED"
    CANCELLED = "CANCELLED"


def zone_of(name: str) -> ZoneInfo | None:
    """The IANA zone of that name, or None when there is no such zone."""
    if not name or len(name) > 64 or name != name.strip() or ".." in name or name.startswith("/"):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class Cinema:
    id: uuid.UUID
    name: str
    time_zone: str
    currency: str
    created_at: datetime

    @property
    def zone(self) -> ZoneInfo:
        zone = zone_of(self.time_zone)
        assert zone is not None, "time zones are validated on creation"
        return zone

    def local_day_bounds(self, year: int, month: int, day: int) -> tuple[datetime, datetime]:
        """UTC bounds [start, end) of one calendar day in the cinema's time zone (DST-aware)."""
        start = datetime(year, month, day, tzinfo=self.zone)
        end = datetime.combine(start.date() + timedelta(days=1), start.time(), tzinfo=self.zone)
        # Arithmetic between datetimes of one ZoneInfo is wall-clock arithmetic; UTC is not.
        return start.astimezone(UTC), end.astimezone(UTC)


@dataclass(frozen=True)
class RowSpec:
    """One row of a hall's layout; ``columns`` counts grid positions including gaps."""

    label: str
    columns: int
    kind: SeatKind = SeatKind.STANDARD
    gap_columns: frozenset[int] = frozenset()
    overrides: Mapping[int, SeatKind] = field(default_factory=dict)


@dataclass(frozen=True)
class SeatSpec:
    """A seat as the layout defines it, before it is stored."""

    row_label: str
    number: int
    column: int
    kind: SeatKind


@dataclass(frozen=True)
class SeatLayout:
    rows: tuple[RowSpec, ...]

    def violations(self, prefix: str = "layout") -> Violations:
        found = Violations()
        if not self.rows:
            found.add(f"{prefix}.rows", "REQUIRED", "a hall needs at least one row")
            return found
        if len(self.rows) > MAX_ROWS:
            found.add(f"{prefix}.rows", "OUT_OF_RANGE", f"at most {MAX_ROWS} rows")
            return found
        labels: set[str] = set()
        total = 0
        for i, row in enumerate(self.rows):
            path = f"{prefix}.rows[{i}]"
            if not _ROW_LABEL.match(row.label):
                found.add(f"{path}.label", "INVALID_FORMAT", "1 to 8 letters or digits")
            elif row.label.upper() in labels:
                found.add(f"{path}.label", "DUPLICATE", f"row {row.label} appears twice")
            labels.add(row.label.upper())
            if not 1 <= row.columns <= MAX_COLUMNS:
                found.add(f"{path}.columns", "OUT_OF_RANGE", f"must be 1 to {MAX_COLUMNS}")
                continue
            bad_gaps = sorted(c for c in row.gap_columns if not 1 <= c <= row.columns)
            if bad_gaps:
                found.add(f"{path}.gap_columns", "OUT_OF_RANGE", f"columns {bad_gaps} are outside 1..{row.columns}")
            for column in sorted(row.overrides):
                if not 1 <= column <= row.columns or column in row.gap_columns:
                    found.add(
                        f"{path}.overrides",
                        "OUT_OF_RANGE",
                        f"column {column} is not a seat of this row",
                    )
            seats_in_row = row.columns - len(row.gap_columns & set(range(1, row.columns + 1)))
            if seats_in_row == 0:
                found.add(f"{path}.gap_columns", "EMPTY_ROW", "a row needs at least one seat")
            total += seats_in_row
        if total > MAX_SEATS_PER_HALL:
            found.add(f"{prefix}.rows", "OUT_OF_RANGE", f"at most {MAX_SEATS_PER_HALL} seats per hall")
        return found

    def seats(self) -> list[SeatSpec]:
        """The seats this layout defines: numbered 1..n per row from the left, gaps skipped."""
        specs: list[SeatSpec] = []
        for row in self.rows:
            number = 0
            for column in range(1, row.columns + 1):
                if column in row.gap_columns:
                    continue
                number += 1
                kind = row.overrides.get(column, row.kind)
                specs.append(SeatSpec(row.label, number, column, kind))
        return specs


@dataclass(frozen=True)
class Seat:
    id: uuid.UUID
    hall_id: uuid.UUID
    row_label: str
    number: int
    column: int
    kind: SeatKind
    in_service: bool = True
    out_of_service_reason: str = ""

    @property
    def label(self) -> str:
        return f"{self.row_label}{self.number}"


@dataclass(frozen=True)
class Hall:
    id: uuid.UUID
    cinema_id: uuid.UUID
    name: str
    layout: SeatLayout
    seats: tuple[Seat, ...]
    created_at: datetime
    updated_at: datetime

    @property
    def seat_count(self) -> int:
        return sum(1 for seat in self.seats if seat.in_service)

    @property
    def seat_kinds(self) -> frozenset[SeatKind]:
        return frozenset(seat.kind for seat in self.seats)

    def seat(self, seat_id: uuid.UUID) -> Seat | None:
        return next((s for s in self.seats if s.id == seat_id), None)


def generate_seats(hall_id: uuid.UUID, layout: SeatLayout) -> tuple[Seat, ...]:
    return tuple(
        Seat(new_id(), hall_id, spec.row_label, spec.number, spec.column, spec.kind) for spec in layout.seats()
    )


@dataclass(frozen=True)
class Movie:
    id: uuid.UUID
    title: str
    duration_minutes: int
    rating: str
    active: bool
    created_at: datetime
    updated_at: datetime

    @property
    def duration(self) -> timedelta:
        return timedelta(minutes=self.duration_minutes)


@dataclass(frozen=True)
class BusyPeriod:
    """When a showtime occupies its hall: [starts_at, busy_until), cleaning included."""

    starts_at: datetime
    ends_at: datetime
    busy_until: datetime

    @classmethod
    def for_screening(cls, starts_at: datetime, duration: timedelta) -> BusyPeriod:
        ends_at = starts_at + duration
        return cls(starts_at, ends_at, ends_at + CLEANING_BUFFER)

    def overlaps(self, other: BusyPeriod) -> bool:
        # Half-open periods: one may start exactly when the other's cleaning ends.
        return self.starts_at < other.busy_until and other.starts_at < self.busy_until


@dataclass(frozen=True)
class Showtime:
    id: uuid.UUID
    cinema_id: uuid.UUID
    hall_id: uuid.UUID
    movie_id: uuid.UUID
    period: BusyPeriod
    prices: Mapping[SeatKind, Money]
    state: ShowtimeState
    cancel_reason: str
    created_at: datetime

    @property
    def starts_at(self) -> datetime:
        return self.period.starts_at

    def has_started(self, now: datetime) -> bool:
        return now >= self.period.starts_at

    def cancelled(self, reason: str) -> Showtime:
        return replace(self, state=ShowtimeState.CANCELLED, cancel_reason=reason)


def price_violations(
    prices: Sequence[tuple[SeatKind, Money]], hall_kinds: Iterable[SeatKind], currency: str
) -> Violations:
    """Every seat kind of the hall needs exactly one non-negative price in the cinema's currency."""
    found = Violations()
    seen: set[SeatKind] = set()
    for i, (kind, price) in enumerate(prices):
        path = f"prices[{i}]"
        if kind in seen:
            found.add(f"{path}.kind", "DUPLICATE", f"{kind} is priced twice")
        seen.add(kind)
        if price.currency != currency:
            found.add(
                f"{path}.price.currency_code",
                "CURRENCY_MISMATCH",
                f"this cinema sells in {currency}",
            )
        if price.amount_minor < 0:
            found.add(f"{path}.price.amount_minor", "OUT_OF_RANGE", "must not be negative")
    missing = sorted(set(hall_kinds) - seen)
    if missing:
        found.add("prices", "MISSING_PRICE", f"the hall has seats of kind {', '.join(missing)} without a price")
    return found


def choose_free_halls(
    capacities: Iterable[HallSuggestion],
    busy_hall_ids: Iterable[str],
    *,
    min_seats: int,
    exclude_hall_id: str | None = None,
) -> tuple[HallSuggestion, ...]:
    """Halls that are not busy and seat at least ``min_seats``, closest in size first."""
    busy = set(busy_hall_ids)
    free = [
        hall
        for hall in capacities
        if hall.hall_id not in busy and hall.hall_id != exclude_hall_id and hall.seat_count >= min_seats
    ]
    return tuple(sorted(free, key=lambda h: (h.seat_count - min_seats, h.name, h.hall_id)))
