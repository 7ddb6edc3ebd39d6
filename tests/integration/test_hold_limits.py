"""The limits that keep one customer from sitting on seats: a re-hold cooldown per seat, a hold
rate, a share of each showtime; the online sales cut-off; and the retention job that deletes
ended holds and old request records (and keeps what payments, bookings and reports need)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import psycopg
import pytest

from cinema.booking.v1 import booking_pb2 as bpb
from cinema_grpc.domain.retention import prune_old_records
from tests.booking_data import Customer, Sale, hold
from tests.conftest import RunningServer
from tests.integration.test_cinemas_and_movies import count
from tests.rpc_errors import call_fails, failure

Db = psycopg.Connection[tuple[object, ...]]


def release(who: Customer, held: bpb.Hold) -> None:
    who.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id))


def test_a_customer_cannot_hold_seats_again_right_after_releasing_them_but_others_can(
    ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    first = hold(ana, sale, "C1", "C2")
    release(ana, first)
    again = call_fails(
        ana.booking.HoldSeats, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=sale.seats("C2", "C3"))
    )
    assert (again.code, again.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "REHOLD_COOLDOWN")
    assert again.metadata["seat_ids"] == sale.seat("C2")
    assert again.retry_delay_seconds is not None and 290 < again.retry_delay_seconds <= 300
    # Others may have them at once, and the customer may hold other seats.
    assert hold(ben, sale, "C1").state == bpb.HOLD_STATE_ACTIVE
    release(ana, hold(ana, sale, "C3"))
    # An expired hold cools down too (here before the sweeper marked it), and the cooldown ends.
    lapsing = hold(ana, sale, "D1")
    db.execute("UPDATE booking.holds SET expires_at = now() - interval '1 second' WHERE id = %s", (lapsing.id,))
    db.execute(
        "UPDATE booking.seat_claims SET expires_at = now() - interval '1 second' WHERE hold_id = %s", (lapsing.id,)
    )
    assert (
        call_fails(
            ana.booking.HoldSeats, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[sale.seat("D1")])
        ).reason
        == "REHOLD_COOLDOWN"
    )
    db.execute("UPDATE booking.holds SET ended_at = now() - interval '6 minutes' WHERE id = %s", (first.id,))
    assert hold(ana, sale, "C2").state == bpb.HOLD_STATE_ACTIVE


def test_staff_at_the_box_office_are_not_bound_by_the_customer_limits(clerk: Customer, sale: Sale) -> None:
    for _ in range(3):
        release(clerk, hold(clerk, sale, "E1", "E2", "E3", "E4", "E5", "E6"))
    assert hold(clerk, sale, "E1", "E2", "E3", "E4", "E5", "E6").state == bpb.HOLD_STATE_ACTIVE
    assert hold(clerk, sale, "D1", "D2", "D3", "D4", "D5", "D6").state == bpb.HOLD_STATE_ACTIVE


def test_a_customer_may_start_only_so_many_holds_an_hour(ana: Customer, sale: Sale, db: Db) -> None:
    seats = [f"{row}{n}" for row in "BCDE" for n in range(1, 11)]
    for label in seats[:20]:
        release(ana, hold(ana, sale, label))
    limited = call_fails(
        ana.booking.HoldSeats, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[sale.seat(seats[20])])
    )
    assert (limited.code, limited.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "HOLD_RATE_LIMITED")
    assert limited.metadata["limit"] == "20 per 60 minutes"
    assert limited.retry_delay_seconds is not None and 3500 < limited.retry_delay_seconds <= 3600
    assert count(db, "booking.holds") == 20
    # The window slides: once the oldest hold is an hour old, one more may start.
    db.execute(
        "UPDATE booking.holds SET created_at = now() - interval '61 minutes'"
        " WHERE id = (SELECT id FROM booking.holds ORDER BY created_at LIMIT 1)"
    )
    assert hold(ana, sale, seats[20]).state == bpb.HOLD_STATE_ACTIVE


def test_a_customer_may_hold_and_buy_only_a_share_of_a_showtime(ana: Customer, clerk: Customer, sale: Sale) -> None:
    bought = hold(ana, sale, "B1", "B2", "B3", "B4", "B5", "B6")
    clerk.booking.SellHoldAtCounter(bpb.SellHoldAtCounterRequest(hold_id=bought.id, payment=bpb.COUNTER_PAYMENT_CASH))
    too_many = call_fails(
        ana.booking.HoldSeats,
        bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=sale.seats("C1", "C2", "C3", "C4", "C5")),
    )
    assert (too_many.code, too_many.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_SEATS_FOR_SHOWTIME")
    assert too_many.metadata == {"limit": "10", "already": "6"}
    assert hold(ana, sale, "C1", "C2", "C3", "C4").state == bpb.HOLD_STATE_ACTIVE
    last = call_fails(
        ana.booking.HoldBestAvailable, bpb.HoldBestAvailableRequest(showtime_id=sale.showtime.id, count=1)
    )
    assert last.reason == "TOO_MANY_SEATS_FOR_SHOWTIME"


def test_after_the_start_holds_cannot_be_extended_and_payments_not_started(
    ana: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    held = hold(ana, sale, "C5")
    db.execute(
        "UPDATE screening.showtimes SET starts_at = now() - interval '1 minute' WHERE id = %s", (sale.showtime.id,)
    )
    extend = call_fails(ana.booking.ExtendHold, bpb.ExtendHoldRequest(hold_id=held.id))
    assert (extend.code, extend.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SHOWTIME_ALREADY_STARTED")
    by_staff = call_fails(clerk.booking.ExtendHold, bpb.ExtendHoldRequest(hold_id=held.id))
    assert by_staff.reason == "SHOWTIME_ALREADY_STARTED"


@pytest.mark.usefixtures("db")
def test_retention_deletes_old_ended_holds_and_request_records_and_keeps_what_payments_and_bookings_need(
    server: RunningServer, ana: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    srv = server.server
    assert srv is not None
    old = hold(ana, sale, "B1", request_id=str(uuid.uuid4()))
    release(ana, old)
    recent = hold(ana, sale, "B2")
    release(ana, recent)
    sold = hold(ana, sale, "B3")
    clerk.booking.SellHoldAtCounter(bpb.SellHoldAtCounterRequest(hold_id=sold.id, payment=bpb.COUNTER_PAYMENT_CASH))
    paid_for = hold(ana, sale, "B4")
    db.execute(
        "INSERT INTO payment.payments (id, hold_id, showtime_id, customer_id, channel, amount_minor, currency, state,"
        " failure_reason, created_at, updated_at) SELECT gen_random_uuid(), id, showtime_id, customer_id, 'ONLINE',"
        " 1200, 'EUR', 'FAILED', 'declined', now(), now() FROM booking.holds WHERE id = %s",
        (paid_for.id,),
    )
    release(ana, paid_for)
    db.execute(
        "UPDATE booking.holds SET ended_at = now() - interval '31 days' WHERE id = ANY(%s::uuid[])",
        ([old.id, paid_for.id],),
    )
    db.execute("UPDATE api.request_log SET created_at = now() - interval '8 days'")
    pruned = server.run(prune_old_records(srv.unit_of_work, srv.clock, srv.settings.retention_rules()))
    assert (pruned.holds, pruned.requests) == (1, 1)
    left = {str(r[0]) for r in db.execute("SELECT id FROM booking.holds")}
    assert left == {recent.id, sold.id, paid_for.id}
    assert db.execute("SELECT count(*) FROM booking.seat_claims WHERE hold_id = %s", (old.id,)).fetchone() == (0,)
    assert count(db, "api.request_log") == 0
    assert clerk.booking.GetHold(bpb.GetHoldRequest(hold_id=sold.id)).state == bpb.HOLD_STATE_CONVERTED


def test_concurrent_holds_of_one_customer_cannot_pass_the_showtime_share_together(
    ana: Customer, sale: Sale, db: Db
) -> None:
    def attempt(labels: tuple[str, ...]) -> str:
        try:
            hold(ana, sale, *labels)
        except grpc.RpcError as error:
            return failure(error).reason
        return "held"

    rows = [tuple(f"{row}{n}" for n in range(1, 7)) for row in "BCDE"]
    for _ in range(3):
        db.execute("TRUNCATE booking.holds, booking.seat_claims, booking.bookings CASCADE")
        with ThreadPoolExecutor(2) as pool:
            outcomes = sorted(pool.map(attempt, rows[:2]))
        assert outcomes == ["TOO_MANY_SEATS_FOR_SHOWTIME", "held"]
