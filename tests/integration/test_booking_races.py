"""Double booking is impossible: many real concurrent clients against one real server and
PostgreSQL, each with its own channel."""

from __future__ import annotations

import asyncio
import random

import grpc
import psycopg
import pytest

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from tests.booking_data import Customer, Sale, customer
from tests.rpc_errors import failure

Db = psycopg.Connection[tuple[object, ...]]
CLIENTS = 200
ROUNDS = 10


@pytest.fixture
def crowd(channel: grpc.Channel, db: Db) -> list[Customer]:
    return [customer(channel, db) for _ in range(20)]


async def race(address: str, requests: list[tuple[str, bpb.HoldSeatsRequest]]) -> list[bpb.Hold | grpc.aio.AioRpcError]:
    """Sends every request at once, each from its own channel, and returns what came back."""
    # A local subchannel pool gives each channel its own TCP connection, as separate clients have.
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in requests]
    try:
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        start = asyncio.Event()

        async def one(
            ch: grpc.aio.Channel, token: str, request: bpb.HoldSeatsRequest
        ) -> bpb.Hold | grpc.aio.AioRpcError:
            await start.wait()
            try:
                return await BookingServiceStub(ch).HoldSeats(
                    request, metadata=(("authorization", f"Bearer {token}"),), timeout=60
                )
            except grpc.aio.AioRpcError as error:
                return error

        tasks = [asyncio.create_task(one(ch, token, req)) for ch, (token, req) in zip(channels, requests, strict=True)]
        await asyncio.sleep(0.05)
        start.set()
        return list(await asyncio.gather(*tasks))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


def double_claims(db: Db) -> int:
    row = db.execute(
        "SELECT count(*) FROM (SELECT showtime_id, seat_id FROM booking.seat_claims"
        " WHERE status IN ('HELD', 'SOLD') GROUP BY 1, 2 HAVING count(*) > 1) AS doubles"
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


def test_two_hundred_clients_racing_for_one_seat_leave_exactly_one_winner_every_round(
    address: str, sale: Sale, crowd: list[Customer], db: Db
) -> None:
    labels = [f"{row}{n}" for row in "BCDE" for n in range(1, 11)]
    for round_ in range(ROUNDS):
        seat = sale.seat(labels[round_])
        requests = [
            (crowd[i % len(crowd)].token, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[seat]))
            for i in range(CLIENTS)
        ]
        results = asyncio.run(race(address, requests))
        winners = [r for r in results if isinstance(r, bpb.Hold)]
        refusals = [failure(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(winners) == 1, f"round {round_}: {len(winners)} winners"
        assert len(refusals) == CLIENTS - 1
        # Every loser is told clearly: the seat is taken, or the showtime was too busy to decide.
        assert {f.reason for f in refusals} <= {"SEAT_ALREADY_TAKEN", "CONTENTION"}
        assert sum(f.reason == "SEAT_ALREADY_TAKEN" for f in refusals) >= CLIENTS // 2
        # Free the winner's hold so the per-customer hold limit does not decide later rounds.
        owner = next(c for c in crowd if c.user.id == winners[0].customer_id)
        owner.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=winners[0].id))
    assert double_claims(db) == 0
    row = db.execute("SELECT count(*) FROM booking.holds").fetchone()
    assert row == (ROUNDS,)


def test_overlapping_multi_seat_holds_never_end_partial_or_deadlocked(
    address: str, sale: Sale, crowd: list[Customer], db: Db
) -> None:
    rng = random.Random(7)
    labels = [f"{row}{n}" for row in "BC" for n in range(1, 11)]
    requests = []
    for i in range(60):
        chosen = rng.sample(labels, rng.randint(2, 4))
        requests.append(
            (
                crowd[i % len(crowd)].token,
                bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=sale.seats(*chosen)),
            )
        )
    results = asyncio.run(race(address, requests))
    winners = [r for r in results if isinstance(r, bpb.Hold)]
    refusals = [failure(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert winners, "someone must win"
    assert {f.reason for f in refusals} <= {"SEAT_ALREADY_TAKEN", "CONTENTION", "TOO_MANY_ACTIVE_HOLDS"}
    # Each winner got every seat it asked for; no seat went to two winners.
    held = [seat.seat_id for hold in winners for seat in hold.seats]
    assert len(held) == len(set(held))
    for hold, (_, request) in zip((r for r in results), requests, strict=True):
        if isinstance(hold, bpb.Hold):
            assert sorted(s.seat_id for s in hold.seats) == sorted(request.seat_ids)
    claims = db.execute("SELECT count(*) FROM booking.seat_claims WHERE status = 'HELD'").fetchone()
    assert claims == (len(held),)
    assert double_claims(db) == 0
