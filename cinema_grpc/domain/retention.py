"""How long records that only serve a while are kept, and the job that deletes older ones.

Kept for good, whatever their age: bookings and their tickets (reports, admission), payments,
refunds and the audit trail, and every hold a payment or a booking refers to. Pruned: holds that
ended without a sale (released or expired, with no payment) with their seat claims, and the
idempotency records of requests (a retry comes within minutes, not weeks). Sign-in records are
pruned by the identity job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from cinema_grpc.domain.ports import Clock, UnitOfWork


@dataclass(frozen=True)
class RetentionRules:
    ended_holds: timedelta = timedelta(days=30)
    request_log: timedelta = timedelta(days=7)


@dataclass(frozen=True)
class Pruned:
    holds: int = 0
    requests: int = 0


async def prune_old_records(
    unit_of_work: Callable[[], UnitOfWork], clock: Clock, rules: RetentionRules, batch: int = 2000
) -> Pruned:
    """Deletes in batches of ``batch`` rows, one short transaction each."""
    now = clock.now()
    holds = requests = 0
    while True:
        async with unit_of_work() as uow:
            done = await uow.booking.prune_ended_holds(now - rules.ended_holds, batch)
            await uow.commit()
        holds += done
        if done < batch:
            break
    while True:
        async with unit_of_work() as uow:
            done = await uow.requests.prune(now - rules.request_log, batch)
            await uow.commit()
        requests += done
        if done < batch:
            break
    return Pruned(holds, requests)
