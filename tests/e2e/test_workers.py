"""`serve --workers 2`: two processes on one port, seat events crossing between them through
PostgreSQL with no Redis, and a clean stop of both on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
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
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from tests.auth_client import sign_in, with_token
from tests.booking_data import open_sale
from tests.conftest import TEST_AUDIT_KEY
from tests.ports import free_port
from tests.stream_reader import StreamReader

pytestmark = pytest.mark.e2e
Db = psycopg.Connection[tuple[object, ...]]
BIN = Path(sys.executable).parent
# Each channel its own TCP connection, so the kernel may hand each to either worker.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


class TwoWorkers:
    def __init__(self, process: subprocess.Popen[bytes], address: str, log: Path) -> None:
        self.process = process
        self.address = address
        self.log = log

    def worker_of(self, request_id: str, timeout: float = 10) -> int:
        """Which worker served the call with this x-request-id (read from its RPC log line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if request_id in line and line.startswith("{"):
                    record = json.loads(line)
                    if record.get("request_id") == request_id and record.get("event") == "rpc":
                        return int(record["worker"])
            time.sleep(0.05)
        raise AssertionError(f"no log line for {request_id}")


@pytest.fixture(scope="module")
def two_workers(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoWorkers]:
    """One `serve --workers 2` for the module (the last test stops it)."""
    tmp_path = tmp_path_factory.mktemp("workers")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": "",
        "CINEMA_DATA_DIR": str(tmp_path / "data"),
        "CINEMA_TOKEN_SIGNING_KEY": "workers-test-signing-key-0123456789abcdef",
        # The session's database holds one audit chain: every server appends with the same key.
        "CINEMA_AUDIT_KEY": TEST_AUDIT_KEY,
        "CINEMA_SHUTDOWN_GRACE_SECONDS": "3",
        "CINEMA_WEBHOOK_PORT": "0",
        "CINEMA_METRICS_PORT": "0",
        "CINEMA_LOG_FORMAT": "json",
        "CINEMA_LOG_LEVEL": "INFO",
        # Payments are not exercised: a Stripe key for a closed port spares the local test server.
        "CINEMA_STRIPE_SECRET_KEY": "sk_test_workers",
        "CINEMA_STRIPE_WEBHOOK_SECRET": "whsec_workers",
        "CINEMA_STRIPE_API_BASE": "http://127.0.0.1:9",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "cinema-grpc"), "serve", "--workers", "2", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count('"event": "serving"') < 2:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the workers did not both serve within 60 s"
            time.sleep(0.1)
        yield TwoWorkers(process, f"127.0.0.1:{port}", log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def test_a_watcher_on_one_worker_sees_a_hold_made_through_the_other(two_workers: TwoWorkers, db: Db) -> None:
    channels: list[grpc.Channel] = []
    by_worker: dict[int, grpc.Channel] = {}
    try:
        # Open connections until both workers have one (each is one worker's, chosen by the kernel).
        while len(by_worker) < 2:
            assert len(channels) < 64, "the kernel gave every connection to one worker"
            channel = grpc.insecure_channel(two_workers.address, options=OWN_CONNECTION)
            channels.append(channel)
            request_id = f"route-{len(channels)}"
            ScreeningServiceStub(channel).ListCinemas(
                spb.ListCinemasRequest(), metadata=(("x-request-id", request_id),), timeout=10
            )
            by_worker.setdefault(two_workers.worker_of(request_id), channel)
        watching, holding = by_worker[0], by_worker[1]
        _, admin = sign_in(holding, db, "ADMIN")
        sale = open_sale(ScreeningServiceStub(with_token(holding, admin.access_token)))
        _, customer = sign_in(holding, db)
        reader = StreamReader(
            BookingServiceStub(watching).WatchSeatAvailability(
                bpb.WatchSeatAvailabilityRequest(showtime_id=sale.showtime.id)
            )
        )
        try:
            version = reader.next().snapshot.version
            seat = sale.seat("C5")
            BookingServiceStub(with_token(holding, customer.access_token)).HoldSeats(
                bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[seat]), timeout=10
            )
            event = reader.next(timeout=10)
            assert event.changes.version == version + 1
            assert [(c.seat_id, c.state) for c in event.changes.changes] == [(seat, bpb.SEAT_STATE_HELD)]
        finally:
            reader.close()
    finally:
        for channel in channels:
            channel.close()


def test_sigterm_stops_both_workers_and_the_command_exits_0(two_workers: TwoWorkers) -> None:
    two_workers.process.send_signal(signal.SIGTERM)
    assert two_workers.process.wait(30) == 0
    assert two_workers.log.read_text().count('"event": "stopped"') == 2
