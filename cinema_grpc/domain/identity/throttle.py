"""The sign-in throttle: failed sign-ins per (account, address) and per address earn growing
delays, never a lock of the account; registrations are limited per address."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cinema_grpc.domain.errors import LoginThrottled


@dataclass(frozen=True)
class SignInRecord:
    """What is remembered of one (account, address) pair, or of one address over all accounts."""

    failures: int = 0
    last_failure_at: datetime | None = None
    last_success_at: datetime | None = None


@dataclass(frozen=True)
class ThrottleRules:
    # Failed sign-ins of one account from one address before each further attempt must wait.
    free_failures: int = 5
    # Failed sign-ins from one address, over all accounts, before accounts never signed in
    # from there must wait too (guessing one password for many accounts).
    address_free_failures: int = 50
    # The first wait; each further failure doubles it, up to max_delay.
    first_delay: timedelta = timedelta(seconds=30)
    max_delay: timedelta = timedelta(minutes=15)
    # Failures older than this are forgotten.
    failure_memory: timedelta = timedelta(hours=24)
    # Records untouched this long are deleted (the memory that an account signed in from an
    # address goes with them).
    retention: timedelta = timedelta(days=30)
    # Registrations from one address per window.
    registrations_per_address: int = 20
    registration_window: timedelta = timedelta(hours=1)

    def _wait(self, record: SignInRecord, free: int, now: datetime) -> float:
        if record.last_failure_at is None or record.failures < free:
            return 0.0
        if record.last_failure_at <= now - self.failure_memory:
            return 0.0
        doublings = min(record.failures - free, 30)
        delay = min(self.first_delay * (2**doublings), self.max_delay)
        left: float = (record.last_failure_at + delay - now).total_seconds()
        return max(left, 0.0)

    def refuse_if_throttled(self, pair: SignInRecord, address: SignInRecord, now: datetime) -> None:
        """Raises LoginThrottled while this account may not be tried from this address.

        An account that has signed in from the address before is judged by its own failures
        only, so a guesser sharing the address (a NAT, an office) cannot keep its owner out.
        """
        wait = self._wait(pair, self.free_failures, now)
        if pair.last_success_at is None:
            wait = max(wait, self._wait(address, self.address_free_failures, now))
        if wait > 0:
            raise LoginThrottled("too many failed sign-ins from this address; try again later", wait)

    def succeeded(self, record: SignInRecord, now: datetime) -> SignInRecord:
        """The pair's record after a right password: failures forgotten, the address known."""
        return SignInRecord(0, None, now)

    def failed(self, record: SignInRecord, now: datetime) -> SignInRecord:
        """The record after one more failure (older failures forgotten first)."""
        remembered = record.last_failure_at is not None and record.last_failure_at > now - self.failure_memory
        return SignInRecord((record.failures if remembered else 0) + 1, now, record.last_success_at)
