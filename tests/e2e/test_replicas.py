"""Two server processes on one PostgreSQL and one Redis, as replicas behind a load balancer:
a seat race across both has one winner, a hold on one reaches a watcher on the other, and
expired holds are released by the replicas' sweepers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.local_stripe import API_KEY, LocalStripe
from tests.auth_client import sign_in, with_token
from tests.booking_data import open_sale
from tests.conftest import TEST_AUDIT_KEY
from tests.integration.test_booking_races import double_claims, race
from tests.ports import free_port
from tests.rpc_errors import failure
from tests.stream_reader import StreamReader

pytestmark = pytest.mark.e2e
Db = psycopg.Connection[tuple[object, ...]]
BIN = Path(sys.executable).parent


@pytest.fixture
def replicas(
    database_url: str, redis_url: str, tmp_path: Path, db: Db, local_stripe: LocalStripe
) -> Iterator[list[str]]:
    processes = []
    addresses = []
    for name in ("a", "b"):
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CINEMA_DATA_DIR": str(tmp_path / name),
            "CINEMA_GRPC_PORT": str(port),
            "CINEMA_TOKEN_SIGNING_KEY": "replica-test-signing-key-0123456789abcdef",
            # Like the token key, one audit key for every replica (and the session's database
            # holds one audit chain).
            "CINEMA_AUDIT_KEY": TEST_AUDIT_KEY,
            "CINEMA_SWEEP_INTERVAL_SECONDS": "0.5",
            "CINEMA_SHUTDOWN_GRACE_SECONDS": "3",
            "CINEMA_WEBHOOK_PORT": "0",
            "CINEMA_METRICS_PORT": "0",
            "CINEMA_REGISTRATIONS_PER_ADDRESS": "1000",
            # The session's Stripe test server: no two of its own started at the same moment.
            "CINEMA_STRIPE_SECRET_KEY": API_KEY,
            "CINEMA_STRIPE_WEBHOOK_SECRET": local_stripe.webhook_secret,
            "CINEMA_STRIPE_API_BASE": local_stripe.api_base,
        }
        log = (tmp_path / f"{name}.log").open("w")
        processes.append(subprocess.Popen([str(BIN / "cinema-grpc"), "serve"], env=env, stderr=log, stdout=log))
        addresses.append(f"127.0.0.1:{port}")
    try:
        for address in addresses:
            with grpc.insecure_channel(address) as channel:
                grpc.channel_ready_future(channel).result(timeout=60)
        yield addresses
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            assert process.wait(30) == 0


def test_replicas_share_seats_events_and_expiry(replicas: list[str], db: Db) -> None:
    a, b = (grpc.insecure_channel(address) for address in replicas)
    try:
        _, admin = sign_in(a, db, "ADMIN")
        sale = open_sale(ScreeningServiceStub(with_token(a, admin.access_token)))
        crowd = [sign_in(a, db)[1].access_token for _ in range(10)]

        # A watcher on replica B sees what happens on replica A.
        reader = StreamReader(
            BookingServiceStub(b).WatchSeatAvailability(bpb.WatchSeatAvailabilityRequest(showtime_id=sale.showtime.id))
        )
        version = reader.next().snapshot.version

        seat = sale.seat("C5")
        request = bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[seat])

        async def both() -> list[object]:
            return [
                *await asyncio.gather(
                    race(replicas[0], [(crowd[i % 10], request) for i in range(50)]),
                    race(replicas[1], [(crowd[i % 10], request) for i in range(50)]),
                )
            ]

        results = [r for batch in asyncio.run(both()) for r in batch]  # type: ignore[attr-defined]
        winners = [r for r in results if isinstance(r, bpb.Hold)]
        assert len(winners) == 1
        assert {failure(r).reason for r in results if not isinstance(r, bpb.Hold)} <= {
            "SEAT_ALREADY_TAKEN",
            "CONTENTION",
        }
        assert double_claims(db) == 0

        event = reader.next(timeout=10)
        assert event.changes.version == version + 1
        assert [(c.seat_id, c.state) for c in event.changes.changes] == [(seat, bpb.SEAT_STATE_HELD)]

        # The hold expires; a replica's sweeper frees the seat and B's watcher hears of it.
        db.execute("UPDATE booking.holds SET expires_at = now() - interval '1 second' WHERE id = %s", (winners[0].id,))
        db.execute(
            "UPDATE booking.seat_claims SET expires_at = now() - interval '1 second' WHERE hold_id = %s",
            (winners[0].id,),
        )
        freed = reader.next(timeout=10)
        assert [(c.seat_id, c.state) for c in freed.changes.changes] == [(seat, bpb.SEAT_STATE_FREE)]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            row = db.execute("SELECT state FROM booking.holds WHERE id = %s", (winners[0].id,)).fetchone()
            if row == ("EXPIRED",):
                break
            time.sleep(0.1)
        assert row == ("EXPIRED",)
        assert reader.nothing_within(1.5), "the seat was released once, not once per replica"
        reader.close()
    finally:
        a.close()
        b.close()


def test_logs_of_replicas_are_json(replicas: list[str], tmp_path: Path) -> None:
    for name in ("a", "b"):
        lines = [line for line in (tmp_path / f"{name}.log").read_text().splitlines() if line.startswith("{")]
        assert any(json.loads(line)["event"] == "serving" for line in lines)
