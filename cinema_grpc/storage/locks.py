"""Every PostgreSQL advisory lock key the system uses comes from here.

Keys are 64-bit values derived from a namespace and a value, so locks of different purposes
never collide and every lock in pg_locks can be traced to the code that takes it.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Iterable


class LockNamespace(enum.StrEnum):
    # Held for the whole migration run so replicas starting together migrate one at a time.
    MIGRATIONS = "migrations"
    # Transaction lock per (scope, request_id): two concurrent retries of one request wait
    # for each other, so the second sees what the first recorded and never repeats it.
    REQUEST_ID = "request-id"
    # Transaction lock per customer, taken before any showtime lock by a new hold: a
    # customer's parallel holds on different showtimes count each other for the limit. A batch
    # of plain holds (plain_holds) takes all of its request-id, customer and showtime locks at
    # once, each kind in key order, before anything else.
    CUSTOMER_HOLDS = "customer-holds"
    # Transaction lock per showtime: every decision about its seats (hold, release, sell,
    # cancel, expire) is taken by one transaction at a time, so "is this seat free?" and
    # "claim it" cannot interleave. Other showtimes never wait. Only the expiry sweeper and a
    # batch of plain holds hold several showtime locks: both take them in key order. Taken
    # after the request-id and customer locks, before row locks.
    SHOWTIME_SEATS = "showtime-seats"
    # Session lock held by the replica that is sweeping expired holds (pg_try_advisory_lock:
    # the others skip their turn instead of waiting).
    HOLD_SWEEPER = "hold-sweeper"
    # Session lock of the replica reconciling payments with Stripe (pg_try_advisory_lock).
    PAYMENT_RECONCILER = "payment-reconciler"
    # Transaction lock per (device, client scan id): a retried check-in or a re-uploaded
    # offline scan waits for the first attempt, then finds its record instead of scanning
    # again. Taken first (a batch takes its keys in order), before any row lock.
    CLIENT_SCAN = "client-scan"
    # Transaction lock per ticket at the door, see ticket_admission_keys.
    TICKET_ADMISSION = "ticket-admission"
    # Transaction lock serialising appends to the payment audit trail, so each entry's
    # previous hash is the hash of the entry before it.
    AUDIT_CHAIN = "audit-chain"


def advisory_key(namespace: LockNamespace, value: str = "") -> int:
    """A signed 64-bit key for pg_advisory_*lock(bigint), stable across processes and releases."""
    digest = hashlib.blake2b(f"{namespace}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def ticket_admission_keys(ticket_ids: Iterable[uuid.UUID]) -> list[int]:
    """The keys, in the order to take them, that serialise judging scans of these tickets.

    An upload judges its scans one by one, and an admission waits at the admissions' unique
    index for another transaction's uncommitted admission of the same ticket. Two devices
    uploading the same tickets in opposite orders would each admit one and wait for the
    other's: a deadlock, which PostgreSQL breaks by aborting one. So a check-in or an upload
    takes the locks of all its tickets at once, in key order, after its client-scan locks and
    before any row lock; a transaction that holds them is never waiting for another scan.
    """
    return sorted({advisory_key(LockNamespace.TICKET_ADMISSION, str(ticket_id)) for ticket_id in ticket_ids})
