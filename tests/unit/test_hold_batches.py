"""Holds queued for a connection go in batches in the order they came; a hold whose lock keys a
running batch holds keeps its place for the next batch; a batch takes its locks in the one lock
order of the system."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from cinema_grpc.domain.booking.inventory import PlainHold
from cinema_grpc.domain.booking.model import BookingRules
from cinema_grpc.domain.idempotency import RequestKey
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from cinema_grpc.storage.plain_holds import HoldBatches, lock_keys, statement_params


def test_batches_take_the_waiting_holds_in_order_up_to_the_limit() -> None:
    queue: HoldBatches[str] = HoldBatches(3)
    for name, key in zip("abcde", range(5), strict=True):
        queue.put(name, [key])
    assert queue.take() == ["a", "b", "c"]
    assert queue.take() == ["d", "e"]
    assert queue.take() == [] and len(queue) == 0


def test_holds_of_one_batch_may_share_keys() -> None:
    queue: HoldBatches[str] = HoldBatches(10)
    queue.put("a", [1, 2])
    queue.put("b", [1, 3])
    assert queue.take() == ["a", "b"]


def test_a_hold_sharing_a_key_with_a_running_batch_keeps_its_place_for_the_next() -> None:
    queue: HoldBatches[str] = HoldBatches(10)
    queue.put("a", [1, 2])
    assert queue.take() == ["a"]
    queue.put("b", [2, 5])  # waits for a's showtime (2)
    queue.put("c", [3, 4])
    queue.put("d", [5])  # shares a key with b, which came first: waits behind it
    queue.put("e", [6])
    assert queue.take() == ["c", "e"]
    assert len(queue) == 2 and queue.take() == []
    queue.done([[1, 2]])  # a committed
    assert queue.take() == ["b", "d"]  # in their places, together
    queue.put("f", [5])
    assert queue.take() == []  # b and d still run with key 5
    queue.done([[3, 4], [6]])
    assert queue.take() == []
    queue.done([[2, 5], [5]])
    assert queue.take() == ["f"]


def test_a_waiting_hold_can_be_taken_out_but_not_once_a_batch_has_it() -> None:
    queue: HoldBatches[str] = HoldBatches(1)
    queue.put("a", [1])
    queue.put("b", [2])
    assert queue.take() == ["a"]
    assert not queue.remove("a")
    assert queue.remove("b") and len(queue) == 0


def test_a_batch_takes_request_then_customer_then_showtime_locks_each_in_key_order() -> None:
    rules = BookingRules()
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    customers = [uuid.uuid4() for _ in range(3)]
    showtimes = [uuid.uuid4() for _ in range(2)]
    holds = [
        PlainHold(
            uuid.uuid4(),
            showtimes[i % 2],
            customers[i % 3],
            (uuid.uuid4(),),
            False,
            now,
            rules,
            RequestKey(f"r{i}", "fingerprint", str(customers[i % 3])) if i % 2 else None,
        )
        for i in range(6)
    ]
    keys = lock_keys([statement_params(hold) for hold in holds])
    requests = sorted(
        advisory_key(LockNamespace.REQUEST_ID, f"HoldSeats/{hold.request.owner}:{hold.request.request_id}")
        for hold in holds
        if hold.request is not None
    )
    by_customer = sorted(advisory_key(LockNamespace.CUSTOMER_HOLDS, str(c)) for c in customers)
    by_showtime = sorted(advisory_key(LockNamespace.SHOWTIME_SEATS, str(s)) for s in showtimes)
    assert keys == requests + by_customer + by_showtime


def test_with_a_limit_of_one_every_hold_goes_as_soon_as_a_connection_is_free() -> None:
    queue: HoldBatches[str] = HoldBatches(1)
    queue.put("a", [1, 2])
    queue.put("b", [2, 3])  # the same showtime: it queues for the lock in PostgreSQL
    assert queue.take() == ["a"]
    assert queue.take() == ["b"]
    queue.done([[1, 2], [2, 3]])
    assert queue.take() == []
