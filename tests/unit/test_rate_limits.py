"""The in-process guards: a token bucket per key and a memory of recent moments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cinema_grpc.domain.rate_limits import RecentMoments, TokenBuckets

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_a_bucket_allows_its_capacity_at_once_then_refills_evenly_per_key() -> None:
    buckets = TokenBuckets(6, timedelta(minutes=1))
    assert [buckets.take("ana", T0) for _ in range(6)] == [0.0] * 6
    assert buckets.take("ana", T0) == 10.0  # one token per 10 s
    assert buckets.take("ben", T0) == 0.0
    assert buckets.take("ana", T0 + timedelta(seconds=4)) == pytest.approx(6.0)
    assert buckets.take("ana", T0 + timedelta(seconds=10)) == 0.0
    assert buckets.take("ana", T0 + timedelta(seconds=10)) > 0


def test_buckets_keep_a_bounded_number_of_keys() -> None:
    buckets = TokenBuckets(1, timedelta(minutes=1), max_keys=2)
    for key in ("a", "b", "c"):
        buckets.take(key, T0)
    # "a" was forgotten (least recently used), so it starts with a full bucket again.
    assert buckets.take("a", T0) == 0.0
    assert buckets.take("c", T0) > 0


def test_a_moment_is_fresh_for_its_ttl_and_can_be_forgotten() -> None:
    moments = RecentMoments(timedelta(seconds=3))
    assert not moments.fresh("p", T0)
    moments.mark("p", T0)
    assert moments.fresh("p", T0 + timedelta(seconds=2.9))
    assert not moments.fresh("p", T0 + timedelta(seconds=3))
    moments.forget("p")
    assert not moments.fresh("p", T0)
