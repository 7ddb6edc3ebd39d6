"""Helpers for payment tests: a customer's frontend confirming a card with Stripe, signed
webhook events, and waiting for the server to settle."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import stripe

from cinema.payment.v1 import payment_pb2 as ppb
from cinema.payment.v1.payment_pb2_grpc import PaymentServiceStub
from cinema_grpc.adapters.local_stripe import API_KEY, LocalStripe


def stripe_client(local: LocalStripe) -> stripe.StripeClient:
    return stripe.StripeClient(API_KEY, base_addresses={"api": local.api_base})


def confirm_card(local: LocalStripe, intent_id: str, payment_method: str = "pm_card_visa") -> str:
    """What Stripe.js does in the browser: attach the card and confirm. Returns the status."""
    client = stripe_client(local)
    client.v1.payment_intents.update(intent_id, params={"payment_method": payment_method})
    try:
        return str(client.v1.payment_intents.confirm(intent_id).status)
    except stripe.CardError:
        return "declined"


def wait_for(
    stub: PaymentServiceStub, payment_id: str, done: Callable[[ppb.Payment], bool], timeout: float = 15
) -> ppb.Payment:
    deadline = time.monotonic() + timeout
    while True:
        payment = stub.GetPayment(ppb.GetPaymentRequest(payment_id=payment_id))
        if done(payment) or time.monotonic() > deadline:
            return payment
        time.sleep(0.1)


def signed_event(
    secret: str, intent_id: str, status: str, *, event_id: str | None = None, failure: str = ""
) -> tuple[bytes, str]:
    """A webhook delivery as Stripe signs it (t=<time>,v1=<HMAC-SHA256>)."""
    error: dict[str, Any] | None = {"code": failure, "message": failure} if failure else None
    body = {
        "id": event_id or f"evt_{uuid.uuid4().hex[:16]}",
        "object": "event",
        "type": f"payment_intent.{'succeeded' if status == 'succeeded' else 'payment_failed'}",
        "data": {
            "object": {"id": intent_id, "object": "payment_intent", "status": status, "last_payment_error": error}
        },
    }
    payload = json.dumps(body).encode()
    timestamp = int(time.time())
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return payload, f"t={timestamp},v1={signature}"


def post_webhook(url: str, payload: bytes, signature: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=payload, headers={"Stripe-Signature": signature, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
