"""In-process guards against callers that call too often: a token bucket per key, and a
memory of recent moments per key (what was fetched when). Both are bounded in size and read
the time they are given, so they are pure and testable; each replica keeps its own."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from datetime import datetime, timedelta


class TokenBuckets:
    """``capacity`` calls at once per key, refilled at ``capacity`` per ``period``."""

    def __init__(self, capacity: int, period: timedelta, max_keys: int = 100_000) -> None:
        self.capacity = capacity
        self.period = period
        self._rate = capacity / period.total_seconds()  # tokens per second
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, datetime]] = OrderedDict()

    def take(self, key: Hashable, now: datetime) -> float:
        """Takes a token for ``key``; returns 0 when it got one, else the seconds until one is there."""
        tokens, then = self._buckets.pop(key, (float(self.capacity), now))
        tokens = min(float(self.capacity), tokens + max((now - then).total_seconds(), 0.0) * self._rate)
        if tokens >= 1:
            self._remember(key, (tokens - 1, now))
            return 0.0
        self._remember(key, (tokens, now))
        return (1 - tokens) / self._rate

    def _remember(self, key: Hashable, bucket: tuple[float, datetime]) -> None:
        self._buckets[key] = bucket
        while len(self._buckets) > self._max_keys:
            # The least recently used key goes; it had at most a full bucket to lose.
            self._buckets.popitem(last=False)


class RecentMoments:
    """When something was last done per key, for ``ttl`` (e.g. a Stripe retrieve per payment)."""

    def __init__(self, ttl: timedelta, max_keys: int = 100_000) -> None:
        self.ttl = ttl
        self._max_keys = max_keys
        self._moments: OrderedDict[Hashable, datetime] = OrderedDict()

    def fresh(self, key: Hashable, now: datetime) -> bool:
        moment = self._moments.get(key)
        return moment is not None and now - moment < self.ttl

    def mark(self, key: Hashable, now: datetime) -> None:
        self._moments.pop(key, None)
        self._moments[key] = now
        while len(self._moments) > self._max_keys:
            self._moments.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        self._moments.pop(key, None)
