"""Payments, refunds, processed webhooks, and the hash-chained audit trail."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cinema_grpc.domain.errors import PaymentInProgress
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.pagination import Page, PageRequest, bad_page_token
from cinema_grpc.domain.payment.model import (
    GENESIS_HASH,
    AuditEntry,
    AuditScheme,
    Payment,
    PaymentChannel,
    PaymentState,
    Refund,
    RefundState,
)
from cinema_grpc.domain.ports import PaymentFilter
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from cinema_grpc.storage.rows import AuditLogRow, BookingRow, PaymentRow, RefundRow, WebhookEventRow

_PENDING = (
    select(func.coalesce(func.sum(RefundRow.amount_minor), 0))
    .where(RefundRow.payment_id == PaymentRow.id, RefundRow.state == "PENDING")
    .correlate(PaymentRow)
    .scalar_subquery()
)


def _payment(row: PaymentRow, pending: int) -> Payment:
    return Payment(
        row.id,
        row.hold_id,
        row.showtime_id,
        row.customer_id,
        PaymentChannel(row.channel),
        Money(row.amount_minor, row.currency),
        Money(row.refunded_minor, row.currency),
        PaymentState(row.state),
        row.intent_id or "",
        row.client_secret,
        row.booking_id,
        row.failure_reason,
        row.refund_reason,
        row.created_at,
        row.updated_at,
        int(pending),
        row.check_failures,
    )


def _refund(row: RefundRow) -> Refund:
    return Refund(
        row.id,
        row.payment_id,
        Money(row.amount_minor, row.currency),
        RefundState(row.state),
        row.reason,
        row.actor,
        row.stripe_refund_id,
        row.attempts,
        row.last_error,
        row.created_at,
        row.next_attempt_at,
    )


class SqlPaymentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def _one(self, condition: Any, *, for_update: bool = False) -> Payment | None:
        query = select(PaymentRow, _PENDING).where(condition)
        if for_update:
            query = query.with_for_update(of=PaymentRow)
        row = (await self._session.execute(query)).first()
        return _payment(row[0], row[1]) if row else None

    async def _many(self, query: Any) -> list[Payment]:
        return [_payment(row, pending) for row, pending in await self._session.execute(query)]

    async def list_page(self, wanted: PaymentFilter, page: PageRequest) -> Page[Payment]:
        # payments_hold_idx serves both filters: a booking's payments are its hold's.
        key = (PaymentRow.created_at, PaymentRow.id)
        query = select(PaymentRow, _PENDING).order_by(*key).limit(page.size + 1)
        if wanted.booking_id is not None:
            of_booking = select(BookingRow.hold_id).where(BookingRow.id == wanted.booking_id).scalar_subquery()
            query = query.where(PaymentRow.hold_id == of_booking)
        if wanted.hold_id is not None:
            query = query.where(PaymentRow.hold_id == wanted.hold_id)
        if wanted.customer_id is not None:
            query = query.where(PaymentRow.customer_id == wanted.customer_id)
        if page.after is not None:
            try:
                created, payment_id = datetime.fromisoformat(page.after[0]), uuid.UUID(page.after[1])
            except (ValueError, IndexError) as exc:
                raise bad_page_token() from exc
            query = query.where(tuple_(*key) > tuple_(created, payment_id))
        payments = await self._many(query)
        return Page.of(payments, page, lambda p: (p.created_at.isoformat(), str(p.id)))

    async def add(self, payment: Payment) -> None:
        try:
            async with self._session.begin_nested():
                await self._session.execute(
                    insert(PaymentRow).values(
                        id=payment.id,
                        hold_id=payment.hold_id,
                        showtime_id=payment.showtime_id,
                        customer_id=payment.customer_id,
                        channel=payment.channel.value,
                        amount_minor=payment.amount.amount_minor,
                        refunded_minor=payment.refunded.amount_minor,
                        currency=payment.amount.currency,
                        state=payment.state.value,
                        created_at=payment.created_at,
                        updated_at=payment.updated_at,
                    )
                )
        except IntegrityError as exc:
            if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) == "payments_one_open_per_hold":
                raise PaymentInProgress(
                    "this hold already has a payment in progress", subject=f"holds/{payment.hold_id}"
                ) from exc
            raise

    async def get(self, payment_id: uuid.UUID, *, for_update: bool = False) -> Payment | None:
        return await self._one(PaymentRow.id == payment_id, for_update=for_update)

    async def by_intent(self, intent_id: str) -> Payment | None:
        return await self._one(PaymentRow.intent_id == intent_id)

    async def update(self, payment: Payment) -> None:
        await self._session.execute(
            update(PaymentRow)
            .where(PaymentRow.id == payment.id)
            .values(
                state=payment.state.value,
                booking_id=payment.booking_id,
                refunded_minor=payment.refunded.amount_minor,
                intent_id=payment.intent_id or None,
                client_secret=payment.client_secret,
                failure_reason=payment.failure_reason,
                refund_reason=payment.refund_reason,
                updated_at=payment.updated_at,
            )
        )

    async def live_for_hold(self, hold_id: uuid.UUID, *, other_than: uuid.UUID) -> Payment | None:
        return await self._one(
            (PaymentRow.hold_id == hold_id) & (PaymentRow.state != "FAILED") & (PaymentRow.id != other_than)
        )

    async def add_refund(self, refund: Refund) -> None:
        await self._session.execute(
            insert(RefundRow).values(
                id=refund.id,
                payment_id=refund.payment_id,
                amount_minor=refund.amount.amount_minor,
                currency=refund.amount.currency,
                state=refund.state.value,
                reason=refund.reason,
                actor=refund.actor,
                created_at=refund.created_at,
            )
        )

    async def get_refund(self, refund_id: uuid.UUID, *, for_update: bool = False) -> Refund | None:
        query = select(RefundRow).where(RefundRow.id == refund_id)
        if for_update:
            query = query.with_for_update()
        row = await self._session.scalar(query)
        return _refund(row) if row else None

    async def update_refund(self, refund: Refund) -> None:
        await self._session.execute(
            update(RefundRow)
            .where(RefundRow.id == refund.id)
            .values(
                state=refund.state.value,
                stripe_refund_id=refund.stripe_refund_id,
                attempts=refund.attempts,
                last_error=refund.last_error,
                next_attempt_at=refund.next_attempt_at,
            )
        )

    async def pending_refunds(self, now: datetime, limit: int) -> list[Refund]:
        due = func.coalesce(RefundRow.next_attempt_at, RefundRow.created_at)
        query = select(RefundRow).where(RefundRow.state == "PENDING", due <= now).order_by(due).limit(limit)
        return [_refund(row) for row in await self._session.scalars(query)]

    async def unsettled(self, now: datetime, older_than: datetime, limit: int) -> list[Payment]:
        # Least recently looked at first, and one that keeps failing waits longer each time,
        # so payments that stay open (an abandoned checkout, an intent Stripe cannot answer
        # for) cannot crowd out the others.
        due = func.coalesce(PaymentRow.next_check_at, PaymentRow.created_at)
        query = (
            select(PaymentRow, _PENDING)
            .where(PaymentRow.state == "INITIALIZED", PaymentRow.created_at < older_than, due <= now)
            .order_by(due)
            .limit(limit)
        )
        return await self._many(query)

    async def owed_by_cancelled_bookings(self, limit: int) -> list[Payment]:
        query = (
            select(PaymentRow, _PENDING)
            .join(BookingRow, BookingRow.id == PaymentRow.booking_id)
            .where(
                BookingRow.state == "CANCELLED",
                BookingRow.refund_state == "PENDING",
                PaymentRow.state.in_(("SUCCESS", "PARTIALLY_REFUNDED")),
                _PENDING == 0,
                # A refund Stripe refused for good is for staff to settle, not to ask again.
                ~select(RefundRow.id)
                .where(RefundRow.payment_id == PaymentRow.id, RefundRow.state == "FAILED")
                .correlate(PaymentRow)
                .exists(),
            )
            .limit(limit)
        )
        return await self._many(query)

    async def open_for_hold(self, hold_id: uuid.UUID) -> Payment | None:
        return await self._one((PaymentRow.hold_id == hold_id) & (PaymentRow.state == "INITIALIZED"))

    async def check_again(self, payment_id: uuid.UUID, at: datetime, failures: int) -> None:
        await self._session.execute(
            update(PaymentRow).where(PaymentRow.id == payment_id).values(next_check_at=at, check_failures=failures)
        )

    async def record_webhook(self, event_id: str, event_type: str) -> bool:
        inserted = await self._session.scalar(
            insert(WebhookEventRow)
            .values(event_id=event_id, type=event_type)
            .on_conflict_do_nothing()
            .returning(WebhookEventRow.event_id)
        )
        return inserted is not None


def _entry(row: AuditLogRow) -> AuditEntry:
    amount = Money(row.amount_minor, row.currency) if row.amount_minor is not None and row.currency else None
    return AuditEntry(
        row.payment_id,
        row.kind,
        row.stripe_id,
        amount,
        row.actor,
        row.note,
        row.created_at,
        row.sequence,
        row.hash,
        AuditScheme(row.scheme),
    )


class SqlAuditTrail:
    def __init__(self, session: AsyncSession, key: bytes | None) -> None:
        self._session = session
        # None where nothing is appended (the command line's verify): appending then fails.
        self._key = key

    async def append(self, entry: AuditEntry) -> AuditEntry:
        if self._key is None:
            raise RuntimeError("no audit key: this unit of work cannot append to the audit trail")
        # One writer at a time until commit, so the previous hash is the last entry's.
        await self._session.execute(select(func.pg_advisory_xact_lock(advisory_key(LockNamespace.AUDIT_CHAIN))))
        previous = await self._session.scalar(select(AuditLogRow.hash).order_by(AuditLogRow.sequence.desc()).limit(1))
        prev_hash = previous or GENESIS_HASH
        keyed = replace(entry, scheme=AuditScheme.HMAC_SHA256)
        digest = keyed.chained_hash(prev_hash, self._key)
        sequence = await self._session.scalar(
            insert(AuditLogRow)
            .values(
                payment_id=entry.payment_id,
                kind=entry.kind,
                stripe_id=entry.stripe_id,
                amount_minor=entry.amount.amount_minor if entry.amount else None,
                currency=entry.amount.currency if entry.amount else None,
                actor=entry.actor,
                note=entry.note,
                created_at=entry.created_at,
                prev_hash=prev_hash,
                hash=digest,
                scheme=int(AuditScheme.HMAC_SHA256),
            )
            .returning(AuditLogRow.sequence)
        )
        assert sequence is not None
        return replace(keyed, sequence=sequence, hash=digest)

    async def for_payment(self, payment_id: uuid.UUID) -> list[AuditEntry]:
        query = select(AuditLogRow).where(AuditLogRow.payment_id == payment_id).order_by(AuditLogRow.sequence)
        return [_entry(row) for row in await self._session.scalars(query)]

    async def everything(self) -> list[AuditEntry]:
        query = select(AuditLogRow).order_by(AuditLogRow.sequence)
        return [_entry(row) for row in await self._session.scalars(query)]

    async def head(self) -> AuditEntry | None:
        row = await self._session.scalar(select(AuditLogRow).order_by(AuditLogRow.sequence.desc()).limit(1))
        return _entry(row) if row else None

    async def get(self, sequence: int) -> AuditEntry | None:
        row = await self._session.get(AuditLogRow, sequence)
        return _entry(row) if row else None

    async def after(self, sequence: int) -> list[AuditEntry]:
        query = select(AuditLogRow).where(AuditLogRow.sequence > sequence).order_by(AuditLogRow.sequence)
        return [_entry(row) for row in await self._session.scalars(query)]
