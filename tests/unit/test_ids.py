"""The ids of records written by the thousand are time-ordered (UUID version 7) and otherwise random."""

from __future__ import annotations

import itertools
import time
import uuid

from cinema_grpc.domain.ids import new_id


def millis(value: uuid.UUID) -> int:
    """The Unix milliseconds at the head of a version 7 UUID."""
    return value.int >> 80


def test_new_ids_are_version_7_and_follow_the_clock() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert {i.version for i in ids} == {7} and {i.variant for i in ids} == {uuid.RFC_4122}
    assert all(before <= millis(i) <= after for i in ids)
    assert [millis(i) for i in ids] == sorted(millis(i) for i in ids) and len(set(ids)) == len(ids)


def test_one_id_does_not_lead_to_the_next() -> None:
    """Ids of one millisecond are random after the time, not a counter one apart."""
    ids = [new_id() for _ in range(200)]
    after_time = [i.int & ((1 << 80) - 1) for i in ids]
    steps = {abs(b - a) for a, b in itertools.pairwise(after_time)}
    assert min(steps) > 1 << 32
