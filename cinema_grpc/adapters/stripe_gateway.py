"""Stripe PaymentIntents and refunds through the official library, for the PaymentGateway port.

Calls run in a worker thread (the library's HTTP client is synchronous) with a timeout and a
bounded number of network retries; every mutating call carries an idempotency key, so a
retry never charges twice on real Stripe.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

import stripe

from cinema_grpc.domain.errors import InvalidWebhook, PaymentProviderUnavailable, PaymentRefused
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.payment.model import GatewayEvent, IntentStatus

T = TypeVar("T")


def _intent(intent: Any) -> IntentStatus:
    error = getattr(intent, "last_payment_error", None)
    reason = ""
    if error:
        reason = str(getattr(error, "decline_code", None) or getattr(error, "code", None) or "payment_failed")
    return IntentStatus(str(intent.id), str(intent.status), str(getattr(intent, "client_secret", "") or ""), reason)


class StripeGateway:
    def __init__(
        self, secret_key: str, webhook_secret: str, *, api_base: str | None = None, timeout_seconds: float = 10
    ) -> None:
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=2,
            http_client=stripe.RequestsClient(timeout=timeout_seconds),
        )
        self._webhook_secret = webhook_secret

    async def _call(self, action: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(action)
        except stripe.CardError:
            raise
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
            raise PaymentProviderUnavailable(f"Stripe did not answer properly: {type(exc).__name__}") from exc
        except stripe.StripeError as exc:
            raise PaymentProviderUnavailable(
                f"Stripe refused the request: {exc.user_message or type(exc).__name__}"
            ) from exc

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
                lambda: self._client.v1.payment_intents.confirm(intent_id, options={"idempotency_key": idempotency_key})
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
            raise PaymentProviderUnavailable(f"Stripe refund {refund.id} failed")
        return str(refund.id)

    def parse_webhook(self, payload: bytes, signature: str) -> GatewayEvent:
        try:
            event = stripe.Webhook.construct_event(payload, signature, self._webhook_secret)
        except (ValueError, stripe.SignatureVerificationError) as exc:
            raise InvalidWebhook("the webhook signature or payload is invalid") from exc
        obj = event.data.object
        intent = _intent(obj) if str(getattr(obj, "object", "")) == "payment_intent" else None
        return GatewayEvent(str(event.id), str(event.type), intent)
