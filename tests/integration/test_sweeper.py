"""The expiry sweeper next to busy showtimes."""

from __future__ import annotations

import time

import psycopg

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.clock import SystemClock
from cinema_grpc.domain.booking.use_cases import release_expired_holds
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from cinema_grpc.storage.unit_of_work import SqlUnitOfWork
from tests.booking_data import Customer, open_sale
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
    assert server.server is not None
    database = server.server.database

    def sweep() -> int:
        return server.run(release_expired_holds(lambda: SqlUnitOfWork(database.sessions), SystemClock(), parallel=1))

    with psycopg.connect(db.info.dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (advisory_key(LockNamespace.SHOWTIME_SEATS, busy),))
        started = time.monotonic()
        assert sweep() == 2
        assert time.monotonic() - started < 2, "the sweep must not wait for the busy showtime's lock"
        states = dict(db.execute("SELECT showtime_id::text, state FROM booking.holds").fetchall())
        assert states == {sales[0].showtime.id: "EXPIRED", busy: "ACTIVE", sales[2].showtime.id: "EXPIRED"}
    # Free again: the next run takes it.
    assert sweep() == 1
    assert db.execute("SELECT count(*) FROM booking.holds WHERE state = 'ACTIVE'").fetchone() == (0,)
