"""Busy periods with the cleaning buffer, free-hall choice, prices and local days."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from cinema_grpc.domain.errors import HallSuggestion
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.screening.model import (
    CLEANING_BUFFER,
    BusyPeriod,
    Cinema,
    SeatKind,
    choose_free_halls,
    price_violations,
)

NOON = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def screening(start: datetime, minutes: int = 90) -> BusyPeriod:
    return BusyPeriod.for_screening(start, timedelta(minutes=minutes))


def test_the_hall_is_busy_until_the_end_plus_the_30_minute_cleaning_buffer() -> None:
    period = screening(NOON, 90)
    assert timedelta(minutes=30) == CLEANING_BUFFER
    assert period.ends_at == NOON + timedelta(minutes=90)
    assert period.busy_until == NOON + timedelta(minutes=120)


def test_a_showtime_may_start_exactly_when_cleaning_ends() -> None:
    assert not screening(NOON, 90).overlaps(screening(NOON + timedelta(minutes=120)))


@pytest.mark.parametrize("gap_minutes", [0, 30, 119])
def test_a_showtime_starting_during_the_movie_or_the_cleaning_overlaps(gap_minutes: int) -> None:
    first = screening(NOON, 90)
    second = screening(NOON + timedelta(minutes=gap_minutes))
    assert first.overlaps(second)
    assert second.overlaps(first)


def test_a_showtime_ending_with_cleaning_before_the_next_does_not_overlap() -> None:
    later = screening(NOON)
    earlier = screening(NOON - timedelta(minutes=120), 90)
    assert not earlier.overlaps(later)
    assert screening(NOON - timedelta(minutes=119), 90).overlaps(later)


def test_free_halls_exclude_busy_small_and_requested_halls_closest_in_size_first() -> None:
    halls = [
        HallSuggestion("big", "Big", 300),
        HallSuggestion("busy", "Busy", 150),
        HallSuggestion("small", "Small", 40),
        HallSuggestion("fit", "Fit", 120),
        HallSuggestion("asked", "Asked", 100),
    ]
    chosen = choose_free_halls(halls, {"busy"}, min_seats=100, exclude_hall_id="asked")
    assert [h.hall_id for h in chosen] == ["fit", "big"]


def test_every_seat_kind_of_the_hall_needs_one_price_in_the_cinema_currency() -> None:
    kinds = {SeatKind.STANDARD, SeatKind.PREMIUM}
    ok = [(SeatKind.STANDARD, Money(1000, "EUR")), (SeatKind.PREMIUM, Money(1500, "EUR"))]
    assert price_violations(ok, kinds, "EUR").items == []
    bad = [
        (SeatKind.STANDARD, Money(1000, "USD")),
        (SeatKind.STANDARD, Money(-1, "EUR")),
    ]
    found = {(v.field, v.reason) for v in price_violations(bad, kinds, "EUR").items}
    assert found == {
        ("prices[0].price.currency_code", "CURRENCY_MISMATCH"),
        ("prices[1].kind", "DUPLICATE"),
        ("prices[1].price.amount_minor", "OUT_OF_RANGE"),
        ("prices", "MISSING_PRICE"),
    }


def test_a_local_day_follows_the_cinema_time_zone_across_daylight_saving() -> None:
    berlin = Cinema(uuid.uuid4(), "Odeon", "Europe/Berlin", "EUR", NOON)
    start, end = berlin.local_day_bounds(2027, 3, 28)  # clocks go forward: a 23-hour day
    assert start == datetime(2027, 3, 27, 23, 0, tzinfo=UTC)
    assert end - start == timedelta(hours=23)


def test_money_refuses_mixed_currencies_and_bad_codes() -> None:
    assert Money(100, "EUR") + Money(50, "EUR") == Money(150, "EUR")
    with pytest.raises(ValueError, match="cannot add"):
        Money(100, "EUR") + Money(50, "USD")
    with pytest.raises(ValueError, match="ISO 4217"):
        Money(100, "eur")
