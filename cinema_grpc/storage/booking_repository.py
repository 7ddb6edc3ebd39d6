"""The booking repository: holds, bookings, seat claims, availability versions and events."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from cinema_grpc.domain.booking.model import (
    Booking,
    BookingState,
    ClaimedSeat,
    CounterPayment,
    Hold,
    HoldState,
    RefundState,
    SaleChannel,
    SeatChange,
    SeatEvent,
    SeatMap,
    SeatState,
    Ticket,
)
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.pagination import Page, PageRequest, bad_page_token
from cinema_grpc.domain.ports import BookingFilter, HoldFilter
from cinema_grpc.domain.screening.model import SeatKind
from cinema_grpc.storage import hall_seats
from cinema_grpc.storage.inventory_repository import HOLD_JSON, hold_of
from cinema_grpc.storage.lone_read import read_rows
from cinema_grpc.storage.rows import (
    BookingRow,
    HoldRow,
    SeatClaimRow,
    SeatEventRow,
    SeatRow,
    ShowtimeVersionRow,
)

# A watcher that missed more versions than this gets a fresh seat map instead.
MAX_REPLAYED_EVENTS = 500
ACTIVE = ("HELD", "SOLD")

# The sweeper's work list: showtimes with due holds (expired under their locks, see inventories).
_SHOWTIMES_WITH_DUE_HOLDS = """
SELECT showtime_id FROM booking.holds
WHERE state = 'ACTIVE' AND greatest(expires_at, payment_deadline) <= %(now)s
GROUP BY showtime_id
LIMIT %(limit)s
"""

# The current version with the events after a version (none when more than the limit are
# missing: the watcher gets a seat map instead), in one snapshot.
# A hold with its seats, in one statement (release and extend read it before they lock).
_HOLD = f"SELECT hold.showtime_id, {HOLD_JSON} FROM booking.holds AS hold WHERE hold.id = %(hold_id)s"

_EVENTS_SINCE = """
WITH current AS (
    SELECT coalesce((SELECT version FROM booking.showtime_versions WHERE showtime_id = %(showtime_id)s), 0)
        AS version
)
SELECT current.version, event.version, event.changes, event.created_at, event.layout_changed
FROM current LEFT JOIN booking.seat_events AS event
    ON event.showtime_id = %(showtime_id)s AND event.version > %(after)s AND event.version <= current.version
   AND current.version - %(after)s <= %(limit)s
ORDER BY event.version
"""


# A showtime's seat map in one statement, so one snapshot: the version, the hall, its stamp
# (see hall_seats) and the active claims (sold, or held and not lapsed) of the showtime; with the
# hall's current seats in layout order when asked for (the hall's seats kept here are not those
# of that stamp).
_SEAT_MAP = """
SELECT coalesce((SELECT version FROM booking.showtime_versions WHERE showtime_id = showtime.id), 0),
       showtime.hall_id, hall.xmin::text, hall.updated_at,
       (SELECT json_agg(json_build_array(claim.seat_id, claim.status, hold.customer_id, claim.hold_id))
        FROM booking.seat_claims AS claim JOIN booking.holds AS hold ON hold.id = claim.hold_id
        WHERE claim.showtime_id = showtime.id AND claim.status IN ('HELD', 'SOLD')
          AND (claim.status = 'SOLD' OR claim.expires_at > %(now)s)),
       CASE WHEN %(seats)s THEN
       (SELECT json_agg(json_build_array(seat.id, seat.row_label, seat.number, seat.grid_column, seat.kind,
                                         seat.in_service, seat.out_of_service_reason)
                        ORDER BY seat.row_index, seat.grid_column)
        FROM screening.seats AS seat WHERE seat.hall_id = showtime.hall_id AND seat.retired_at IS NULL)
       END
FROM screening.showtimes AS showtime JOIN screening.halls AS hall ON hall.id = showtime.hall_id
WHERE showtime.id = %(showtime_id)s
"""


def _claimed_seat_columns() -> tuple[Any, ...]:
    return (
        SeatClaimRow.seat_id,
        SeatRow.row_label,
        SeatRow.number,
        SeatRow.kind,
        SeatClaimRow.amount_minor,
        SeatClaimRow.currency,
    )


def _claimed(row: Any) -> ClaimedSeat:
    return ClaimedSeat(
        row.seat_id, row.row_label, row.number, SeatKind(row.kind), Money(row.amount_minor, row.currency)
    )


class SqlBookingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def _run(self, sql: str, params: dict[str, Any]) -> Any:
        # Plain SQL in the driver's paramstyle: SQLAlchemy still wraps errors (lock timeouts
        # become Contention in the unit of work) and its events still see the statement.
        connection = await self._session.connection()
        return await connection.exec_driver_sql(sql, params)

    async def showtimes_with_expired_holds(self, now: datetime, limit: int) -> list[uuid.UUID]:
        result = await self._run(_SHOWTIMES_WITH_DUE_HOLDS, {"now": now, "limit": limit})
        return [showtime_id for (showtime_id,) in result]

    async def _seats_of(self, condition: Any) -> dict[uuid.UUID, list[tuple[uuid.UUID, str, ClaimedSeat]]]:
        query = (
            select(
                SeatClaimRow.id,
                SeatClaimRow.hold_id,
                SeatClaimRow.booking_id,
                SeatClaimRow.status,
                *_claimed_seat_columns(),
            )
            .join(SeatRow, SeatRow.id == SeatClaimRow.seat_id)
            .where(condition)
            .order_by(SeatRow.row_index, SeatRow.grid_column)
        )
        grouped: dict[uuid.UUID, list[tuple[uuid.UUID, str, ClaimedSeat]]] = defaultdict(list)
        for row in await self._session.execute(query):
            grouped[row.hold_id].append((row.id, row.status, _claimed(row)))
            if row.booking_id is not None:
                grouped[row.booking_id].append((row.id, row.status, _claimed(row)))
        return grouped

    async def get_hold(self, hold_id: uuid.UUID) -> Hold | None:
        found = (await self._run(_HOLD, {"hold_id": hold_id})).first()
        return hold_of(found[0], found[1]) if found is not None else None

    async def list_active_holds(self, hold_filter: HoldFilter, now: datetime, page: PageRequest) -> Page[Hold]:
        # Served by the partial indexes on active holds per customer and per showtime.
        query = (
            select(HoldRow)
            .where(HoldRow.state == "ACTIVE", func.greatest(HoldRow.expires_at, HoldRow.payment_deadline) > now)
            .order_by(HoldRow.created_at.desc(), HoldRow.id.desc())
            .limit(page.size + 1)
        )
        if hold_filter.customer_id is not None:
            query = query.where(HoldRow.customer_id == hold_filter.customer_id)
        if hold_filter.showtime_id is not None:
            query = query.where(HoldRow.showtime_id == hold_filter.showtime_id)
        if page.after is not None:
            try:
                created, hold_id = datetime.fromisoformat(page.after[0]), uuid.UUID(page.after[1])
            except (ValueError, IndexError) as exc:
                raise bad_page_token() from exc
            query = query.where(tuple_(HoldRow.created_at, HoldRow.id) < tuple_(created, hold_id))
        rows = list(await self._session.scalars(query))
        seats = await self._seats_of(SeatClaimRow.hold_id.in_([r.id for r in rows])) if rows else {}
        holds = [self._hold(row, seats.get(row.id, [])) for row in rows]
        return Page.of(holds, page, lambda h: (h.created_at.isoformat(), str(h.id)))

    def _hold(self, row: HoldRow, seats: list[tuple[uuid.UUID, str, ClaimedSeat]]) -> Hold:
        return Hold(
            row.id,
            row.showtime_id,
            row.customer_id,
            tuple(seat for _, _, seat in seats),
            HoldState(row.state),
            row.expires_at,
            row.extensions_used,
            row.created_at,
            row.payment_deadline,
            row.ended_by,
            row.end_reason,
        )

    def _booking(self, row: BookingRow, seats: list[tuple[uuid.UUID, str, ClaimedSeat]]) -> Booking:
        return Booking(
            row.id,
            row.showtime_id,
            row.customer_id,
            row.hold_id,
            tuple(Ticket(claim_id, seat, status == "SOLD") for claim_id, status, seat in seats),
            BookingState(row.state),
            SaleChannel(row.channel),
            CounterPayment(row.counter_payment) if row.counter_payment else None,
            RefundState(row.refund_state),
            row.created_at,
            row.cancelled_at,
            row.cancel_reason,
            row.cancelled_by,
        )

    async def get_booking(self, booking_id: uuid.UUID) -> Booking | None:
        row = await self._session.scalar(select(BookingRow).where(BookingRow.id == booking_id))
        if row is None:
            return None
        seats = await self._seats_of(SeatClaimRow.booking_id == booking_id)
        return self._booking(row, seats[row.id])

    async def list_bookings(self, booking_filter: BookingFilter, page: PageRequest) -> Page[Booking]:
        query = select(BookingRow).order_by(BookingRow.created_at.desc(), BookingRow.id.desc()).limit(page.size + 1)
        if booking_filter.customer_id is not None:
            query = query.where(BookingRow.customer_id == booking_filter.customer_id)
        if booking_filter.showtime_id is not None:
            query = query.where(BookingRow.showtime_id == booking_filter.showtime_id)
        if page.after is not None:
            try:
                created, booking_id = datetime.fromisoformat(page.after[0]), uuid.UUID(page.after[1])
            except (ValueError, IndexError) as exc:
                raise bad_page_token() from exc
            query = query.where(tuple_(BookingRow.created_at, BookingRow.id) < tuple_(created, booking_id))
        rows = list(await self._session.scalars(query))
        seats = await self._seats_of(SeatClaimRow.booking_id.in_([r.id for r in rows])) if rows else {}
        bookings = [self._booking(row, seats.get(row.id, [])) for row in rows]
        return Page.of(bookings, page, lambda b: (b.created_at.isoformat(), str(b.id)))

    async def current_version(self, showtime_id: uuid.UUID) -> int:
        version = await self._session.scalar(
            select(ShowtimeVersionRow.version).where(ShowtimeVersionRow.showtime_id == showtime_id)
        )
        return int(version or 0)

    async def seat_map(self, showtime_id: uuid.UUID, now: datetime) -> SeatMap | None:
        bind = self._session.bind
        assert isinstance(bind, AsyncEngine)
        params = {"showtime_id": showtime_id, "now": now, "seats": False}
        rows = await read_rows(self._session, _SEAT_MAP, params)
        if not rows:
            return None
        version, hall_id, xmin, updated_at, claims, _ = rows[0]
        hall = hall_seats.known(bind.sync_engine, hall_id, (xmin, updated_at))
        if hall is None:
            # The hall's seats are not kept as of this stamp: read all again, in one snapshot.
            rows = await read_rows(self._session, _SEAT_MAP, {**params, "seats": True})
            if not rows:
                return None
            version, hall_id, xmin, updated_at, claims, seats = rows[0]
            hall = hall_seats.HallSeats.of((xmin, updated_at), hall_id, seats or ())
            if not self._session.in_transaction():
                # Read alone, so committed: a transaction's own changes are not kept.
                hall_seats.keep(bind.sync_engine, hall_id, hall)
        return SeatMap(showtime_id, int(version), hall.with_claims(claims or ()))

    async def events_since(self, showtime_id: uuid.UUID, version: int) -> list[SeatEvent] | None:
        # One statement, so the current version and the events come from one snapshot: read
        # apart, events committed in between looked like a gap and cost the watcher a seat map.
        rows = (
            await self._run(_EVENTS_SINCE, {"showtime_id": showtime_id, "after": version, "limit": MAX_REPLAYED_EVENTS})
        ).all()
        current = int(rows[0][0])
        if version > current or current - version > MAX_REPLAYED_EVENTS:
            return None
        events = [(int(v), changes, at, relaid) for _, v, changes, at, relaid in rows if v is not None]
        if len(events) != current - version:
            return None  # some were pruned
        return [
            SeatEvent(
                showtime_id,
                v,
                tuple(SeatChange(uuid.UUID(seat_id), SeatState(state)) for seat_id, state in changes),
                at,
                layout_changed=relaid,
            )
            for v, changes, at, relaid in events
        ]

    async def mark_refunded(self, booking_id: uuid.UUID) -> bool:
        # The row lock of the UPDATE serialises two callers: the second finds it REFUNDED.
        changed = await self._session.scalar(
            update(BookingRow)
            .where(
                BookingRow.id == booking_id,
                BookingRow.state == BookingState.CANCELLED.value,
                BookingRow.refund_state == RefundState.PENDING.value,
            )
            .values(refund_state=RefundState.REFUNDED.value)
            .returning(BookingRow.id)
        )
        return changed is not None

    async def prune_ended_holds(self, ended_before: datetime, limit: int) -> int:
        # Holds a payment refers to stay (the payment and its audit trail name them); converted
        # holds are not ended ones (their booking refers to them). Claims go first, in the same
        # statement: the foreign key is checked at its end.
        result = await self._session.execute(
            text(
                """
                WITH doomed AS (
                    SELECT hold.id FROM booking.holds AS hold
                    WHERE hold.state IN ('RELEASED', 'EXPIRED') AND hold.ended_at < :ended_before
                      AND NOT EXISTS (SELECT 1 FROM payment.payments AS payment WHERE payment.hold_id = hold.id)
                    ORDER BY hold.ended_at
                    LIMIT :limit
                    FOR UPDATE SKIP LOCKED
                ), claims AS (
                    DELETE FROM booking.seat_claims AS claim USING doomed WHERE claim.hold_id = doomed.id
                )
                DELETE FROM booking.holds AS hold USING doomed WHERE hold.id = doomed.id
                """
            ),
            {"ended_before": ended_before, "limit": limit},
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def prune_events(self, older_than: datetime) -> int:
        result = await self._session.execute(delete(SeatEventRow).where(SeatEventRow.created_at < older_than))
        return int(getattr(result, "rowcount", 0) or 0)
