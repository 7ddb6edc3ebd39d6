"""The sweeper's transactions take the next batch of the showtimes listed as soon as their own
has committed: a slow transaction does not hold the other back, and every showtime listed is
expired once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace, TracebackType
from typing import Any

from cinema_grpc.domain.booking import use_cases as uc


class Clock:
    def now(self) -> datetime:
        return datetime(2026, 12, 1, 12, tzinfo=UTC)


class Sweep:
    """Showtimes with lapsed holds; the transaction that commits ``slow`` waits until every other
    showtime is done."""

    def __init__(self, count: int) -> None:
        self.due = [uuid.uuid4() for _ in range(count)]
        self.slow = self.due[0]
        self.expired: list[uuid.UUID] = []
        self.others_done = asyncio.Event()

    def unit_of_work(self) -> Any:
        sweep = self

        class Inventory:
            def __init__(self, showtime_id: uuid.UUID) -> None:
                self.showtime_id = showtime_id
                self.changes: list[object] = []

            def expire_lapsed(self, now: datetime) -> None:
                self.changes = [object(), object()]

        class UnitOfWork:
            def __init__(self) -> None:
                self.locked: list[Inventory] = []
                self.booking = SimpleNamespace(showtimes_with_expired_holds=self.listed)
                self.inventories = SimpleNamespace(try_lock_lapsed=self.try_lock_lapsed)

            async def __aenter__(self) -> UnitOfWork:
                return self

            async def __aexit__(
                self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
            ) -> None:
                return None

            async def listed(self, now: datetime, limit: int) -> list[uuid.UUID]:
                return [s for s in sweep.due if s not in sweep.expired][:limit]

            async def try_lock_lapsed(self, showtime_ids: list[uuid.UUID]) -> list[Inventory]:
                self.locked = [Inventory(s) for s in showtime_ids]
                return self.locked

            async def commit(self) -> None:
                ids = [inventory.showtime_id for inventory in self.locked]
                if sweep.slow in ids:
                    await asyncio.wait_for(sweep.others_done.wait(), 5)
                sweep.expired += ids
                if len(sweep.expired) == len(sweep.due) - 1 and sweep.slow not in sweep.expired:
                    sweep.others_done.set()

        return UnitOfWork()


def test_a_slow_batch_does_not_hold_back_the_others_and_each_showtime_is_expired_once() -> None:
    count = 6  # listed together: batch 1, 2 transactions at a time, 4 rounds listed at once

    async def scenario() -> tuple[Sweep, int]:
        sweep = Sweep(count)
        freed = await uc.release_expired_holds(sweep.unit_of_work, Clock(), batch=1, parallel=2)
        return sweep, freed

    sweep, freed = asyncio.run(scenario())
    assert sorted(sweep.expired) == sorted(sweep.due)
    assert sweep.expired[-1] == sweep.slow
    assert freed == 2 * count
