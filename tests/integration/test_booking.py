"""Holds, counter sales, bookings and seat maps over a real channel on a real PostgreSQL."""

from __future__ import annotations

import uuid

import grpc
import psycopg
import pytest

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.payment.v1 import payment_pb2 as ppb
from cinema.payment.v1.payment_pb2_grpc import PaymentServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from tests.booking_data import Customer, Sale, hold, open_sale, states
from tests.conftest import RunningServer
from tests.integration.test_cinemas_and_movies import count
from tests.rpc_errors import call_fails

Db = psycopg.Connection[tuple[object, ...]]


def seat_map(who: Customer | BookingServiceStub, sale: Sale) -> bpb.SeatMap:
    stub = who.booking if isinstance(who, Customer) else who
    return stub.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id))


def test_a_hold_keeps_seats_for_ten_minutes_at_the_prices_of_the_moment(ana: Customer, sale: Sale, db: Db) -> None:
    held = hold(ana, sale, "C5", "C6")
    assert held.state == bpb.HOLD_STATE_ACTIVE
    assert held.customer_id == ana.user.id
    assert [(s.row_label, s.number, s.price.amount_minor) for s in held.seats] == [("C", 5, 1200), ("C", 6, 1200)]
    assert (held.total.amount_minor, held.total.currency_code) == (2400, "EUR")
    lifetime = held.expire_time.ToSeconds() - held.create_time.ToSeconds()
    assert 599 <= lifetime <= 600
    assert held.extensions_left == 2
    db.execute("UPDATE screening.showtime_prices SET amount_minor = 9900 WHERE showtime_id = %s", (sale.showtime.id,))
    again = ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id))
    assert again.total.amount_minor == 2400


def test_two_customers_cannot_hold_the_same_seat(ana: Customer, ben: Customer, sale: Sale, db: Db) -> None:
    hold(ana, sale, "C5")
    failed = call_fails(
        ben.booking.HoldSeats, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=sale.seats("C5"))
    )
    assert (failed.code, failed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SEAT_ALREADY_TAKEN")
    assert failed.metadata["seat_ids"] == sale.seat("C5")
    assert failed.preconditions == [("SEAT_ALREADY_TAKEN", f"seats/{sale.seat('C5')}")]
    assert count(db, f"booking.holds WHERE customer_id = '{ben.user.id}'") == 0


def test_a_multi_seat_hold_is_all_or_nothing(ana: Customer, ben: Customer, sale: Sale) -> None:
    hold(ana, sale, "C5")
    call_fails(
        ben.booking.HoldSeats, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=sale.seats("C4", "C5", "C6"))
    )
    assert states(seat_map(ben, sale), sale) == {"C5": bpb.SEAT_STATE_HELD}


def test_seats_that_cannot_be_sold_are_named_in_field_violations(
    screening: ScreeningServiceStub, ana: Customer, sale: Sale
) -> None:
    broken = sale.seat("B2")
    screening.SetSeatService(
        spb.SetSeatServiceRequest(hall_id=sale.hall.id, seat_id=broken, in_service=False, reason="wet")
    )
    foreign = str(uuid.uuid4())
    request = bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[sale.seat("B1"), broken, foreign])
    failed = call_fails(ana.booking.HoldSeats, request)
    assert failed.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failed.fields == {"seat_ids[1]": "SEAT_OUT_OF_SERVICE", "seat_ids[2]": "SEAT_NOT_IN_HALL"}
    assert states(seat_map(ana, sale), sale) == {"B2": bpb.SEAT_STATE_OUT_OF_SERVICE}


@pytest.mark.parametrize(
    ("make_request", "expected"),
    [
        (lambda s: bpb.HoldSeatsRequest(showtime_id=s.showtime.id), {"seat_ids": "REQUIRED"}),
        (
            lambda s: bpb.HoldSeatsRequest(showtime_id="x", seat_ids=["y"]),
            {"showtime_id": "INVALID_FORMAT", "seat_ids[0]": "INVALID_FORMAT"},
        ),
        (
            lambda s: bpb.HoldSeatsRequest(showtime_id=s.showtime.id, seat_ids=[s.seat("B1")] * 2),
            {"seat_ids": "DUPLICATE"},
        ),
        (
            lambda s: bpb.HoldSeatsRequest(
                showtime_id=s.showtime.id, seat_ids=[s.seat("B1")], request_id="no spaces allowed"
            ),
            {"request_id": "INVALID_FORMAT"},
        ),
    ],
)
def test_malformed_hold_requests_are_refused(
    ana: Customer, sale: Sale, db: Db, make_request: object, expected: dict[str, str]
) -> None:
    failed = call_fails(ana.booking.HoldSeats, make_request(sale))  # type: ignore[operator]
    assert failed.fields == expected
    assert count(db, "booking.holds") == 0


def test_seats_of_cancelled_started_or_unknown_showtimes_cannot_be_held(
    screening: ScreeningServiceStub, ana: Customer, sale: Sale, db: Db
) -> None:
    unknown = call_fails(
        ana.booking.HoldSeats, bpb.HoldSeatsRequest(showtime_id=str(uuid.uuid4()), seat_ids=sale.seats("B1"))
    )
    assert unknown.reason == "SHOWTIME_NOT_FOUND"
    db.execute(
        "UPDATE screening.showtimes SET starts_at = now() - interval '1 minute' WHERE id = %s", (sale.showtime.id,)
    )
    started = call_fails(
        ana.booking.HoldSeats, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=sale.seats("B1"))
    )
    assert started.reason == "SHOWTIME_ALREADY_STARTED"
    db.execute(
        "UPDATE screening.showtimes SET starts_at = now() + interval '1 day', state = 'CANCELLED' WHERE id = %s",
        (sale.showtime.id,),
    )
    cancelled = call_fails(
        ana.booking.HoldSeats, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=sale.seats("B1"))
    )
    assert cancelled.reason == "SHOWTIME_CANCELLED"


def test_abuse_limits_on_seats_per_hold_and_active_holds(ana: Customer, sale: Sale) -> None:
    eleven = [f"C{n}" for n in range(1, 11)] + ["D1"]
    too_many = call_fails(
        ana.booking.HoldSeats, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=sale.seats(*eleven))
    )
    assert (too_many.code, too_many.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_SEATS")
    for label in ("D1", "D2", "D3"):
        hold(ana, sale, label)
    fourth = call_fails(
        ana.booking.HoldSeats, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=sale.seats("D4"))
    )
    assert (fourth.code, fourth.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_ACTIVE_HOLDS")


def test_a_retried_hold_with_the_same_request_id_returns_the_same_hold(ana: Customer, sale: Sale, db: Db) -> None:
    request_id = str(uuid.uuid4())
    first = hold(ana, sale, "E1", request_id=request_id)
    again = hold(ana, sale, "E1", request_id=request_id)
    assert again.id == first.id
    assert count(db, "booking.holds") == 1


def test_a_request_id_is_private_to_its_caller(ana: Customer, ben: Customer, sale: Sale) -> None:
    request_id = str(uuid.uuid4())
    mine = hold(ana, sale, "E1", request_id=request_id)
    theirs = hold(ben, sale, "E2", request_id=request_id)
    assert mine.id != theirs.id


def test_holds_belong_to_their_customer_and_staff_see_all(
    ana: Customer, ben: Customer, clerk: Customer, sale: Sale
) -> None:
    held = hold(ana, sale, "C1")
    for call, request in (
        (ben.booking.GetHold, bpb.GetHoldRequest(hold_id=held.id)),
        (ben.booking.ReleaseHold, bpb.ReleaseHoldRequest(hold_id=held.id)),
        (ben.booking.ExtendHold, bpb.ExtendHoldRequest(hold_id=held.id)),
    ):
        failed = call_fails(call, request)
        assert (failed.code, failed.reason) == (grpc.StatusCode.NOT_FOUND, "HOLD_NOT_FOUND")
    assert clerk.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).id == held.id


def test_a_hold_is_extended_a_limited_number_of_times(ana: Customer, sale: Sale, db: Db) -> None:
    held = hold(ana, sale, "C1")
    db.execute("UPDATE booking.holds SET expires_at = now() + interval '1 minute' WHERE id = %s", (held.id,))
    extended = ana.booking.ExtendHold(bpb.ExtendHoldRequest(hold_id=held.id))
    assert extended.expire_time.ToSeconds() >= held.expire_time.ToSeconds()
    assert extended.extensions_left == 1
    assert ana.booking.ExtendHold(bpb.ExtendHoldRequest(hold_id=held.id)).extensions_left == 0
    third = call_fails(ana.booking.ExtendHold, bpb.ExtendHoldRequest(hold_id=held.id))
    assert (third.code, third.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "HOLD_EXTENSION_LIMIT")


def test_releasing_a_hold_frees_its_seats_once(ana: Customer, ben: Customer, sale: Sale) -> None:
    held = hold(ana, sale, "C1", "C2")
    released = ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id))
    assert released.state == bpb.HOLD_STATE_RELEASED
    assert ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id)).state == bpb.HOLD_STATE_RELEASED
    assert states(seat_map(ana, sale), sale) == {}
    assert hold(ben, sale, "C1", "C2").state == bpb.HOLD_STATE_ACTIVE
    extend = call_fails(ana.booking.ExtendHold, bpb.ExtendHoldRequest(hold_id=held.id))
    assert extend.reason == "HOLD_NOT_ACTIVE"


def test_an_expired_hold_seat_can_be_taken_before_the_sweeper_runs(
    ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    held = hold(ana, sale, "C1", "C2")
    db.execute("UPDATE booking.seat_claims SET expires_at = now() - interval '1 second' WHERE hold_id = %s", (held.id,))
    db.execute("UPDATE booking.holds SET expires_at = now() - interval '1 second' WHERE id = %s", (held.id,))
    assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).state == bpb.HOLD_STATE_EXPIRED
    assert states(seat_map(ben, sale), sale) == {}
    taken = hold(ben, sale, "C2")
    assert taken.state == bpb.HOLD_STATE_ACTIVE
    row = db.execute("SELECT state FROM booking.holds WHERE id = %s", (held.id,)).fetchone()
    assert row == ("EXPIRED",)
    assert count(db, f"booking.seat_claims WHERE hold_id = '{held.id}' AND status = 'HELD'") == 0


def test_the_sweeper_releases_expired_holds_and_nothing_else(
    server: RunningServer, ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    expired = hold(ana, sale, "C1", "C2")
    alive = hold(ben, sale, "C3")
    db.execute(
        "UPDATE booking.seat_claims SET expires_at = now() - interval '1 second' WHERE hold_id = %s", (expired.id,)
    )
    db.execute("UPDATE booking.holds SET expires_at = now() - interval '1 second' WHERE id = %s", (expired.id,))
    assert server.server is not None
    assert server.run(server.server.sweep_expired_holds()) == 2
    assert states(seat_map(ana, sale), sale) == {"C3": bpb.SEAT_STATE_HELD}
    assert ben.booking.GetHold(bpb.GetHoldRequest(hold_id=alive.id)).state == bpb.HOLD_STATE_ACTIVE
    assert server.run(server.server.sweep_expired_holds()) == 0


def test_only_one_replica_sweeps_at_a_time(
    server: RunningServer, ana: Customer, sale: Sale, db: Db, db_admin: Db
) -> None:
    expired = hold(ana, sale, "C1")
    db.execute(
        "UPDATE booking.seat_claims SET expires_at = now() - interval '1 second' WHERE hold_id = %s", (expired.id,)
    )
    db.execute("UPDATE booking.holds SET expires_at = now() - interval '1 second' WHERE id = %s", (expired.id,))
    from cinema_grpc.storage.locks import LockNamespace, advisory_key  # noqa: PLC0415

    key = advisory_key(LockNamespace.HOLD_SWEEPER)
    with psycopg.connect(db_admin.info.dsn, autocommit=True) as other_replica:
        other_replica.execute("SELECT pg_advisory_lock(%s)", (key,))
        assert server.server is not None
        assert server.run(server.server.sweep_expired_holds()) == 0
        assert count(db, f"booking.holds WHERE id = '{expired.id}' AND state = 'ACTIVE'") == 1
        other_replica.execute("SELECT pg_advisory_unlock(%s)", (key,))
    assert server.run(server.server.sweep_expired_holds()) == 1


def test_the_box_office_sells_a_hold_and_the_seats_are_sold(ana: Customer, clerk: Customer, sale: Sale, db: Db) -> None:
    held = hold(ana, sale, "F5", "F6")
    booking = clerk.booking.SellHoldAtCounter(
        bpb.SellHoldAtCounterRequest(hold_id=held.id, payment=bpb.COUNTER_PAYMENT_CASH, request_id=str(uuid.uuid4()))
    )
    assert (booking.state, booking.channel, booking.counter_payment) == (
        bpb.BOOKING_STATE_CONFIRMED,
        bpb.SALE_CHANNEL_COUNTER,
        bpb.COUNTER_PAYMENT_CASH,
    )
    assert booking.customer_id == ana.user.id and booking.hold_id == held.id
    assert [(t.seat.row_label, t.seat.number, t.valid) for t in booking.tickets] == [("F", 5, True), ("F", 6, True)]
    assert booking.total == held.total
    assert states(seat_map(ana, sale), sale) == {"F5": bpb.SEAT_STATE_SOLD, "F6": bpb.SEAT_STATE_SOLD}
    assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).state == bpb.HOLD_STATE_CONVERTED
    assert ana.booking.GetBooking(bpb.GetBookingRequest(booking_id=booking.id)) == booking
    again = call_fails(
        clerk.booking.SellHoldAtCounter, bpb.SellHoldAtCounterRequest(hold_id=held.id, payment=bpb.COUNTER_PAYMENT_CASH)
    )
    assert again.reason == "HOLD_NOT_ACTIVE"
    assert count(db, "booking.bookings") == 1


def test_customers_cannot_sell_at_the_counter(ana: Customer, sale: Sale) -> None:
    held = hold(ana, sale, "F5")
    failed = call_fails(
        ana.booking.SellHoldAtCounter, bpb.SellHoldAtCounterRequest(hold_id=held.id, payment=bpb.COUNTER_PAYMENT_CASH)
    )
    assert failed.code is grpc.StatusCode.PERMISSION_DENIED


def test_an_expired_hold_cannot_be_sold(ana: Customer, clerk: Customer, sale: Sale, db: Db) -> None:
    held = hold(ana, sale, "F5")
    db.execute("UPDATE booking.holds SET expires_at = now() - interval '1 second' WHERE id = %s", (held.id,))
    failed = call_fails(
        clerk.booking.SellHoldAtCounter,
        bpb.SellHoldAtCounterRequest(hold_id=held.id, payment=bpb.COUNTER_PAYMENT_CARD_PRESENT),
    )
    assert failed.reason == "HOLD_NOT_ACTIVE"
    assert count(db, "booking.bookings") == 0


def sell(who: Customer, clerk: Customer, sale: Sale, *labels: str) -> bpb.Booking:
    held = hold(who, sale, *labels)
    return clerk.booking.SellHoldAtCounter(
        bpb.SellHoldAtCounterRequest(hold_id=held.id, payment=bpb.COUNTER_PAYMENT_CASH)
    )


def test_customers_see_their_own_booking_history_newest_first(
    ana: Customer, ben: Customer, clerk: Customer, sale: Sale
) -> None:
    first = sell(ana, clerk, sale, "B1")
    second = sell(ana, clerk, sale, "B2")
    theirs = sell(ben, clerk, sale, "B3")
    history = ana.booking.ListBookings(bpb.ListBookingsRequest())
    assert [b.id for b in history.bookings] == [second.id, first.id]
    paged = ana.booking.ListBookings(bpb.ListBookingsRequest(page_size=1))
    rest = ana.booking.ListBookings(bpb.ListBookingsRequest(page_size=1, page_token=paged.next_page_token))
    assert [b.id for b in (*paged.bookings, *rest.bookings)] == [second.id, first.id]
    assert call_fails(ana.booking.GetBooking, bpb.GetBookingRequest(booking_id=theirs.id)).reason == "BOOKING_NOT_FOUND"
    snooping = call_fails(ana.booking.ListBookings, bpb.ListBookingsRequest(customer_id=ben.user.id))
    assert snooping.code is grpc.StatusCode.PERMISSION_DENIED
    by_showtime = clerk.booking.ListBookings(bpb.ListBookingsRequest(showtime_id=sale.showtime.id))
    assert {b.id for b in by_showtime.bookings} == {first.id, second.id, theirs.id}
    of_ben = clerk.booking.ListBookings(bpb.ListBookingsRequest(customer_id=ben.user.id))
    assert [b.id for b in of_ben.bookings] == [theirs.id]


def test_a_customer_cancels_before_the_cut_off_and_the_seats_are_free_again(
    ana: Customer, clerk: Customer, sale: Sale
) -> None:
    booking = sell(ana, clerk, sale, "B1", "B2")
    cancelled = ana.booking.CancelBooking(bpb.CancelBookingRequest(booking_id=booking.id, reason="ill"))
    assert (cancelled.state, cancelled.refund_state, cancelled.cancel_reason) == (
        bpb.BOOKING_STATE_CANCELLED,
        bpb.REFUND_STATE_PENDING,
        "ill",
    )
    assert not any(t.valid for t in cancelled.tickets)
    assert states(seat_map(ana, sale), sale) == {}
    assert ana.booking.CancelBooking(bpb.CancelBookingRequest(booking_id=booking.id)) == cancelled


def test_customers_cannot_cancel_close_to_the_showtime_but_staff_can(
    screening: ScreeningServiceStub, ana: Customer, clerk: Customer
) -> None:
    soon = open_sale(screening, soon=True)
    booking = sell(ana, clerk, soon, "B1")
    closed = call_fails(ana.booking.CancelBooking, bpb.CancelBookingRequest(booking_id=booking.id))
    assert (closed.code, closed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CANCELLATION_CLOSED")
    assert (
        clerk.booking.CancelBooking(bpb.CancelBookingRequest(booking_id=booking.id)).state
        == bpb.BOOKING_STATE_CANCELLED
    )


def test_cancelling_a_showtime_releases_its_holds_and_marks_its_bookings_for_refund(
    screening: ScreeningServiceStub, ana: Customer, ben: Customer, clerk: Customer, sale: Sale
) -> None:
    held = hold(ben, sale, "C1")
    booking = sell(ana, clerk, sale, "B1")
    screening.CancelShowtime(spb.CancelShowtimeRequest(showtime_id=sale.showtime.id, reason="flood"))
    assert ben.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).state == bpb.HOLD_STATE_RELEASED
    refunded = ana.booking.GetBooking(bpb.GetBookingRequest(booking_id=booking.id))
    assert (refunded.state, refunded.refund_state) == (bpb.BOOKING_STATE_CANCELLED, bpb.REFUND_STATE_PENDING)
    assert "flood" in refunded.cancel_reason
    assert states(seat_map(ana, sale), sale) == {}


def test_staff_see_who_holds_each_seat_and_customers_do_not(
    ana: Customer, clerk: Customer, sale: Sale, channel: grpc.Channel
) -> None:
    hold(ana, sale, "C1")

    held = hold(ana, sale, "C2")

    def holders(seat_map_: bpb.SeatMap) -> set[tuple[str, str]]:
        return {(s.holder_id, s.hold_id) for s in seat_map_.seats if s.state == bpb.SEAT_STATE_HELD}

    assert len({s.hold_id for s in seat_map(clerk, sale).seats if s.state == bpb.SEAT_STATE_HELD}) == 2
    assert (ana.user.id, held.id) in holders(seat_map(clerk, sale))
    assert holders(seat_map(ana, sale)) == {("", "")}
    assert holders(seat_map(BookingServiceStub(channel), sale)) == {("", "")}


def test_hold_best_available_picks_adjacent_seats_in_a_good_row(ana: Customer, sale: Sale) -> None:
    held = ana.booking.HoldBestAvailable(bpb.HoldBestAvailableRequest(showtime_id=sale.showtime.id, count=4))
    assert [(s.row_label, s.number) for s in held.seats] == [("D", 4), ("D", 5), ("D", 6), ("D", 7)]


def test_hold_best_available_holds_a_wheelchair_space_with_its_companion(
    ana: Customer, ben: Customer, sale: Sale
) -> None:
    held = ana.booking.HoldBestAvailable(
        bpb.HoldBestAvailableRequest(showtime_id=sale.showtime.id, count=1, kind=spb.SEAT_KIND_WHEELCHAIR)
    )
    assert [(s.row_label, s.number, s.kind) for s in held.seats] == [
        ("A", 1, spb.SEAT_KIND_WHEELCHAIR),
        ("A", 2, spb.SEAT_KIND_COMPANION),
    ]
    assert held.total.amount_minor == 2400
    none_left = call_fails(
        ben.booking.HoldBestAvailable,
        bpb.HoldBestAvailableRequest(showtime_id=sale.showtime.id, count=1, kind=spb.SEAT_KIND_WHEELCHAIR),
    )
    assert none_left.reason == "NO_ADJACENT_SEATS"


def test_holding_a_wheelchair_space_holds_its_companion_seat_too(ana: Customer, sale: Sale) -> None:
    held = hold(ana, sale, "A1")
    assert [(s.row_label, s.number) for s in held.seats] == [("A", 1), ("A", 2)]


def test_staff_force_release_any_hold_and_the_override_is_recorded(
    ana: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    held = hold(ana, sale, "C7", "C8")
    no_reason = call_fails(clerk.booking.ForceReleaseHold, bpb.ForceReleaseHoldRequest(hold_id=held.id))
    assert no_reason.fields == {"reason": "REQUIRED"}
    released = clerk.booking.ForceReleaseHold(bpb.ForceReleaseHoldRequest(hold_id=held.id, reason="customer left"))
    assert (released.state, released.ended_by, released.end_reason) == (
        bpb.HOLD_STATE_RELEASED,
        clerk.user.id,
        "customer left",
    )
    assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).end_reason == "customer left"
    assert states(seat_map(ana, sale), sale) == {}
    customer_override = call_fails(
        ana.booking.ForceReleaseHold, bpb.ForceReleaseHoldRequest(hold_id=held.id, reason="x")
    )
    assert customer_override.code is grpc.StatusCode.PERMISSION_DENIED


def test_staff_force_cancel_a_booking_after_the_start_and_the_override_is_recorded(
    ana: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    booking = sell(ana, clerk, sale, "C9")
    db.execute(
        "UPDATE screening.showtimes SET starts_at = now() - interval '5 minutes' WHERE id = %s", (sale.showtime.id,)
    )
    normal = call_fails(clerk.booking.CancelBooking, bpb.CancelBookingRequest(booking_id=booking.id))
    assert normal.reason == "CANCELLATION_CLOSED"
    forced = clerk.booking.ForceCancelBooking(
        bpb.ForceCancelBookingRequest(booking_id=booking.id, reason="sound failed")
    )
    assert (forced.state, forced.refund_state, forced.cancelled_by, forced.cancel_reason) == (
        bpb.BOOKING_STATE_CANCELLED,
        bpb.REFUND_STATE_PENDING,
        clerk.user.id,
        "sound failed",
    )
    own = ana.booking.GetBooking(bpb.GetBookingRequest(booking_id=booking.id))
    assert own.cancelled_by == clerk.user.id


def test_staff_record_that_a_cancelled_cash_sale_was_paid_back_and_the_audit_trail_keeps_it(
    ana: Customer, clerk: Customer, sale: Sale, admin_channel: grpc.Channel, db: Db
) -> None:
    booking = sell(ana, clerk, sale, "C7", "C8")
    early = call_fails(clerk.booking.RecordCounterRefund, bpb.RecordCounterRefundRequest(booking_id=booking.id))
    assert (early.code, early.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_COUNTER_REFUND_DUE")
    clerk.booking.ForceCancelBooking(bpb.ForceCancelBookingRequest(booking_id=booking.id, reason="projector broke"))
    by_customer = call_fails(ana.booking.RecordCounterRefund, bpb.RecordCounterRefundRequest(booking_id=booking.id))
    assert by_customer.code is grpc.StatusCode.PERMISSION_DENIED
    request = bpb.RecordCounterRefundRequest(booking_id=booking.id, note="cash from till 2")
    paid = clerk.booking.RecordCounterRefund(request)
    assert (paid.state, paid.refund_state) == (bpb.BOOKING_STATE_CANCELLED, bpb.REFUND_STATE_REFUNDED)
    assert ana.booking.GetBooking(bpb.GetBookingRequest(booking_id=booking.id)).refund_state == (
        bpb.REFUND_STATE_REFUNDED
    )
    assert clerk.booking.RecordCounterRefund(request).refund_state == bpb.REFUND_STATE_REFUNDED
    entries = db.execute(
        "SELECT kind, amount_minor, currency, actor, note FROM payment.audit_log WHERE payment_id = %s",
        (booking.id,),
    ).fetchall()
    assert entries == [
        ("counter_refund_paid", 2400, "EUR", clerk.user.id, f"cash refund of booking {booking.id}: cash from till 2")
    ]
    verdict = PaymentServiceStub(admin_channel).VerifyAuditTrail(ppb.VerifyAuditTrailRequest())
    assert verdict.intact
    unknown = call_fails(
        clerk.booking.RecordCounterRefund, bpb.RecordCounterRefundRequest(booking_id=str(uuid.uuid4()))
    )
    assert unknown.reason == "BOOKING_NOT_FOUND"


def test_companion_seats_cannot_be_asked_for_on_their_own(ana: Customer, sale: Sale, db: Db) -> None:
    failed = call_fails(
        ana.booking.HoldBestAvailable,
        bpb.HoldBestAvailableRequest(showtime_id=sale.showtime.id, count=1, kind=spb.SEAT_KIND_COMPANION),
    )
    assert failed.fields == {"kind": "INVALID_ENUM"}
    assert count(db, "booking.holds") == 0


def test_customers_list_their_own_active_holds_and_staff_filter_by_showtime_or_customer(
    ana: Customer, ben: Customer, clerk: Customer, sale: Sale, screening: ScreeningServiceStub, db: Db
) -> None:
    other_sale = open_sale(screening, hours_ahead=50, cinema_name="Rex")
    first = hold(ana, sale, "C1")
    second = hold(ana, other_sale, "C1")
    ended = hold(ana, sale, "C5")
    ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=ended.id))
    theirs = hold(ben, sale, "C2")
    lapsed = hold(ben, sale, "C3")
    db.execute("UPDATE booking.holds SET expires_at = now() - interval '1 second' WHERE id = %s", (lapsed.id,))

    mine = ana.booking.ListHolds(bpb.ListHoldsRequest())
    assert [h.id for h in mine.holds] == [second.id, first.id]  # newest first, active only
    assert all(h.state == bpb.HOLD_STATE_ACTIVE and h.keep_until.seconds for h in mine.holds)
    paged = ana.booking.ListHolds(bpb.ListHoldsRequest(page_size=1))
    rest = ana.booking.ListHolds(bpb.ListHoldsRequest(page_size=1, page_token=paged.next_page_token))
    assert [h.id for h in (*paged.holds, *rest.holds)] == [second.id, first.id] and rest.next_page_token == ""
    of_showtime = ana.booking.ListHolds(bpb.ListHoldsRequest(showtime_id=sale.showtime.id))
    assert [h.id for h in of_showtime.holds] == [first.id]  # still only the caller's own

    snooping = call_fails(ana.booking.ListHolds, bpb.ListHoldsRequest(customer_id=ben.user.id))
    assert snooping.code is grpc.StatusCode.PERMISSION_DENIED
    wrong_token = call_fails(ben.booking.ListHolds, bpb.ListHoldsRequest(page_size=1, page_token=paged.next_page_token))
    assert wrong_token.reason == "VALIDATION_FAILED"  # a token is bound to its caller and filters

    by_showtime = clerk.booking.ListHolds(bpb.ListHoldsRequest(showtime_id=sale.showtime.id))
    assert [h.id for h in by_showtime.holds] == [theirs.id, first.id]
    of_ben = clerk.booking.ListHolds(bpb.ListHoldsRequest(customer_id=ben.user.id))
    assert [h.id for h in of_ben.holds] == [theirs.id]


def test_a_hold_whose_answer_was_lost_is_found_by_listing_and_released(
    ana: Customer, ben: Customer, sale: Sale
) -> None:
    hold(ana, sale, "D1", "D2")  # the answer never reached the client, and it sent no request_id
    found = ana.booking.ListHolds(bpb.ListHoldsRequest(showtime_id=sale.showtime.id)).holds
    assert len(found) == 1 and [s.seat_id for s in found[0].seats] == sale.seats("D1", "D2")
    ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=found[0].id))
    assert ana.booking.ListHolds(bpb.ListHoldsRequest()).holds == []
    assert hold(ben, sale, "D1", "D2").state == bpb.HOLD_STATE_ACTIVE
