"""Records written by the thousand get time-ordered ids (UUID version 7), whichever path writes
them, so that records made together sit together in their indexes; accounts keep random ids."""

from __future__ import annotations

import time
import uuid

import psycopg

from cinema.booking.v1 import booking_pb2 as bpb
from cinema_grpc.domain.ids import new_id
from tests.booking_data import Customer, Sale, hold

Db = psycopg.Connection[tuple[object, ...]]


def millis(value: uuid.UUID | str) -> int:
    """The Unix milliseconds at the head of a version 7 UUID."""
    return uuid.UUID(str(value)).int >> 80


def test_new_ids_are_version_7_and_follow_the_clock() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert {i.version for i in ids} == {7} and {i.variant for i in ids} == {uuid.RFC_4122}
    assert all(before <= millis(i) <= after for i in ids)
    assert ids == sorted(ids, key=millis) and len(set(ids)) == len(ids)


def test_holds_and_claims_get_time_ordered_ids_on_either_path(ana: Customer, sale: Sale, db: Db) -> None:
    before = time.time_ns() // 1_000_000
    plain = hold(ana, sale, "C1", "C2")  # one statement in the database
    wheelchair = hold(ana, sale, "A1")  # the seat inventory (with its companion seat)
    after = time.time_ns() // 1_000_000
    assert [f"{s.row_label}{s.number}" for s in wheelchair.seats] == ["A1", "A2"]
    rows = db.execute(
        "SELECT hold.id, claim.id FROM booking.holds AS hold JOIN booking.seat_claims AS claim ON claim.hold_id = hold.id"
        " WHERE hold.id = ANY(%s)",
        ([uuid.UUID(plain.id), uuid.UUID(wheelchair.id)],),
    ).fetchall()
    assert len(rows) == 4
    written = [uuid.UUID(str(value)) for row in rows for value in row]
    assert {value.version for value in written} == {7}
    assert all(before <= millis(value) <= after for value in written)
    # Accounts keep random ids: an account's id does not tell when it was opened.
    assert uuid.UUID(ana.user.id).version == 4
    assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=plain.id)).state == bpb.HOLD_STATE_ACTIVE
