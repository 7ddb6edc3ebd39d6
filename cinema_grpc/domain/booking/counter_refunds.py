"""Refunds of box-office sales, which are paid back over the counter rather than through
Stripe: staff record that the money went back, and the payment audit trail keeps the record."""

from __future__ import annotations

import uuid

from cinema_grpc.domain.access import Caller
from cinema_grpc.domain.booking.model import Booking, BookingState, RefundState, SaleChannel
from cinema_grpc.domain.errors import BookingNotFound, NoCounterRefundDue, Violations
from cinema_grpc.domain.payment.model import AuditEntry
from cinema_grpc.domain.ports import Clock, UnitOfWork
from cinema_grpc.domain.text import clean_text

# The audit kind of a counter refund; its entry carries the booking id where card payments
# carry the payment id (a counter sale has no payment row).
COUNTER_REFUND_PAID = "counter_refund_paid"


async def record_counter_refund(
    uow: UnitOfWork, clock: Clock, caller: Caller, booking_id: uuid.UUID, note: str
) -> Booking:
    """Staff: the money of a cancelled counter sale was handed back. The booking's refund
    becomes REFUNDED and the audit trail names who paid out how much; a repeat changes nothing."""
    violations = Violations()
    note = clean_text(violations, "note", note, max_length=500, required=False)
    violations.raise_if_any()
    async with uow:
        booking = await uow.booking.get_booking(booking_id)
        if booking is None:
            raise BookingNotFound(booking_id)
        if booking.refund_state is RefundState.REFUNDED and booking.channel is SaleChannel.COUNTER:
            return booking
        subject = f"bookings/{booking.id}"
        if booking.channel is not SaleChannel.COUNTER:
            raise NoCounterRefundDue("online bookings are refunded through their card payment", subject=subject)
        if booking.state is not BookingState.CANCELLED or booking.refund_state is not RefundState.PENDING:
            raise NoCounterRefundDue("only a cancelled booking has money to hand back", subject=subject)
        refunded = booking.with_refund(RefundState.REFUNDED)
        if not await uow.booking.mark_refunded(booking.id):
            return refunded  # recorded meanwhile by another call
        how = (booking.counter_payment or "counter").lower().replace("_", " ")
        await uow.audit.append(
            AuditEntry(
                booking.id,
                COUNTER_REFUND_PAID,
                "",
                booking.total,
                str(caller.user_id),
                f"{how} refund of booking {booking.id}" + (f": {note}" if note else ""),
                clock.now(),
            )
        )
        await uow.commit()
    return refunded
