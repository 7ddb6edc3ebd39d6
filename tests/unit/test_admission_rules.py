"""The rule that judges a genuine code at a door: which refusal wins, and the doors' window."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cinema_grpc.domain.admission.model import (
    AdmissionRules,
    DoorShowtime,
    ScanVerdict,
    TicketCode,
    TicketFacts,
    judge,
)
from cinema_grpc.domain.money import Money

START = datetime(2026, 11, 28, 19, 0, tzinfo=UTC)
RULES = AdmissionRules(admission_window=timedelta(minutes=45))
DOOR = DoorShowtime(uuid.uuid4(), START, START + timedelta(minutes=120), "Heat")
TICKET = TicketFacts(
    ticket_id=uuid.uuid4(),
    booking_id=uuid.uuid4(),
    customer_id=uuid.uuid4(),
    showtime_id=DOOR.id,
    row_label="F",
    seat_number=7,
    price=Money(1150, "EUR"),
    valid=True,
    issue=1,
    starts_at=START,
    ends_at=DOOR.ends_at,
    movie_title="Heat",
    hall_name="Main",
    cinema_name="Odeon",
    time_zone="Europe/Berlin",
)
CODE = TicketCode("0a1b2c3d", TICKET.ticket_id, DOOR.id, "F7", 1)


@pytest.mark.parametrize(
    ("at", "verdict"),
    [
        (START - timedelta(minutes=46), ScanVerdict.TOO_EARLY),
        (START - timedelta(minutes=45), None),
        (START + timedelta(minutes=119), None),
        (START + timedelta(minutes=120), ScanVerdict.ENDED),
    ],
)
def test_doors_open_the_window_before_the_start_and_close_at_the_end(at: datetime, verdict: ScanVerdict | None) -> None:
    assert judge(CODE, TICKET, DOOR, at, RULES) is verdict


def test_a_genuine_code_about_no_ticket_we_know_is_forged() -> None:
    assert judge(CODE, None, DOOR, START, RULES) is ScanVerdict.FORGED
    assert judge(replace(CODE, seat_label="F8"), TICKET, DOOR, START, RULES) is ScanVerdict.FORGED


def test_the_wrong_showtime_is_said_before_the_state_of_the_ticket() -> None:
    other_door = replace(DOOR, id=uuid.uuid4())
    assert judge(CODE, replace(TICKET, valid=False), other_door, START, RULES) is ScanVerdict.WRONG_SHOWTIME


def test_a_cancelled_ticket_is_cancelled_whatever_its_issue_or_the_time() -> None:
    cancelled = replace(TICKET, valid=False, issue=3)
    assert judge(CODE, cancelled, DOOR, START - timedelta(days=1), RULES) is ScanVerdict.CANCELLED


def test_only_the_current_issue_admits() -> None:
    assert judge(CODE, replace(TICKET, issue=2), DOOR, START, RULES) is ScanVerdict.SUPERSEDED
    assert judge(replace(CODE, issue=2), replace(TICKET, issue=2), DOOR, START, RULES) is None
