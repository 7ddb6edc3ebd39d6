"""When a showtime's seats may be sold through which channel, and the limits on how one customer
may hold seats: pure rules the inventory and the payment use cases apply. Staff selling at the
box office are not bound by the customer limits."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta

from cinema_grpc.domain.booking.model import BookingRules
from cinema_grpc.domain.errors import (
    HoldRateLimited,
    OnlineSalesClosed,
    RecentlyHeldSeats,
    ShowtimeAlreadyStarted,
    TooManySeatsForShowtime,
)
from cinema_grpc.domain.screening.model import Showtime


def sales_close(showtime: Showtime, online_close: timedelta, *, at_counter: bool) -> datetime:
    """The box office sells until the showtime starts; online sales close ``online_close`` earlier."""
    return showtime.starts_at if at_counter else showtime.starts_at - online_close


def check_on_sale(showtime: Showtime, online_close: timedelta, now: datetime, *, at_counter: bool) -> None:
    """Holding, extending and starting a payment: refused once the channel's sales have closed
    (``online_close``: how long before the start online sales close)."""
    subject = f"showtimes/{showtime.id}"
    if showtime.has_started(now):
        raise ShowtimeAlreadyStarted(f"showtime {showtime.id} has started", subject=subject)
    closes = sales_close(showtime, online_close, at_counter=at_counter)
    if now >= closes:
        raise OnlineSalesClosed(
            f"online sales of this showtime closed at {closes.isoformat()}; the box office sells until it starts",
            subject=subject,
            metadata={"close_time": closes.isoformat()},
        )


def check_hold_rate(recent_holds: Sequence[datetime], rules: BookingRules, now: datetime) -> None:
    """``recent_holds``: when the customer's latest holds started, newest first (at least the
    last ``rules.max_holds_per_window`` within the window)."""
    window_start = now - rules.hold_rate_window
    counted = [moment for moment in recent_holds if moment > window_start]
    if len(counted) >= rules.max_holds_per_window:
        # A hold may start again once the oldest of the counted ones leaves the window.
        oldest = sorted(counted, reverse=True)[rules.max_holds_per_window - 1]
        minutes = rules.hold_rate_window.total_seconds() / 60
        raise HoldRateLimited(
            f"at most {rules.max_holds_per_window} holds per customer in {minutes:g} minutes",
            f"{rules.max_holds_per_window} per {minutes:g} minutes",
            (oldest + rules.hold_rate_window - now).total_seconds(),
        )


def check_showtime_share(already: int, adding: int, rules: BookingRules) -> None:
    """``already``: seats the customer holds (unexpired) or bought for the showtime."""
    if already + adding > rules.max_seats_per_showtime:
        raise TooManySeatsForShowtime(
            f"at most {rules.max_seats_per_showtime} seats of one showtime per customer, held and bought "
            f"together ({already} already)",
            metadata={"limit": str(rules.max_seats_per_showtime), "already": str(already)},
        )


def cooling_seats(
    recently_ended: Mapping[uuid.UUID, datetime], rules: BookingRules, now: datetime
) -> dict[uuid.UUID, datetime]:
    """The seats the customer may not hold again yet, with the moment they may: those of their
    holds that ended (``recently_ended``: seat -> when its latest hold of them ended) less than
    ``rules.rehold_cooldown`` ago."""
    return {
        seat_id: ended + rules.rehold_cooldown
        for seat_id, ended in recently_ended.items()
        if ended + rules.rehold_cooldown > now
    }


def check_cooldown(
    requested: Collection[uuid.UUID],
    cooling: Mapping[uuid.UUID, datetime],
    labels: Mapping[uuid.UUID, str],
    now: datetime,
) -> None:
    blocked = {seat_id: cooling[seat_id] for seat_id in requested if seat_id in cooling}
    if blocked:
        until = max(blocked.values())
        raise RecentlyHeldSeats(
            {str(seat_id): labels.get(seat_id, str(seat_id)) for seat_id in blocked},
            (until - now).total_seconds(),
        )
