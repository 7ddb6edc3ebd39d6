"""Payment use cases. Calls to Stripe happen between transactions, never inside one; every
step is written down first, so a crash at any point leaves a state the reconciliation job
finishes: a booking with its payment, or the money refunded."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cinema_grpc.domain.access import Caller, PermissionDenied
from cinema_grpc.domain.booking import use_cases as booking
from cinema_grpc.domain.booking.inventory import SeatInventory
from cinema_grpc.domain.booking.model import BookingRules, Hold, HoldState, SaleChannel
from cinema_grpc.domain.booking.selling_rules import check_on_sale
from cinema_grpc.domain.booking.use_cases import cancel_in, locked_hold
from cinema_grpc.domain.errors import (
    DomainError,
    HoldNotActive,
    NothingToPay,
    PaymentNotFound,
    PaymentNotRefundable,
    PaymentProviderUnavailable,
    PaymentRefused,
    SyncRateLimited,
    Violations,
    invalid,
)
from cinema_grpc.domain.idempotency import RequestKey, earlier_result, remember_result
from cinema_grpc.domain.ids import new_id
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.pagination import Page, PageRequest
from cinema_grpc.domain.payment.audit import AuditCheckpoint, AuditVerdict, extends, verify_chain
from cinema_grpc.domain.payment.model import (
    AuditEntry,
    IntentStatus,
    Payment,
    PaymentChannel,
    PaymentState,
    Refund,
    RefundState,
    check_card_amount,
    retry_delay,
)
from cinema_grpc.domain.ports import AuditCheckpoints, Clock, PaymentFilter, PaymentGateway, UnitOfWork
from cinema_grpc.domain.rate_limits import RecentMoments, TokenBuckets
from cinema_grpc.domain.text import clean_text

log = logging.getLogger(__name__)

SYSTEM, STRIPE = "system", "stripe"
UnitOfWorkFactory = Callable[[], UnitOfWork]


@dataclass(frozen=True)
class PaymentRules:
    # A hold whose payment is in flight is kept at most this long after the payment started.
    payment_deadline: timedelta = timedelta(minutes=30)
    # INITIALIZED payments older than this are asked about by the reconciliation job.
    reconcile_after: timedelta = timedelta(minutes=1)
    # A payment that never got its PaymentIntent (a crash in between) fails after this.
    abandon_after: timedelta = timedelta(minutes=10)
    # After a passing Stripe failure the next try waits this long, doubling each time up to
    # retry_max_delay; a refund that failed this many times in a row is given up (FAILED).
    retry_base_delay: timedelta = timedelta(seconds=30)
    retry_max_delay: timedelta = timedelta(hours=1)
    refund_max_attempts: int = 8
    # Online payments start until this long before the showtime (BookingRules.online_sales_close);
    # money that arrives once the showtime has started is refunded.
    online_sales_close: timedelta = timedelta(0)


def _actor(caller: Caller) -> str:
    return str(caller.user_id) if caller.user_id else SYSTEM


async def _audit(
    uow: UnitOfWork,
    payment: Payment,
    kind: str,
    actor: str,
    now: datetime,
    *,
    stripe_id: str = "",
    amount: Money | None = None,
    note: str = "",
) -> None:
    await uow.audit.append(AuditEntry(payment.id, kind, stripe_id or payment.intent_id, amount, actor, note, now))


async def _own_payment(uow: UnitOfWork, caller: Caller, payment_id: uuid.UUID, *, for_update: bool = False) -> Payment:
    payment = await uow.payments.get(payment_id, for_update=for_update)
    if payment is None or not caller.may_see(payment.customer_id):
        raise PaymentNotFound(payment_id)
    return payment


async def get_payment(uow: UnitOfWork, caller: Caller, payment_id: uuid.UUID) -> Payment:
    async with uow:
        return await _own_payment(uow, caller, payment_id)


# ---------------------------------------------------------------- starting a payment


async def list_payments(uow: UnitOfWork, caller: Caller, wanted: PaymentFilter, page: PageRequest) -> Page[Payment]:
    """The payments of a booking or a hold: customers see their own only, staff anyone's."""
    if wanted.booking_id is None and wanted.hold_id is None:
        raise invalid("booking_id", "REQUIRED", "name a booking_id or a hold_id")
    if not caller.is_staff:
        wanted = replace(wanted, customer_id=caller.user_id)
    async with uow:
        return await uow.payments.list_page(wanted, page)


async def _start(
    unit_of_work: UnitOfWorkFactory,
    clock: Clock,
    rules: PaymentRules,
    caller: Caller,
    hold_id: uuid.UUID,
    channel: PaymentChannel,
    request: RequestKey | None,
    scope: str,
) -> tuple[Payment, bool]:
    """Writes the payment down and keeps its hold; returns it and whether it is new."""
    async with unit_of_work() as uow:
        if (earlier := await earlier_result(uow, scope, request)) is not None:
            return await _own_payment(uow, caller, earlier), False
        now = clock.now()
        inventory = await locked_hold(uow, caller, hold_id, now)
        hold = inventory.hold_of(hold_id)
        if not hold.active(now):
            raise HoldNotActive(f"the hold is {hold.shown_state(now).lower()}", subject=f"holds/{hold.id}")
        if inventory.showtime is not None:
            check_on_sale(
                inventory.showtime, rules.online_sales_close, now, at_counter=channel is PaymentChannel.TERMINAL
            )
        amount = hold.total
        if amount.amount_minor <= 0:
            raise NothingToPay("this hold costs nothing; sell it at the counter instead", subject=f"holds/{hold.id}")
        check_card_amount(amount, f"holds/{hold.id}")
        payment = Payment(
            new_id(),
            hold.id,
            hold.showtime_id,
            hold.customer_id,
            channel,
            amount,
            Money(0, amount.currency),
            PaymentState.INITIALIZED,
            "",
            "",
            None,
            "",
            "",
            now,
            now,
        )
        await uow.payments.add(payment)
        # The seats stay held while the money is in flight, up to a hard limit.
        inventory.keep_for_payment(hold.id, now + rules.payment_deadline, now)
        await _audit(
            uow,
            payment,
            "payment_started",
            _actor(caller),
            now,
            amount=amount,
            note=f"hold {hold.id}, {channel.lower()}",
        )
        await remember_result(uow, scope, request, payment.id)
        await uow.commit()
    return payment, True


async def _attach_intent(
    unit_of_work: UnitOfWorkFactory, gateway: PaymentGateway, clock: Clock, payment: Payment, payment_method: str | None
) -> Payment:
    try:
        intent = await gateway.create_intent(
            payment.id, payment.amount, payment_method=payment_method, idempotency_key=f"create-{payment.id}"
        )
    except PaymentProviderUnavailable:
        await _fail(unit_of_work, clock, payment.id, "payment provider unavailable", SYSTEM)
        raise
    except PaymentRefused as exc:
        await _fail(unit_of_work, clock, payment.id, exc.message, SYSTEM)
        raise
    async with unit_of_work() as uow:
        current = await uow.payments.get(payment.id, for_update=True)
        assert current is not None
        current = replace(
            current, intent_id=intent.intent_id, client_secret=intent.client_secret, updated_at=clock.now()
        )
        await uow.payments.update(current)
        await _audit(
            uow, current, "intent_created", STRIPE, clock.now(), stripe_id=intent.intent_id, amount=current.amount
        )
        await uow.commit()
    return current


async def create_payment(
    unit_of_work: UnitOfWorkFactory,
    gateway: PaymentGateway,
    clock: Clock,
    rules: PaymentRules,
    caller: Caller,
    hold_id: uuid.UUID,
    request: RequestKey | None,
) -> Payment:
    """A PaymentIntent for the hold's frozen total; the frontend confirms the card with Stripe."""
    payment, new = await _start(
        unit_of_work, clock, rules, caller, hold_id, PaymentChannel.ONLINE, request, "CreatePayment"
    )
    if not new and payment.intent_id:
        return payment
    return await _attach_intent(unit_of_work, gateway, clock, payment, None)


async def charge_at_terminal(
    unit_of_work: UnitOfWorkFactory,
    gateway: PaymentGateway,
    clock: Clock,
    rules: PaymentRules,
    caller: Caller,
    hold_id: uuid.UUID,
    payment_method: str,
    request: RequestKey | None,
) -> Payment:
    """POS: creates and confirms the intent server-side with the terminal's payment method."""
    violations = Violations()
    method = clean_text(violations, "payment_method", payment_method, max_length=255)
    violations.raise_if_any()
    payment, new = await _start(
        unit_of_work, clock, rules, caller, hold_id, PaymentChannel.TERMINAL, request, "ChargeAtTerminal"
    )
    if not new and payment.settled:
        return payment
    if not payment.intent_id:
        payment = await _attach_intent(unit_of_work, gateway, clock, payment, method)
    try:
        intent = await gateway.confirm_intent(payment.intent_id, idempotency_key=f"confirm-{payment.id}")
    except PaymentProviderUnavailable:
        # The outcome is unknown: the payment stays INITIALIZED and reconciliation asks Stripe.
        raise
    except PaymentRefused as exc:
        # Refused for good (nothing was charged): the payment fails, the hold stays for another try.
        await _fail(unit_of_work, clock, payment.id, exc.message, SYSTEM)
        raise
    return await settle(unit_of_work, gateway, clock, rules, payment.id, intent, STRIPE)


async def _fail(unit_of_work: UnitOfWorkFactory, clock: Clock, payment_id: uuid.UUID, reason: str, actor: str) -> None:
    async with unit_of_work() as uow:
        payment = await uow.payments.get(payment_id)
        if payment is None:
            return
        now = clock.now()
        inventory = await uow.inventories.get_locked(payment.showtime_id, now, holds=[payment.hold_id])
        payment = await uow.payments.get(payment_id, for_update=True)
        if payment is None or payment.state is not PaymentState.INITIALIZED:
            return
        await _mark_failed(uow, inventory, payment, reason, actor, now)
        await uow.commit()


async def _mark_failed(
    uow: UnitOfWork, inventory: SeatInventory, payment: Payment, reason: str, actor: str, now: datetime
) -> Payment:
    failed = payment.moved(PaymentState.FAILED, now, failure_reason=reason[:200])
    await uow.payments.update(failed)
    # The customer may try again until the hold's own expiry (or, if that has passed, the seats
    # are free again now).
    inventory.stop_keeping_for_payment(payment.hold_id, now)
    await _audit(uow, failed, "failed", actor, now, note=reason)
    return failed


# ---------------------------------------------------------------- a hold ending under a payment

HOLD_ENDED = "the hold ended before the card was charged; the payment was cancelled at Stripe"


async def release_hold(
    unit_of_work: UnitOfWorkFactory,
    gateway: PaymentGateway,
    clock: Clock,
    rules: PaymentRules,
    caller: Caller,
    hold_id: uuid.UUID,
    *,
    override_reason: str | None = None,
) -> Hold:
    """ReleaseHold, and ForceReleaseHold with ``override_reason``: the hold ends now. A card
    payment still in flight for it is then cancelled at Stripe, so the card can no longer be
    charged; money that got through first is refunded like any that arrives too late."""
    if override_reason is None:
        hold = await booking.release_hold(unit_of_work(), clock, caller, hold_id)
    else:
        hold = await booking.force_release_hold(unit_of_work(), clock, caller, hold_id, override_reason)
    if hold.payment_deadline is not None:
        await cancel_payment_of_ended_hold(unit_of_work, gateway, clock, rules, hold.id)
    return hold


async def cancel_payment_of_ended_hold(
    unit_of_work: UnitOfWorkFactory, gateway: PaymentGateway, clock: Clock, rules: PaymentRules, hold_id: uuid.UUID
) -> None:
    """After the hold ended (committed): its open payment is cancelled at Stripe and fails; if
    Stripe had already taken the money, the payment succeeds and is refunded. Trouble with Stripe
    leaves it to the reconciliation job, which cancels the intents of ended holds too."""
    async with unit_of_work() as uow:
        payment = await uow.payments.open_for_hold(hold_id)
    if payment is None:
        return
    if not payment.intent_id:
        await _fail(unit_of_work, clock, payment.id, HOLD_ENDED, SYSTEM)
        return
    try:
        intent = await gateway.cancel_intent(payment.intent_id)
    except DomainError as exc:
        log.warning(
            "could not cancel the payment of an ended hold; reconciliation will",
            extra={"payment_id": str(payment.id), "reason": exc.reason},
        )
        return
    if intent.failed:
        await _fail(unit_of_work, clock, payment.id, HOLD_ENDED, SYSTEM)
    else:
        await settle(unit_of_work, gateway, clock, rules, payment.id, intent, STRIPE)


async def _hold_ended(unit_of_work: UnitOfWorkFactory, hold_id: uuid.UUID) -> bool:
    async with unit_of_work() as uow:
        hold = await uow.booking.get_hold(hold_id)
    return hold is None or hold.state is not HoldState.ACTIVE


# ---------------------------------------------------------------- settling


async def settle_in(
    uow: UnitOfWork, clock: Clock, payment: Payment, intent: IntentStatus, actor: str
) -> tuple[Payment, Refund | None]:
    """Applies Stripe's word about the payment inside the caller's transaction.

    Succeeded: the hold becomes a booking, or, when the hold is gone, the money is to be
    refunded. Failed: the payment fails and the hold expires as usual. Stale or repeated news
    (an older event arriving late) changes nothing.
    """
    now = clock.now()
    inventory = await uow.inventories.get_locked(payment.showtime_id, now, holds=[payment.hold_id])
    current = await uow.payments.get(payment.id, for_update=True)
    assert current is not None
    if intent.succeeded and current.state in (PaymentState.INITIALIZED, PaymentState.FAILED):
        hold = inventory.find_hold(current.hold_id)
        started = inventory.showtime is None or inventory.showtime.has_started(now)
        if hold is not None and hold.state is HoldState.ACTIVE and started:
            # Too late for the film: no booking; the seats are let go and the money goes back.
            inventory.release(hold.id, now, reason="the showtime started before the payment arrived")
            why = "the showtime had started before the payment arrived; the payment is refunded in full"
            return await _refund_unbooked(uow, current, intent, why, actor, now)
        if hold is not None and hold.state is HoldState.ACTIVE:
            booking = inventory.sell(hold.id, SaleChannel.ONLINE, None, now)
            paid = current.moved(PaymentState.SUCCESS, now, booking_id=booking.id, intent_id=intent.intent_id)
            await uow.payments.update(paid)
            await _audit(uow, paid, "succeeded", actor, now, amount=paid.amount, note=f"booking {booking.id}")
            return paid, None
        why = "the hold had ended before the payment arrived; the payment is refunded in full"
        return await _refund_unbooked(uow, current, intent, why, actor, now)
    if intent.failed and current.state is PaymentState.INITIALIZED:
        return await _mark_failed(uow, inventory, current, intent.failure_reason or intent.status, actor, now), None
    return current, None


async def _refund_unbooked(
    uow: UnitOfWork, current: Payment, intent: IntentStatus, why: str, actor: str, now: datetime
) -> tuple[Payment, Refund]:
    """The money arrived but no booking can come of it: the payment succeeds and is refunded in full."""
    paid = current.moved(PaymentState.SUCCESS, now, refund_reason=why, intent_id=intent.intent_id)
    await uow.payments.update(paid)
    await _audit(uow, paid, "succeeded", actor, now, amount=paid.amount, note="no hold to turn into a booking")
    refund = await _request_refund(uow, paid, paid.amount, why, SYSTEM, now, kind="auto_refund_requested")
    return paid, refund


async def settle(
    unit_of_work: UnitOfWorkFactory,
    gateway: PaymentGateway,
    clock: Clock,
    rules: PaymentRules,
    payment_id: uuid.UUID,
    intent: IntentStatus,
    actor: str,
) -> Payment:
    async with unit_of_work() as uow:
        payment = await uow.payments.get(payment_id)
        assert payment is not None
        payment, refund = await settle_in(uow, clock, payment, intent, actor)
        await uow.commit()
    if refund is not None:
        await _refund_after_commit(unit_of_work, gateway, clock, rules, refund.id)
        return await _reload(unit_of_work, payment_id)
    return payment


async def _refund_after_commit(
    unit_of_work: UnitOfWorkFactory, gateway: PaymentGateway, clock: Clock, rules: PaymentRules, refund_id: uuid.UUID
) -> None:
    """The refund is recorded; trouble now must not tell the caller it failed (a retry could
    refund twice). Reconciliation retries whatever is still pending."""
    try:
        await carry_out_refund(unit_of_work, gateway, clock, rules, refund_id)
    except DomainError as exc:
        log.warning("refund left pending for reconciliation", extra={"refund_id": str(refund_id), "reason": exc.reason})


async def _reload(unit_of_work: UnitOfWorkFactory, payment_id: uuid.UUID) -> Payment:
    async with unit_of_work() as uow:
        payment = await uow.payments.get(payment_id)
    assert payment is not None
    return payment


class SyncGuard:
    """Keeps SyncPayment from becoming a Stripe proxy: each caller has a budget of calls
    (``per_minute``, refilled evenly), and Stripe is asked about one payment at most once per
    ``reuse_for`` (later calls within it answer with what that retrieve settled)."""

    def __init__(self, per_minute: int, reuse_for: timedelta) -> None:
        self.calls = TokenBuckets(per_minute, timedelta(minutes=1))
        self.retrieved = RecentMoments(reuse_for)


async def sync_payment(
    unit_of_work: UnitOfWorkFactory,
    gateway: PaymentGateway,
    clock: Clock,
    rules: PaymentRules,
    guard: SyncGuard,
    caller: Caller,
    payment_id: uuid.UUID,
) -> Payment:
    now = clock.now()
    wait = guard.calls.take(caller.owner_key(), now)
    if wait:
        raise SyncRateLimited(
            f"at most {guard.calls.capacity} SyncPayment calls a minute; the webhook settles the payment anyway",
            f"{guard.calls.capacity} per minute",
            wait,
        )
    async with unit_of_work() as uow:
        payment = await _own_payment(uow, caller, payment_id)
    if not payment.intent_id or payment.settled or guard.retrieved.fresh(payment.id, now):
        return payment
    # Marked before asking, so callers arriving meanwhile do not ask Stripe as well.
    guard.retrieved.mark(payment.id, now)
    try:
        intent = await gateway.retrieve_intent(payment.intent_id)
    except DomainError:
        guard.retrieved.forget(payment.id)
        raise
    return await settle(unit_of_work, gateway, clock, rules, payment.id, intent, STRIPE)


async def handle_webhook(
    unit_of_work: UnitOfWorkFactory,
    gateway: PaymentGateway,
    clock: Clock,
    rules: PaymentRules,
    payload: bytes,
    signature: str,
) -> str:
    """Processes one signed Stripe event exactly once; returns what was done with it."""
    event = gateway.parse_webhook(payload, signature)
    refund: Refund | None = None
    async with unit_of_work() as uow:
        if not await uow.payments.record_webhook(event.event_id, event.type):
            return "duplicate"
        payment = await uow.payments.by_intent(event.intent.intent_id) if event.intent else None
        if payment is None or event.intent is None:
            await uow.commit()
            return "ignored"
        _, refund = await settle_in(uow, clock, payment, event.intent, STRIPE)
        await uow.commit()
    if refund is not None:
        await _refund_after_commit(unit_of_work, gateway, clock, rules, refund.id)
    return "processed"


# ---------------------------------------------------------------- refunds


async def _request_refund(
    uow: UnitOfWork,
    payment: Payment,
    amount: Money,
    reason: str,
    actor: str,
    now: datetime,
    *,
    kind: str = "refund_requested",
) -> Refund:
    refund = Refund(new_id(), payment.id, amount, RefundState.PENDING, reason[:500], actor, "", 0, "", now)
    await uow.payments.add_refund(refund)
    await _audit(uow, payment, kind, actor, now, amount=amount, note=reason)
    return refund


async def refund_payment(
    unit_of_work: UnitOfWorkFactory,
    gateway: PaymentGateway,
    clock: Clock,
    rules: PaymentRules,
    booking_rules: BookingRules,
    caller: Caller,
    payment_id: uuid.UUID,
    amount: Money | None,
    reason: str,
    request: RequestKey | None,
) -> Payment:
    """Staff refund any part; customers refund all of it before the cancellation cut-off.
    A full refund cancels the booking and frees its seats in the same transaction."""
    violations = Violations()
    reason = clean_text(violations, "reason", reason, max_length=500, required=False)
    if amount is not None and amount.amount_minor <= 0:
        violations.add("amount.amount_minor", "OUT_OF_RANGE", "must be positive")
    violations.raise_if_any()
    if amount is not None and not caller.is_staff:
        raise PermissionDenied("only staff refund part of a payment", metadata={"required_role": "STAFF"})
    async with unit_of_work() as uow:
        if (earlier := await earlier_result(uow, "RefundPayment", request)) is not None:
            done = await uow.payments.get_refund(earlier)
            if done is None:
                raise PaymentNotFound(earlier)
            return await _own_payment(uow, caller, done.payment_id)
        payment = await _own_payment(uow, caller, payment_id)
        now = clock.now()
        inventory = await uow.inventories.get_locked(
            payment.showtime_id, now, bookings=[payment.booking_id] if payment.booking_id else []
        )
        payment = await _own_payment(uow, caller, payment_id, for_update=True)
        if payment.state not in (PaymentState.SUCCESS, PaymentState.PARTIALLY_REFUNDED):
            raise PaymentNotRefundable(
                f"a {payment.state.lower()} payment cannot be refunded", subject=f"payments/{payment.id}"
            )
        left = payment.refundable.amount_minor - payment.refund_pending_minor
        wanted = amount or Money(left, payment.amount.currency)
        if wanted.currency != payment.amount.currency or wanted.amount_minor > left or wanted.amount_minor <= 0:
            raise PaymentNotRefundable(
                f"at most {left} {payment.amount.currency} minor units can still be refunded",
                subject=f"payments/{payment.id}",
            )
        if payment.booking_id is not None and wanted.amount_minor == left:
            # Staff may refund (and so cancel) a booking even once its showtime has started.
            cancel_in(inventory, booking_rules, caller, payment.booking_id, reason, now, force=caller.is_staff)
        refund = await _request_refund(uow, payment, wanted, reason or "refund", _actor(caller), now)
        await remember_result(uow, "RefundPayment", request, refund.id)
        await uow.commit()
    await _refund_after_commit(unit_of_work, gateway, clock, rules, refund.id)
    try:
        return await _reload(unit_of_work, payment_id)
    except DomainError:
        return replace(payment, refund_pending_minor=payment.refund_pending_minor + wanted.amount_minor)


async def carry_out_refund(
    unit_of_work: UnitOfWorkFactory, gateway: PaymentGateway, clock: Clock, rules: PaymentRules, refund_id: uuid.UUID
) -> bool:
    """Asks Stripe for a pending refund and records the outcome. Returns whether it went through.

    A refusal (a 4xx from Stripe) fails the refund for good, with Stripe's reason, for staff to
    settle. A passing failure keeps it pending for the reconciliation job, which tries again
    after a doubling delay and gives up (FAILED) after ``rules.refund_max_attempts`` tries; the
    audit trail records the first passing failure and the outcome, not every retry."""
    async with unit_of_work() as uow:
        refund = await uow.payments.get_refund(refund_id)
        payment = await uow.payments.get(refund.payment_id) if refund else None
    if refund is None or payment is None or refund.state is RefundState.SUCCEEDED:
        return False
    try:
        stripe_refund_id = await gateway.refund(payment.intent_id, refund.amount, idempotency_key=f"refund-{refund.id}")
    except PaymentRefused as exc:
        await _refund_failed(unit_of_work, clock, rules, payment, refund_id, exc.message, permanent=True)
        return False
    except PaymentProviderUnavailable as exc:
        await _refund_failed(unit_of_work, clock, rules, payment, refund_id, exc.message, permanent=False)
        return False
    async with unit_of_work() as uow:
        current = await uow.payments.get_refund(refund_id, for_update=True)
        paying = await uow.payments.get(payment.id, for_update=True)
        if current is None or paying is None or current.state is RefundState.SUCCEEDED:
            return False
        now = clock.now()
        await uow.payments.update_refund(
            replace(
                current, state=RefundState.SUCCEEDED, stripe_refund_id=stripe_refund_id, attempts=current.attempts + 1
            )
        )
        refunded = Money(paying.refunded.amount_minor + refund.amount.amount_minor, paying.amount.currency)
        state = (
            PaymentState.REFUNDED
            if refunded.amount_minor >= paying.amount.amount_minor
            else PaymentState.PARTIALLY_REFUNDED
        )
        paying = paying.moved(state, now, refunded=refunded)
        await uow.payments.update(paying)
        if paying.booking_id is not None and state is PaymentState.REFUNDED:
            await uow.booking.mark_refunded(paying.booking_id)
        kind = "auto_refunded" if refund.actor == SYSTEM else "refunded"
        await _audit(
            uow, paying, kind, STRIPE, now, stripe_id=stripe_refund_id, amount=refund.amount, note=refund.reason
        )
        await uow.commit()
    return True


async def _refund_failed(
    unit_of_work: UnitOfWorkFactory,
    clock: Clock,
    rules: PaymentRules,
    payment: Payment,
    refund_id: uuid.UUID,
    error: str,
    *,
    permanent: bool,
) -> None:
    async with unit_of_work() as uow:
        current = await uow.payments.get_refund(refund_id, for_update=True)
        if current is None or current.state is not RefundState.PENDING:
            return
        now = clock.now()
        attempts = current.attempts + 1
        if permanent or attempts >= rules.refund_max_attempts:
            why = error if permanent else f"gave up after {attempts} tries: {error}"
            await uow.payments.update_refund(
                replace(
                    current, state=RefundState.FAILED, attempts=attempts, last_error=why[:500], next_attempt_at=None
                )
            )
            await _audit(uow, payment, "refund_refused", STRIPE, now, amount=current.amount, note=why[:500])
            log.error(
                "a refund failed for good; staff must settle it",
                extra={"refund_id": str(refund_id), "payment_id": str(payment.id), "error": why},
            )
        else:
            delay = retry_delay(attempts, rules.retry_base_delay, rules.retry_max_delay)
            await uow.payments.update_refund(
                replace(current, attempts=attempts, last_error=error[:500], next_attempt_at=now + delay)
            )
            if attempts == 1:
                # Once: the retries that follow are counted on the refund, not written to the trail.
                await _audit(
                    uow, payment, "refund_failed", STRIPE, now, amount=current.amount, note=f"will retry: {error}"
                )
        await uow.commit()


# ---------------------------------------------------------------- reconciliation and audit


@dataclass(frozen=True)
class Reconciled:
    settled: int = 0
    abandoned: int = 0
    refunds_done: int = 0
    refunds_requested: int = 0


async def reconcile(
    unit_of_work: UnitOfWorkFactory, gateway: PaymentGateway, clock: Clock, rules: PaymentRules, batch: int = 100
) -> Reconciled:
    """Finishes what webhooks and crashes left open: asks Stripe about unsettled payments,
    refunds cancelled online bookings, retries pending refunds."""
    settled = abandoned = requested = done = 0
    now = clock.now()
    async with unit_of_work() as uow:
        waiting = await uow.payments.unsettled(now, now - rules.reconcile_after, batch)
    for payment in waiting:
        if not payment.intent_id:
            if payment.created_at <= now - rules.abandon_after:
                await _fail(unit_of_work, clock, payment.id, "no payment intent was created", SYSTEM)
                abandoned += 1
            else:
                await _check_again(unit_of_work, payment.id, payment.created_at + rules.abandon_after, 0)
            continue
        try:
            intent = await gateway.retrieve_intent(payment.intent_id)
            if intent.unfinished and (
                payment.created_at <= now - rules.payment_deadline or await _hold_ended(unit_of_work, payment.hold_id)
            ):
                # An abandoned checkout, or one whose hold ended (released, expired, its showtime
                # cancelled): close it at Stripe so no late card can still pay it.
                intent = await gateway.cancel_intent(payment.intent_id)
            after = await settle(unit_of_work, gateway, clock, rules, payment.id, intent, SYSTEM)
        except DomainError as exc:
            # Stripe failing or refusing, or a lock not had in time: this payment is asked about
            # again later (later each time), and the rest of the queue goes on now.
            failures = payment.check_failures + 1
            later = clock.now() + retry_delay(failures, rules.retry_base_delay, rules.retry_max_delay)
            await _check_again(unit_of_work, payment.id, later, failures)
            log.warning(
                "could not reconcile a payment; it waits for a later run",
                extra={"payment_id": str(payment.id), "reason": exc.reason, "failures": failures},
            )
            continue
        if after.state is PaymentState.INITIALIZED:
            await _check_again(unit_of_work, payment.id, clock.now(), 0)
        else:
            settled += 1
    async with unit_of_work() as uow:
        owed = [p.id for p in await uow.payments.owed_by_cancelled_bookings(batch)]
    for payment_id in owed:
        requested += await _refund_cancelled_booking(unit_of_work, clock, payment_id)
    async with unit_of_work() as uow:
        pending = await uow.payments.pending_refunds(clock.now(), batch)
    for refund in pending:
        done += await carry_out_refund(unit_of_work, gateway, clock, rules, refund.id)
    return Reconciled(settled, abandoned, done, requested)


async def _check_again(unit_of_work: UnitOfWorkFactory, payment_id: uuid.UUID, at: datetime, failures: int) -> None:
    async with unit_of_work() as uow:
        await uow.payments.check_again(payment_id, at, failures)
        await uow.commit()


async def _refund_cancelled_booking(unit_of_work: UnitOfWorkFactory, clock: Clock, payment_id: uuid.UUID) -> bool:
    """Requests the refund a cancelled booking is owed, re-checked under the locks."""
    async with unit_of_work() as uow:
        payment = await uow.payments.get(payment_id)
        if payment is None:
            return False
        # Under the showtime's lock, as a refund requested by a person takes it.
        await uow.inventories.get_locked(payment.showtime_id, clock.now())
        payment = await uow.payments.get(payment_id, for_update=True)
        left = payment.refundable.amount_minor - payment.refund_pending_minor if payment else 0
        if payment is None or payment.state not in (PaymentState.SUCCESS, PaymentState.PARTIALLY_REFUNDED) or left <= 0:
            return False
        await _request_refund(
            uow, payment, Money(left, payment.amount.currency), "booking cancelled", SYSTEM, clock.now()
        )
        await uow.commit()
    return True


async def payment_events(uow: UnitOfWork, caller: Caller, payment_id: uuid.UUID) -> list[AuditEntry]:
    async with uow:
        await _own_payment(uow, caller, payment_id)
        return await uow.audit.for_payment(payment_id)


async def verify_audit_trail(uow: UnitOfWork, key: bytes, checkpoints: AuditCheckpoints) -> AuditVerdict:
    """Recomputes the whole chain with the audit key and compares it with the latest checkpoint."""
    async with uow:
        await uow.snapshot()
        entries = await uow.audit.everything()
    return verify_chain(entries, key, checkpoints.latest())


async def checkpoint_audit_trail(
    uow: UnitOfWork, key: bytes, checkpoints: AuditCheckpoints, clock: Clock
) -> AuditCheckpoint | None:
    """Signs and keeps the trail's head, when it moved on from the latest checkpoint along a valid
    chain. A trail that no longer holds the latest checkpoint keeps it (so verification goes on
    failing) and is reported; returns the new checkpoint, or None (also when another process kept
    a newer one meanwhile)."""
    latest = checkpoints.latest()
    async with uow:
        await uow.snapshot()
        head = await uow.audit.head()
        if head is None or (latest is not None and head.sequence == latest.sequence and head.hash == latest.hash):
            return None
        if latest is None:
            # The first checkpoint pins only a chain that verifies from the start.
            holds = verify_chain(await uow.audit.everything(), key).intact
        else:
            holds = latest.signed_by(key) and extends(
                latest, await uow.audit.get(latest.sequence), await uow.audit.after(latest.sequence), key
            )
    if not holds:
        log.error(
            "the audit trail does not verify: no checkpoint written (the latest one, if any, is kept)",
            extra={"checkpoint_sequence": latest.sequence if latest else 0, "head_sequence": head.sequence},
        )
        return None
    checkpoint = AuditCheckpoint(head.sequence, head.hash, clock.now()).signed(key)
    return checkpoint if checkpoints.save(checkpoint) else None
