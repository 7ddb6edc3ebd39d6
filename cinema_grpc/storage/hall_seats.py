"""The seats of a hall as a seat map shows them, kept between reads.

A seat map is a hall's current seats in layout order, each with its showtime's active claim if
any. The seats change only with the hall (a new layout, a seat taken out of or back into
service, see SqlHallRepository), and every such change updates the hall's row in the same
transaction. The row's stamp (its xmin, the transaction that last wrote it, with its
updated_at) therefore names one version of its seats: a read that finds the stamp it knows
reuses the seats it built then, and reads only the showtime's claims.

The seats are kept per engine (one database), a bounded number of halls.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from cinema_grpc.domain.booking.model import SeatState, SeatStatus
from cinema_grpc.domain.screening.model import Seat, SeatKind

# Halls kept per database; past it the oldest half is dropped.
MAX_HALLS = 512

Stamp = tuple[str, datetime]


@dataclass(frozen=True)
class HallSeats:
    stamp: Stamp
    # Each current seat in layout order, unclaimed: FREE, or OUT_OF_SERVICE.
    unclaimed: tuple[SeatStatus, ...]
    # A seat's place in ``unclaimed``, by its id as text (as claims arrive).
    places: dict[str, int]

    @classmethod
    def of(cls, stamp: Stamp, hall_id: uuid.UUID, seats: Iterable[list[Any]]) -> HallSeats:
        unclaimed = []
        places = {}
        for place, (seat_id, label, number, column, kind, in_service, reason) in enumerate(seats):
            seat = Seat(uuid.UUID(seat_id), hall_id, label, number, column, SeatKind(kind), in_service, reason)
            unclaimed.append(SeatStatus(seat, SeatState.FREE if in_service else SeatState.OUT_OF_SERVICE, None))
            places[seat_id] = place
        return cls(stamp, tuple(unclaimed), places)

    def with_claims(self, claims: Iterable[list[Any]]) -> tuple[SeatStatus, ...]:
        """The seats with these claims ([seat id, HELD or SOLD, holder, hold] each) on them;
        a claim on a seat that is not one of them (retired with an old layout) shows nowhere."""
        seats = list(self.unclaimed)
        for seat_id, status, holder, hold_id in claims:
            place = self.places.get(seat_id)
            if place is not None:
                seats[place] = SeatStatus(seats[place].seat, SeatState(status), uuid.UUID(holder), uuid.UUID(hold_id))
        return tuple(seats)


_KEPT: weakref.WeakKeyDictionary[Engine, dict[uuid.UUID, HallSeats]] = weakref.WeakKeyDictionary()


def known(engine: Engine, hall_id: uuid.UUID, stamp: Stamp) -> HallSeats | None:
    halls = _KEPT.get(engine)
    seats = halls.get(hall_id) if halls is not None else None
    return seats if seats is not None and seats.stamp == stamp else None


def keep(engine: Engine, hall_id: uuid.UUID, seats: HallSeats) -> None:
    halls = _KEPT.setdefault(engine, {})
    if len(halls) >= MAX_HALLS and hall_id not in halls:
        for oldest in list(halls)[: MAX_HALLS // 2]:
            del halls[oldest]
    halls.pop(hall_id, None)
    halls[hall_id] = seats
