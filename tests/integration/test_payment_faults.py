"""Stripe failing, slow, or a server dying between Stripe's success and our commit: clear
statuses, no double charge, and in the end a booking with its payment or the money back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.payment.v1 import payment_pb2 as ppb
from cinema.payment.v1.payment_pb2_grpc import PaymentServiceStub
from cinema_grpc.adapters.local_stripe import API_KEY, LocalStripe
from cinema_grpc.domain.payment.use_cases import Reconciled, reconcile
from cinema_grpc.monitoring import refresh_selling_gauges
from cinema_grpc.services.metrics import REGISTRY
from cinema_grpc.settings import Settings
from tests.auth_client import with_token
from tests.booking_data import Customer, Sale, hold
from tests.conftest import TEST_AUDIT_KEY, TEST_SIGNING_KEY, RunningServer
from tests.integration.test_cinemas_and_movies import count
from tests.payment_data import confirm_card, stripe_client
from tests.ports import free_port
from tests.rpc_errors import call_fails
from tests.stripe_proxy import FaultyStripe

Db = psycopg.Connection[tuple[object, ...]]
MAX_REFUND_ATTEMPTS = 3
SYNC_PER_MINUTE, SYNC_CACHE_SECONDS = 8, 1.0
ONLINE_CLOSE_MINUTES = 30


@pytest.fixture(scope="module")
def proxy(local_stripe: LocalStripe) -> Iterator[FaultyStripe]:
    faulty = FaultyStripe(local_stripe.api_base)
    yield faulty
    faulty.stop()


@pytest.fixture(scope="module")
def behind_proxy(server_settings: Settings, proxy: FaultyStripe, server: RunningServer) -> Iterator[RunningServer]:
    """A second server on the same database whose Stripe calls go through the proxy."""
    settings = server_settings.model_copy(
        update={
            "stripe_api_base": proxy.url,
            "stripe_timeout_seconds": 1.0,
            "refund_max_attempts": MAX_REFUND_ATTEMPTS,
            "sync_payment_per_minute": SYNC_PER_MINUTE,
            "sync_payment_cache_seconds": SYNC_CACHE_SECONDS,
            "online_sales_close_minutes": ONLINE_CLOSE_MINUTES,
        }
    )
    running = RunningServer(settings)
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def healed(proxy: FaultyStripe) -> Iterator[None]:
    proxy.heal()
    yield
    proxy.heal()


@pytest.fixture
def no_webhooks(local_stripe: LocalStripe, server: RunningServer) -> Iterator[None]:
    """Stripe's events go nowhere, so only reconciliation can learn the outcome."""
    local_stripe.deliver_webhooks_to("http://127.0.0.1:9/nowhere")
    yield
    assert server.server is not None
    local_stripe.deliver_webhooks_to(server.server.webhook_url)


def stub_on(server: RunningServer, who: Customer) -> tuple[grpc.Channel, PaymentServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    return channel, PaymentServiceStub(with_token(channel, who.token))


def test_a_stripe_outage_fails_the_payment_clearly_and_the_hold_stays_for_a_retry(
    behind_proxy: RunningServer, proxy: FaultyStripe, ana: Customer, sale: Sale, db: Db
) -> None:
    channel, stub = stub_on(behind_proxy, ana)
    with channel:
        held = hold(ana, sale, "C1")
        proxy.fail(r"^/v1/payment_intents$", status=500)
        failed = call_fails(stub.CreatePayment, ppb.CreatePaymentRequest(hold_id=held.id))
        assert (failed.code, failed.reason) == (grpc.StatusCode.UNAVAILABLE, "PAYMENT_PROVIDER_UNAVAILABLE")
        assert failed.retry_delay_seconds is not None
        row = db.execute("SELECT state, failure_reason FROM payment.payments WHERE hold_id = %s", (held.id,)).fetchone()
        assert row == ("FAILED", "payment provider unavailable")
        assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).state == bpb.HOLD_STATE_ACTIVE
        proxy.heal()
        retried = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id))
        assert retried.state == ppb.PAYMENT_STATE_INITIALIZED and retried.intent_id


def test_a_slow_stripe_is_retried_a_bounded_number_of_times_with_one_idempotency_key(
    behind_proxy: RunningServer, proxy: FaultyStripe, ana: Customer, sale: Sale, db: Db
) -> None:
    channel, stub = stub_on(behind_proxy, ana)
    with channel:
        held = hold(ana, sale, "C6")
        proxy.fail(r"^/v1/payment_intents$", delay=3)  # longer than the server's 1 s Stripe timeout
        started = time.monotonic()
        failed = call_fails(stub.CreatePayment, ppb.CreatePaymentRequest(hold_id=held.id))
        elapsed = time.monotonic() - started
        assert (failed.code, failed.reason) == (grpc.StatusCode.UNAVAILABLE, "PAYMENT_PROVIDER_UNAVAILABLE")
        creates = [r for r in proxy.requests if r[:2] == ("POST", "/v1/payment_intents")]
        # One call and two retries, no more, all with one key: Stripe makes one PaymentIntent of them.
        assert len(creates) == 3
        assert len({key for _, _, key in creates}) == 1 and creates[0][2]
        assert elapsed < 3 * 1.0 + 5, "three timed-out attempts and their back-off, not more"
        assert count(db, "payment.payments") == 1
        assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).state == bpb.HOLD_STATE_ACTIVE


@pytest.mark.usefixtures("no_webhooks")
def test_a_stripe_timeout_at_confirmation_is_unavailable_and_reconciliation_settles_it(
    behind_proxy: RunningServer,
    proxy: FaultyStripe,
    ana: Customer,
    clerk: Customer,
    sale: Sale,
    local_stripe: LocalStripe,
    db: Db,
) -> None:
    channel, terminal = stub_on(behind_proxy, clerk)
    with channel:
        held = hold(ana, sale, "C2")
        slow = proxy.fail(r"/confirm$", delay=3)
        failed = call_fails(
            terminal.ChargeAtTerminal, ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method="pm_card_visa")
        )
        assert (failed.code, failed.reason) == (grpc.StatusCode.UNAVAILABLE, "PAYMENT_PROVIDER_UNAVAILABLE")
        assert slow.hits >= 1
        row = db.execute("SELECT id, state, intent_id FROM payment.payments WHERE hold_id = %s", (held.id,)).fetchone()
        assert row is not None and row[1] == "INITIALIZED"
        assert str(stripe_client(local_stripe).v1.payment_intents.retrieve(str(row[2])).status) == "succeeded"
        proxy.heal()
        assert behind_proxy.server is not None
        behind_proxy.run(behind_proxy.server.reconcile_payments())
        after = terminal.GetPayment(ppb.GetPaymentRequest(payment_id=str(row[0])))
        assert after.state == ppb.PAYMENT_STATE_SUCCESS and after.booking_id
        assert count(db, "booking.bookings") == 1


def serve_process(
    database_url: str, local_stripe: LocalStripe, api_base: str, port: int, log: Path, *, reconcile_every: float
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CINEMA_GRPC_PORT": str(port),
        "CINEMA_WEBHOOK_PORT": "0",
        "CINEMA_METRICS_PORT": "0",
        "CINEMA_TOKEN_SIGNING_KEY": TEST_SIGNING_KEY,
        "CINEMA_AUDIT_KEY": TEST_AUDIT_KEY,
        "CINEMA_DATA_DIR": str(log.parent / f"data-{port}"),
        "CINEMA_STRIPE_SECRET_KEY": API_KEY,
        "CINEMA_STRIPE_WEBHOOK_SECRET": local_stripe.webhook_secret,
        "CINEMA_STRIPE_API_BASE": api_base,
        "CINEMA_RECONCILE_INTERVAL_SECONDS": str(reconcile_every),
        "CINEMA_RECONCILE_AFTER_SECONDS": "0",
        "CINEMA_SWEEP_INTERVAL_SECONDS": "3600",
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "cinema-grpc"), "serve"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
    return process


@pytest.mark.usefixtures("no_webhooks")
def test_a_server_killed_between_stripe_success_and_its_commit_ends_with_booking_and_payment(
    database_url: str,
    proxy: FaultyStripe,
    local_stripe: LocalStripe,
    ana: Customer,
    clerk: Customer,
    sale: Sale,
    db: Db,
    tmp_path: Path,
) -> None:
    port = free_port()
    # The first server would reconcile the payment itself; it must die before it can.
    first = serve_process(database_url, local_stripe, proxy.url, port, tmp_path / "server.log", reconcile_every=3600)
    held = hold(ana, sale, "C3")
    proxy.fail(r"/confirm$", delay=30)
    outcome: list[object] = []

    def charge() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            terminal = PaymentServiceStub(with_token(channel, clerk.token))
            try:
                outcome.append(
                    terminal.ChargeAtTerminal(
                        ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method="pm_card_visa")
                    )
                )
            except grpc.RpcError as error:
                outcome.append(error.code())  # type: ignore[attr-defined]

    caller = threading.Thread(target=charge)
    caller.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not proxy.faults[0].hits:
        time.sleep(0.05)
    assert proxy.faults[0].hits, "the confirmation never reached Stripe"
    # Stripe has confirmed; the server is waiting for the answer.
    while True:
        intent = db.execute("SELECT intent_id FROM payment.payments WHERE hold_id = %s", (held.id,)).fetchone()
        retrieve = stripe_client(local_stripe).v1.payment_intents.retrieve
        if intent is not None and intent[0] is not None and str(retrieve(str(intent[0])).status) == "succeeded":
            break
        assert time.monotonic() < deadline, "Stripe never confirmed the payment"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    caller.join(10)
    assert outcome == [grpc.StatusCode.UNAVAILABLE]
    row = db.execute("SELECT id, state, intent_id FROM payment.payments WHERE hold_id = %s", (held.id,)).fetchone()
    assert row is not None and row[1] == "INITIALIZED"
    assert str(stripe_client(local_stripe).v1.payment_intents.retrieve(str(row[2])).status) == "succeeded"

    proxy.heal()
    second = serve_process(database_url, local_stripe, proxy.url, port, tmp_path / "server.log", reconcile_every=0.5)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = db.execute("SELECT state, booking_id FROM payment.payments WHERE id = %s", (row[0],)).fetchone()
            if state is not None and state[0] != "INITIALIZED":
                break
            time.sleep(0.2)
        # Money taken means a ticket exists (or the money went back) - never one without the other.
        assert state is not None and state[0] == "SUCCESS" and state[1] is not None
        booking = ana.booking.GetBooking(bpb.GetBookingRequest(booking_id=str(state[1])))
        assert booking.state == bpb.BOOKING_STATE_CONFIRMED and len(booking.tickets) == 1
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0


def refunds_sent(proxy: FaultyStripe) -> int:
    return sum(1 for method, path, _ in proxy.requests if (method, path) == ("POST", "/v1/refunds"))


def audit_kinds(db: Db, payment_id: str) -> list[str]:
    return [
        str(r[0])
        for r in db.execute("SELECT kind FROM payment.audit_log WHERE payment_id = %s ORDER BY sequence", (payment_id,))
    ]


def make_due(db: Db, payment_id: str) -> None:
    """Brings the next try of the payment's pending refund forward to now."""
    db.execute("UPDATE payment.refunds SET next_attempt_at = now() WHERE payment_id = %s", (payment_id,))


def test_a_refund_stripe_fails_to_answer_stays_pending_visibly_and_is_retried_with_backoff_until_it_goes_through(
    behind_proxy: RunningServer, proxy: FaultyStripe, ana: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    channel, terminal = stub_on(behind_proxy, clerk)
    assert behind_proxy.server is not None
    with channel:
        held = hold(ana, sale, "C4")
        paid = terminal.ChargeAtTerminal(ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method="pm_card_visa"))
        proxy.fail(r"^/v1/refunds$", status=502)
        asked = terminal.RefundPayment(ppb.RefundPaymentRequest(payment_id=paid.id, reason="customer complaint"))
        assert asked.state == ppb.PAYMENT_STATE_SUCCESS
        assert (asked.refund_pending.amount_minor, asked.refunded.amount_minor) == (1200, 0)
        row = db.execute(
            "SELECT state, attempts, last_error, next_attempt_at - now() FROM payment.refunds WHERE payment_id = %s",
            (paid.id,),
        ).fetchone()
        assert row is not None and row[0] == "PENDING" and row[1] == 1 and "HTTP 502" in str(row[2])
        # The next try waits (30 s after the first failure, doubling after each one).
        assert timedelta(seconds=20) < row[3] <= timedelta(seconds=30)  # type: ignore[operator]
        sent = refunds_sent(proxy)
        behind_proxy.run(behind_proxy.server.reconcile_payments())
        assert refunds_sent(proxy) == sent, "a refund that is not due yet is not asked again"
        make_due(db, paid.id)
        behind_proxy.run(behind_proxy.server.reconcile_payments())  # Stripe still failing
        assert refunds_sent(proxy) > sent
        assert terminal.GetPayment(ppb.GetPaymentRequest(payment_id=paid.id)).refund_pending.amount_minor == 1200
        row = db.execute(
            "SELECT attempts, next_attempt_at - now() FROM payment.refunds WHERE payment_id = %s", (paid.id,)
        ).fetchone()
        assert row is not None and row[0] == 2 and timedelta(seconds=50) < row[1] <= timedelta(seconds=60)  # type: ignore[operator]
        proxy.heal()
        make_due(db, paid.id)
        behind_proxy.run(behind_proxy.server.reconcile_payments())
        done = terminal.GetPayment(ppb.GetPaymentRequest(payment_id=paid.id))
        assert (done.state, done.refunded.amount_minor, done.refund_pending.amount_minor) == (
            ppb.PAYMENT_STATE_REFUNDED,
            1200,
            0,
        )
        kinds = audit_kinds(db, paid.id)
        # The first passing failure is in the trail, the retries only on the refund row.
        assert kinds.count("refund_failed") == 1 and kinds[-1] == "refunded"


def test_a_refund_stripe_refuses_for_good_fails_at_once_with_its_reason_and_alerts_staff(
    behind_proxy: RunningServer, proxy: FaultyStripe, ana: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    channel, terminal = stub_on(behind_proxy, clerk)
    assert behind_proxy.server is not None
    with channel:
        held = hold(ana, sale, "C5")
        paid = terminal.ChargeAtTerminal(ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method="pm_card_visa"))
        proxy.fail(r"^/v1/refunds$", status=400, error_type="invalid_request_error", code="charge_disputed")
        asked = terminal.RefundPayment(ppb.RefundPaymentRequest(payment_id=paid.id, reason="customer complaint"))
        assert (asked.state, asked.refund_pending.amount_minor, asked.refunded.amount_minor) == (
            ppb.PAYMENT_STATE_SUCCESS,
            0,
            0,
        )
        assert refunds_sent(proxy) == 1, "a refusal is not retried"
        row = db.execute("SELECT state, attempts, last_error FROM payment.refunds WHERE payment_id = %s", (paid.id,))
        assert row.fetchall() == [
            ("FAILED", 1, "Stripe refused the request: HTTP 400, charge_disputed: injected failure")
        ]
        # The booking was cancelled with the full refund; reconciliation neither retries the
        # refused refund nor asks for a new one for the cancelled booking.
        make_due(db, paid.id)
        behind_proxy.run(behind_proxy.server.reconcile_payments())
        behind_proxy.run(behind_proxy.server.reconcile_payments())
        assert refunds_sent(proxy) == 1
        assert count(db, "payment.refunds") == 1
        assert audit_kinds(db, paid.id)[-2:] == ["refund_requested", "refund_refused"]
        behind_proxy.run(refresh_selling_gauges(behind_proxy.server.database.engine))
        assert REGISTRY.get_sample_value("cinema_refunds_open", {"state": "FAILED"}) == 1
        assert REGISTRY.get_sample_value("cinema_refunds_open", {"state": "PENDING"}) == 0


def test_a_refund_that_keeps_failing_is_given_up_after_the_configured_tries(
    behind_proxy: RunningServer, proxy: FaultyStripe, ana: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    channel, terminal = stub_on(behind_proxy, clerk)
    assert behind_proxy.server is not None
    with channel:
        held = hold(ana, sale, "C7")
        paid = terminal.ChargeAtTerminal(ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method="pm_card_visa"))
        proxy.fail(r"^/v1/refunds$", status=503)
        terminal.RefundPayment(ppb.RefundPaymentRequest(payment_id=paid.id, reason="customer complaint"))
        for _ in range(MAX_REFUND_ATTEMPTS - 1):
            make_due(db, paid.id)
            behind_proxy.run(behind_proxy.server.reconcile_payments())
        row = db.execute(
            "SELECT state, attempts, last_error FROM payment.refunds WHERE payment_id = %s", (paid.id,)
        ).fetchone()
        assert row is not None and row[:2] == ("FAILED", MAX_REFUND_ATTEMPTS)
        assert str(row[2]).startswith(f"gave up after {MAX_REFUND_ATTEMPTS} tries: Stripe did not answer properly")
        kinds = audit_kinds(db, paid.id)
        assert (kinds.count("refund_failed"), kinds.count("refund_refused")) == (1, 1)


def test_a_payment_stripe_refuses_for_good_fails_with_the_reason_and_is_not_retried(
    behind_proxy: RunningServer, proxy: FaultyStripe, ana: Customer, sale: Sale, db: Db
) -> None:
    channel, stub = stub_on(behind_proxy, ana)
    with channel:
        held = hold(ana, sale, "D1")
        proxy.fail(r"^/v1/payment_intents$", status=400, error_type="invalid_request_error", code="amount_too_large")
        failed = call_fails(stub.CreatePayment, ppb.CreatePaymentRequest(hold_id=held.id))
        assert (failed.code, failed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_REFUSED_BY_PROVIDER")
        assert failed.retry_delay_seconds is None
        assert "amount_too_large" in failed.message
        assert sum(1 for r in proxy.requests if r[:2] == ("POST", "/v1/payment_intents")) == 1
        row = db.execute("SELECT state, failure_reason FROM payment.payments WHERE hold_id = %s", (held.id,)).fetchone()
        assert row is not None and row[0] == "FAILED" and "amount_too_large" in str(row[1])
        assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).state == bpb.HOLD_STATE_ACTIVE


@pytest.mark.usefixtures("no_webhooks")
def test_a_payment_stripe_cannot_answer_for_does_not_starve_the_reconciliation_queue(
    behind_proxy: RunningServer,
    proxy: FaultyStripe,
    ana: Customer,
    ben: Customer,
    sale: Sale,
    local_stripe: LocalStripe,
    db: Db,
) -> None:
    srv = behind_proxy.server
    assert srv is not None
    channel, ana_pays = stub_on(behind_proxy, ana)
    other, ben_pays = stub_on(behind_proxy, ben)
    with channel, other:
        stuck = ana_pays.CreatePayment(ppb.CreatePaymentRequest(hold_id=hold(ana, sale, "D2").id))
        paid = ben_pays.CreatePayment(ppb.CreatePaymentRequest(hold_id=hold(ben, sale, "D3").id))
        assert confirm_card(local_stripe, paid.intent_id) == "succeeded"
        proxy.fail(rf"^/v1/payment_intents/{stuck.intent_id}$", status=500)

        def one_at_a_time() -> Coroutine[Any, Any, Reconciled]:
            return reconcile(srv.unit_of_work, srv.gateway, srv.clock, srv.settings.payment_rules(), batch=1)

        behind_proxy.run(one_at_a_time())  # the older one, which Stripe does not answer for
        row = db.execute(
            "SELECT state, check_failures, next_check_at - now() FROM payment.payments WHERE id = %s", (stuck.id,)
        ).fetchone()
        assert row is not None and row[:2] == ("INITIALIZED", 1) and row[2] > timedelta(seconds=20)  # type: ignore[operator]
        behind_proxy.run(one_at_a_time())
        after = ben_pays.GetPayment(ppb.GetPaymentRequest(payment_id=paid.id))
        assert after.state == ppb.PAYMENT_STATE_SUCCESS and after.booking_id


def intent_reads(proxy: FaultyStripe, intent_id: str) -> int:
    return sum(1 for method, path, _ in proxy.requests if (method, path) == ("GET", f"/v1/payment_intents/{intent_id}"))


@pytest.mark.usefixtures("no_webhooks")
def test_sync_payment_asks_stripe_about_a_payment_at_most_once_per_cache_period(
    behind_proxy: RunningServer, proxy: FaultyStripe, ana: Customer, sale: Sale, local_stripe: LocalStripe
) -> None:
    channel, stub = stub_on(behind_proxy, ana)
    with channel:
        payment = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=hold(ana, sale, "D4").id))
        # The server asks Stripe, and starts the period, between these two moments.
        before_first = time.monotonic()
        synced = [stub.SyncPayment(ppb.SyncPaymentRequest(payment_id=payment.id)).state]
        after_first = time.monotonic()
        synced += [stub.SyncPayment(ppb.SyncPaymentRequest(payment_id=payment.id)).state for _ in range(4)]
        assert synced == [ppb.PAYMENT_STATE_INITIALIZED] * 5
        assert intent_reads(proxy, payment.intent_id) == 1
        assert confirm_card(local_stripe, payment.intent_id) == "succeeded"
        if time.monotonic() - before_first < SYNC_CACHE_SECONDS / 2:
            # Well within the period the last retrieve still answers.
            assert (
                stub.SyncPayment(ppb.SyncPaymentRequest(payment_id=payment.id)).state == ppb.PAYMENT_STATE_INITIALIZED
            )
            assert intent_reads(proxy, payment.intent_id) == 1
        time.sleep(max(0.0, after_first + SYNC_CACHE_SECONDS - time.monotonic()) + 0.05)
        paid = stub.SyncPayment(ppb.SyncPaymentRequest(payment_id=payment.id))
        assert paid.state == ppb.PAYMENT_STATE_SUCCESS and paid.booking_id
        assert intent_reads(proxy, payment.intent_id) == 2


def test_sync_payment_is_rate_limited_per_caller_with_retry_info(
    behind_proxy: RunningServer, ana: Customer, ben: Customer, sale: Sale
) -> None:
    channel, ana_pays = stub_on(behind_proxy, ana)
    other, ben_pays = stub_on(behind_proxy, ben)
    with channel, other:
        payment = ben_pays.CreatePayment(ppb.CreatePaymentRequest(hold_id=hold(ben, sale, "D5").id))
        started = time.monotonic()
        for _ in range(SYNC_PER_MINUTE):
            ben_pays.SyncPayment(ppb.SyncPaymentRequest(payment_id=payment.id))
        refused = call_fails(ben_pays.SyncPayment, ppb.SyncPaymentRequest(payment_id=payment.id))
        took = time.monotonic() - started
        assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SYNC_RATE_LIMITED")
        assert refused.metadata["limit"] == f"{SYNC_PER_MINUTE} per minute"
        # One call's worth of the minute's budget comes back every 60/8 = 7.5 s, counted from
        # the first call.
        back_in = 60 / SYNC_PER_MINUTE
        assert refused.retry_delay_seconds is not None
        assert back_in - took - 0.5 < refused.retry_delay_seconds <= back_in, (refused.retry_delay_seconds, took)
        # Another caller has a budget of their own (and a payment that is not theirs stays hidden).
        hidden = call_fails(ana_pays.SyncPayment, ppb.SyncPaymentRequest(payment_id=payment.id))
        assert hidden.reason == "PAYMENT_NOT_FOUND"


def test_online_sales_close_before_the_start_while_the_box_office_sells_until_it(
    behind_proxy: RunningServer, ana: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    channel, ana_pays = stub_on(behind_proxy, ana)
    other, terminal = stub_on(behind_proxy, clerk)
    with channel, other:
        ana_booking = BookingServiceStub(with_token(channel, ana.token))
        clerk_booking = BookingServiceStub(with_token(other, clerk.token))
        held = ana_booking.HoldSeats(bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[sale.seat("F1")]))
        # 20 minutes before the start: online sales closed 10 minutes ago.
        db.execute(
            "UPDATE screening.showtimes SET starts_at = now() + interval '20 minutes' WHERE id = %s",
            (sale.showtime.id,),
        )
        for call, request in (
            (ana_booking.HoldSeats, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[sale.seat("F2")])),
            (ana_booking.ExtendHold, bpb.ExtendHoldRequest(hold_id=held.id)),
            (ana_pays.CreatePayment, ppb.CreatePaymentRequest(hold_id=held.id)),
        ):
            closed = call_fails(call, request)
            assert (closed.code, closed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ONLINE_SALES_CLOSED")
            assert "close_time" in closed.metadata
        assert count(db, "payment.payments") == 0
        # The box office holds, extends and charges until the start.
        assert (
            clerk_booking.HoldSeats(
                bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[sale.seat("F3")])
            ).state
            == bpb.HOLD_STATE_ACTIVE
        )
        assert clerk_booking.ExtendHold(bpb.ExtendHoldRequest(hold_id=held.id)).extensions_left == 1
        paid = terminal.ChargeAtTerminal(ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method="pm_card_visa"))
        assert paid.state == ppb.PAYMENT_STATE_SUCCESS and paid.booking_id


def test_a_terminal_confirmation_stripe_refuses_for_good_fails_the_payment_and_keeps_the_hold(
    behind_proxy: RunningServer, proxy: FaultyStripe, ana: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    channel, terminal = stub_on(behind_proxy, clerk)
    with channel:
        held = hold(ana, sale, "D6")
        proxy.fail(r"/confirm$", status=400, error_type="invalid_request_error", code="payment_intent_unexpected_state")
        refused = call_fails(
            terminal.ChargeAtTerminal, ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method="pm_card_visa")
        )
        assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_REFUSED_BY_PROVIDER")
        row = db.execute("SELECT state, failure_reason FROM payment.payments WHERE hold_id = %s", (held.id,)).fetchone()
        assert row is not None and row[0] == "FAILED" and "payment_intent_unexpected_state" in str(row[1])
        assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).state == bpb.HOLD_STATE_ACTIVE
