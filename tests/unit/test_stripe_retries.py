"""Which Stripe errors are worth retrying, and how long a retry waits."""

from __future__ import annotations

from datetime import timedelta

import pytest
import stripe

from cinema_grpc.adapters.stripe_gateway import is_temporary
from cinema_grpc.domain.payment.model import retry_delay


@pytest.mark.parametrize(
    ("error", "temporary"),
    [
        (stripe.APIConnectionError("no answer"), True),
        (stripe.APIError("boom", http_status=500), True),
        (stripe.APIError("bad gateway", http_status=502), True),
        (stripe.RateLimitError("slow down", http_status=429), True),
        (stripe.IdempotencyError("a concurrent request", http_status=409), True),
        (stripe.InvalidRequestError("amount too large", "amount", http_status=400), False),
        (stripe.InvalidRequestError("no such payment intent", "intent", http_status=404), False),
        (stripe.AuthenticationError("bad key", http_status=401), False),
        (stripe.PermissionError("not allowed", http_status=403), False),
        (stripe.CardError("declined", None, "card_declined", http_status=402), False),
    ],
)
def test_only_no_answer_conflicts_rate_limits_and_server_errors_are_worth_retrying(
    error: stripe.StripeError, temporary: bool
) -> None:
    assert is_temporary(error) is temporary


def test_retries_wait_twice_as_long_each_time_up_to_the_ceiling() -> None:
    base, ceiling = timedelta(seconds=30), timedelta(minutes=5)
    assert [retry_delay(n, base, ceiling).total_seconds() for n in range(7)] == [0, 30, 60, 120, 240, 300, 300]
    assert retry_delay(1000, base, ceiling) == ceiling
