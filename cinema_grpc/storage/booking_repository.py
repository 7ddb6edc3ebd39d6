"""The booking repository: holds, bookings, seat claims, availability versions and events."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import case, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cinema_grpc.domain.booking.model import (
    ActiveClaim,
    Booking,
    BookingState,
    ClaimedSeat,
    CounterPayment,
    Hold,
    HoldContext,
    HoldState,
    RefundState,
    SaleChannel,
    SeatChange,
    SeatEvent,
    SeatState,
    Ticket,
)
from cinema_grpc.domain.errors import SeatAlreadyTaken
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.pagination import Page, PageRequest, bad_page_token
from cinema_grpc.domain.ports import BookingFilter
from cinema_grpc.domain.screening.model import BusyPeriod, Seat, SeatKind, Showtime, ShowtimeState
from cinema_grpc.storage.locks import LockNamespace, advisory_key
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

# The hot path of a hold is three statements (locks; reads; writes) sent as plain SQL through
# the connection: no ORM entities, no statement building, no cache keys.

# The customer's lock, then the showtime's, then the hall row FOR SHARE (a layout change takes
# it FOR UPDATE). The hall lock is in a subquery of the locks' row, so it is taken after them.
# A statement of its own, sent in one round trip with the reads: they need a snapshot taken
# once every lock is held.
_LOCK_FOR_HOLD = """
SELECT (SELECT h.id FROM screening.halls AS h JOIN screening.showtimes AS s ON s.hall_id = h.id
        WHERE s.id = %(showtime_id)s FOR SHARE OF h)
FROM (SELECT pg_advisory_xact_lock(%(customer_key)s) AS customer,
             pg_advisory_xact_lock(%(showtime_key)s) AS showtime OFFSET 0) AS locks
"""

# Expires the showtime's due holds and reads everything a hold is decided on, in one snapshot.
# The reads ignore the claims the CTEs release: a lapsed claim does not count as taken anyway.
_HOLD_CONTEXT = """
WITH expired AS (
    UPDATE booking.holds SET state = 'EXPIRED', ended_at = %(now)s
    WHERE showtime_id = %(showtime_id)s AND state = 'ACTIVE'
      AND greatest(expires_at, payment_deadline) <= %(now)s
    RETURNING id
), freed AS (
    UPDATE booking.seat_claims SET status = 'RELEASED'
    WHERE hold_id IN (SELECT id FROM expired) AND status = 'HELD'
    RETURNING seat_id
), showtime AS (
    SELECT * FROM screening.showtimes WHERE id = %(showtime_id)s
), asked AS (
    SELECT seat.* FROM screening.seats AS seat JOIN showtime ON seat.hall_id = showtime.hall_id
    WHERE seat.id = ANY(%(seat_ids)s::uuid[]) AND seat.retired_at IS NULL
), wanted AS (
    SELECT * FROM asked
    UNION
    SELECT seat.* FROM screening.seats AS seat JOIN showtime ON seat.hall_id = showtime.hall_id
    WHERE seat.retired_at IS NULL
      AND seat.row_label = ANY(ARRAY(SELECT asked.row_label FROM asked WHERE asked.kind = %(rows_of)s))
    UNION
    SELECT seat.* FROM screening.seats AS seat JOIN showtime ON seat.hall_id = showtime.hall_id
    WHERE %(all_seats)s AND seat.retired_at IS NULL
)
SELECT showtime.cinema_id, showtime.hall_id, showtime.movie_id, showtime.starts_at, showtime.ends_at,
       showtime.busy_until, showtime.state, showtime.cancel_reason, showtime.created_at,
       (SELECT json_agg(json_build_array(price.kind, price.amount_minor, price.currency))
        FROM screening.showtime_prices AS price WHERE price.showtime_id = showtime.id),
       (SELECT count(*) FROM booking.holds AS hold
        WHERE hold.customer_id = %(customer_id)s AND hold.state = 'ACTIVE'
          AND greatest(hold.expires_at, hold.payment_deadline) > %(now)s),
       (SELECT json_agg(json_build_array(wanted.id, wanted.row_label, wanted.number, wanted.grid_column,
                                         wanted.kind, wanted.in_service, wanted.out_of_service_reason)
                        ORDER BY wanted.row_index, wanted.grid_column)
        FROM wanted),
       (SELECT array_agg(claim.seat_id) FROM wanted JOIN booking.seat_claims AS claim
            ON claim.showtime_id = %(showtime_id)s AND claim.seat_id = wanted.id
        WHERE claim.status IN ('HELD', 'SOLD') AND (claim.status = 'SOLD' OR claim.expires_at > %(now)s)),
       (SELECT array_agg(seat_id) FROM freed)
FROM showtime
"""

# The hold, its claims, the showtime's next availability version and its event, in one statement.
# The unique index on active claims still refuses a double claim (seat_claims_active_key).
_ADD_HOLD = """
WITH hold AS (
    INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, extensions_used, created_at)
    VALUES (%(hold_id)s, %(showtime_id)s, %(customer_id)s, %(state)s, %(expires_at)s, %(extensions_used)s,
            %(created_at)s)
), claims AS (
    INSERT INTO booking.seat_claims
        (id, hold_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)
    SELECT claim.id, %(hold_id)s, %(showtime_id)s, claim.seat_id, 'HELD', claim.amount_minor, claim.currency,
           %(expires_at)s, %(created_at)s
    FROM unnest(%(claim_ids)s::uuid[], %(seat_ids)s::uuid[], %(amounts)s::bigint[], %(currencies)s::text[])
        AS claim (id, seat_id, amount_minor, currency)
), version AS (
    INSERT INTO booking.showtime_versions AS current (showtime_id, version) VALUES (%(showtime_id)s, 1)
    ON CONFLICT (showtime_id) DO UPDATE SET version = current.version + 1
    RETURNING version
)
INSERT INTO booking.seat_events (showtime_id, version, changes)
SELECT %(showtime_id)s, version, %(changes)s::jsonb FROM version
RETURNING version
"""


# The sweeper: showtimes with due holds; then, under their locks, their holds still due expire
# and their seats are released (by showtime), in one statement.
_SHOWTIMES_WITH_DUE_HOLDS = """
SELECT showtime_id FROM booking.holds
WHERE state = 'ACTIVE' AND greatest(expires_at, payment_deadline) <= %(now)s
GROUP BY showtime_id
LIMIT %(limit)s
"""

# Never waits, so the order does not matter and two sweepers cannot deadlock.
_TRY_LOCK_SHOWTIMES = """
SELECT showtime_id FROM unnest(%(showtime_ids)s::uuid[], %(keys)s::bigint[]) AS t(showtime_id, key)
WHERE pg_try_advisory_xact_lock(key)
"""

_EXPIRE_DUE = """
WITH expired AS (
    UPDATE booking.holds SET state = 'EXPIRED', ended_at = %(now)s
    WHERE showtime_id = ANY(%(showtime_ids)s::uuid[]) AND state = 'ACTIVE'
      AND greatest(expires_at, payment_deadline) <= %(now)s
    RETURNING id
), freed AS (
    UPDATE booking.seat_claims SET status = 'RELEASED'
    WHERE showtime_id = ANY(%(showtime_ids)s::uuid[]) AND status = 'HELD'
      AND hold_id IN (SELECT id FROM expired)
    RETURNING showtime_id, seat_id
), by_showtime AS (
    SELECT showtime_id, array_agg(seat_id ORDER BY seat_id) AS seat_ids,
           jsonb_agg(jsonb_build_array(seat_id, %(state)s::text) ORDER BY seat_id) AS changes
    FROM freed GROUP BY showtime_id
), version AS (
    INSERT INTO booking.showtime_versions AS current (showtime_id, version)
    SELECT showtime_id, 1 FROM by_showtime
    ON CONFLICT (showtime_id) DO UPDATE SET version = current.version + 1
    RETURNING showtime_id, version
), event AS (
    INSERT INTO booking.seat_events (showtime_id, version, changes)
    SELECT version.showtime_id, version.version, by_showtime.changes FROM version JOIN by_showtime USING (showtime_id)
)
SELECT version.showtime_id, version.version, by_showtime.seat_ids
FROM version JOIN by_showtime USING (showtime_id)
"""

# The next availability version of each showtime and its event, in one statement.
_NEXT_VERSIONS = """
WITH changed AS (
    SELECT * FROM unnest(%(showtime_ids)s::uuid[], %(changes)s::jsonb[]) AS changed (showtime_id, changes)
), version AS (
    INSERT INTO booking.showtime_versions AS current (showtime_id, version)
    SELECT showtime_id, 1 FROM changed
    ON CONFLICT (showtime_id) DO UPDATE SET version = current.version + 1
    RETURNING showtime_id, version
)
INSERT INTO booking.seat_events (showtime_id, version, changes)
SELECT version.showtime_id, version.version, changed.changes FROM version JOIN changed USING (showtime_id)
RETURNING showtime_id, version
"""


def _changes_json(changes: Sequence[SeatChange]) -> str:
    return json.dumps([[str(change.seat_id), change.state.value] for change in changes])


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

    async def _pipeline(self, *statements: tuple[str, dict[str, Any]]) -> list[Any]:
        """Sends the statements together (one round trip, BEGIN included when the transaction
        starts with them) and returns the rows of the last. They still run one after another,
        each with its own snapshot. Errors are wrapped as SQLAlchemy would wrap them, and
        SQLAlchemy's statement hooks see each statement."""
        connection = await self._session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        sync = connection.sync_connection
        assert isinstance(driver, psycopg.AsyncConnection) and sync is not None
        sql, params = statements[-1]
        try:
            async with driver.pipeline():
                cursors = []
                for sql, params in statements:
                    sync.dispatch.before_cursor_execute(sync, None, sql, params, None, False)
                    cursors.append(await driver.execute(sql, params))
            return await cursors[-1].fetchall()
        except psycopg.Error as exc:
            raise DBAPIError.instance(sql, params, exc, psycopg.Error, hide_parameters=True) from exc

    async def hold_context(
        self,
        customer_id: uuid.UUID,
        showtime_id: uuid.UUID,
        now: datetime,
        *,
        seat_ids: Collection[uuid.UUID] | None,
        rows_of: SeatKind,
    ) -> HoldContext:
        locks = {
            "customer_key": advisory_key(LockNamespace.CUSTOMER_HOLDS, str(customer_id)),
            "showtime_key": advisory_key(LockNamespace.SHOWTIME_SEATS, str(showtime_id)),
            "showtime_id": showtime_id,
        }
        read = {
            "showtime_id": showtime_id,
            "customer_id": customer_id,
            "now": now,
            "all_seats": seat_ids is None,
            "seat_ids": list(seat_ids or ()),
            "rows_of": rows_of.value,
        }
        rows = await self._pipeline((_LOCK_FOR_HOLD, locks), (_HOLD_CONTEXT, read))
        if not rows:
            return HoldContext(None, 0, (), frozenset(), ())
        (cinema_id, hall_id, movie_id, starts_at, ends_at, busy_until, state, cancel_reason, created_at) = rows[0][:9]
        prices, active_holds, seats, taken, freed = rows[0][9:]
        showtime = Showtime(
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
        return HoldContext(
            showtime,
            int(active_holds),
            tuple(
                Seat(uuid.UUID(seat_id), hall_id, label, number, column, SeatKind(kind), in_service, reason)
                for seat_id, label, number, column, kind, in_service, reason in seats or ()
            ),
            frozenset(taken or ()),
            tuple(SeatChange(seat_id, SeatState.FREE) for seat_id in freed or ()),
        )

    async def add_hold(self, hold: Hold, changes: Sequence[SeatChange]) -> SeatEvent:
        try:
            rows = await self._pipeline(
                (
                    _ADD_HOLD,
                    {
                        "hold_id": hold.id,
                        "showtime_id": hold.showtime_id,
                        "customer_id": hold.customer_id,
                        "state": hold.state.value,
                        "expires_at": hold.expires_at,
                        "extensions_used": hold.extensions_used,
                        "created_at": hold.created_at,
                        "claim_ids": [uuid.uuid4() for _ in hold.seats],
                        "seat_ids": [seat.seat_id for seat in hold.seats],
                        "amounts": [seat.price.amount_minor for seat in hold.seats],
                        "currencies": [seat.price.currency for seat in hold.seats],
                        "changes": _changes_json(changes),
                    },
                )
            )
        except IntegrityError as exc:
            # The unique index on active claims caught a double claim the lock should have
            # prevented: refuse it like any taken seat. The transaction rolls back whole.
            if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) == "seat_claims_active_key":
                raise SeatAlreadyTaken({str(s.seat_id): s.label for s in hold.seats}) from exc
            raise
        return SeatEvent(hold.showtime_id, int(rows[0][0]), tuple(changes))

    async def lock_showtime(self, showtime_id: uuid.UUID) -> None:
        # Transaction-scoped: released at commit or rollback, never leaked. The connection's
        # lock_timeout bounds the wait (Contention, i.e. ABORTED with retry advice).
        key = advisory_key(LockNamespace.SHOWTIME_SEATS, str(showtime_id))
        await self._session.execute(select(func.pg_advisory_xact_lock(key)))

    async def try_lock_showtimes(self, showtime_ids: Collection[uuid.UUID]) -> list[uuid.UUID]:
        ids = list(showtime_ids)
        keys = [advisory_key(LockNamespace.SHOWTIME_SEATS, str(showtime_id)) for showtime_id in ids]
        result = await self._run(_TRY_LOCK_SHOWTIMES, {"showtime_ids": ids, "keys": keys})
        return [showtime_id for (showtime_id,) in result]

    async def showtimes_with_expired_holds(self, now: datetime, limit: int) -> list[uuid.UUID]:
        result = await self._run(_SHOWTIMES_WITH_DUE_HOLDS, {"now": now, "limit": limit})
        return [showtime_id for (showtime_id,) in result]

    async def expire_due(self, showtime_ids: Collection[uuid.UUID], now: datetime) -> list[SeatEvent]:
        # Expiry, release, versions and events in one statement; the events' JSON is built by
        # the database, in the form _changes_json gives.
        result = await self._run(
            _EXPIRE_DUE, {"showtime_ids": list(showtime_ids), "now": now, "state": SeatState.FREE.value}
        )
        return [
            SeatEvent(showtime_id, int(version), tuple(SeatChange(seat_id, SeatState.FREE) for seat_id in seat_ids))
            for showtime_id, version, seat_ids in result
        ]

    async def active_claims(self, showtime_id: uuid.UUID, now: datetime) -> list[ActiveClaim]:
        query = (
            select(SeatClaimRow.seat_id, SeatClaimRow.status, HoldRow.customer_id, SeatClaimRow.hold_id)
            .join(HoldRow, HoldRow.id == SeatClaimRow.hold_id)
            .where(
                SeatClaimRow.showtime_id == showtime_id,
                SeatClaimRow.status.in_(ACTIVE),
                or_(SeatClaimRow.status == "SOLD", SeatClaimRow.expires_at > now),
            )
        )
        return [
            ActiveClaim(seat_id, SeatState(status), customer, hold_id)
            for seat_id, status, customer, hold_id in await self._session.execute(query)
        ]

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

    async def get_hold(self, hold_id: uuid.UUID, *, for_update: bool = False) -> Hold | None:
        query = select(HoldRow).where(HoldRow.id == hold_id)
        if for_update:
            query = query.with_for_update()
        row = await self._session.scalar(query)
        if row is None:
            return None
        seats = await self._seats_of(SeatClaimRow.hold_id == hold_id)
        return Hold(
            row.id,
            row.showtime_id,
            row.customer_id,
            tuple(seat for _, _, seat in seats[row.id]),
            HoldState(row.state),
            row.expires_at,
            row.extensions_used,
            row.created_at,
            row.payment_deadline,
            row.ended_by,
            row.end_reason,
        )

    async def end_hold(self, hold: Hold, state: HoldState, now: datetime) -> None:
        await self._session.execute(
            update(HoldRow)
            .where(HoldRow.id == hold.id)
            .values(state=state.value, ended_at=now, ended_by=hold.ended_by, end_reason=hold.end_reason)
        )
        await self._session.execute(
            update(SeatClaimRow)
            .where(SeatClaimRow.hold_id == hold.id, SeatClaimRow.status == "HELD")
            .values(status="RELEASED")
        )

    async def extend_hold(self, hold: Hold) -> None:
        await self._session.execute(
            update(HoldRow)
            .where(HoldRow.id == hold.id)
            .values(expires_at=hold.expires_at, extensions_used=hold.extensions_used)
        )
        await self._keep_seats_until(hold.id, hold.kept_until)

    async def set_payment_deadline(self, hold: Hold, deadline: datetime | None) -> None:
        await self._session.execute(update(HoldRow).where(HoldRow.id == hold.id).values(payment_deadline=deadline))
        await self._keep_seats_until(hold.id, replace(hold, payment_deadline=deadline).kept_until)

    async def _keep_seats_until(self, hold_id: uuid.UUID, until: datetime) -> None:
        # Claims carry the moment their seat is free again, so "is it taken?" reads one table.
        await self._session.execute(
            update(SeatClaimRow)
            .where(SeatClaimRow.hold_id == hold_id, SeatClaimRow.status == "HELD")
            .values(expires_at=until)
        )

    async def convert_hold(self, hold: Hold, booking: Booking) -> None:
        await self._session.execute(
            insert(BookingRow).values(
                id=booking.id,
                showtime_id=booking.showtime_id,
                customer_id=booking.customer_id,
                hold_id=hold.id,
                state=booking.state.value,
                channel=booking.channel.value,
                counter_payment=booking.counter_payment.value if booking.counter_payment else None,
                refund_state=booking.refund_state.value,
                created_at=booking.created_at,
                ticket_count=len(booking.tickets),
                total_minor=booking.total.amount_minor,
                currency=booking.total.currency,
            )
        )
        await self._session.execute(
            update(SeatClaimRow)
            .where(SeatClaimRow.hold_id == hold.id, SeatClaimRow.status == "HELD")
            .values(status="SOLD", booking_id=booking.id, expires_at=None)
        )
        await self._session.execute(
            update(HoldRow).where(HoldRow.id == hold.id).values(state="CONVERTED", ended_at=booking.created_at)
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

    async def get_booking(self, booking_id: uuid.UUID, *, for_update: bool = False) -> Booking | None:
        query = select(BookingRow).where(BookingRow.id == booking_id)
        if for_update:
            query = query.with_for_update()
        row = await self._session.scalar(query)
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

    async def cancel_booking(self, booking: Booking, state: BookingState, refund: RefundState) -> None:
        await self._session.execute(
            update(BookingRow)
            .where(BookingRow.id == booking.id)
            .values(
                state=state.value,
                refund_state=refund.value,
                cancelled_at=booking.cancelled_at,
                cancel_reason=booking.cancel_reason,
                cancelled_by=booking.cancelled_by,
            )
        )
        await self._session.execute(
            update(SeatClaimRow)
            .where(SeatClaimRow.booking_id == booking.id, SeatClaimRow.status == "SOLD")
            .values(status="CANCELLED")
        )

    async def end_showtime_sales(self, showtime_id: uuid.UUID, now: datetime, reason: str) -> list[SeatChange]:
        await self._session.execute(
            update(HoldRow)
            .where(HoldRow.showtime_id == showtime_id, HoldRow.state == "ACTIVE")
            .values(state="RELEASED", ended_at=now)
        )
        await self._session.execute(
            update(BookingRow)
            .where(BookingRow.showtime_id == showtime_id, BookingRow.state == "CONFIRMED")
            .values(state="CANCELLED", refund_state="PENDING", cancelled_at=now, cancel_reason=reason[:500])
        )
        released = await self._session.scalars(
            update(SeatClaimRow)
            .where(SeatClaimRow.showtime_id == showtime_id, SeatClaimRow.status.in_(ACTIVE))
            .values(status=case((SeatClaimRow.status == "HELD", "RELEASED"), else_="CANCELLED"))
            .returning(SeatClaimRow.seat_id)
        )
        return [SeatChange(seat_id, SeatState.FREE) for seat_id in released]

    async def next_version(self, showtime_id: uuid.UUID, changes: list[SeatChange]) -> SeatEvent:
        return (await self.next_versions({showtime_id: changes}))[0]

    async def next_versions(self, changes: Mapping[uuid.UUID, Sequence[SeatChange]]) -> list[SeatEvent]:
        showtime_ids = list(changes)
        result = await self._run(
            _NEXT_VERSIONS,
            {"showtime_ids": showtime_ids, "changes": [_changes_json(changes[s]) for s in showtime_ids]},
        )
        versions = dict(result.all())
        return [SeatEvent(s, int(versions[s]), tuple(changes[s])) for s in showtime_ids]

    async def current_version(self, showtime_id: uuid.UUID) -> int:
        version = await self._session.scalar(
            select(ShowtimeVersionRow.version).where(ShowtimeVersionRow.showtime_id == showtime_id)
        )
        return int(version or 0)

    async def events_since(self, showtime_id: uuid.UUID, version: int) -> list[SeatEvent] | None:
        current = await self.current_version(showtime_id)
        if version > current or current - version > MAX_REPLAYED_EVENTS:
            return None
        rows = (
            await self._session.execute(
                select(SeatEventRow.version, SeatEventRow.changes)
                .where(SeatEventRow.showtime_id == showtime_id, SeatEventRow.version > version)
                .order_by(SeatEventRow.version)
            )
        ).all()
        if len(rows) != current - version:
            return None  # some were pruned
        return [
            SeatEvent(
                showtime_id,
                int(row.version),
                tuple(SeatChange(uuid.UUID(seat_id), SeatState(state)) for seat_id, state in row.changes),
            )
            for row in rows
        ]

    async def prune_events(self, older_than: datetime) -> int:
        result = await self._session.execute(delete(SeatEventRow).where(SeatEventRow.created_at < older_than))
        return int(getattr(result, "rowcount", 0) or 0)
