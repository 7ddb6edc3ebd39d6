"""cinema.payment.v1.PaymentService: card payments, refunds and the audit trail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cinema.payment.v1 import payment_pb2 as pb
from cinema.payment.v1 import payment_pb2_grpc
from cinema_grpc.domain.booking.model import BookingRules
from cinema_grpc.domain.errors import Violations
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.pagination import page_request
from cinema_grpc.domain.payment import use_cases as uc
from cinema_grpc.domain.payment.audit import AuditVerdict
from cinema_grpc.domain.payment.model import AuditEntry, Payment, PaymentState
from cinema_grpc.domain.ports import Clock, PaymentFilter, PaymentGateway, UnitOfWork
from cinema_grpc.services.access import current_caller
from cinema_grpc.services.convert import Context, money, parse_id, parse_money, request_key_of, require_id, timestamp

_STATES = {
    PaymentState.INITIALIZED: pb.PAYMENT_STATE_INITIALIZED,
    PaymentState.SUCCESS: pb.PAYMENT_STATE_SUCCESS,
    PaymentState.FAILED: pb.PAYMENT_STATE_FAILED,
    PaymentState.PARTIALLY_REFUNDED: pb.PAYMENT_STATE_PARTIALLY_REFUNDED,
    PaymentState.REFUNDED: pb.PAYMENT_STATE_REFUNDED,
}


def payment_message(payment: Payment, *, with_secret: bool) -> pb.Payment:
    return pb.Payment(
        id=str(payment.id),
        hold_id=str(payment.hold_id),
        booking_id=str(payment.booking_id) if payment.booking_id else "",
        customer_id=str(payment.customer_id),
        amount=money(payment.amount),
        refunded=money(payment.refunded),
        refund_pending=money(Money(payment.refund_pending_minor, payment.amount.currency)),
        state=_STATES[payment.state],
        intent_id=payment.intent_id,
        client_secret=payment.client_secret if with_secret else "",
        failure_reason=payment.failure_reason,
        refund_reason=payment.refund_reason,
        create_time=timestamp(payment.created_at),
        update_time=timestamp(payment.updated_at),
    )


def event_message(entry: AuditEntry) -> pb.PaymentEvent:
    message = pb.PaymentEvent(
        sequence=entry.sequence,
        payment_id=str(entry.payment_id),
        kind=entry.kind,
        stripe_id=entry.stripe_id,
        actor=entry.actor,
        note=entry.note,
        create_time=timestamp(entry.created_at),
        hash=entry.hash,
    )
    if entry.amount is not None:
        message.amount.CopyFrom(money(entry.amount))
    return message


class PaymentServicer(payment_pb2_grpc.PaymentServiceServicer):
    def __init__(
        self,
        unit_of_work: Callable[[], UnitOfWork],
        clock: Clock,
        gateway: PaymentGateway,
        rules: uc.PaymentRules,
        booking_rules: BookingRules,
        sync_guard: uc.SyncGuard,
        verify_audit_trail: Callable[[], Awaitable[AuditVerdict]],
    ) -> None:
        self._uow = unit_of_work
        self._verify_audit_trail = verify_audit_trail
        self._clock = clock
        self._gateway = gateway
        self._rules = rules
        self._booking_rules = booking_rules
        self._sync_guard = sync_guard

    def _message(self, payment: Payment) -> pb.Payment:
        # The client secret lets its holder confirm a card payment: only for the customer.
        return payment_message(payment, with_secret=payment.customer_id == current_caller().user_id)

    async def CreatePayment(self, request: pb.CreatePaymentRequest, context: Context) -> pb.Payment:
        violations = Violations()
        hold_id = parse_id(violations, "hold_id", request.hold_id)
        caller = current_caller()
        key = request_key_of(violations, request, caller.owner_key())
        violations.raise_if_any()
        assert hold_id is not None
        payment = await uc.create_payment(self._uow, self._gateway, self._clock, self._rules, caller, hold_id, key)
        return self._message(payment)

    async def ChargeAtTerminal(self, request: pb.ChargeAtTerminalRequest, context: Context) -> pb.Payment:
        violations = Violations()
        hold_id = parse_id(violations, "hold_id", request.hold_id)
        caller = current_caller()
        key = request_key_of(violations, request, caller.owner_key())
        violations.raise_if_any()
        assert hold_id is not None
        payment = await uc.charge_at_terminal(
            self._uow, self._gateway, self._clock, self._rules, caller, hold_id, request.payment_method, key
        )
        return self._message(payment)

    async def GetPayment(self, request: pb.GetPaymentRequest, context: Context) -> pb.Payment:
        payment_id = require_id("payment_id", request.payment_id)
        return self._message(await uc.get_payment(self._uow(), current_caller(), payment_id))

    async def ListPayments(self, request: pb.ListPaymentsRequest, context: Context) -> pb.ListPaymentsResponse:
        violations = Violations()
        booking_id = parse_id(violations, "booking_id", request.booking_id, required=False)
        hold_id = parse_id(violations, "hold_id", request.hold_id, required=False)
        violations.raise_if_any()
        caller = current_caller()
        wanted = PaymentFilter(booking_id=booking_id, hold_id=hold_id)
        page = page_request(request.page_size, request.page_token, "ListPayments", wanted, caller.owner_key())
        result = await uc.list_payments(self._uow(), caller, wanted, page)
        return pb.ListPaymentsResponse(
            payments=[self._message(p) for p in result.items], next_page_token=result.next_page_token(page)
        )

    async def SyncPayment(self, request: pb.SyncPaymentRequest, context: Context) -> pb.Payment:
        payment_id = require_id("payment_id", request.payment_id)
        payment = await uc.sync_payment(
            self._uow, self._gateway, self._clock, self._rules, self._sync_guard, current_caller(), payment_id
        )
        return self._message(payment)

    async def RefundPayment(self, request: pb.RefundPaymentRequest, context: Context) -> pb.Payment:
        violations = Violations()
        payment_id = parse_id(violations, "payment_id", request.payment_id)
        amount = parse_money(violations, "amount", request, "amount") if request.HasField("amount") else None
        caller = current_caller()
        key = request_key_of(violations, request, caller.owner_key())
        violations.raise_if_any()
        assert payment_id is not None
        payment = await uc.refund_payment(
            self._uow,
            self._gateway,
            self._clock,
            self._rules,
            self._booking_rules,
            caller,
            payment_id,
            amount,
            request.reason,
            key,
        )
        return self._message(payment)

    async def ListPaymentEvents(
        self, request: pb.ListPaymentEventsRequest, context: Context
    ) -> pb.ListPaymentEventsResponse:
        payment_id = require_id("payment_id", request.payment_id)
        entries = await uc.payment_events(self._uow(), current_caller(), payment_id)
        return pb.ListPaymentEventsResponse(events=[event_message(e) for e in entries])

    async def VerifyAuditTrail(
        self, request: pb.VerifyAuditTrailRequest, context: Context
    ) -> pb.VerifyAuditTrailResponse:
        verdict = await self._verify_audit_trail()
        return pb.VerifyAuditTrailResponse(
            intact=verdict.intact,
            entries_checked=verdict.entries_checked,
            first_broken_sequence=verdict.first_broken_sequence,
            problem=verdict.problem.value if verdict.problem else "",
            checkpoint_sequence=verdict.checkpoint_sequence,
        )
