"""Report queries over confirmed bookings and seat claims."""

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
        count(*) FILTER (WHERE c.status = 'HELD') AS held,
        (SELECT count(*) FROM admission.admissions a JOIN booking.seat_claims t ON t.id = a.ticket_id
          WHERE a.showtime_id = st.id AND a.undone_at IS NULL AND t.status = 'SOLD') AS admitted,
        st.ends_at <= :now AS ended
    FROM screening.showtimes st
    LEFT JOIN booking.seat_claims c
        ON c.showtime_id = st.id AND c.status IN ('HELD', 'SOLD') AND (c.status = 'SOLD' OR c.expires_at > :now)
    WHERE st.id = :showtime_id
    GROUP BY st.id, st.hall_id, st.ends_at
    """
)

# Confirmed bookings of the cinema's showtimes, by the time they were made. A booking keeps
# its ticket count and total, so these read the covering index on bookings, not the tickets.
_SOLD = """
    FROM booking.bookings b
    JOIN screening.showtimes st ON st.id = b.showtime_id
    {join}
    WHERE st.cinema_id = :cinema_id AND b.state = 'CONFIRMED'
      AND b.created_at >= :sold_from AND b.created_at < :sold_before
"""

_TOP_MOVIES = """
    SELECT m.id, m.title, sum(b.ticket_count) AS tickets, sum(b.total_minor) AS revenue, b.currency
    {sold}
    GROUP BY m.id, m.title, b.currency
    ORDER BY {order} DESC, m.title, m.id
    LIMIT :limit
"""

_REVENUE_BY_DAY = text(
    """
    SELECT (b.created_at AT TIME ZONE :zone)::date AS day, b.currency,
           sum(b.ticket_count) AS tickets, sum(b.total_minor) AS revenue
    {sold}
    GROUP BY 1, 2
    ORDER BY 1, 2
    """.format(sold=_SOLD.format(join=""))
)


class SqlReportsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def occupancy(self, showtime_id: uuid.UUID, now: datetime) -> Occupancy | None:
        row = (await self._session.execute(_OCCUPANCY, {"showtime_id": showtime_id, "now": now})).first()
        if row is None:
            return None
        return Occupancy(
            showtime_id,
            int(row.seats),
            int(row.sold),
            int(row.held),
            int(row.out_of_service),
            int(row.admitted),
            bool(row.ended),
        )

    async def top_movies(
        self, cinema_id: uuid.UUID, sold_from: datetime, sold_before: datetime, limit: int, ranking: Ranking
    ) -> list[MovieSales]:
        order = "revenue" if ranking is Ranking.REVENUE else "tickets"
        sold = _SOLD.format(join="JOIN screening.movies m ON m.id = st.movie_id")
        query = text(_TOP_MOVIES.format(sold=sold, order=order))
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
