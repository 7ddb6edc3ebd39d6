"""Stripe PaymentIntents and refunds through the official library, for the PaymentGateway port.

Calls run on threads of their own (the library's HTTP client is synchronous; not asyncio's
default pool, so nothing else that uses threads, password hashing say, can make them wait),
with a timeout and a bounded number of network retries; every mutating call carries an
idempotency key, so a retry never charges twice on real Stripe.

Stripe's errors are of two kinds: passing (no answer, a timeout, a 409 conflict, a 429 rate
limit, a 5xx) become PaymentProviderUnavailable, worth trying again later; permanent (every
other 4xx: an invalid request, an amount Stripe refuses, a declined card, a bad key) become
PaymentRefused, which no retry can change.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import stripe

from cinema_grpc.domain.errors import InvalidWebhook, PaymentProviderUnavailable, PaymentRefused
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.payment.model import GatewayEvent, IntentStatus

T = TypeVar("T")


def is_temporary(exc: stripe.StripeError) -> bool:
    """Whether the same request may succeed later: no answer or a timeout (no status), a
    conflict with a concurrent request (409), a rate limit (429, or 400 ``rate_limit``) or a
    failure on Stripe's side (5xx)."""
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    status = exc.http_status
    return status is None or status == 409 or status >= 500


def _describe(exc: stripe.StripeError) -> str:
    code = getattr(exc, "code", None) or type(exc).__name__
    message = exc.user_message or ""
    status = f"HTTP {exc.http_status}, " if exc.http_status else ""
    return f"{status}{code}{': ' + str(message) if message else ''}"[:400]


def _intent(intent: Any) -> IntentStatus:
    error = getattr(intent, "last_payment_error", None)
    reason = ""
    if error:
        reason = str(getattr(error, "decline_code", None) or getattr(error, "code", None) or "payment_failed")
    return IntentStatus(str(intent.id), str(intent.status), str(getattr(intent, "client_secret", "") or ""), reason)


class StripeGateway:
    def __init__(
        self,
        secret_key: str,
        webhook_secret: str,
        *,
        api_base: str | None = None,
        timeout_seconds: float = 10,
        threads: int = 8,
    ) -> None:
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=2,
            http_client=stripe.RequestsClient(timeout=timeout_seconds),
        )
        self._webhook_secret = webhook_secret
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="stripe")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(self, action: Callable[[], T], *, card_errors: bool = False) -> T:
        """Runs ``action``; with ``card_errors`` a declined card is raised as stripe.CardError
        for the caller to read, otherwise as PaymentRefused like any other permanent error."""
        try:
            # As asyncio.to_thread does: the request's context (log fields) goes along.
            context = contextvars.copy_context()
            return await asyncio.get_running_loop().run_in_executor(self._pool, context.run, action)
        except stripe.CardError as exc:
            if card_errors:
                raise
            raise PaymentRefused(f"Stripe declined the card: {_describe(exc)}") from exc
        except stripe.StripeError as exc:
            if is_temporary(exc):
                raise PaymentProviderUnavailable(f"Stripe did not answer properly: {_describe(exc)}") from exc
            raise PaymentRefused(f"Stripe refused the request: {_describe(exc)}") from exc

    async def create_intent(
        self, payment_id: uuid.UUID, amount: Money, *, payment_method: str | None, idempotency_key: str
    ) -> IntentStatus:
        params: dict[str, Any] = {
            "amount": amount.amount_minor,
            "currency": amount.currency.lower(),
            "metadata": {"payment_id": str(payment_id)},
        }
        if payment_method:
            params["payment_method"] = payment_method
        intent = await self._call(
            lambda: self._client.v1.payment_intents.create(
                params=cast(Any, params), options={"idempotency_key": idempotency_key}
            )
        )
        return _intent(intent)

    async def confirm_intent(self, intent_id: str, *, idempotency_key: str) -> IntentStatus:
        try:
            intent = await self._call(
                lambda: self._client.v1.payment_intents.confirm(
                    intent_id, options={"idempotency_key": idempotency_key}
                ),
                card_errors=True,
            )
        except stripe.CardError as exc:
            declined = await self.retrieve_intent(intent_id)
            reason = str(exc.code or "card_declined")
            return IntentStatus(
                declined.intent_id, declined.status, declined.client_secret, declined.failure_reason or reason
            )
        return _intent(intent)

    async def retrieve_intent(self, intent_id: str) -> IntentStatus:
        return _intent(await self._call(lambda: self._client.v1.payment_intents.retrieve(intent_id)))

    async def cancel_intent(self, intent_id: str) -> IntentStatus:
        try:
            return _intent(await self._call(lambda: self._client.v1.payment_intents.cancel(intent_id)))
        except PaymentRefused:
            # Already succeeded or cancelled meanwhile: its status says which.
            return await self.retrieve_intent(intent_id)

    async def refund(self, intent_id: str, amount: Money, *, idempotency_key: str) -> str:
        refund = await self._call(
            lambda: self._client.v1.refunds.create(
                params={"payment_intent": intent_id, "amount": amount.amount_minor},
                options={"idempotency_key": idempotency_key},
            )
        )
        if getattr(refund, "status", "") == "failed":
            reason = getattr(refund, "failure_reason", None) or "failed"
            raise PaymentRefused(f"Stripe refund {refund.id} failed: {reason}")
        return str(refund.id)

    def parse_webhook(self, payload: bytes, signature: str) -> GatewayEvent:
        try:
            event = stripe.Webhook.construct_event(payload, signature, self._webhook_secret)
        except (ValueError, stripe.SignatureVerificationError) as exc:
            raise InvalidWebhook("the webhook signature or payload is invalid") from exc
        obj = event.data.object
        intent = _intent(obj) if str(getattr(obj, "object", "")) == "payment_intent" else None
        return GatewayEvent(str(event.id), str(event.type), intent)
