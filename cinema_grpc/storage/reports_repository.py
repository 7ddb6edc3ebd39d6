"""Report queries. They read valid tickets (claims SOLD) through indexed joins."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from cinema_grpc.domain.money import Money
from cinema_grpc.domain.reports import DayRevenue, MovieSales, Occupancy, Ranking

_OCCUPANCY = text(
    """
    SELECT
        (SELECT count(*) FROM screening.seats s WHERE s.hall_id = st.hall_id AND s.retired_at IS NULL) AS seats,
        (SELECT count(*) FROM screening.seats s
          WHERE s.hall_id = st.hall_id AND s.retired_at IS NULL AND NOT s.in_service
            AND NOT EXISTS (SELECT 1 FROM booking.seat_claims c WHERE c.showtime_id = st.id AND c.seat_id = s.id
                            AND c.status IN ('HELD', 'SOLD') AND (c.status = 'SOLD' OR c.expires_at > :now))
        ) AS out_of_service,
        count(*) FILTER (WHERE c.status = 'SOLD') AS sold,
        count(*) FILTER (WHERE c.status = 'HELD') AS held
    FROM screening.showtimes st
    LEFT JOIN booking.seat_claims c
        ON c.showtime_id = st.id AND c.status IN ('HELD', 'SOLD') AND (c.status = 'SOLD' OR c.expires_at > :now)
    WHERE st.id = :showtime_id
    GROUP BY st.id, st.hall_id
    """
)

# Valid tickets of the cinema's showtimes, by the time their booking was made.
_SOLD_FROM = """
    FROM booking.bookings b
    JOIN screening.showtimes st ON st.id = b.showtime_id
    JOIN booking.seat_claims c ON c.booking_id = b.id AND c.status = 'SOLD'
"""
_SOLD_WHERE = "WHERE st.cinema_id = :cinema_id AND b.created_at >= :sold_from AND b.created_at < :sold_before"

_TOP_MOVIES = f"""
    SELECT m.id, m.title, count(*) AS tickets, sum(c.amount_minor) AS revenue, c.currency
    {_SOLD_FROM}
    JOIN screening.movies m ON m.id = st.movie_id
    {_SOLD_WHERE}
    GROUP BY m.id, m.title, c.currency
    ORDER BY {{order}} DESC, m.title, m.id
    LIMIT :limit
"""

_REVENUE_BY_DAY = text(
    f"""
    SELECT (b.created_at AT TIME ZONE :zone)::date AS day, c.currency,
           count(*) AS tickets, sum(c.amount_minor) AS revenue
    {_SOLD_FROM}
    {_SOLD_WHERE}
    GROUP BY 1, 2
    ORDER BY 1, 2
    """
)


class SqlReportsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def snapshot(self) -> None:
        await self._session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))

    async def occupancy(self, showtime_id: uuid.UUID, now: datetime) -> Occupancy | None:
        row = (await self._session.execute(_OCCUPANCY, {"showtime_id": showtime_id, "now": now})).first()
        if row is None:
            return None
        return Occupancy(showtime_id, int(row.seats), int(row.sold), int(row.held), int(row.out_of_service))

    async def top_movies(
        self, cinema_id: uuid.UUID, sold_from: datetime, sold_before: datetime, limit: int, ranking: Ranking
    ) -> list[MovieSales]:
        order = "revenue" if ranking is Ranking.REVENUE else "tickets"
        query = text(_TOP_MOVIES.format(order=order))
        rows = await self._session.execute(
            query, {"cinema_id": cinema_id, "sold_from": sold_from, "sold_before": sold_before, "limit": limit}
        )
        return [MovieSales(r.id, r.title, int(r.tickets), Money(int(r.revenue), r.currency)) for r in rows]

    async def revenue_by_day(
        self, cinema_id: uuid.UUID, sold_from: datetime, sold_before: datetime, time_zone: str
    ) -> list[DayRevenue]:
        rows = await self._session.execute(
            _REVENUE_BY_DAY,
            {"cinema_id": cinema_id, "sold_from": sold_from, "sold_before": sold_before, "zone": time_zone},
        )
        return [DayRevenue(r.day, int(r.tickets), Money(int(r.revenue), r.currency)) for r in rows]
