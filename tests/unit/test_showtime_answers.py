"""GetShowtime's answers kept for a moment (services.screening.ShowtimeAnswers): one read per
showtime and period, a change through this replica forgotten at once, and a read that began
before a change never kept."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from cinema.screening.v1 import screening_pb2 as pb
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.screening.model import BusyPeriod, SeatKind, Showtime, ShowtimeState
from cinema_grpc.services.screening import ShowtimeAnswers

START = datetime(2026, 12, 24, 19, 0, tzinfo=UTC)


def a_showtime(showtime_id: uuid.UUID, state: ShowtimeState = ShowtimeState.SCHEDULED) -> Showtime:
    return Showtime(
        showtime_id,
        uuid.uuid4(),
        uuid.uuid4(),
        uuid.uuid4(),
        BusyPeriod.for_screening(START, timedelta(minutes=100)),
        {SeatKind.STANDARD: Money(1200, "EUR")},
        state,
        "projector broken" if state is ShowtimeState.CANCELLED else "",
        START - timedelta(days=10),
    )


class Database:
    """The showtimes as stored, counting the reads."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, Showtime] = {}
        self.reads = 0
        self.gate: asyncio.Event | None = None

    def reader(self, showtime_id: uuid.UUID) -> Callable[[], Awaitable[Showtime]]:
        async def read() -> Showtime:
            self.reads += 1
            row = self.rows[showtime_id]
            if self.gate is not None:
                await self.gate.wait()
            return row

        return read


def test_a_showtime_is_read_once_while_it_is_kept() -> None:
    answers, db, showtime_id = ShowtimeAnswers(60), Database(), uuid.uuid4()
    db.rows[showtime_id] = a_showtime(showtime_id)

    async def run() -> list[pb.Showtime]:
        return [await answers.get(showtime_id, db.reader(showtime_id)) for _ in range(5)]

    messages = asyncio.run(run())
    assert db.reads == 1
    assert {m.id for m in messages} == {str(showtime_id)} and messages[0].state == pb.SHOWTIME_STATE_SCHEDULED


def test_a_change_through_this_replica_shows_at_once() -> None:
    answers, db, showtime_id = ShowtimeAnswers(60), Database(), uuid.uuid4()
    db.rows[showtime_id] = a_showtime(showtime_id)

    async def run() -> pb.Showtime:
        await answers.get(showtime_id, db.reader(showtime_id))
        db.rows[showtime_id] = a_showtime(showtime_id, ShowtimeState.CANCELLED)
        answered = answers.changed(db.rows[showtime_id])
        assert answered.state == pb.SHOWTIME_STATE_CANCELLED
        return await answers.get(showtime_id, db.reader(showtime_id))

    after = asyncio.run(run())
    assert after.state == pb.SHOWTIME_STATE_CANCELLED and after.cancel_reason == "projector broken"
    assert db.reads == 2


def test_a_read_that_began_before_a_change_is_answered_but_not_kept() -> None:
    answers, db, showtime_id = ShowtimeAnswers(60), Database(), uuid.uuid4()
    db.rows[showtime_id] = a_showtime(showtime_id)

    async def run() -> tuple[pb.Showtime, pb.Showtime]:
        db.gate = asyncio.Event()
        slow = asyncio.create_task(answers.get(showtime_id, db.reader(showtime_id)))
        await asyncio.sleep(0)  # the read has the old row and waits for its answer
        db.rows[showtime_id] = a_showtime(showtime_id, ShowtimeState.CANCELLED)
        answers.changed(db.rows[showtime_id])
        db.gate.set()
        old = await slow
        return old, await answers.get(showtime_id, db.reader(showtime_id))

    old, after = asyncio.run(run())
    assert old.state == pb.SHOWTIME_STATE_SCHEDULED  # what it read
    assert after.state == pb.SHOWTIME_STATE_CANCELLED  # read again, not the old answer
    assert db.reads == 2


def test_what_another_replica_changed_shows_once_the_period_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    answers, db, showtime_id = ShowtimeAnswers(1.0), Database(), uuid.uuid4()
    db.rows[showtime_id] = a_showtime(showtime_id)

    async def run() -> tuple[pb.Showtime, pb.Showtime]:
        await answers.get(showtime_id, db.reader(showtime_id))
        db.rows[showtime_id] = a_showtime(showtime_id, ShowtimeState.CANCELLED)  # not through this replica
        now[0] += 0.5
        within = await answers.get(showtime_id, db.reader(showtime_id))
        now[0] += 0.6
        return within, await answers.get(showtime_id, db.reader(showtime_id))

    within, after = asyncio.run(run())
    assert within.state == pb.SHOWTIME_STATE_SCHEDULED
    assert after.state == pb.SHOWTIME_STATE_CANCELLED
    assert db.reads == 2


def test_zero_seconds_reads_the_database_every_time() -> None:
    answers, db, showtime_id = ShowtimeAnswers(0), Database(), uuid.uuid4()
    db.rows[showtime_id] = a_showtime(showtime_id)

    async def run() -> None:
        for _ in range(3):
            await answers.get(showtime_id, db.reader(showtime_id))

    asyncio.run(run())
    assert db.reads == 3
