"""ListPayments: every payment attempt of a booking or a hold, oldest first, page by page;
customers see their own payments only."""

from __future__ import annotations

import uuid

import grpc
import pytest

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.payment.v1 import payment_pb2 as ppb
from cinema.payment.v1.payment_pb2_grpc import PaymentServiceStub
from tests.auth_client import with_token
from tests.booking_data import Customer, Sale, hold
from tests.rpc_errors import call_fails


def payments(channel: grpc.Channel, who: Customer) -> PaymentServiceStub:
    return PaymentServiceStub(with_token(channel, who.token))


@pytest.fixture
def attempts(channel: grpc.Channel, ana: Customer, clerk: Customer, sale: Sale) -> tuple[bpb.Hold, list[ppb.Payment]]:
    """Ana's hold charged at the terminal: declined twice, then paid."""
    held = hold(ana, sale, "F1")
    terminal = payments(channel, clerk)
    charged = [
        terminal.ChargeAtTerminal(ppb.ChargeAtTerminalRequest(hold_id=held.id, payment_method=method))
        for method in ("pm_card_chargeCustomerFail", "pm_card_chargeCustomerFail", "pm_card_visa")
    ]
    assert [p.state for p in charged] == [ppb.PAYMENT_STATE_FAILED] * 2 + [ppb.PAYMENT_STATE_SUCCESS]
    return held, charged


def test_a_bookings_payments_are_every_attempt_for_its_hold_oldest_first(
    channel: grpc.Channel, clerk: Customer, attempts: tuple[bpb.Hold, list[ppb.Payment]]
) -> None:
    held, charged = attempts
    staff = payments(channel, clerk)
    by_booking = staff.ListPayments(ppb.ListPaymentsRequest(booking_id=charged[-1].booking_id))
    assert [p.id for p in by_booking.payments] == [p.id for p in charged]
    assert by_booking.next_page_token == ""
    assert [p.state for p in by_booking.payments] == [p.state for p in charged]
    assert not any(p.client_secret for p in by_booking.payments)  # the customer's only
    by_hold = staff.ListPayments(ppb.ListPaymentsRequest(hold_id=held.id))
    assert list(by_hold.payments) == list(by_booking.payments)

    seen: list[str] = []
    token = ""
    while True:
        page = staff.ListPayments(ppb.ListPaymentsRequest(hold_id=held.id, page_size=2, page_token=token))
        assert len(page.payments) <= 2
        seen += [p.id for p in page.payments]
        token = page.next_page_token
        if not token:
            break
    assert seen == [p.id for p in charged]
    other_query = call_fails(
        staff.ListPayments,
        ppb.ListPaymentsRequest(booking_id=charged[-1].booking_id, page_size=2, page_token=page_token(staff, held)),
    )
    assert other_query.fields == {"page_token": "INVALID_PAGE_TOKEN"}


def page_token(staff: PaymentServiceStub, held: bpb.Hold) -> str:
    return staff.ListPayments(ppb.ListPaymentsRequest(hold_id=held.id, page_size=2)).next_page_token


def test_customers_list_only_their_own_payments(
    channel: grpc.Channel, ana: Customer, ben: Customer, attempts: tuple[bpb.Hold, list[ppb.Payment]]
) -> None:
    held, charged = attempts
    own = payments(channel, ana).ListPayments(ppb.ListPaymentsRequest(booking_id=charged[-1].booking_id))
    assert [p.id for p in own.payments] == [p.id for p in charged]
    assert payments(channel, ben).ListPayments(ppb.ListPaymentsRequest(hold_id=held.id)).payments == []
    assert (
        payments(channel, ben).ListPayments(ppb.ListPaymentsRequest(booking_id=charged[-1].booking_id)).payments == []
    )
    anonymous = call_fails(PaymentServiceStub(channel).ListPayments, ppb.ListPaymentsRequest(hold_id=held.id))
    assert anonymous.code is grpc.StatusCode.UNAUTHENTICATED


def test_listing_payments_needs_a_booking_or_a_hold(channel: grpc.Channel, clerk: Customer) -> None:
    staff = payments(channel, clerk)
    assert call_fails(staff.ListPayments, ppb.ListPaymentsRequest()).fields == {"booking_id": "REQUIRED"}
    bad = call_fails(staff.ListPayments, ppb.ListPaymentsRequest(booking_id="nope", hold_id="1"))
    assert bad.fields == {"booking_id": "INVALID_FORMAT", "hold_id": "INVALID_FORMAT"}
    unknown = staff.ListPayments(ppb.ListPaymentsRequest(booking_id=str(uuid.uuid4())))
    assert (list(unknown.payments), unknown.next_page_token) == ([], "")
