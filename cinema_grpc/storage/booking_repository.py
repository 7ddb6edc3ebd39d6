"""The booking repository: holds, bookings, seat claims, availability versions and events."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cinema_grpc.domain.booking.model import (
    ActiveClaim,
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
    SeatState,
    Ticket,
)
from cinema_grpc.domain.errors import SeatAlreadyTaken
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.pagination import Page, PageRequest, bad_page_token
from cinema_grpc.domain.ports import BookingFilter
from cinema_grpc.domain.screening.model import SeatKind
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

_EXPIRE_DUE = text(
    """
    WITH expired AS (
        UPDATE booking.holds SET state = 'EXPIRED', ended_at = :now
        WHERE showtime_id = :showtime_id AND state = 'ACTIVE'
          AND greatest(expires_at, payment_deadline) <= :now
        RETURNING id
    )
    UPDATE booking.seat_claims SET status = 'RELEASED'
    WHERE hold_id IN (SELECT id FROM expired) AND status = 'HELD'
    RETURNING seat_id
    """
)


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

    async def lock_customer_holds(self, customer_id: uuid.UUID) -> None:
        key = advisory_key(LockNamespace.CUSTOMER_HOLDS, str(customer_id))
        await self._session.execute(select(func.pg_advisory_xact_lock(key)))

    async def lock_showtime(self, showtime_id: uuid.UUID) -> None:
        # Transaction-scoped: released at commit or rollback, never leaked. The connection's
        # lock_timeout bounds the wait (Contention, i.e. ABORTED with retry advice).
        key = advisory_key(LockNamespace.SHOWTIME_SEATS, str(showtime_id))
        await self._session.execute(select(func.pg_advisory_xact_lock(key)))

    async def expire_due(self, showtime_id: uuid.UUID, now: datetime) -> list[SeatChange]:
        rows = await self._session.execute(_EXPIRE_DUE, {"showtime_id": showtime_id, "now": now})
        return [SeatChange(seat_id, SeatState.FREE) for (seat_id,) in rows]

    async def active_claims(self, showtime_id: uuid.UUID, now: datetime) -> list[ActiveClaim]:
        query = (
            select(SeatClaimRow.seat_id, SeatClaimRow.status, HoldRow.customer_id)
            .join(HoldRow, HoldRow.id == SeatClaimRow.hold_id)
            .where(
                SeatClaimRow.showtime_id == showtime_id,
                SeatClaimRow.status.in_(ACTIVE),
                or_(SeatClaimRow.status == "SOLD", SeatClaimRow.expires_at > now),
            )
        )
        return [
            ActiveClaim(seat_id, SeatState(status), customer)
            for seat_id, status, customer in await self._session.execute(query)
        ]

    async def claimed_among(
        self, showtime_id: uuid.UUID, seat_ids: Collection[uuid.UUID], now: datetime
    ) -> set[uuid.UUID]:
        # Served by the unique index on active claims (showtime_id, seat_id).
        query = select(SeatClaimRow.seat_id).where(
            SeatClaimRow.showtime_id == showtime_id,
            SeatClaimRow.seat_id.in_(list(seat_ids)),
            SeatClaimRow.status.in_(ACTIVE),
            or_(SeatClaimRow.status == "SOLD", SeatClaimRow.expires_at > now),
        )
        return set(await self._session.scalars(query))

    async def count_active_holds(self, customer_id: uuid.UUID, now: datetime) -> int:
        query = select(func.count()).where(
            HoldRow.customer_id == customer_id,
            HoldRow.state == "ACTIVE",
            func.greatest(HoldRow.expires_at, HoldRow.payment_deadline) > now,
        )
        return int(await self._session.scalar(query) or 0)

    async def add_hold(self, hold: Hold) -> None:
        await self._session.execute(
            insert(HoldRow).values(
                id=hold.id,
                showtime_id=hold.showtime_id,
                customer_id=hold.customer_id,
                state=hold.state.value,
                expires_at=hold.expires_at,
                extensions_used=hold.extensions_used,
                created_at=hold.created_at,
            )
        )
        try:
            await self._session.execute(
                insert(SeatClaimRow),
                [
                    {
                        "id": uuid.uuid4(),
                        "hold_id": hold.id,
                        "showtime_id": hold.showtime_id,
                        "seat_id": seat.seat_id,
                        "status": "HELD",
                        "amount_minor": seat.price.amount_minor,
                        "currency": seat.price.currency,
                        "expires_at": hold.expires_at,
                        "created_at": hold.created_at,
                    }
                    for seat in hold.seats
                ],
            )
        except IntegrityError as exc:
            # The unique index on active claims caught a double claim the lock should have
            # prevented: refuse it like any taken seat. The transaction rolls back whole.
            if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) == "seat_claims_active_key":
                raise SeatAlreadyTaken({str(s.seat_id): s.label for s in hold.seats}) from exc
            raise

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
        statement = insert(ShowtimeVersionRow).values(showtime_id=showtime_id, version=1)
        version = await self._session.scalar(
            statement.on_conflict_do_update(
                index_elements=[ShowtimeVersionRow.showtime_id],
                set_={"version": ShowtimeVersionRow.version + 1},
            ).returning(ShowtimeVersionRow.version)
        )
        assert version is not None
        await self._session.execute(
            insert(SeatEventRow).values(
                showtime_id=showtime_id,
                version=version,
                changes=[[str(change.seat_id), change.state.value] for change in changes],
            )
        )
        return SeatEvent(showtime_id, int(version), tuple(changes))

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

    async def showtimes_with_expired_holds(self, now: datetime, limit: int) -> list[uuid.UUID]:
        query = (
            select(HoldRow.showtime_id)
            .where(HoldRow.state == "ACTIVE", func.greatest(HoldRow.expires_at, HoldRow.payment_deadline) <= now)
            .group_by(HoldRow.showtime_id)
            .limit(limit)
        )
        return list(await self._session.scalars(query))

    async def prune_events(self, older_than: datetime) -> int:
        result = await self._session.execute(delete(SeatEventRow).where(SeatEventRow.created_at < older_than))
        return int(getattr(result, "rowcount", 0) or 0)
