"""The plain hold in one statement (booking.hold_plain_seats): one wait for the database, no lock
across it, and never a yes where the seat inventory would decide otherwise. Whatever is not
plain writes nothing and is left to the inventory, which answers with its details."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.domain.booking.inventory import PlainHold
from cinema_grpc.domain.booking.model import BookingRules, Hold
from cinema_grpc.domain.errors import SeatAlreadyTaken
from cinema_grpc.domain.idempotency import RequestKey
from cinema_grpc.settings import Settings
from cinema_grpc.storage.database import open_database
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from cinema_grpc.storage.plain_holds import HOLD_STATEMENT, statement_params
from tests.booking_data import Customer, Sale, hold, open_sale
from tests.conftest import RunningServer
from tests.integration.test_hold_statements import ANSWER_DELAY, _slow_link, expire, waits, watching_the_lock
from tests.rpc_errors import call_fails
from tests.screening_data import make_movie, showtime_request

Db = psycopg.Connection[tuple[object, ...]]

COUNTED = (
    "booking.holds",
    "booking.seat_claims",
    "booking.seat_events",
    "booking.showtime_versions",
    "api.request_log",
)


def census(db: Db) -> dict[str, object]:
    """What a hold writes: every row of these tables, as text."""
    return {
        table: db.execute(f"SELECT array_agg(t::text ORDER BY t::text) FROM {table} AS t").fetchone()
        for table in COUNTED
    }


def place(server: RunningServer, settings: Settings, plain: PlainHold) -> Hold | None:
    async def run() -> Hold | None:
        database = open_database(settings, run_migrations=False)
        try:
            assert database.plain_holds is not None
            placed = await database.plain_holds.place(plain)
            return None if placed is None else placed[0]
        finally:
            await database.close()

    return server.run(run())


def plain(who: Customer, sale: Sale, *labels: str, rules: BookingRules | None = None, **changes: object) -> PlainHold:
    asked = PlainHold(
        uuid.uuid4(),
        uuid.UUID(sale.showtime.id),
        uuid.UUID(who.user.id),
        tuple(uuid.UUID(seat) for seat in sale.seats(*labels)),
        False,
        datetime.now(UTC),
        rules or BookingRules(),
    )
    return replace(asked, **changes)  # type: ignore[arg-type]


def test_a_plain_hold_is_written_in_one_statement_and_announced_with_its_version(
    server: RunningServer, ana: Customer, sale: Sale, db: Db
) -> None:
    asked = plain(ana, sale, "C3", "C1")
    placed = place(server, server.settings, asked)
    assert placed is not None
    assert [seat.seat_id for seat in placed.seats] == list(asked.seat_ids)  # in the order asked
    assert [f"{seat.row_label}{seat.number}" for seat in placed.seats] == ["C3", "C1"]
    assert placed.expires_at == asked.now + timedelta(minutes=10) and placed.seat_map_version > 0
    changes = db.execute(
        "SELECT changes FROM booking.seat_events WHERE showtime_id = %s AND version = %s",
        (sale.showtime.id, placed.seat_map_version),
    ).fetchone()
    assert changes == ([[sale.seat("C3"), "HELD"], [sale.seat("C1"), "HELD"]],)
    fetched = ana.booking.GetHold(bpb.GetHoldRequest(hold_id=str(placed.id)))
    assert fetched.state == bpb.HOLD_STATE_ACTIVE and len(fetched.seats) == 2


def test_a_plain_hold_waits_for_the_database_once_and_holds_no_lock_across_a_wait(
    server: RunningServer, database_url: str, ana: Customer, sale: Sale, db: Db
) -> None:
    link, settings = _slow_link(server, database_url)
    showtime_key = advisory_key(LockNamespace.SHOWTIME_SEATS, sale.showtime.id)

    async def timed() -> tuple[float, Hold | None]:
        # One connection, so the measured hold takes the one that is connected and prepared.
        database = open_database(settings.model_copy(update={"db_hold_pool_size": 1}), run_migrations=False)
        try:
            assert database.plain_holds is not None
            await database.plain_holds.place(plain(ana, sale, "E9"))  # connected and prepared before
            link.delay = ANSWER_DELAY
            started = time.monotonic()
            placed = await database.plain_holds.place(plain(ana, sale, "E8"))
            return time.monotonic() - started, None if placed is None else placed[0]
        finally:
            await database.close()

    with watching_the_lock(db.info.dsn, showtime_key) as seen:
        try:
            elapsed, placed = server.run(timed())
        finally:
            link.delay = 0.0
            link.close()
    assert placed is not None
    assert waits(elapsed) == 1, f"the hold took {elapsed:.3f} s"
    locked_for = (seen[-1] - seen[0]) if seen else 0.0
    assert locked_for < ANSWER_DELAY / 2, f"the showtime was locked for {locked_for:.3f} s"


def nested_plans(db: Db, asked: PlainHold) -> list[str]:
    """The plan of every statement the hold runs inside PostgreSQL (auto_explain, as notices),
    on a connection of its own: its plans are made afresh, generic, as a pooled connection's are."""
    plans: list[str] = []
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        conn.execute("LOAD 'auto_explain'")
        for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
            conn.execute(f"SET auto_explain.{setting}")
        assert conn.execute(HOLD_STATEMENT, statement_params(asked)).fetchone() is not None
    return plans


def test_the_statement_looks_each_seat_asked_up_by_its_key(
    server: RunningServer, ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    # Planned once per connection, whatever the statistics said then: the seats and their claims
    # must be read by key, not as every seat of the hall or every claim of the showtime.
    hold(ben, sale, "A1", "A2", "A3", "B1", "B2", "B3")
    plans = nested_plans(db, plain(ana, sale, "C3", "C1"))
    lines = [line.strip() for plan in plans for line in plan.splitlines()]
    assert any("hold_plain_seats" in plan for plan in plans) and len(plans) > 5
    scans = [(line, lines[i + 1]) for i, line in enumerate(lines[:-1]) if "Scan" in line and " on seat_claims " in line]
    assert scans, "no read of seat_claims was planned"
    for scan, condition in scans:
        keyed = condition.startswith(("Index Cond:", "Recheck Cond:"))
        assert "Seq Scan" not in scan and keyed, f"{scan} / {condition}"
        # A claim is found by (showtime, seat) or by its hold, never filtered out of the showtime's.
        assert "seat_id =" in condition or "hold_id =" in condition, f"{scan} / {condition}"
    seat_reads = [(line, lines[i + 1]) for i, line in enumerate(lines[:-1]) if "Scan" in line and " on seats " in line]
    assert seat_reads, "no read of the seats was planned"
    for scan, condition in seat_reads:
        assert "seats_pkey" in scan and "id =" in condition and "hall_id" not in condition, f"{scan} / {condition}"


PLANNED_TABLES = ["booking.holds", "booking.seat_claims"]


def held_reading(conn: Db, asked: PlainHold) -> tuple[tuple[object, ...], int, int]:
    """The hold's answer and the rows of holds and seat claims it read (by sequential scans, by
    index), in a transaction that is rolled back."""
    with conn.transaction(force_rollback=True):
        answer = conn.execute(HOLD_STATEMENT, statement_params(asked), prepare=True).fetchone()
        read = conn.execute(
            "SELECT coalesce(sum(seq_tup_read), 0), coalesce(sum(idx_tup_fetch), 0) FROM pg_stat_xact_user_tables"
            " WHERE format('%%I.%%I', schemaname, relname) = ANY(%s)",
            (PLANNED_TABLES,),
        ).fetchone()
    assert answer is not None and read is not None
    return answer, int(read[0]), int(read[1])


def history(db: Db, screening: ScreeningServiceStub, customer_id: uuid.UUID) -> None:
    """Twenty earlier showtimes with 100 holds each, one seat each, ended days ago; 600 of them
    the customer's."""
    other = open_sale(screening, hours_ahead=60, cinema_name="Rex")
    movie = make_movie(screening, minutes=90)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=3)
    earlier = [other.showtime.id] + [
        screening.CreateShowtime(showtime_request(other.hall, movie, start + timedelta(hours=3 * i))).id
        for i in range(1, 20)
    ]
    db.execute(
        "INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, created_at, ended_at)"
        " SELECT gen_random_uuid(), showtime, CASE WHEN n <= 15 THEN %s ELSE gen_random_uuid() END, state,"
        "        now() - interval '2 days', now() - interval '2 days', now() - interval '2 days'"
        " FROM unnest(%s::uuid[]) AS showtime, generate_series(1, 50) AS n,"
        "      unnest(ARRAY['CONVERTED', 'RELEASED']) AS state",
        (customer_id, earlier),
    )
    db.execute(
        "INSERT INTO booking.seat_claims"
        " (id, hold_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)"
        " SELECT gen_random_uuid(), hold.id, hold.showtime_id, seat.id, 'RELEASED', 1200, 'EUR', hold.expires_at,"
        "        hold.created_at"
        " FROM booking.holds AS hold, LATERAL (SELECT id FROM screening.seats WHERE hall_id = %s"
        "                                      OFFSET abs(hashtext(hold.id::text)) %% 60 LIMIT 1) AS seat",
        (other.hall.id,),
    )


def rush(db: Db, sale: Sale) -> None:
    """The showtime fills up: 400 customers' active holds, each free seat of rows C-F claimed,
    and 400 others' holds that ended a moment ago."""
    db.execute(
        "INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, created_at, ended_at)"
        " SELECT gen_random_uuid(), %s, gen_random_uuid(), state, now() + interval '10 minutes',"
        "        now() - interval '1 hour', CASE WHEN state = 'ACTIVE' THEN NULL ELSE now() END"
        " FROM generate_series(1, 400), unnest(ARRAY['ACTIVE', 'RELEASED']) AS state",
        (sale.showtime.id,),
    )
    db.execute(
        "INSERT INTO booking.seat_claims"
        " (id, hold_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)"
        " SELECT gen_random_uuid(), hold.id, hold.showtime_id, seat.id, 'HELD', 1200, 'EUR', hold.expires_at, now()"
        " FROM (SELECT id, showtime_id, expires_at, row_number() OVER () AS n FROM booking.holds"
        "       WHERE showtime_id = %(showtime)s AND state = 'ACTIVE') AS hold"
        " JOIN (SELECT id, row_number() OVER () AS n FROM screening.seats"
        "       WHERE hall_id = %(hall)s AND row_label IN ('C', 'D', 'E', 'F')) AS seat USING (n)",
        {"showtime": sale.showtime.id, "hall": sale.hall.id},
    )


@pytest.mark.parametrize("planned", ["in the rush", "before the rush"])
def test_a_hold_reads_only_the_customers_holds_of_the_showtime_and_the_seats_asked(
    server: RunningServer, ana: Customer, sale: Sale, screening: ScreeningServiceStub, db: Db, planned: str
) -> None:
    """Whatever else the tables hold, a hold reads the customer's holds of its showtime and the
    seats asked: not the customer's whole history, not every hold or claim of the showtime, not
    every hold that ended lately. Its plans are made once per connection, with the statistics of
    that moment: also when they were made before the rush, while no hold was active."""
    history(db, screening, uuid.UUID(ana.user.id))
    if planned == "in the rush":
        rush(db, sale)
    db.execute(f"ANALYZE {', '.join(PLANNED_TABLES)}")
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        assert held_reading(conn, plain(ana, sale, "B1"))[0][0] == "HELD"  # planned now (rolled back)
        if planned == "before the rush":
            rush(db, sale)
        hold(ana, sale, "B3")  # a hold of hers on the showtime
        answer, scanned, fetched = held_reading(conn, plain(ana, sale, "B2"))
    assert answer[0] == "HELD"
    # Her one hold of the showtime, its claim and her seat, a few rows more for visibility and
    # uniqueness checks: against several hundred when a plan walks any of the others.
    assert scanned == 0, f"{scanned} rows read by sequential scans"
    assert fetched <= 20, f"{fetched} rows fetched through indexes"


def test_seats_taken_are_refused_by_the_statement_with_their_labels(
    server: RunningServer, ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    hold(ben, sale, "D4")
    before = census(db)
    with pytest.raises(SeatAlreadyTaken) as refused:
        place(server, server.settings, plain(ana, sale, "D3", "D4"))
    assert refused.value.seats == {sale.seat("D4"): "D4"}
    assert census(db) == before


def test_taken_seats_are_refused_without_waiting_for_the_showtime_lock(
    server: RunningServer, ana: Customer, ben: Customer, sale: Sale, db_admin: Db
) -> None:
    """A premiere's crowd: while holds are being written (the showtime's lock held), those who
    ask for a seat already claimed are answered at once, not in turn."""
    hold(ben, sale, "D6")
    showtime_key = advisory_key(LockNamespace.SHOWTIME_SEATS, sale.showtime.id)
    with psycopg.connect(db_admin.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (showtime_key,))
        try:
            # Waiting for the lock would end in CONTENTION when the lock timeout runs out.
            with pytest.raises(SeatAlreadyTaken):
                place(server, server.settings, plain(ana, sale, "D6", "D7"))
        finally:
            other.execute("SELECT pg_advisory_unlock(%s)", (showtime_key,))


@pytest.mark.parametrize(
    "rules",
    [BookingRules(max_active_holds=1), BookingRules(max_holds_per_window=1), BookingRules(max_seats_per_showtime=2)],
    ids=["active holds", "hold rate", "seats of the showtime"],
)
def test_the_customers_own_limits_are_read_before_the_showtime_lock(
    server: RunningServer, ana: Customer, sale: Sale, db_admin: Db, rules: BookingRules
) -> None:
    """The lock every hold of the showtime queues for is not held while one customer's holds are
    counted: a customer at a limit is sent to the inventory while another holds the lock."""
    hold(ana, sale, "C1", "C2")
    showtime_key = advisory_key(LockNamespace.SHOWTIME_SEATS, sale.showtime.id)
    with psycopg.connect(db_admin.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (showtime_key,))
        try:
            # Waiting for the lock would end in CONTENTION when the lock timeout runs out.
            assert place(server, server.settings, plain(ana, sale, "C3", rules=rules)) is None
        finally:
            other.execute("SELECT pg_advisory_unlock(%s)", (showtime_key,))


Setup = Callable[[Customer, Customer, Sale, Db, ScreeningServiceStub], PlainHold]


def _wheelchair(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    return plain(ana, sale, "A1")  # its companion seat comes with it: the inventory chooses it


def _out_of_service(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    db.execute("UPDATE screening.seats SET in_service = false WHERE id = %s", (sale.seat("B2"),))
    return plain(ana, sale, "B1", "B2")


def _other_hall(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    other = open_sale(screening, hours_ahead=60, cinema_name="Rex")
    return replace(plain(ana, sale, "B1"), seat_ids=(uuid.UUID(sale.seat("B1")), uuid.UUID(other.seat("B2"))))


def _lapsed_hold(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    expire(db, hold(ben, sale, "E5").id)  # expired with the next decision, in its version
    return plain(ana, sale, "E6")


def _cooling_down(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=hold(ana, sale, "C5").id))
    return plain(ana, sale, "C5")


def _active_holds(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    hold(ana, sale, "C6")
    return plain(ana, sale, "C7", rules=BookingRules(max_active_holds=1))


def _hold_rate(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    hold(ana, sale, "C8")
    return plain(ana, sale, "C9", rules=BookingRules(max_holds_per_window=1))


def _showtime_share(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    hold(ana, sale, "D1", "D2")
    return plain(ana, sale, "D5", rules=BookingRules(max_seats_per_showtime=2))


def _online_closed(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    return plain(ana, sale, "B3", rules=BookingRules(online_sales_close=timedelta(days=30)))


def _cancelled(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    screening.CancelShowtime(spb.CancelShowtimeRequest(showtime_id=sale.showtime.id, reason="projector"))
    return plain(ana, sale, "B4")


def _started(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    return replace(plain(ana, sale, "B5"), now=datetime.now(UTC) + timedelta(days=30))


def _unpriced(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    db.execute("DELETE FROM screening.showtime_prices WHERE showtime_id = %s AND kind = 'PREMIUM'", (sale.showtime.id,))
    return plain(ana, sale, "F1")


def _too_many(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    return plain(ana, sale, "B6", "B7", rules=BookingRules(max_seats_per_hold=1))


def _retried(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    first = hold(ana, sale, "B8", request_id="retried-1")
    key = RequestKey("retried-1", "fingerprint", ana.user.id)
    # The earlier answer (or REQUEST_ID_REUSED) comes from the inventory's path.
    return replace(plain(ana, sale, "B8"), request=key, hold_id=uuid.UUID(first.id))


def _claim_out_of_time(ana: Customer, ben: Customer, sale: Sale, db: Db, screening: ScreeningServiceStub) -> PlainHold:
    paying = hold(ben, sale, "B9")
    db.execute("UPDATE booking.holds SET payment_deadline = now() + interval '5 minutes' WHERE id = %s", (paying.id,))
    db.execute(
        "UPDATE booking.seat_claims SET expires_at = now() - interval '1 second' WHERE hold_id = %s", (paying.id,)
    )
    return plain(ana, sale, "B9")


@pytest.mark.parametrize(
    "setup",
    [
        _wheelchair,
        _out_of_service,
        _other_hall,
        _lapsed_hold,
        _cooling_down,
        _active_holds,
        _hold_rate,
        _showtime_share,
        _online_closed,
        _cancelled,
        _started,
        _unpriced,
        _too_many,
        _retried,
        _claim_out_of_time,
    ],
)
def test_what_is_not_plain_is_left_to_the_inventory_and_nothing_is_written(
    setup: Setup,
    server: RunningServer,
    ana: Customer,
    ben: Customer,
    sale: Sale,
    db: Db,
    screening: ScreeningServiceStub,
) -> None:
    asked = setup(ana, ben, sale, db, screening)
    before = census(db)
    assert place(server, server.settings, asked) is None
    assert census(db) == before


def test_staff_at_the_box_office_hold_plainly_past_the_customer_limits(
    server: RunningServer, clerk: Customer, sale: Sale
) -> None:
    hold(clerk, sale, "E1")
    limits = BookingRules(max_holds_per_window=1, max_seats_per_showtime=1, online_sales_close=timedelta(days=30))
    assert place(server, server.settings, plain(clerk, sale, "E2", rules=limits, staff=True)) is not None


def test_the_inventory_answers_what_the_statement_leaves_with_its_details(
    ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    """Through the API: a wheelchair space comes with its companion seat; a seat out of
    service is named; a retried request gets the first answer."""
    wheelchair = hold(ana, sale, "A1")
    assert [f"{s.row_label}{s.number}" for s in wheelchair.seats] == ["A1", "A2"]
    db.execute("UPDATE screening.seats SET in_service = false WHERE id = %s", (sale.seat("B2"),))
    refused = call_fails(
        ben.booking.HoldSeats, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=sale.seats("B1", "B2"))
    )
    assert refused.fields == {"seat_ids[1]": "SEAT_OUT_OF_SERVICE"}
    first = hold(ben, sale, "B3", request_id="once-only")
    assert hold(ben, sale, "B3", request_id="once-only").id == first.id
