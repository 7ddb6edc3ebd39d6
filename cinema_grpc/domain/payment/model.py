"""Payments and refunds, their state machine, and the entries of the audit trail."""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from cinema_grpc.domain.errors import AmountAboveCardLimit, PreconditionFailed
from cinema_grpc.domain.money import Money

GENESIS_HASH = "0" * 64
# The largest amount Stripe accepts in one charge, in minor units of any currency
# (eight digits: 999,999.99 EUR).
CARD_AMOUNT_CEILING_MINOR = 99_999_999


def check_card_amount(amount: Money, subject: str) -> None:
    """Refuses a total no card payment can take, before anything is asked of Stripe."""
    if amount.amount_minor > CARD_AMOUNT_CEILING_MINOR:
        raise AmountAboveCardLimit(
            f"{amount.amount_minor} {amount.currency} minor units is more than one card payment may take "
            f"({CARD_AMOUNT_CEILING_MINOR}); hold fewer seats",
            subject=subject,
            metadata={"max_amount_minor": str(CARD_AMOUNT_CEILING_MINOR)},
        )


def retry_delay(attempts: int, base: timedelta, ceiling: timedelta) -> timedelta:
    """How long to wait after the ``attempts``-th failed try: doubling from ``base``, at most ``ceiling``."""
    if attempts <= 0:
        return timedelta(0)
    delay: timedelta = base * 2 ** min(attempts - 1, 30)
    return min(delay, ceiling)


class PaymentState(enum.StrEnum):
    INITIALIZED = "INITIALIZED"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"


# The only moves a payment makes (the database refuses the others too). FAILED -> SUCCESS
# exists because a declined PaymentIntent can still be confirmed with another card.
TRANSITIONS: dict[PaymentState, frozenset[PaymentState]] = {
    PaymentState.INITIALIZED: frozenset({PaymentState.SUCCESS, PaymentState.FAILED}),
    PaymentState.FAILED: frozenset({PaymentState.SUCCESS}),
    PaymentState.SUCCESS: frozenset({PaymentState.PARTIALLY_REFUNDED, PaymentState.REFUNDED}),
    PaymentState.PARTIALLY_REFUNDED: frozenset({PaymentState.PARTIALLY_REFUNDED, PaymentState.REFUNDED}),
    PaymentState.REFUNDED: frozenset(),
}


class IllegalPaymentTransition(PreconditionFailed):
    reason = "ILLEGAL_PAYMENT_TRANSITION"


class PaymentChannel(enum.StrEnum):
    ONLINE = "ONLINE"
    TERMINAL = "TERMINAL"


class RefundState(enum.StrEnum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    # Stripe refused it for good (not a passing outage); staff must look at it.
    FAILED = "FAILED"


@dataclass(frozen=True)
class Payment:
    id: uuid.UUID
    hold_id: uuid.UUID
    showtime_id: uuid.UUID
    customer_id: uuid.UUID
    channel: PaymentChannel
    amount: Money
    refunded: Money
    state: PaymentState
    intent_id: str
    client_secret: str
    booking_id: uuid.UUID | None
    failure_reason: str
    refund_reason: str
    created_at: datetime
    updated_at: datetime
    # Refunds asked of Stripe and not yet confirmed (read along with the payment).
    refund_pending_minor: int = 0
    # Reconciliation checks in a row that could not learn anything from Stripe.
    check_failures: int = 0

    def moved(self, state: PaymentState, now: datetime, **changes: object) -> Payment:
        if state not in TRANSITIONS[self.state]:
            raise IllegalPaymentTransition(
                f"a payment cannot go from {self.state} to {state}", subject=f"payments/{self.id}"
            )
        return replace(self, state=state, updated_at=now, **changes)  # type: ignore[arg-type]

    @property
    def settled(self) -> bool:
        return self.state not in (PaymentState.INITIALIZED, PaymentState.FAILED)

    @property
    def refundable(self) -> Money:
        return Money(self.amount.amount_minor - self.refunded.amount_minor, self.amount.currency)


@dataclass(frozen=True)
class Refund:
    id: uuid.UUID
    payment_id: uuid.UUID
    amount: Money
    state: RefundState
    reason: str
    actor: str
    stripe_refund_id: str
    attempts: int
    last_error: str
    created_at: datetime
    # A refund whose last try failed for a passing reason waits until then for the next one.
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class IntentStatus:
    """What Stripe says about a PaymentIntent."""

    intent_id: str
    status: str
    client_secret: str = ""
    failure_reason: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def unfinished(self) -> bool:
        """Neither paid nor failed, nor on its way: the customer has not (yet) confirmed a card."""
        return (
            self.status in ("requires_payment_method", "requires_confirmation", "requires_action") and not self.failed
        )

    @property
    def failed(self) -> bool:
        # A fresh intent also waits for a payment method; only one whose attempt failed, or a
        # cancelled one, has failed.
        return self.status == "canceled" or (self.status == "requires_payment_method" and bool(self.failure_reason))


@dataclass(frozen=True)
class GatewayEvent:
    """A verified webhook event about a PaymentIntent."""

    event_id: str
    type: str
    intent: IntentStatus | None


class AuditScheme(enum.IntEnum):
    """How an audit entry's hash is made."""

    # SHA-256: entries written before the chain was keyed. Anyone can recompute these.
    PLAIN_SHA256 = 1
    # HMAC-SHA256 with the audit key, held outside the database: without it no one can
    # make an entry (or a rewritten chain) that verifies.
    HMAC_SHA256 = 2


@dataclass(frozen=True)
class AuditEntry:
    payment_id: uuid.UUID
    kind: str
    stripe_id: str
    amount: Money | None
    actor: str
    note: str
    created_at: datetime
    sequence: int = 0
    hash: str = ""
    scheme: AuditScheme = AuditScheme.HMAC_SHA256

    def chained_hash(self, previous: str, key: bytes | None) -> str:
        """The hash over the previous entry's hash and every field of this one, by the entry's
        scheme; a keyed entry needs the key (None: it cannot be made or checked)."""
        fields = [
            previous,
            str(self.payment_id),
            self.kind,
            self.stripe_id,
            self.amount.amount_minor if self.amount else None,
            self.amount.currency if self.amount else None,
            self.actor,
            self.note,
            self.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        ]
        payload = json.dumps(fields, separators=(",", ":")).encode()
        if self.scheme is AuditScheme.PLAIN_SHA256:
            return hashlib.sha256(payload).hexdigest()
        if key is None:
            raise ValueError("a keyed audit entry needs the audit key")
        return hmac.new(key, payload, hashlib.sha256).hexdigest()
