"""Reports on a million tickets: builds the data with SQL, then times each report through the
real use cases, against a full scan of the tickets as the ceiling measured in the same run.

    .venv/bin/python bench/reports_bench.py [--tickets 1000000] [--database-url URL]

Without --database-url an embedded PostgreSQL starts in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from cinema_grpc.domain import reports
from cinema_grpc.storage.database import EmbeddedPostgres, migrate, sqlalchemy_url
from cinema_grpc.storage.unit_of_work import SqlUnitOfWork

SEATS_PER_HALL = 400  # 20 rows x 20
HALLS = 10
TICKETS_PER_BOOKING = 4

SEED = """
INSERT INTO screening.cinemas VALUES (%(cinema)s, 'Bench Cinema', 'Europe/Berlin', 'EUR', now());
INSERT INTO screening.movies
    SELECT gen_random_uuid(), 'Movie ' || i, 100, 'PG', true, now(), now() FROM generate_series(1, 40) i;
INSERT INTO screening.halls (id, cinema_id, name, layout, created_at, updated_at)
    SELECT gen_random_uuid(), %(cinema)s, 'Hall ' || h, '{"rows": []}', now(), now() FROM generate_series(1, %(halls)s) h;
INSERT INTO screening.seats (id, hall_id, row_index, row_label, number, grid_column, kind)
    SELECT gen_random_uuid(), h.id, r, 'R' || r, n, n, 'STANDARD'
    FROM screening.halls h, generate_series(0, 19) r, generate_series(1, 20) n;
-- Showtimes every 12 hours per hall going back in time, so bookings spread over many days.
INSERT INTO screening.showtimes (id, cinema_id, hall_id, hall_key, movie_id, starts_at, ends_at, busy_until, state, created_at)
    SELECT gen_random_uuid(), %(cinema)s, h.id, h.key,
           (SELECT id FROM screening.movies ORDER BY id OFFSET (s %% 40) LIMIT 1),
           %(start)s - (s * interval '12 hours'), %(start)s - (s * interval '12 hours') + interval '100 minutes',
           %(start)s - (s * interval '12 hours') + interval '130 minutes', 'SCHEDULED', now()
    FROM screening.halls h, generate_series(1, %(per_hall)s) s;
CREATE TEMP TABLE plan AS
    SELECT st.id AS showtime_id, st.starts_at, se.id AS seat_id,
           (row_number() OVER (PARTITION BY st.id ORDER BY se.row_index, se.number) - 1) / %(per_booking)s AS grp
    FROM screening.showtimes st JOIN screening.seats se ON se.hall_id = st.hall_id;
CREATE TEMP TABLE groups AS
    SELECT showtime_id, starts_at, grp, n, gen_random_uuid() AS hold_id, gen_random_uuid() AS booking_id,
           gen_random_uuid() AS customer_id
    FROM (SELECT showtime_id, starts_at, grp, count(*) AS n FROM plan GROUP BY 1, 2, 3) AS d;
INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, created_at, ended_at)
    SELECT hold_id, showtime_id, customer_id, 'CONVERTED', starts_at - interval '1 day', starts_at - interval '2 days',
           starts_at - interval '2 days' FROM groups;
INSERT INTO booking.bookings (id, showtime_id, customer_id, hold_id, state, channel, counter_payment, refund_state,
                              created_at, ticket_count, total_minor, currency)
    SELECT booking_id, showtime_id, customer_id, hold_id, 'CONFIRMED', 'COUNTER', 'CASH', 'NONE',
           starts_at - interval '2 days', n, n * 1150, 'EUR' FROM groups;
INSERT INTO booking.seat_claims (id, hold_id, booking_id, showtime_id, seat_id, status, amount_minor, currency, created_at)
    SELECT gen_random_uuid(), g.hold_id, g.booking_id, p.showtime_id, p.seat_id, 'SOLD', 1150, 'EUR',
           g.starts_at - interval '2 days'
    FROM plan p JOIN groups g ON g.showtime_id = p.showtime_id AND g.grp = p.grp;
ANALYZE;
"""


async def timed(action: Callable[[], Awaitable[object]], repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples)


async def measure(url: str, repeat: int) -> list[tuple[str, float, float]]:
    engine = create_async_engine(sqlalchemy_url(url), pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    with psycopg.connect(url) as conn:
        cinema = conn.execute("SELECT id FROM screening.cinemas LIMIT 1").fetchone()[0]  # type: ignore[index]
        showtime = conn.execute("SELECT id FROM screening.showtimes ORDER BY starts_at DESC LIMIT 1").fetchone()[0]  # type: ignore[index]
    end = datetime.now(UTC).date()
    month = end - timedelta(days=29)
    now = datetime.now(UTC)

    def uow() -> SqlUnitOfWork:
        return SqlUnitOfWork(sessions)

    async def full_scan() -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(
                "SELECT count(*), sum(amount_minor) FROM booking.seat_claims WHERE status = 'SOLD'"
            )

    rows = [
        ("ceiling: full scan of all tickets", *await timed(full_scan, repeat)),
        ("occupancy of one showtime", *await timed(lambda: reports.showtime_occupancy(uow(), showtime, now), repeat)),
        (
            "top 10 movies, 30 days",
            *await timed(lambda: reports.top_movies(uow(), cinema, month, end, 10, reports.Ranking.TICKETS), repeat),
        ),
        ("revenue by day, 30 days", *await timed(lambda: reports.revenue_by_day(uow(), cinema, month, end), repeat)),
        ("revenue by day, 1 day", *await timed(lambda: reports.revenue_by_day(uow(), cinema, end, end), repeat)),
    ]
    await engine.dispose()
    return rows


@dataclass
class ReportsRun:
    """One run: the data built and each query's median and max (ms); the first row is the ceiling."""

    version: str
    tickets: int
    showtimes: int
    build_seconds: float
    repeat: int
    rows: list[tuple[str, float, float]]

    @property
    def bookings(self) -> int:
        return self.tickets // TICKETS_PER_BOOKING

    @property
    def ceiling_ms(self) -> float:
        return self.rows[0][1]


def build_and_measure(url: str, tickets: int, repeat: int) -> ReportsRun:
    """Migrates the database at `url`, fills it with about `tickets` sold tickets, times the reports."""
    per_hall = max(1, tickets // (HALLS * SEATS_PER_HALL))
    migrate(sqlalchemy_url(url))
    libpq = sqlalchemy_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    started = time.perf_counter()
    with psycopg.connect(libpq, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        params = {
            "cinema": uuid.uuid4(),
            "halls": HALLS,
            "per_hall": per_hall,
            "per_booking": TICKETS_PER_BOOKING,
            "start": datetime.now(UTC).replace(minute=0, second=0, microsecond=0),
        }
        for statement in filter(str.strip, SEED.split(";\n")):
            used = {k: v for k, v in params.items() if f"%({k})s" in statement}
            conn.execute(statement, used or None)  # type: ignore[call-overload]
        made = conn.execute("SELECT count(*) FROM booking.seat_claims").fetchone()[0]  # type: ignore[index]
    build_seconds = time.perf_counter() - started
    rows = asyncio.run(measure(libpq, repeat))
    return ReportsRun(str(version), int(made), HALLS * per_hall, build_seconds, repeat, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--database-url")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    embedded = None
    url = args.database_url
    if not url:
        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="reports-bench-")) / "pgdata")
        url = embedded.start()
    try:
        run = build_and_measure(url, args.tickets, args.repeat)
        print(
            f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()},"
            f" PostgreSQL {run.version}"
        )
        print(
            f"workload: {run.tickets:,} tickets in {run.showtimes:,} showtimes, {run.bookings:,} bookings"
            f" (built in {run.build_seconds:.0f} s); {run.repeat} runs each"
        )
        print(f"{'query':<36}{'median ms':>11}{'max ms':>9}{'vs full scan':>14}")
        for name, median, worst in run.rows:
            print(f"{name:<36}{median:>11.1f}{worst:>9.1f}{median / run.ceiling_ms:>13.1%}")
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
