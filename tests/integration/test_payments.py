"""Payments against a real Stripe-compatible server (localstripe): the booking is confirmed
only after Stripe reports the funds, webhooks count once, reconciliation closes gaps, late
money is refunded, and the audit trail cannot be rewritten unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
import stripe

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.common.v1 import money_pb2
from cinema.payment.v1 import payment_pb2 as ppb
from cinema.payment.v1.payment_pb2_grpc import PaymentServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.local_stripe import LocalStripe
from cinema_grpc.settings import Settings
from tests.auth_client import with_token
from tests.booking_data import LAYOUT, Customer, Sale, hold, open_sale, states
from tests.conftest import TEST_AUDIT_KEY, RunningServer
from tests.integration.test_cinemas_and_movies import count
from tests.payment_data import confirm_card, post_webhook, signed_event, stripe_client, wait_for
from tests.rpc_errors import call_fails
from tests.screening_data import make_cinema, make_hall, make_movie, prices, showtime_request

Db = psycopg.Connection[tuple[object, ...]]


def payments(channel: grpc.Channel, who: Customer) -> PaymentServiceStub:
    return PaymentServiceStub(with_token(channel, who.token))


@pytest.fixture
def webhook_url(server: RunningServer) -> str:
    assert server.server is not None
    return server.server.webhook_url


def settled(payment: ppb.Payment) -> bool:
    return payment.state != ppb.PAYMENT_STATE_INITIALIZED and payment.refund_pending.amount_minor == 0


def test_a_card_payment_confirms_the_booking_only_after_stripe_reports_the_funds_then_refunds(
    channel: grpc.Channel, ana: Customer, sale: Sale, local_stripe: LocalStripe, admin_channel: grpc.Channel, db: Db
) -> None:
    stub = payments(channel, ana)
    held = hold(ana, sale, "C4", "C5")
    payment = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id, request_id=str(uuid.uuid4())))
    assert payment.state == ppb.PAYMENT_STATE_INITIALIZED
    assert payment.intent_id.startswith("pi_") and payment.client_secret
    assert (payment.amount.amount_minor, payment.amount.currency_code) == (2400, "EUR")
    assert payment.booking_id == ""
    assert count(db, "booking.bookings") == 0

    assert confirm_card(local_stripe, payment.intent_id) == "succeeded"
    paid = wait_for(stub, payment.id, settled)
    assert paid.state == ppb.PAYMENT_STATE_SUCCESS
    booking = ana.booking.GetBooking(bpb.GetBookingRequest(booking_id=paid.booking_id))
    assert (booking.channel, booking.state, len(booking.tickets)) == (
        bpb.SALE_CHANNEL_ONLINE,
        bpb.BOOKING_STATE_CONFIRMED,
        2,
    )
    assert booking.total.amount_minor == 2400
    assert states(ana.booking.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id)), sale) == {
        "C4": bpb.SEAT_STATE_SOLD,
        "C5": bpb.SEAT_STATE_SOLD,
    }

    refunded = stub.RefundPayment(ppb.RefundPaymentRequest(payment_id=payment.id, reason="cannot come"))
    assert (refunded.state, refunded.refunded.amount_minor) == (ppb.PAYMENT_STATE_REFUNDED, 2400)
    cancelled = ana.booking.GetBooking(bpb.GetBookingRequest(booking_id=paid.booking_id))
    assert (cancelled.state, cancelled.refund_state) == (bpb.BOOKING_STATE_CANCELLED, bpb.REFUND_STATE_REFUNDED)
    assert states(ana.booking.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id)), sale) == {}
    # Card money goes back through Stripe; the box office's record is for counter sales only.
    online = call_fails(
        BookingServiceStub(admin_channel).RecordCounterRefund,
        bpb.RecordCounterRefundRequest(booking_id=paid.booking_id),
    )
    assert (online.code, online.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_COUNTER_REFUND_DUE")
    stripe_refunds = stripe_client(local_stripe).v1.refunds.list(params={"payment_intent": payment.intent_id})
    assert [r.amount for r in stripe_refunds.data] == [2400]

    trail = PaymentServiceStub(admin_channel).ListPaymentEvents(ppb.ListPaymentEventsRequest(payment_id=payment.id))
    assert [e.kind for e in trail.events] == [
        "payment_started",
        "intent_created",
        "succeeded",
        "refund_requested",
        "refunded",
    ]
    assert {e.amount.amount_minor for e in trail.events} == {2400}
    assert all(e.hash for e in trail.events)
    verdict = PaymentServiceStub(admin_channel).VerifyAuditTrail(ppb.VerifyAuditTrailRequest())
    assert verdict.intact and verdict.entries_checked >= 5


def test_the_client_secret_goes_to_the_customer_only(
    channel: grpc.Channel, ana: Customer, clerk: Customer, ben: Customer, sale: Sale
) -> None:
    payment = payments(channel, ana).CreatePayment(ppb.CreatePaymentRequest(hold_id=hold(ana, sale, "C1").id))
    assert payments(channel, clerk).GetPayment(ppb.GetPaymentRequest(payment_id=payment.id)).client_secret == ""
    hidden = call_fails(payments(channel, ben).GetPayment, ppb.GetPaymentRequest(payment_id=payment.id))
    assert (hidden.code, hidden.reason) == (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")


def test_one_payment_at_a_time_per_hold_and_only_for_ones_own_active_hold(
    channel: grpc.Channel, ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    held = hold(ana, sale, "C1")
    stub = payments(channel, ana)
    stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id))
    again = call_fails(stub.CreatePayment, ppb.CreatePaymentRequest(hold_id=held.id))
    assert (again.code, again.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_IN_PROGRESS")
    theirs = call_fails(payments(channel, ben).CreatePayment, ppb.CreatePaymentRequest(hold_id=held.id))
    assert theirs.reason == "HOLD_NOT_FOUND"
    released = hold(ana, sale, "C2")
    ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=released.id))
    assert call_fails(stub.CreatePayment, ppb.CreatePaymentRequest(hold_id=released.id)).reason == "HOLD_NOT_ACTIVE"
    assert count(db, "payment.payments") == 1


def test_a_retried_create_payment_returns_the_same_payment(
    channel: grpc.Channel, ana: Customer, sale: Sale, db: Db
) -> None:
    held = hold(ana, sale, "C1")
    request = ppb.CreatePaymentRequest(hold_id=held.id, request_id=str(uuid.uuid4()))
    first = payments(channel, ana).CreatePayment(request)
    again = payments(channel, ana).CreatePayment(request)
    assert (again.id, again.intent_id) == (first.id, first.intent_id)
    assert count(db, "payment.payments") == 1


def test_a_hold_whose_payment_is_in_flight_is_not_released_by_expiry(
    server: RunningServer, channel: grpc.Channel, ana: Customer, sale: Sale, db: Db
) -> None:
    held = hold(ana, sale, "C1")
    payments(channel, ana).CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id))
    db.execute("UPDATE booking.holds SET expires_at = now() - interval '1 minute' WHERE id = %s", (held.id,))
    assert server.server is not None
    assert server.run(server.server.sweep_expired_holds()) == 0
    assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).state == bpb.HOLD_STATE_ACTIVE
    assert states(ana.booking.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id)), sale) == {
        "C1": bpb.SEAT_STATE_HELD
    }


def test_money_arriving_after_the_hold_ended_and_the_seat_was_resold_is_refunded_automatically(
    server: RunningServer,
    channel: grpc.Channel,
    ana: Customer,
    ben: Customer,
    clerk: Customer,
    sale: Sale,
    local_stripe: LocalStripe,
    db: Db,
) -> None:
    held = hold(ana, sale, "C1")
    stub = payments(channel, ana)
    payment = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id))
    # The customer takes too long: past the hold and past the payment's hard limit.
    db.execute(
        "UPDATE booking.holds SET expires_at = now() - interval '1 hour',"
        " payment_deadline = now() - interval '1 minute' WHERE id = %s",
        (held.id,),
    )
    db.execute("UPDATE booking.seat_claims SET expires_at = now() - interval '1 minute' WHERE hold_id = %s", (held.id,))
    assert server.server is not None
    server.run(server.server.sweep_expired_holds())
    resold = hold(ben, sale, "C1")
    clerk.booking.SellHoldAtCounter(bpb.SellHoldAtCounterRequest(hold_id=resold.id, payment=bpb.COUNTER_PAYMENT_CASH))

    assert confirm_card(local_stripe, payment.intent_id) == "succeeded"
    after = wait_for(stub, payment.id, lambda p: p.state == ppb.PAYMENT_STATE_REFUNDED)
    assert after.state == ppb.PAYMENT_STATE_REFUNDED
    assert after.booking_id == ""
    assert "hold had ended" in after.refund_reason
    assert count(db, "booking.bookings") == 1
    assert count(db, f"booking.seat_claims WHERE seat_id = '{sale.seat('C1')}' AND status = 'SOLD'") == 1
    kinds = [
        row[0]
        for row in db.execute(
            "SELECT kind FROM payment.audit_log WHERE payment_id = %s ORDER BY sequence", (payment.id,)
        ).fetchall()
    ]
    assert kinds[-3:] == ["succeeded", "auto_refund_requested", "auto_refunded"]


def test_the_box_office_charges_a_card_at_the_terminal_and_declines_leave_the_hold_for_another_try(
    channel: grpc.Channel, ana: Customer, clerk: Customer, sale: Sale
) -> None:
    held = hold(ana, sale, "F1")
    terminal = payments(channel, clerk)
    declined = terminal.ChargeAtTerminal(
        ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method="pm_card_chargeCustomerFail")
    )
    assert (declined.state, declined.failure_reason) == (ppb.PAYMENT_STATE_FAILED, "card_declined")
    assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).state == bpb.HOLD_STATE_ACTIVE
    paid = terminal.ChargeAtTerminal(ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method="pm_card_visa"))
    assert paid.state == ppb.PAYMENT_STATE_SUCCESS and paid.booking_id
    assert ana.booking.GetBooking(bpb.GetBookingRequest(booking_id=paid.booking_id)).customer_id == ana.user.id
    customer_terminal = call_fails(
        payments(channel, ana).ChargeAtTerminal,
        ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method="pm_card_visa"),
    )
    assert customer_terminal.code is grpc.StatusCode.PERMISSION_DENIED


def paid_booking(channel: grpc.Channel, who: Customer, clerk: Customer, sale: Sale, *labels: str) -> ppb.Payment:
    held = hold(who, sale, *labels)
    return payments(channel, clerk).ChargeAtTerminal(
        ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method="pm_card_visa")
    )


def test_staff_refund_part_of_a_payment_and_customers_cannot(
    channel: grpc.Channel, ana: Customer, clerk: Customer, sale: Sale
) -> None:
    paid = paid_booking(channel, ana, clerk, sale, "B1", "B2")
    part = money_pb2.Money(amount_minor=500, currency_code="EUR")
    refused = call_fails(
        payments(channel, ana).RefundPayment, ppb.RefundPaymentRequest(payment_id=paid.id, amount=part)
    )
    assert refused.code is grpc.StatusCode.PERMISSION_DENIED
    partly = payments(channel, clerk).RefundPayment(
        ppb.RefundPaymentRequest(payment_id=paid.id, amount=part, reason="goodwill")
    )
    assert (partly.state, partly.refunded.amount_minor) == (ppb.PAYMENT_STATE_PARTIALLY_REFUNDED, 500)
    assert (
        ana.booking.GetBooking(bpb.GetBookingRequest(booking_id=paid.booking_id)).state == bpb.BOOKING_STATE_CONFIRMED
    )
    too_much = call_fails(
        payments(channel, clerk).RefundPayment,
        ppb.RefundPaymentRequest(payment_id=paid.id, amount=money_pb2.Money(amount_minor=2000, currency_code="EUR")),
    )
    assert too_much.reason == "PAYMENT_NOT_REFUNDABLE"
    rest = payments(channel, clerk).RefundPayment(ppb.RefundPaymentRequest(payment_id=paid.id))
    assert (rest.state, rest.refunded.amount_minor) == (ppb.PAYMENT_STATE_REFUNDED, 2400)
    assert call_fails(payments(channel, clerk).RefundPayment, ppb.RefundPaymentRequest(payment_id=paid.id)).reason == (
        "PAYMENT_NOT_REFUNDABLE"
    )


def test_customers_cannot_refund_after_the_cancellation_cut_off(
    screening: ScreeningServiceStub, channel: grpc.Channel, ana: Customer, clerk: Customer
) -> None:
    soon = open_sale(screening, soon=True)
    paid = paid_booking(channel, ana, clerk, soon, "B1")
    closed = call_fails(payments(channel, ana).RefundPayment, ppb.RefundPaymentRequest(payment_id=paid.id))
    assert closed.reason == "CANCELLATION_CLOSED"
    assert (
        payments(channel, ana).GetPayment(ppb.GetPaymentRequest(payment_id=paid.id)).state == ppb.PAYMENT_STATE_SUCCESS
    )


def test_cancelled_online_bookings_and_cancelled_showtimes_are_refunded_by_reconciliation(
    server: RunningServer,
    screening: ScreeningServiceStub,
    channel: grpc.Channel,
    ana: Customer,
    ben: Customer,
    clerk: Customer,
    sale: Sale,
) -> None:
    first = paid_booking(channel, ana, clerk, sale, "B1")
    ana.booking.CancelBooking(bpb.CancelBookingRequest(booking_id=first.booking_id))
    second = paid_booking(channel, ben, clerk, sale, "B2")
    screening.CancelShowtime(spb.CancelShowtimeRequest(showtime_id=sale.showtime.id, reason="projector"))
    assert server.server is not None
    server.run(server.server.reconcile_payments())
    for who, paid in ((ana, first), (ben, second)):
        after = payments(channel, who).GetPayment(ppb.GetPaymentRequest(payment_id=paid.id))
        assert (after.state, after.refunded.amount_minor) == (ppb.PAYMENT_STATE_REFUNDED, paid.amount.amount_minor)
        booking = who.booking.GetBooking(bpb.GetBookingRequest(booking_id=paid.booking_id))
        assert booking.refund_state == bpb.REFUND_STATE_REFUNDED
    server.run(server.server.reconcile_payments())
    assert count_refunds(server) == 2


def count_refunds(server: RunningServer) -> int:
    assert server.server is not None
    with psycopg.connect(
        server.server.database.url.set(drivername="postgresql").render_as_string(hide_password=False)
    ) as conn:
        row = conn.execute("SELECT count(*) FROM payment.refunds").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def lost_webhooks(local_stripe: LocalStripe, webhook_url: str) -> Iterator[None]:
    local_stripe.deliver_webhooks_to("http://127.0.0.1:9/nowhere")
    yield
    local_stripe.deliver_webhooks_to(webhook_url)


@pytest.mark.usefixtures("lost_webhooks")
def test_a_lost_webhook_is_made_up_for_by_reconciliation(
    server: RunningServer, channel: grpc.Channel, ana: Customer, sale: Sale, local_stripe: LocalStripe
) -> None:
    stub = payments(channel, ana)
    payment = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=hold(ana, sale, "D1").id))
    assert confirm_card(local_stripe, payment.intent_id) == "succeeded"
    assert wait_for(stub, payment.id, settled, timeout=1).state == ppb.PAYMENT_STATE_INITIALIZED
    assert server.server is not None
    server.run(server.server.reconcile_payments())
    after = stub.GetPayment(ppb.GetPaymentRequest(payment_id=payment.id))
    assert after.state == ppb.PAYMENT_STATE_SUCCESS and after.booking_id


@pytest.mark.usefixtures("lost_webhooks")
def test_sync_payment_settles_at_once_without_waiting_for_the_webhook(
    channel: grpc.Channel, ana: Customer, sale: Sale, local_stripe: LocalStripe
) -> None:
    stub = payments(channel, ana)
    payment = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=hold(ana, sale, "D2").id))
    confirm_card(local_stripe, payment.intent_id)
    synced = stub.SyncPayment(ppb.SyncPaymentRequest(payment_id=payment.id))
    assert synced.state == ppb.PAYMENT_STATE_SUCCESS and synced.booking_id


@pytest.mark.usefixtures("lost_webhooks")
def test_webhooks_need_a_valid_signature_count_once_and_tolerate_any_order(
    channel: grpc.Channel, ana: Customer, sale: Sale, local_stripe: LocalStripe, webhook_url: str, db: Db
) -> None:
    stub = payments(channel, ana)
    payment = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=hold(ana, sale, "D3").id))

    forged, _ = signed_event("whsec_not_ours", payment.intent_id, "succeeded")
    status, _ = post_webhook(webhook_url, forged, signed_event("whsec_not_ours", payment.intent_id, "succeeded")[1])
    assert status == 400
    assert stub.GetPayment(ppb.GetPaymentRequest(payment_id=payment.id)).state == ppb.PAYMENT_STATE_INITIALIZED

    failed = signed_event(
        local_stripe.webhook_secret, payment.intent_id, "requires_payment_method", failure="card_declined"
    )
    assert post_webhook(webhook_url, *failed) == (200, {"outcome": "processed"})
    assert post_webhook(webhook_url, *failed) == (200, {"outcome": "duplicate"})
    assert stub.GetPayment(ppb.GetPaymentRequest(payment_id=payment.id)).state == ppb.PAYMENT_STATE_FAILED

    # The customer retried the same intent with another card; that success arrives, then a
    # stale failure event arrives after it and changes nothing.
    succeeded = signed_event(local_stripe.webhook_secret, payment.intent_id, "succeeded")
    assert post_webhook(webhook_url, *succeeded)[0] == 200
    late_failure = signed_event(
        local_stripe.webhook_secret, payment.intent_id, "requires_payment_method", failure="expired_card"
    )
    assert post_webhook(webhook_url, *late_failure)[0] == 200
    after = stub.GetPayment(ppb.GetPaymentRequest(payment_id=payment.id))
    assert after.state == ppb.PAYMENT_STATE_SUCCESS and after.booking_id
    assert count(db, "booking.bookings") == 1
    assert count(db, "payment.webhook_events") == 3


def test_the_database_refuses_illegal_payment_transitions_and_rewriting_the_audit_trail(
    channel: grpc.Channel, ana: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    paid = paid_booking(channel, ana, clerk, sale, "E1")
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("UPDATE payment.payments SET state = 'INITIALIZED' WHERE id = %s", (paid.id,))
    for statement in (
        "UPDATE payment.audit_log SET amount_minor = 1 WHERE payment_id = %s",
        "DELETE FROM payment.audit_log WHERE payment_id = %s",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.execute(statement, (paid.id,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("TRUNCATE payment.audit_log")


@pytest.fixture
def tampered(db: Db, channel: grpc.Channel, ana: Customer, clerk: Customer, sale: Sale) -> Iterator[int]:
    """An audit entry changed behind the triggers' back (as a superuser could), then put back."""
    paid = paid_booking(channel, ana, clerk, sale, "E2")
    row = db.execute(
        "SELECT sequence, amount_minor FROM payment.audit_log WHERE payment_id = %s AND kind = 'succeeded'", (paid.id,)
    ).fetchone()
    assert row is not None
    sequence, amount = row
    db.execute("ALTER TABLE payment.audit_log DISABLE TRIGGER audit_log_append_only")
    db.execute("UPDATE payment.audit_log SET amount_minor = 1 WHERE sequence = %s", (sequence,))
    yield int(str(sequence))
    db.execute("UPDATE payment.audit_log SET amount_minor = %s WHERE sequence = %s", (amount, sequence))
    db.execute("ALTER TABLE payment.audit_log ENABLE TRIGGER audit_log_append_only")


def test_verification_names_the_first_tampered_audit_entry(tampered: int, admin_channel: grpc.Channel) -> None:
    verdict = PaymentServiceStub(admin_channel).VerifyAuditTrail(ppb.VerifyAuditTrailRequest())
    assert (verdict.intact, verdict.first_broken_sequence) == (False, tampered)


def test_only_admins_verify_the_trail_and_only_staff_read_it(channel: grpc.Channel, ana: Customer, db: Db) -> None:
    denied = call_fails(payments(channel, ana).VerifyAuditTrail, ppb.VerifyAuditTrailRequest())
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED
    events = call_fails(
        payments(channel, ana).ListPaymentEvents, ppb.ListPaymentEventsRequest(payment_id=str(uuid.uuid4()))
    )
    assert events.code is grpc.StatusCode.PERMISSION_DENIED


def audit_verify(database_url: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    """The command line, with the server's audit key and data dir (its checkpoint)."""
    command = [str(Path(sys.executable).parent / "cinema-grpc"), "audit", "verify"]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CINEMA_AUDIT_KEY": TEST_AUDIT_KEY,
        "CINEMA_DATA_DIR": str(settings.data_dir),
    }
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_audit_verify_command_names_the_broken_entry(
    database_url: str, server_settings: Settings, tampered: int
) -> None:
    broken = audit_verify(database_url, server_settings)
    assert broken.returncode == 1
    assert f"BROKEN at entry {tampered}" in broken.stderr


def test_the_audit_verify_command_passes_an_intact_trail(
    database_url: str,
    server_settings: Settings,
    server: RunningServer,
    channel: grpc.Channel,
    ana: Customer,
    clerk: Customer,
    sale: Sale,
) -> None:
    paid_booking(channel, ana, clerk, sale, "E3")
    assert server.run(server.server.checkpoint_audit_trail()) is not None
    intact = audit_verify(database_url, server_settings)
    assert intact.returncode == 0, intact.stderr
    assert "audit trail intact" in intact.stdout and "checkpoint at entry" in intact.stdout


@pytest.mark.usefixtures("lost_webhooks")
def test_a_declined_payment_that_succeeds_later_beside_a_new_attempt_gets_the_booking_and_the_other_is_refunded(
    channel: grpc.Channel, ana: Customer, sale: Sale, local_stripe: LocalStripe, webhook_url: str, db: Db
) -> None:
    stub = payments(channel, ana)
    held = hold(ana, sale, "E5")
    first = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id))
    declined = signed_event(
        local_stripe.webhook_secret, first.intent_id, "requires_payment_method", failure="card_declined"
    )
    assert post_webhook(webhook_url, *declined)[0] == 200
    second = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id))
    assert second.state == ppb.PAYMENT_STATE_INITIALIZED
    # The customer retried the first intent with another card after all.
    assert confirm_card(local_stripe, first.intent_id) == "succeeded"
    assert post_webhook(webhook_url, *signed_event(local_stripe.webhook_secret, first.intent_id, "succeeded"))[0] == 200
    paid = stub.GetPayment(ppb.GetPaymentRequest(payment_id=first.id))
    assert paid.state == ppb.PAYMENT_STATE_SUCCESS and paid.booking_id
    # Then the second attempt is paid too: there is no hold left for it, so it goes back.
    assert confirm_card(local_stripe, second.intent_id) == "succeeded"
    assert (
        post_webhook(webhook_url, *signed_event(local_stripe.webhook_secret, second.intent_id, "succeeded"))[0] == 200
    )
    refunded = stub.GetPayment(ppb.GetPaymentRequest(payment_id=second.id))
    assert (refunded.state, refunded.booking_id) == (ppb.PAYMENT_STATE_REFUNDED, "")
    assert count(db, "booking.bookings") == 1


def test_an_abandoned_checkout_is_cancelled_at_stripe_after_the_payment_deadline(
    server: RunningServer, channel: grpc.Channel, ana: Customer, sale: Sale, local_stripe: LocalStripe, db: Db
) -> None:
    stub = payments(channel, ana)
    held = hold(ana, sale, "E6")
    payment = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id))
    db.execute("UPDATE payment.payments SET created_at = now() - interval '2 hours' WHERE id = %s", (payment.id,))
    assert server.server is not None
    server.run(server.server.reconcile_payments())
    after = stub.GetPayment(ppb.GetPaymentRequest(payment_id=payment.id))
    assert (after.state, after.failure_reason) == (ppb.PAYMENT_STATE_FAILED, "canceled")
    assert str(stripe_client(local_stripe).v1.payment_intents.retrieve(payment.intent_id).status) == "canceled"
    assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).state == bpb.HOLD_STATE_ACTIVE


def test_totals_above_what_one_card_payment_may_take_are_refused_at_hold_and_at_payment_time(
    channel: grpc.Channel, screening: ScreeningServiceStub, ana: Customer, db: Db
) -> None:
    cinema = make_cinema(screening, "Grand")
    hall = make_hall(screening, cinema.id, "Main", LAYOUT)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=30)
    request = showtime_request(hall, make_movie(screening), start)
    del request.prices[:]
    request.prices.extend(prices(hall, 40_000_000))
    showtime = screening.CreateShowtime(request)
    sale = Sale(showtime, hall)
    too_much = call_fails(
        ana.booking.HoldSeats,
        bpb.HoldSeatsRequest(showtime_id=showtime.id, seat_ids=sale.seats("C1", "C2", "C3")),
    )
    assert (too_much.code, too_much.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AMOUNT_ABOVE_CARD_LIMIT")
    assert too_much.metadata == {"max_amount_minor": "99999999"}
    assert count(db, "booking.holds") == 0
    held = hold(ana, sale, "C1", "C2")  # 80,000,000: within the ceiling
    # A hold from before the ceiling was checked (prices frozen higher) is refused before Stripe is asked.
    db.execute("UPDATE booking.seat_claims SET amount_minor = 60000000 WHERE hold_id = %s", (held.id,))
    refused = call_fails(payments(channel, ana).CreatePayment, ppb.CreatePaymentRequest(hold_id=held.id))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AMOUNT_ABOVE_CARD_LIMIT")
    assert count(db, "payment.payments") == 0


def test_a_hold_with_a_payment_in_flight_shows_the_deadline_that_keeps_it_alive(
    channel: grpc.Channel, ana: Customer, sale: Sale, local_stripe: LocalStripe, db: Db
) -> None:
    held = hold(ana, sale, "C1")
    assert not held.HasField("payment_deadline")
    assert held.keep_until == held.expire_time  # no payment: the hold's own period is the deadline
    stub = payments(channel, ana)
    payment = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id))
    # The hold's own period runs out while the customer is at the card form.
    db.execute("UPDATE booking.holds SET expires_at = now() - interval '4 seconds' WHERE id = %s", (held.id,))

    kept = ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id))
    assert kept.state == bpb.HOLD_STATE_ACTIVE
    now = time.time()  # the server runs on this machine's clock
    assert kept.expire_time.ToDatetime().timestamp() < now  # stale: the hold's own period is over
    assert kept.payment_deadline.ToDatetime().timestamp() > now + 25 * 60  # CINEMA_PAYMENT_DEADLINE_MINUTES
    assert kept.keep_until == kept.payment_deadline  # what a client counts down
    listed = ana.booking.ListHolds(bpb.ListHoldsRequest()).holds
    assert [(h.id, h.keep_until) for h in listed] == [(held.id, kept.payment_deadline)]

    assert confirm_card(local_stripe, payment.intent_id) == "succeeded"
    wait_for(stub, payment.id, settled)
    converted = ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id))
    assert converted.state == bpb.HOLD_STATE_CONVERTED
    assert not converted.HasField("keep_until") and not converted.HasField("payment_deadline")


def intent_status(local_stripe: LocalStripe, intent_id: str) -> str:
    return str(stripe_client(local_stripe).v1.payment_intents.retrieve(intent_id).status)


def test_money_that_arrives_after_the_showtime_started_is_refunded_and_no_booking_is_made(
    channel: grpc.Channel, ana: Customer, sale: Sale, local_stripe: LocalStripe, db: Db
) -> None:
    stub = payments(channel, ana)
    held = hold(ana, sale, "D3")
    unpaid = hold(ana, sale, "D4")
    payment = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id))
    db.execute(
        "UPDATE screening.showtimes SET starts_at = now() - interval '1 minute' WHERE id = %s", (sale.showtime.id,)
    )
    late = call_fails(stub.CreatePayment, ppb.CreatePaymentRequest(hold_id=unpaid.id))
    assert (late.code, late.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SHOWTIME_ALREADY_STARTED")
    assert confirm_card(local_stripe, payment.intent_id) == "succeeded"
    after = wait_for(stub, payment.id, settled)
    assert (after.state, after.booking_id, after.refunded.amount_minor) == (ppb.PAYMENT_STATE_REFUNDED, "", 1200)
    assert after.refund_reason.startswith("the showtime had started before the payment arrived")
    assert count(db, "booking.bookings") == 0
    ended = ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id))
    assert ended.state == bpb.HOLD_STATE_RELEASED


def test_releasing_a_hold_while_its_payment_is_in_flight_cancels_the_intent_at_stripe(
    channel: grpc.Channel, ana: Customer, clerk: Customer, sale: Sale, local_stripe: LocalStripe
) -> None:
    stub = payments(channel, ana)
    released = hold(ana, sale, "E1")
    first = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=released.id))
    ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=released.id))
    forced = hold(ana, sale, "E2")
    second = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=forced.id))
    clerk.booking.ForceReleaseHold(bpb.ForceReleaseHoldRequest(hold_id=forced.id, reason="customer left"))
    for payment in (first, second):
        after = stub.GetPayment(ppb.GetPaymentRequest(payment_id=payment.id))
        assert after.state == ppb.PAYMENT_STATE_FAILED
        assert after.failure_reason.startswith("the hold ended before the card was charged")
        # The card can no longer be charged for it.
        assert intent_status(local_stripe, payment.intent_id) == "canceled"
        with pytest.raises(stripe.InvalidRequestError):
            confirm_card(local_stripe, payment.intent_id)


@pytest.mark.usefixtures("lost_webhooks")
def test_a_hold_released_after_its_card_was_charged_gets_the_money_back(
    channel: grpc.Channel, ana: Customer, sale: Sale, local_stripe: LocalStripe, db: Db
) -> None:
    stub = payments(channel, ana)
    held = hold(ana, sale, "E3")
    payment = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id))
    assert confirm_card(local_stripe, payment.intent_id) == "succeeded"
    ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id))
    after = stub.GetPayment(ppb.GetPaymentRequest(payment_id=payment.id))
    assert (after.state, after.refunded.amount_minor, after.booking_id) == (ppb.PAYMENT_STATE_REFUNDED, 1200, "")
    assert count(db, "booking.bookings") == 0


def test_reconciliation_cancels_the_intent_of_a_hold_that_ended_with_its_showtime(
    server: RunningServer,
    screening: ScreeningServiceStub,
    channel: grpc.Channel,
    ana: Customer,
    sale: Sale,
    local_stripe: LocalStripe,
) -> None:
    stub = payments(channel, ana)
    payment = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=hold(ana, sale, "E4").id))
    screening.CancelShowtime(spb.CancelShowtimeRequest(showtime_id=sale.showtime.id, reason="projector"))
    assert server.server is not None
    server.run(server.server.reconcile_payments())
    after = stub.GetPayment(ppb.GetPaymentRequest(payment_id=payment.id))
    assert after.state == ppb.PAYMENT_STATE_FAILED
    assert intent_status(local_stripe, payment.intent_id) == "canceled"
