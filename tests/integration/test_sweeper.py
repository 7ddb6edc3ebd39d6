"""The expiry sweeper next to busy showtimes."""

from __future__ import annotations

import time

import psycopg

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.clock import SystemClock
from cinema_grpc.domain.booking.use_cases import release_expired_holds
from cinema_grpc.storage.database import open_database
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from cinema_grpc.storage.unit_of_work import SqlUnitOfWork
from tests.booking_data import Customer, hold, open_sale
from tests.conftest import RunningServer

Db = psycopg.Connection[tuple[object, ...]]


def test_a_busy_showtime_neither_stalls_the_sweep_nor_keeps_other_showtimes_locked(
    server: RunningServer, screening: ScreeningServiceStub, ana: Customer, db: Db
) -> None:
    sales = [open_sale(screening, hours_ahead=30 + 4 * i, cinema_name=f"Sweep {i}") for i in range(3)]
    for sale in sales:
        ana.booking.HoldSeats(bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[sale.seat("B1")]))
    db.execute("UPDATE booking.holds SET expires_at = now() - interval '1 second'")
    db.execute("UPDATE booking.seat_claims SET expires_at = now() - interval '1 second'")
    busy = sales[1].showtime.id
    # A sweep that waited for the lock would wait this long, far beyond the sweep's own time.
    patient = server.settings.model_copy(update={"db_lock_timeout_ms": 30_000})

    async def sweeping() -> int:
        database = open_database(patient, run_migrations=False)
        try:
            return await release_expired_holds(lambda: SqlUnitOfWork(database.sessions), SystemClock(), parallel=1)
        finally:
            await database.close()

    def sweep() -> int:
        return server.run(sweeping())

    key = advisory_key(LockNamespace.SHOWTIME_SEATS, busy)
    with psycopg.connect(db.info.dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        started = time.monotonic()
        assert sweep() == 2
        assert time.monotonic() - started < 15, "the sweep must not wait for the busy showtime's lock"
        states = dict(db.execute("SELECT showtime_id::text, state FROM booking.holds").fetchall())
        assert states == {sales[0].showtime.id: "EXPIRED", busy: "ACTIVE", sales[2].showtime.id: "EXPIRED"}
    # Free again once the holder's backend has ended (closing the connection does not wait for
    # that): the next run takes it.
    deadline = time.monotonic() + 5
    while _advisory_locks(db, key) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sweep() == 1
    assert db.execute("SELECT count(*) FROM booking.holds WHERE state = 'ACTIVE'").fetchone() == (0,)


def test_a_swept_seat_that_is_out_of_service_is_announced_out_of_service(
    server: RunningServer, screening: ScreeningServiceStub, ana: Customer, db: Db
) -> None:
    sale = open_sale(screening, hours_ahead=90, cinema_name="Sweep out of service")
    lapsed = hold(ana, sale, "C1", "C2")
    db.execute("UPDATE booking.holds SET expires_at = now() - interval '1 second' WHERE id = %s", (lapsed.id,))
    db.execute(
        "UPDATE booking.seat_claims SET expires_at = now() - interval '1 second' WHERE hold_id = %s", (lapsed.id,)
    )
    db.execute("UPDATE screening.seats SET in_service = false WHERE id = %s", (sale.seat("C2"),))
    assert server.server is not None
    database = server.server.database
    server.run(release_expired_holds(lambda: SqlUnitOfWork(database.sessions), SystemClock()))
    row = db.execute(
        "SELECT changes FROM booking.seat_events WHERE showtime_id = %s ORDER BY version DESC LIMIT 1",
        (sale.showtime.id,),
    ).fetchone()
    assert row is not None
    assert sorted(row[0]) == sorted([[sale.seat("C1"), "FREE"], [sale.seat("C2"), "OUT_OF_SERVICE"]])


def _advisory_locks(db: Db, key: int) -> int:
    classid, objid = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    row = db.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid AND objid = %s::oid",
        (classid, objid),
    ).fetchone()
    assert row is not None
    return int(str(row[0]))
