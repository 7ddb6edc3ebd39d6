"""The selling rules: when each channel's sales close, and the limits on one customer's holds."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import pytest

from cinema_grpc.domain.booking.inventory import HoldOffer, SeatInventory
from cinema_grpc.domain.booking.model import BookingRules
from cinema_grpc.domain.booking.selling_rules import (
    check_hold_rate,
    check_on_sale,
    check_showtime_share,
    cooling_seats,
)
from cinema_grpc.domain.errors import (
    HoldRateLimited,
    OnlineSalesClosed,
    RecentlyHeldSeats,
    ShowtimeAlreadyStarted,
    TooManySeatsForShowtime,
)
from cinema_grpc.domain.screening.model import SeatKind
from tests.unit.test_seat_inventory import BEN, NOW, SEATS, SHOWTIME, seat

RULES = BookingRules(online_sales_close=timedelta(minutes=30))


def test_online_sales_close_before_the_start_and_the_counter_sells_until_it() -> None:
    start = SHOWTIME.starts_at
    check_on_sale(SHOWTIME, RULES.online_sales_close, start - timedelta(minutes=31), at_counter=False)
    with pytest.raises(OnlineSalesClosed) as closed:
        check_on_sale(SHOWTIME, RULES.online_sales_close, start - timedelta(minutes=30), at_counter=False)
    assert closed.value.metadata == {"close_time": (start - timedelta(minutes=30)).isoformat()}
    check_on_sale(SHOWTIME, RULES.online_sales_close, start - timedelta(seconds=1), at_counter=True)
    for at_counter in (True, False):
        with pytest.raises(ShowtimeAlreadyStarted):
            check_on_sale(SHOWTIME, RULES.online_sales_close, start, at_counter=at_counter)


def test_the_hold_rate_counts_the_window_and_says_when_the_oldest_leaves_it() -> None:
    rules = replace(RULES, max_holds_per_window=3, hold_rate_window=timedelta(minutes=10))
    recent = [NOW - timedelta(minutes=m) for m in (1, 2, 4, 11)]
    check_hold_rate(recent[2:], rules, NOW)
    with pytest.raises(HoldRateLimited) as limited:
        check_hold_rate(recent, rules, NOW)
    assert limited.value.retry_after_seconds == pytest.approx(6 * 60)


def test_a_showtime_share_counts_what_is_held_and_bought() -> None:
    check_showtime_share(6, 4, RULES)
    with pytest.raises(TooManySeatsForShowtime):
        check_showtime_share(6, 5, RULES)


def test_seats_cool_down_for_their_customer_after_the_hold_ended() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    ended = {a: NOW - timedelta(minutes=1), b: NOW - timedelta(minutes=6)}
    assert cooling_seats(ended, RULES, NOW) == {a: NOW + timedelta(minutes=4)}


def test_the_inventory_refuses_cooling_seats_and_the_best_available_skips_them() -> None:
    offer = HoldOffer(BEN, 0, SEATS, frozenset(), recently_ended=((seat("B3").id, NOW - timedelta(minutes=1)),))
    with pytest.raises(RecentlyHeldSeats) as cooling:
        SeatInventory(SHOWTIME.id, SHOWTIME, offer=offer).hold_seats([seat("B3").id], RULES, NOW)
    assert cooling.value.retry_after_seconds == pytest.approx(4 * 60)
    # B3+B4 would be the best block (row B is the better row); B3 is cooling, so row A is chosen.
    best = SeatInventory(SHOWTIME.id, SHOWTIME, offer=offer).hold_best_available(2, SeatKind.STANDARD, RULES, NOW)
    assert [f"{s.row_label}{s.number}" for s in best.seats] == ["A3", "A4"]
    staff = replace(offer, staff=True)
    held = SeatInventory(SHOWTIME.id, SHOWTIME, offer=staff).hold_seats([seat("B3").id], RULES, NOW)
    assert [s.seat_id for s in held.seats] == [seat("B3").id]
