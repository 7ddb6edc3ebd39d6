"""The folded statements of a hold and the set-based expiry sweeper keep their guarantees:
locks in order, one gapless version per showtime and decision, nothing expired early."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from pydantic import SecretStr
from sqlalchemy import event, make_url

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.clock import SystemClock
from cinema_grpc.domain.access import Caller, Role
from cinema_grpc.domain.booking.model import BookingRules, Hold
from cinema_grpc.domain.booking.use_cases import (
    HoldBestAvailable,
    HoldSeats,
    hold_seats,
    release_expired_holds,
    release_hold,
    seat_map,
)
from cinema_grpc.domain.screening.model import SeatKind
from cinema_grpc.domain.screening.use_cases import get_showtime
from cinema_grpc.settings import Settings
from cinema_grpc.storage import database as database_module
from cinema_grpc.storage.database import open_database
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from cinema_grpc.storage.unit_of_work import SqlUnitOfWork
from tests.booking_data import Customer, Sale, hold, open_sale
from tests.conftest import RunningServer
from tests.slow_link import SlowLink

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
        deadline = time.monotonic() + 10
        while False not in _lock_state(db, showtime_key) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(_lock_state(db, showtime_key)) == [False, True]  # ours, and the hold waiting
        assert _lock_state(db, customer_key) == [True]  # taken first, held while it waits
        other.execute("SELECT pg_advisory_unlock(%s)", (showtime_key,))
        holder.join(10)
    assert [h.state for h in result] == [bpb.HOLD_STATE_ACTIVE]


@contextmanager
def watching_the_lock(dsn: str, key: int) -> Iterator[list[float]]:
    """The moments the advisory lock ``key`` was seen held (polled every 2 ms) while inside."""
    seen: list[float] = []
    watching = threading.Event()
    watching.set()

    def watch(connection: Db) -> None:
        while watching.is_set():
            if True in _lock_state(connection, key):
                seen.append(time.monotonic())
            time.sleep(0.002)

    with psycopg.connect(dsn, autocommit=True) as connection:
        watcher = threading.Thread(target=watch, args=(connection,))
        watcher.start()
        try:
            yield seen
        finally:
            watching.clear()
            watcher.join(5)


DOUBLE_CLAIMS = (
    "SELECT count(*) FROM (SELECT seat_id FROM booking.seat_claims WHERE status IN ('HELD', 'SOLD')"
    " GROUP BY showtime_id, seat_id HAVING count(*) > 1) AS doubles"
)
# Every answer of the database is held back this long: a piece of work that waits for the
# database n times takes at least n times as long, and less than n + 1 times on any machine
# that is not stalled for half a second.
ANSWER_DELAY = 0.5


def waits(elapsed: float) -> int:
    """How many times a piece of work that took ``elapsed`` seconds waited for the database."""
    return int(elapsed // ANSWER_DELAY)


@pytest.fixture(autouse=True)
def no_idle_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The waits counted here are the work's own: a pooled connection idle for a second (a
    loaded machine between the warm-up and the work) would be pinged first, one wait more."""
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE_SECONDS", 3600.0)


def _slow_link(server: RunningServer, database_url: str) -> tuple[SlowLink, Settings]:
    """A slow link to the test database, and the server's settings with it as the database."""
    url = make_url(database_url)
    socket_dir = url.query.get("host")  # the embedded PostgreSQL listens on a Unix socket
    # No delay until the work measured: connecting takes several round trips.
    link = SlowLink(str(socket_dir or url.host), url.port or 5432, 0.0)
    through_link = url.set(host="127.0.0.1", port=link.port, query={})
    return link, server.settings.model_copy(update={"database_url": SecretStr(through_link.render_as_string(False))})


def test_a_hold_waits_for_the_database_twice_and_holds_no_lock_across_a_wait(
    server: RunningServer, database_url: str, ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    """A hold is read without locks (one wait), then locked, checked, written and committed in
    one pipeline (one wait): the showtime's lock lives only while the database runs that
    pipeline, never while this process or the network is busy. A release, locked as it reads,
    keeps the lock across a wait (the control that the watcher sees a held lock)."""
    link, settings = _slow_link(server, database_url)
    lapsed = hold(ben, sale, "D1")
    expire(db, lapsed.id)
    showtime_key = advisory_key(LockNamespace.SHOWTIME_SEATS, sale.showtime.id)
    caller = Caller(uuid.UUID(ana.user.id), frozenset({Role.CUSTOMER}))
    cmd = HoldSeats(uuid.UUID(sale.showtime.id), (uuid.UUID(sale.seat("D1")), uuid.UUID(sale.seat("D2"))))

    sent: dict[uuid.UUID | None, list[str]] = {}

    async def timed(hold_id: uuid.UUID | None) -> tuple[float, Hold]:
        database = open_database(settings, run_migrations=False)
        try:
            async with SqlUnitOfWork(database.sessions) as warm:  # the connection is made before
                await warm.booking.current_version(cmd.showtime_id)
            statements = sent.setdefault(hold_id, [])
            event.listen(
                database.engine.sync_engine,
                "before_cursor_execute",
                lambda *args: statements.append(" ".join(args[2].split())[:40]),
            )
            link.delay = ANSWER_DELAY
            uow, clock = SqlUnitOfWork(database.sessions), SystemClock()
            started = time.monotonic()
            if hold_id is None:
                done = await hold_seats(uow, clock, BookingRules(), caller, cmd)
            else:
                done = await release_hold(uow, clock, caller, hold_id)
            return time.monotonic() - started, done
        finally:
            await database.close()

    def measure(hold_id: uuid.UUID | None = None) -> tuple[float, float, Hold]:
        """How long the work took, how long the showtime's lock was seen held, its answer."""
        with watching_the_lock(db.info.dsn, showtime_key) as seen:
            try:
                elapsed, done = server.run(timed(hold_id))
            finally:
                link.delay = 0.0
        return elapsed, (seen[-1] - seen[0]) if seen else 0.0, done

    try:
        elapsed, locked_for, held = measure()
        _, release_locked_for, _ = measure(held.id)
    finally:
        link.close()
    assert waits(elapsed) == 2, f"the hold took {elapsed:.3f} s"
    # Two statements: the read, then one that locks, checks, writes and commits (no BEGIN,
    # no COMMIT: in autocommit it is a transaction of its own).
    assert len(sent[None]) == 2 and sent[None][1].startswith("SELECT %(showtime_id)s, new_version"), sent[None]
    assert locked_for < ANSWER_DELAY / 2, f"the showtime was locked for {locked_for:.3f} s"
    assert release_locked_for >= ANSWER_DELAY / 2, "the watcher did not see the release's lock"
    # The lapsed hold expired in the hold's own version (each seat once, with its last state).
    assert events(db, sale)[held.seat_map_version] == [[sale.seat("D1"), "HELD"], [sale.seat("D2"), "HELD"]]
    assert db.execute("SELECT state FROM booking.holds WHERE id = %s", (lapsed.id,)).fetchone() == ("EXPIRED",)


def test_a_hold_whose_seats_were_taken_while_it_was_decided_decides_again_under_the_locks(
    server: RunningServer, database_url: str, ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    """Ana's best-available hold reads the hall over a slow link; Ben takes that very block
    before her writes arrive. Her check finds it taken, nothing of hers is written, and she is
    given the next best block, decided under the locks."""
    link, settings = _slow_link(server, database_url)
    caller = Caller(uuid.UUID(ana.user.id), frozenset({Role.CUSTOMER}))
    cmd = HoldBestAvailable(uuid.UUID(sale.showtime.id), 2, SeatKind.STANDARD)
    read_sent = threading.Event()

    async def ana_holds() -> Hold:
        database = open_database(settings, run_migrations=False)
        try:
            async with SqlUnitOfWork(database.sessions) as warm:
                await warm.booking.current_version(cmd.showtime_id)
            link.delay = ANSWER_DELAY
            read_sent.set()
            return await hold_seats(SqlUnitOfWork(database.sessions), SystemClock(), BookingRules(), caller, cmd)
        finally:
            await database.close()

    result: list[Hold] = []
    try:
        holder = threading.Thread(target=lambda: result.append(server.run(ana_holds())))
        holder.start()
        assert read_sent.wait(10)
        assert link.answer_held.wait(10)  # her read has run; its answer is on the way
        bens = ben.booking.HoldBestAvailable(
            bpb.HoldBestAvailableRequest(showtime_id=sale.showtime.id, count=2, kind=spb.SEAT_KIND_STANDARD)
        )
        assert holder.is_alive(), "Ben's hold did not come while her read's answer was on its way"
        holder.join(10)
    finally:
        link.close()
    assert len(result) == 1
    anas = {str(seat.seat_id) for seat in result[0].seats}
    assert len(anas) == 2 and anas.isdisjoint(seat.seat_id for seat in bens.seats)
    assert db.execute(DOUBLE_CLAIMS).fetchone() == (0,)


def test_missed_events_and_the_current_version_come_from_one_snapshot(
    server: RunningServer, database_url: str, ana: Customer, sale: Sale
) -> None:
    """A watcher catching up reads the version and the events after its own over a slow link;
    holds committed meanwhile must not look like a gap (which would cost it a whole seat map)."""
    hold(ana, sale, "E1")
    link, settings = _slow_link(server, database_url)
    showtime_id = uuid.UUID(sale.showtime.id)
    read_sent = threading.Event()

    async def catch_up() -> list[int] | None:
        database = open_database(settings, run_migrations=False)
        try:
            async with SqlUnitOfWork(database.sessions) as uow:
                await uow.booking.get_hold(uuid.uuid4())  # connected, in a transaction
                link.delay = ANSWER_DELAY
                read_sent.set()
                missed = await uow.booking.events_since(showtime_id, 0)
            return None if missed is None else [event.version for event in missed]
        finally:
            await database.close()

    result: list[list[int] | None] = []
    try:
        reader = threading.Thread(target=lambda: result.append(server.run(catch_up())))
        reader.start()
        assert read_sent.wait(10)
        assert link.answer_held.wait(10)  # the read has run; its answer is on the way
        hold(ana, sale, "E2")
        reader.join(10)
    finally:
        link.close()
    assert result == [[1]]


def test_a_showtime_and_its_seat_map_are_each_read_in_one_wait(
    server: RunningServer, database_url: str, ana: Customer, sale: Sale
) -> None:
    """A read that opens its unit of work runs alone in autocommit: no BEGIN before it and no
    ROLLBACK after it, each of which cost the server a wait of its own. The seat map reads the
    hall's seats once, then only the showtime's claims with the hall's stamp."""
    hold(ana, sale, "E3")
    link, settings = _slow_link(server, database_url)
    showtime_id = uuid.UUID(sale.showtime.id)

    async def timed() -> tuple[float, float, float, int, int]:
        database = open_database(settings, run_migrations=False)
        try:
            async with SqlUnitOfWork(database.sessions) as warm:  # the connection is made before
                await warm.booking.current_version(showtime_id)
            link.delay = ANSWER_DELAY
            started = time.monotonic()
            showtime = await get_showtime(SqlUnitOfWork(database.sessions), showtime_id)
            read_showtime = time.monotonic() - started
            caller = Caller(uuid.UUID(ana.user.id), frozenset({Role.CUSTOMER}))
            # The first read of the hall's seats reads them (a second wait), later ones keep them.
            started = time.monotonic()
            first = await seat_map(SqlUnitOfWork(database.sessions), SystemClock(), caller, showtime_id)
            read_first = time.monotonic() - started
            started = time.monotonic()
            seats = await seat_map(SqlUnitOfWork(database.sessions), SystemClock(), caller, showtime_id)
            read_seats = time.monotonic() - started
            assert seats == first
            return read_showtime, read_first, read_seats, len(showtime.prices), len(seats.seats)
        finally:
            link.delay = 0.0
            await database.close()

    try:
        read_showtime, read_first, read_seats, prices, seats = server.run(timed())
    finally:
        link.close()
    assert waits(read_showtime) == 1, f"the showtime took {read_showtime:.3f} s"
    assert waits(read_first) == 2, f"the first seat map took {read_first:.3f} s"
    assert waits(read_seats) == 1, f"the seat map took {read_seats:.3f} s"
    assert prices > 0 and seats == len(sale.hall.seats)
