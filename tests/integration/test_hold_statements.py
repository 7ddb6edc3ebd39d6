"""The folded statements of a hold and the set-based expiry sweeper keep their guarantees:
locks in order, one gapless version per showtime and decision, nothing expired early."""

from __future__ import annotations

import threading
import time

import psycopg

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.domain.booking.use_cases import release_expired_holds
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from tests.booking_data import Customer, Sale, hold, open_sale
from tests.conftest import RunningServer

Db = psycopg.Connection[tuple[object, ...]]


def expire(db: Db, hold_id: str) -> None:
    db.execute("UPDATE booking.seat_claims SET expires_at = now() - interval '1 second' WHERE hold_id = %s", (hold_id,))
    db.execute("UPDATE booking.holds SET expires_at = now() - interval '1 second' WHERE id = %s", (hold_id,))


def version(db: Db, sale: Sale) -> int:
    row = db.execute(
        "SELECT version FROM booking.showtime_versions WHERE showtime_id = %s", (sale.showtime.id,)
    ).fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def events(db: Db, sale: Sale) -> dict[int, list[list[str]]]:
    rows = db.execute(
        "SELECT version, changes FROM booking.seat_events WHERE showtime_id = %s ORDER BY version", (sale.showtime.id,)
    ).fetchall()
    return {int(v): changes for v, changes in rows}  # type: ignore[call-overload]


def test_a_hold_expires_due_holds_of_its_showtime_in_the_same_version(
    ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    lapsed = hold(ana, sale, "C1")
    expire(db, lapsed.id)
    before = version(db, sale)
    hold(ben, sale, "C2")
    assert version(db, sale) == before + 1
    assert events(db, sale)[before + 1] == [[sale.seat("C1"), "FREE"], [sale.seat("C2"), "HELD"]]
    assert db.execute("SELECT state FROM booking.holds WHERE id = %s", (lapsed.id,)).fetchone() == ("EXPIRED",)


def test_the_sweeper_expires_several_showtimes_with_one_version_each(
    server: RunningServer, screening: ScreeningServiceStub, ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    other = open_sale(screening, hours_ahead=54, cinema_name="Rex")
    first = hold(ana, sale, "C1", "C2")
    second = hold(ben, other, "D3")
    paying = hold(ben, sale, "D4")
    kept = hold(ana, other, "D5")
    for lapsed in (first, second, paying):
        expire(db, lapsed.id)
    # A payment in flight keeps its hold until the payment deadline.
    db.execute("UPDATE booking.holds SET payment_deadline = now() + interval '5 minutes' WHERE id = %s", (paying.id,))
    before = {s.showtime.id: version(db, s) for s in (sale, other)}
    assert server.server is not None
    freed = server.run(release_expired_holds(server.server.unit_of_work, server.server.clock, batch=1))
    assert freed == 3
    assert version(db, sale) == before[sale.showtime.id] + 1
    assert version(db, other) == before[other.showtime.id] + 1
    assert sorted(events(db, sale)[version(db, sale)]) == sorted([[s, "FREE"] for s in sale.seats("C1", "C2")])
    assert events(db, other)[version(db, other)] == [[other.seat("D3"), "FREE"]]
    states = dict(
        db.execute(
            "SELECT id::text, state FROM booking.holds WHERE id = ANY(%s::uuid[])",
            ([first.id, second.id, paying.id, kept.id],),
        ).fetchall()
    )
    assert states == {first.id: "EXPIRED", second.id: "EXPIRED", paying.id: "ACTIVE", kept.id: "ACTIVE"}
    held = db.execute(
        "SELECT count(*) FROM booking.seat_claims WHERE hold_id = ANY(%s::uuid[]) AND status = 'HELD'",
        ([first.id, second.id],),
    ).fetchone()
    assert held == (0,)
    assert server.run(release_expired_holds(server.server.unit_of_work, server.server.clock)) == 0


def _lock_state(db: Db, key: int) -> list[bool]:
    classid, objid = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    rows = db.execute(
        "SELECT granted FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid AND objid = %s::oid"
        " AND objsubid = 1",
        (classid, objid),
    ).fetchall()
    return [bool(granted) for (granted,) in rows]


def test_a_hold_takes_the_customer_lock_before_waiting_for_the_showtime(
    ana: Customer, sale: Sale, db: Db, db_admin: Db
) -> None:
    customer_key = advisory_key(LockNamespace.CUSTOMER_HOLDS, ana.user.id)
    showtime_key = advisory_key(LockNamespace.SHOWTIME_SEATS, sale.showtime.id)
    result: list[bpb.Hold] = []
    with psycopg.connect(db_admin.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (showtime_key,))
        holder = threading.Thread(target=lambda: result.append(hold(ana, sale, "E1")))
        holder.start()
        deadline = time.monotonic() + 2
        while False not in _lock_state(db, showtime_key) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(_lock_state(db, showtime_key)) == [False, True]  # ours, and the hold waiting
        assert _lock_state(db, customer_key) == [True]  # taken first, held while it waits
        other.execute("SELECT pg_advisory_unlock(%s)", (showtime_key,))
        holder.join(10)
    assert [h.state for h in result] == [bpb.HOLD_STATE_ACTIVE]
