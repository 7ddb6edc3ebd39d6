"""What the soak and fault tests share: server replicas as separate processes, a mixed load of
real customers and box-office clerks, seat watchers, and the invariants checked afterwards."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.payment.v1 import payment_pb2 as ppb
from cinema.payment.v1.payment_pb2_grpc import PaymentServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.local_stripe import API_KEY, LocalStripe
from tests.auth_client import with_token
from tests.booking_data import Sale
from tests.conftest import TEST_AUDIT_KEY, TEST_SIGNING_KEY
from tests.payment_data import confirm_card
from tests.ports import free_port
from tests.rpc_errors import failure

Db = psycopg.Connection[tuple[object, ...]]
BIN = Path(sys.executable).parent
# Seconds of mixed load per soak test: short in the CI gate, longer with `make soak`.
SOAK_SECONDS = float(os.environ.get("CINEMA_SOAK_SECONDS", "20"))
# The replicas' data dir (audit checkpoints), private to this run.
DATA_DIR = Path(tempfile.mkdtemp(prefix="cinema-soak-data-"))
# Statuses that mean a bug, whatever happened to the replicas or the database.
BUGS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
HOLD_TTL_SECONDS = 10
SWEEP_SECONDS = 1.0


@dataclass
class Replica:
    """One `cinema-grpc serve` process; it can be killed, stopped and started again."""

    name: str
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**self.env, "CINEMA_GRPC_PORT": str(self.port)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([str(BIN / "cinema-grpc"), "serve"], env=env, stdout=log, stderr=log)

    def wait_until_serving(self, timeout: float = 60) -> None:
        with grpc.insecure_channel(self.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        self.process = None
        return code

    def unexpected_errors(self) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if "unexpected error" in line]


def replica_env(database_url: str, redis_url: str | None, stripe: LocalStripe, **extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "CINEMA_REDIS_URL"}}
    return {
        **inherited,
        **({"REDIS_URL": redis_url} if redis_url else {}),
        "DATABASE_URL": database_url,
        "CINEMA_TOKEN_SIGNING_KEY": TEST_SIGNING_KEY,
        # Every replica, and audit verify, sign with one audit key and keep checkpoints in one place.
        "CINEMA_AUDIT_KEY": TEST_AUDIT_KEY,
        "CINEMA_DATA_DIR": str(DATA_DIR),
        "CINEMA_STRIPE_SECRET_KEY": API_KEY,
        "CINEMA_STRIPE_WEBHOOK_SECRET": stripe.webhook_secret,
        "CINEMA_STRIPE_API_BASE": stripe.api_base,
        "CINEMA_HOLD_TTL_SECONDS": str(HOLD_TTL_SECONDS),
        "CINEMA_SWEEP_INTERVAL_SECONDS": str(SWEEP_SECONDS),
        "CINEMA_RECONCILE_INTERVAL_SECONDS": "1",
        "CINEMA_RECONCILE_AFTER_SECONDS": "2",
        # Longer than any call can take under this load (pool wait 5 s + lock wait 3 s + work), so
        # a SIGTERMed replica finishes every call it has.
        "CINEMA_SHUTDOWN_GRACE_SECONDS": "20",
        "CINEMA_METRICS_PORT": "0",
        "CINEMA_WEBHOOK_PORT": "0",
        "CINEMA_LOG_LEVEL": "WARNING",
        # Every soak customer registers from this machine's address.
        "CINEMA_REGISTRATIONS_PER_ADDRESS": "100000",
        # A few customers hold and release as fast as they can: the customer hold limits off.
        "CINEMA_MAX_HOLDS_PER_CUSTOMER_PER_WINDOW": "10000",
        "CINEMA_HOLD_RATE_WINDOW_SECONDS": "1",
        "CINEMA_REHOLD_COOLDOWN_SECONDS": "0",
        "CINEMA_MAX_SEATS_PER_CUSTOMER_PER_SHOWTIME": "1000",
        **extra,
    }


@dataclass
class Outcomes:
    """Every answer of the load, by RPC and status (and reason)."""

    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    bugs: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, rpc: str, code: grpc.StatusCode, reason: str = "", message: str = "") -> None:
        with self.lock:
            self.counts[(rpc, code.name, reason)] += 1
            if code in BUGS:
                self.bugs.append(f"{rpc}: {code.name} {message}")

    def total(self, code: str | None = None) -> int:
        return sum(n for (_, c, _), n in self.counts.items() if code is None or c == code)

    def table(self) -> str:
        return "\n".join(
            f"  {rpc:<22} {code:<20} {reason:<28} {n}" for (rpc, code, reason), n in sorted(self.counts.items())
        )


class Client:
    """A signed-in caller who spreads its calls over the replicas, as a load balancer would,
    and tries the next replica when one is unavailable."""

    def __init__(self, addresses: list[str], token: str, outcomes: Outcomes) -> None:
        self.channels = [grpc.insecure_channel(address) for address in addresses]
        signed = [with_token(channel, token) for channel in self.channels]
        self.booking = [BookingServiceStub(channel) for channel in signed]
        self.payment = [PaymentServiceStub(channel) for channel in signed]
        self.screening = [ScreeningServiceStub(channel) for channel in signed]
        self.outcomes = outcomes
        self.next = random.randrange(len(addresses))

    def call(self, stubs: list[Any], rpc: str, request: Any) -> Any | None:
        """The response, or None when refused; UNAVAILABLE is retried on the other replicas
        (requests that change something carry a request_id, so a retry cannot repeat them)."""
        for _ in range(len(stubs) * 2):
            self.next = (self.next + 1) % len(stubs)
            try:
                response = getattr(stubs[self.next], rpc)(request, timeout=30)
            except grpc.RpcError as error:
                refused = failure(error)
                self.outcomes.record(rpc, refused.code, refused.reason, refused.message)
                # A replica going away refuses calls it has not started: UNAVAILABLE, or
                # CANCELLED when the call met its shutdown half-way. Both go to another replica.
                if refused.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    time.sleep(0.2)
                    continue
                return None
            self.outcomes.record(rpc, grpc.StatusCode.OK)
            return response
        return None

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


class MixedLoad:
    """Customers browsing, holding, paying online, releasing, abandoning and cancelling, and
    clerks selling at the counter, until stopped."""

    def __init__(
        self,
        addresses: list[str],
        sales: list[Sale],
        customers: list[str],
        clerks: list[str],
        stripe: LocalStripe,
        *,
        pay_online: bool = True,
    ) -> None:
        self.outcomes = Outcomes()
        self.sales = sales
        self.stripe = stripe
        self.pay_online = pay_online
        self.stop = threading.Event()
        self.clients = [Client(addresses, token, self.outcomes) for token in customers]
        self.clerks = [Client(addresses, token, self.outcomes) for token in clerks]
        self.threads = [
            threading.Thread(target=self._customer, args=(client,), daemon=True) for client in self.clients
        ] + [threading.Thread(target=self._clerk, args=(client,), daemon=True) for client in self.clerks]

    def __enter__(self) -> MixedLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        for client in self.clients + self.clerks:
            client.close()

    def _free_seats(self, client: Client, sale: Sale) -> list[str]:
        seat_map = client.call(client.booking, "GetSeatMap", bpb.GetSeatMapRequest(showtime_id=sale.showtime.id))
        if seat_map is None:
            return []
        return [seat.seat_id for seat in seat_map.seats if seat.state == bpb.SEAT_STATE_FREE]

    def _hold(self, client: Client) -> bpb.Hold | None:
        sale = random.choice(self.sales)
        free = self._free_seats(client, sale)
        standard = {s.id for s in sale.hall.seats if s.kind in (spb.SEAT_KIND_STANDARD, spb.SEAT_KIND_PREMIUM)}
        choices = [seat for seat in free if seat in standard]
        if not choices:
            return None
        seats = random.sample(choices, min(len(choices), random.randint(1, 2)))
        request = bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=seats, request_id=str(uuid.uuid4()))
        hold: bpb.Hold | None = client.call(client.booking, "HoldSeats", request)
        return hold

    def _customer(self, client: Client) -> None:
        bookings: list[str] = []
        while not self.stop.is_set():
            action = random.random()
            if action < 0.25:
                client.call(
                    client.screening, "ListShowtimes", spb.ListShowtimesRequest(cinema_id=self.sales[0].hall.cinema_id)
                )
                continue
            if action < 0.35 and bookings:
                booking_id = bookings.pop(random.randrange(len(bookings)))
                client.call(client.booking, "CancelBooking", bpb.CancelBookingRequest(booking_id=booking_id))
                continue
            hold = self._hold(client)
            if hold is None:
                time.sleep(0.05)
                continue
            if action < 0.5:
                client.call(client.booking, "ReleaseHold", bpb.ReleaseHoldRequest(hold_id=hold.id))
            elif action < 0.6 or not self.pay_online:
                pass  # abandoned: it expires and the sweeper frees its seats
            else:
                booking_id = self._pay(client, hold)
                if booking_id:
                    bookings.append(booking_id)

    def _pay(self, client: Client, hold: bpb.Hold) -> str:
        request = ppb.CreatePaymentRequest(hold_id=hold.id, request_id=str(uuid.uuid4()))
        payment: ppb.Payment | None = client.call(client.payment, "CreatePayment", request)
        if payment is None:
            return ""
        confirm_card(self.stripe, payment.intent_id)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.stop.is_set():
            synced = client.call(client.payment, "SyncPayment", ppb.SyncPaymentRequest(payment_id=payment.id))
            if synced is not None and synced.state != ppb.PAYMENT_STATE_INITIALIZED:
                return str(synced.booking_id)
            time.sleep(0.2)
        return ""

    def _clerk(self, client: Client) -> None:
        while not self.stop.is_set():
            hold = self._hold(client)
            if hold is None:
                time.sleep(0.05)
                continue
            request = bpb.SellHoldAtCounterRequest(
                hold_id=hold.id, payment=bpb.COUNTER_PAYMENT_CASH, request_id=str(uuid.uuid4())
            )
            client.call(client.booking, "SellHoldAtCounter", request)


class Watchers:
    """Frontends watching seat maps; they reconnect (with the last version) when a stream ends."""

    def __init__(self, addresses: list[str], showtime_ids: list[str], per_replica: int = 2) -> None:
        self.stop = threading.Event()
        self.events = 0
        self.ended: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.calls: list[Any] = []
        self.threads = [
            threading.Thread(target=self._watch, args=(address, showtime_ids[i % len(showtime_ids)]), daemon=True)
            for address in addresses
            for i in range(per_replica)
        ]

    def __enter__(self) -> Watchers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        with self.lock:
            for call in self.calls:
                call.cancel()
        for thread in self.threads:
            thread.join(10)

    def _watch(self, address: str, showtime_id: str) -> None:
        version = 0
        with grpc.insecure_channel(address) as channel:
            stub = BookingServiceStub(channel)
            while not self.stop.is_set():
                call = stub.WatchSeatAvailability(
                    bpb.WatchSeatAvailabilityRequest(showtime_id=showtime_id, since_version=version)
                )
                with self.lock:
                    self.calls.append(call)
                try:
                    for event in call:
                        version = event.snapshot.version if event.HasField("snapshot") else event.changes.version
                        with self.lock:
                            self.events += 1
                except grpc.RpcError as error:
                    refused = failure(error)
                    with self.lock:
                        self.ended[f"{refused.code.name} {refused.reason}".strip()] += 1
                    time.sleep(0.2)


def count(db: Db, query: str) -> int:
    row = db.execute(query).fetchone()
    assert row is not None
    return int(str(row[0]))


# Each is a count of rows breaking an invariant. Those in ALWAYS must be 0 at any moment; the
# others once reconciliation with Stripe and the sweepers have caught up (an expired hold's
# seats count as free at once; the sweeper only records it, and skips a showtime that is busy).
ALWAYS = (
    "seats held or sold twice",
    "sold seats outside a confirmed booking",
    "held seats of holds that ended",
)
INVARIANTS = {
    "seats held or sold twice": "SELECT count(*) FROM (SELECT showtime_id, seat_id FROM booking.seat_claims"
    " WHERE status IN ('HELD', 'SOLD') GROUP BY 1, 2 HAVING count(*) > 1) AS doubles",
    "money taken without tickets or a refund": "SELECT count(*) FROM payment.payments p"
    " LEFT JOIN booking.bookings b ON b.id = p.booking_id"
    " WHERE p.state IN ('SUCCESS', 'PARTIALLY_REFUNDED') AND (b.id IS NULL OR b.state <> 'CONFIRMED')",
    "tickets without a payment or a counter sale": "SELECT count(*) FROM booking.bookings b"
    " WHERE b.state = 'CONFIRMED' AND b.counter_payment IS NULL AND NOT EXISTS (SELECT 1 FROM payment.payments p"
    " WHERE p.booking_id = b.id AND p.state IN ('SUCCESS', 'PARTIALLY_REFUNDED'))",
    "sold seats outside a confirmed booking": "SELECT count(*) FROM booking.seat_claims c"
    " LEFT JOIN booking.bookings b ON b.id = c.booking_id"
    " WHERE c.status = 'SOLD' AND (b.id IS NULL OR b.state <> 'CONFIRMED')",
    "held seats of holds that ended": "SELECT count(*) FROM booking.seat_claims c JOIN booking.holds h"
    " ON h.id = c.hold_id WHERE c.status = 'HELD' AND h.state <> 'ACTIVE'",
    "holds alive past expiry and a sweep": "SELECT count(*) FROM booking.holds"
    f" WHERE state = 'ACTIVE' AND greatest(expires_at, coalesce(payment_deadline, expires_at))"
    f" < now() - interval '{SWEEP_SECONDS + 2} seconds'",
    "cancelled online bookings not refunded": "SELECT count(*) FROM booking.bookings"
    " WHERE state = 'CANCELLED' AND refund_state = 'PENDING'",
    "refunds still pending": "SELECT count(*) FROM payment.refunds WHERE state = 'PENDING'",
    "payments still unsettled": "SELECT count(*) FROM payment.payments WHERE state = 'INITIALIZED'"
    " AND created_at < now() - interval '2 minutes'",
}


def broken_invariants(db: Db, names: tuple[str, ...] = tuple(INVARIANTS)) -> dict[str, int]:
    return {name: n for name in names if (n := count(db, INVARIANTS[name]))}


def settle(db: Db, timeout: float) -> dict[str, int]:
    """Waits until every invariant holds (expiry, sweeps and reconciliation catch up); returns
    the ones still broken at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        broken = broken_invariants(db)
        if not broken or time.monotonic() > deadline:
            return broken
        time.sleep(0.5)


def audit_verify(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CINEMA_AUDIT_KEY": TEST_AUDIT_KEY,
        "CINEMA_DATA_DIR": str(DATA_DIR),
    }
    return subprocess.run(
        [str(BIN / "cinema-grpc"), "audit", "verify"], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def during(seconds: float, *steps: tuple[float, Callable[[], None]]) -> None:
    """Runs each step at its fraction of ``seconds``, then waits out the rest."""
    started = time.monotonic()
    for at, step in sorted(steps, key=lambda s: s[0]):
        time.sleep(max(0.0, started + at * seconds - time.monotonic()))
        step()
    time.sleep(max(0.0, started + seconds - time.monotonic()))
