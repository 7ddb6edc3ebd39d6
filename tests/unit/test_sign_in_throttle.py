"""The sign-in throttle's rules: only failures count, delays grow per (account, address), and an
address shared with a guesser does not keep out an account that signs in from there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cinema_grpc.domain.errors import LoginThrottled
from cinema_grpc.domain.identity.throttle import SignInRecord, ThrottleRules

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RULES = ThrottleRules(free_failures=5, address_free_failures=50)
FRESH = SignInRecord()


def after_failures(count: int, rules: ThrottleRules = RULES, record: SignInRecord = FRESH) -> SignInRecord:
    for _ in range(count):
        record = rules.failed(record, NOW)
    return record


def wait(pair: SignInRecord, address: SignInRecord = FRESH, at: datetime = NOW) -> float:
    try:
        RULES.refuse_if_throttled(pair, address, at)
    except LoginThrottled as refused:
        return refused.retry_after_seconds or -1.0
    return 0.0


def test_the_first_failures_of_a_pair_cost_nothing() -> None:
    assert wait(after_failures(4)) == 0.0


def test_each_failure_past_the_allowance_doubles_the_wait_up_to_the_ceiling() -> None:
    waits = [wait(after_failures(count)) for count in range(5, 12)]
    assert waits == [30.0, 60.0, 120.0, 240.0, 480.0, 900.0, 900.0]


def test_the_wait_runs_from_the_last_failure() -> None:
    pair = after_failures(6)
    assert wait(pair, at=NOW + timedelta(seconds=45)) == pytest.approx(15.0)
    assert wait(pair, at=NOW + timedelta(seconds=60)) == 0.0


def test_failures_older_than_the_memory_are_forgotten() -> None:
    old = SignInRecord(40, NOW - timedelta(hours=25))
    assert wait(old) == 0.0
    assert RULES.failed(old, NOW).failures == 1


def test_a_right_password_resets_the_pair_and_remembers_the_address() -> None:
    record = RULES.succeeded(after_failures(9), NOW)
    assert (record.failures, record.last_success_at) == (0, NOW)


def test_a_busy_guessing_address_holds_back_accounts_never_signed_in_from_there() -> None:
    address = after_failures(50)
    assert wait(FRESH, address) == 30.0


def test_an_account_that_signed_in_from_the_address_is_judged_by_its_own_failures() -> None:
    address = after_failures(500)
    known = RULES.succeeded(FRESH, NOW - timedelta(days=3))
    assert wait(known, address) == 0.0
    assert wait(after_failures(5, record=known), address) == 30.0


def test_registrations_default_to_twenty_per_address_an_hour() -> None:
    assert (RULES.registrations_per_address, RULES.registration_window) == (20, timedelta(hours=1))
