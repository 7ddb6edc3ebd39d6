"""Booking benchmark: every hot RPC against the empty-RPC ceiling, with the CPU each call costs
the server and PostgreSQL; contention, the seat stream's fan-out, 2 workers against 1 and the
expiry sweeper.

Not part of the test suite. Run from the project root (bench/suite.py runs it too):

    .venv/bin/python bench/booking_bench.py

Three kinds of process, so that none takes CPU from another's figures:

  * the server: `cinema-grpc serve` (with `--workers N` for the workers phase) in a process of
    its own, on an embedded PostgreSQL in a temporary directory unless --database-url names a
    server (a fresh database is then created there and dropped afterwards);
  * the ceiling: a bare grpc.aio server with only the health service (bench/bare_server.py),
    in a process of its own;
  * the load: --processes load-generator processes (bench/loadgen.py), grpc.aio clients,
    closed loop. This process only seeds, coordinates and reads /proc.

Each row reports the rate, p50/p99, and the CPU time the server's processes and every
PostgreSQL process used during the measured window divided by the calls completed in it
(/proc/<pid>/stat, so other work on the machine does not count).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any, ClassVar

import grpc
import loadgen
import psycopg
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from proc_cpu import TreeCpu, cpu_seconds, parent_of, tree_cpu, tree_cpu_seconds
from sqlalchemy import make_url

from cinema.common.v1 import money_pb2
from cinema.identity.v1 import identity_pb2 as ipb
from cinema.identity.v1.identity_pb2_grpc import IdentityServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.storage.database import EmbeddedPostgres, migrate, sqlalchemy_url

Metadata = tuple[tuple[str, str], ...]
AsyncDb = psycopg.AsyncConnection[tuple[Any, ...]]
BENCH_DIR = Path(__file__).resolve().parent

PHASES = ("ceiling", "reads", "holds", "contention", "fanout", "workers", "sweep")
PASSWORD = "bench password, long enough"
PRICE_MINOR = 1200
CURRENCY = "EUR"
DOUBLE_CLAIMS_SQL = (
    "SELECT count(*) FROM (SELECT showtime_id, seat_id FROM booking.seat_claims"
    " WHERE status IN ('HELD', 'SOLD') GROUP BY 1, 2 HAVING count(*) > 1) AS doubles"
)

# Targets of issue 12, on this 2-core machine at c=64.
HOLD_RATE_TARGET = 1500.0
HOLD_SHARE_TARGET = 0.25
HOLD_SERVER_CPU_TARGET = 0.6
HOLD_PG_CPU_TARGET = 0.5
ONE_SHOWTIME_RATE_TARGET = 1000.0
GET_SHOWTIME_CPU_TARGET = 0.5
SEAT_MAP_CPU_TARGET = 1.5
REFUSAL_P99_TARGET_MS = 1000.0
DELIVERY_P99_TARGET_MS = 100.0
SWEEP_TARGET_SECONDS = 5.0


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def libpq_url(url: str) -> str:
    """A URL psycopg accepts (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment)
    return ts


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


# ----------------------------------------------------------------------------- database and servers


@contextlib.contextmanager
def provision_database(configured: str | None) -> Iterator[tuple[str, str]]:
    """A migrated, empty database: (url, where). Removed again afterwards."""
    if configured:
        name = f"cinema_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(libpq_url(configured), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
            url = make_url(libpq_url(configured)).set(database=name).render_as_string(hide_password=False)
            try:
                migrate(sqlalchemy_url(url))
                yield url, f"database {name} on {make_url(url).host}:{make_url(url).port} (dropped afterwards)"
            finally:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    with tempfile.TemporaryDirectory(prefix="cinema-bench-") as tmp:
        embedded = EmbeddedPostgres(Path(tmp) / "pgdata")
        url = embedded.start()
        try:
            migrate(sqlalchemy_url(url))
            yield url, "embedded PostgreSQL in a temporary directory"
        finally:
            embedded.stop()


def wait_serving(address: str, process: subprocess.Popen[bytes], what: str, within: float = 90.0) -> None:
    """Waits until Health/Check answers SERVING at ``address``."""
    deadline = time.monotonic() + within
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode} before serving")
            with contextlib.suppress(grpc.RpcError):
                answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not serve within {within:g} s")


class ServerProcess:
    """`cinema-grpc serve` in a process of its own, configured through its environment."""

    def __init__(self, url: str, args: argparse.Namespace, log_dir: Path, *, workers: int = 1, **extra: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.workers = workers
        metrics_port = free_port() if workers == 1 else 0
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "CINEMA_REDIS_URL": args.redis_url or "",
            "REDIS_URL": args.redis_url or "",
            "CINEMA_DATA_DIR": str(log_dir / "data"),
            "CINEMA_LOG_LEVEL": "INFO",  # as in production: the per-RPC log line is part of the cost
            "CINEMA_LOG_FORMAT": "json",
            "CINEMA_SWEEP_INTERVAL_SECONDS": "3600",
            "CINEMA_RECONCILE_INTERVAL_SECONDS": "3600",
            "CINEMA_MAX_ACTIVE_HOLDS_PER_CUSTOMER": "100",
            # The load re-holds seats with few customers as fast as it can: the abuse limits off.
            "CINEMA_MAX_HOLDS_PER_CUSTOMER_PER_WINDOW": "10000",
            "CINEMA_HOLD_RATE_WINDOW_SECONDS": "1",
            "CINEMA_REHOLD_COOLDOWN_SECONDS": "0",
            "CINEMA_MAX_SEATS_PER_CUSTOMER_PER_SHOWTIME": "1000",
            "CINEMA_MAX_SEATS_PER_HOLD": "10",
            "CINEMA_DB_POOL_SIZE": str(args.db_pool_size),
            "CINEMA_DB_HOLD_POOL_SIZE": str(args.db_hold_pool_size),
            "CINEMA_DB_HOLD_BATCH_SIZE": str(args.db_hold_batch_size),
            "CINEMA_DB_MAX_OVERFLOW": str(args.db_max_overflow),
            "CINEMA_SHUTDOWN_GRACE_SECONDS": "2",
            # Every watcher of the fan-out comes from this machine's address.
            "CINEMA_MAX_STREAMS": str(max(4000, args.watchers + 100)),
            "CINEMA_MAX_STREAMS_PER_ADDRESS": str(max(100, args.watchers + 100)),
            # Every customer registers from this machine's address.
            "CINEMA_REGISTRATIONS_PER_ADDRESS": "1000000",
            # The holds per transaction of the plain holds' pool are read from the metrics.
            "CINEMA_METRICS_PORT": str(metrics_port),
            "CINEMA_WEBHOOK_PORT": "0",
            "CINEMA_TOKEN_SIGNING_KEY": args.signing_key,
            # The bench pays for nothing: a Stripe key for a closed loopback port does.
            "CINEMA_STRIPE_SECRET_KEY": "sk_test_bench",
            "CINEMA_STRIPE_WEBHOOK_SECRET": f"whsec_{secrets.token_hex(16)}",
            "CINEMA_STRIPE_API_BASE": "http://127.0.0.1:9",
            **extra,
        }
        command = [sys.executable, "-m", "cinema_grpc.cli", "serve", "--port", str(self.port)]
        if workers != 1:
            command += ["--workers", str(workers)]
        self.log = log_dir / f"server-{self.port}.log"
        with self.log.open("wb") as log:
            # Run from the log directory: `python -m` puts the working directory first on the
            # path, and the code measured is the one this process imports (PYTHONPATH included).
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir)
        try:
            wait_serving(self.address, self.process, "the server")
        except RuntimeError:
            print(self.log.read_text()[-3000:], file=sys.stderr)
            raise
        self.pid = self.process.pid
        if self.metrics_url is not None:
            Meter.metrics[self.pid] = self.metrics_url

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class BareServer:
    """The ceiling: bench/bare_server.py in a process of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "bare_server.py"), str(self.port)], stdout=subprocess.PIPE
        )
        wait_serving(self.address, self.process, "the bare server")
        self.pid = self.process.pid

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


def supports_workers() -> bool:
    """Whether this code's `serve` has --workers (the comparison is skipped on code without it)."""
    shown = subprocess.run(
        [sys.executable, "-m", "cinema_grpc.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tempfile.gettempdir(),  # as the server runs: the code on the path, not the working directory
    )
    return "--workers" in shown.stdout


# ----------------------------------------------------------------------------- seeding


@dataclass
class World:
    """What the bench seeded: a 400-seat hall with its showtimes, a big hall with one showtime
    (for holds on one showtime), signed-in customers."""

    seats: list[str]
    showtimes: list[str]
    big_seats: list[str]
    big_showtime: str
    customers: list[Metadata]
    cinema_id: str
    hall_id: str

    def pairs(self, rng: random.Random) -> list[tuple[str, str]]:
        everything = [(showtime, seat) for showtime in self.showtimes for seat in self.seats]
        rng.shuffle(everything)
        return everything

    def big_pairs(self, rng: random.Random) -> list[tuple[str, str]]:
        everything = [(self.big_showtime, seat) for seat in self.big_seats]
        rng.shuffle(everything)
        return everything


def row_labels(rows: int) -> list[str]:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return [letters[i] if i < len(letters) else f"R{i + 1}" for i in range(rows)]


async def seed(address: str, db: AsyncDb, args: argparse.Namespace) -> World:
    """Admin, cinema, halls, movie, showtimes and customers, all through the public API."""
    channel = grpc.aio.insecure_channel(address)
    try:
        identity = IdentityServiceStub(channel)

        async def register(label: str) -> tuple[str, str]:
            email = f"{label}-{uuid.uuid4().hex[:10]}@example.com"
            user = await identity.Register(ipb.RegisterRequest(email=email, password=PASSWORD, display_name=label))
            return user.id, email

        async def sign_in(email: str) -> Metadata:
            pair = await identity.Login(ipb.LoginRequest(email=email, password=PASSWORD))
            return bearer(pair.access_token)

        admin_id, admin_email = await register("bench-admin")
        await db.execute("INSERT INTO identity.user_roles (user_id, role) VALUES (%s, 'ADMIN')", (admin_id,))
        admin = await sign_in(admin_email)
        screening = ScreeningServiceStub(channel)
        cinema = await screening.CreateCinema(
            spb.CreateCinemaRequest(
                cinema=spb.Cinema(
                    name=f"Bench {uuid.uuid4().hex[:8]}", time_zone="Europe/Berlin", currency_code=CURRENCY
                )
            ),
            metadata=admin,
        )

        async def hall(name: str, rows: int, columns: int) -> spb.Hall:
            layout = spb.SeatLayout(rows=[spb.SeatRow(label=label, columns=columns) for label in row_labels(rows)])
            return await screening.CreateHall(
                spb.CreateHallRequest(cinema_id=cinema.id, name=name, layout=layout), metadata=admin, timeout=120
            )

        small = await hall("Bench hall", args.rows, args.seats_per_row)
        big = await hall("Bench arena", 50, 100)  # the most seats a hall may have
        movie = await screening.CreateMovie(
            spb.CreateMovieRequest(
                movie=spb.Movie(title="Bench movie", duration_minutes=100, rating="PG", active=True)
            ),
            metadata=admin,
        )
        prices = [
            spb.SeatPrice(kind=kind, price=money_pb2.Money(amount_minor=PRICE_MINOR, currency_code=CURRENCY))
            for kind in sorted({seat.kind for seat in small.seats} | {seat.kind for seat in big.seats})
        ]
        # Four hours apart: a 100-minute movie plus the cleaning buffer never overlaps the next.
        first = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)

        async def showtime(hall_id: str, i: int) -> str:
            request = spb.CreateShowtimeRequest(
                hall_id=hall_id, movie_id=movie.id, start_time=timestamp(first + timedelta(hours=4 * i)), prices=prices
            )
            return (await screening.CreateShowtime(request, metadata=admin)).id

        showtimes = [await showtime(small.id, i) for i in range(args.showtimes)]
        big_showtime = await showtime(big.id, 0)
        # A few sign-ins at a time: the login throttle counts attempts in flight from one address.
        gate = asyncio.Semaphore(4)

        async def customer(i: int) -> Metadata:
            async with gate:
                _, email = await register(f"bench-customer-{i}")
                return await sign_in(email)

        customers = await asyncio.gather(*(customer(i) for i in range(args.customers)))
    finally:
        await channel.close()
    return World(
        [s.id for s in small.seats],
        showtimes,
        [s.id for s in big.seats],
        big_showtime,
        list(customers),
        cinema.id,
        small.id,
    )


# The past of a cinema in use: holds that ended without a sale over the last week, one seat
# each, a quarter of them the bench customers', with time-ordered ids as the application writes
# them. The hold's statements are planned once per connection with the statistics of that
# moment; planned on emptied tables they read far more than they do in a cinema in use
# (docs/performance.md), which is not what the rows measure.
HISTORY_SQL = """
INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, created_at, ended_at)
SELECT booking.uuid_v7(ended - interval '10 minutes'), showtimes[1 + n %% cardinality(showtimes)],
       CASE WHEN n %% 4 = 0 THEN users[1 + n %% cardinality(users)] ELSE gen_random_uuid() END,
       CASE WHEN n %% 2 = 0 THEN 'RELEASED' ELSE 'EXPIRED' END, ended, ended - interval '10 minutes', ended
FROM generate_series(1, %(holds)s) AS n,
     LATERAL (SELECT now() - interval '1 hour' - make_interval(mins => n %% 10000) AS ended) AS moment,
     (SELECT array_agg(id) AS showtimes FROM screening.showtimes) AS every_showtime,
     (SELECT array_agg(id) AS users FROM identity.users) AS every_user;
INSERT INTO booking.seat_claims
    (id, hold_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)
SELECT booking.uuid_v7(hold.created_at), hold.id, hold.showtime_id, seat.id, 'RELEASED', 1200, 'EUR', hold.expires_at,
       hold.created_at
FROM booking.holds AS hold
JOIN screening.showtimes AS showtime ON showtime.id = hold.showtime_id
CROSS JOIN LATERAL (SELECT id FROM screening.seats WHERE hall_id = showtime.hall_id
                    OFFSET abs(hashtext(hold.id::text)) %% 100 LIMIT 1) AS seat
"""


async def reset_holds(db: AsyncDb, history: int = 0) -> None:
    """Removes every hold and claim, so the next phase starts from empty showtimes with a past of
    ``history`` ended holds, and brings the statistics up to date."""
    await db.execute("DELETE FROM booking.seat_claims")
    await db.execute("DELETE FROM booking.holds")
    for statement in HISTORY_SQL.split(";\n"):
        await db.execute(statement, {"holds": history})
    await db.execute("VACUUM ANALYZE booking.seat_claims, booking.holds")


async def scalar(db: AsyncDb, sql: str, params: Any = None) -> Any:
    cursor = await db.execute(sql, params)
    row = await cursor.fetchone()
    return row[0] if row else None


# Expired holds as the booking repository writes holds (state ACTIVE, claims HELD with the hold's
# expires_at, one seat event per hold raising the showtime's version, time-ordered ids), in
# bulk. They were made between 15 and 10 minutes ago and lapsed within the last 5 minutes:
# inside the event retention, so the sweep's pruning finds nothing of theirs to delete.
SWEEP_SHOWTIMES_SQL = """
INSERT INTO screening.showtimes
    (id, cinema_id, hall_id, hall_key, movie_id, starts_at, ends_at, busy_until, state, created_at)
SELECT gen_random_uuid(), t.cinema_id, t.hall_id, t.hall_key, t.movie_id,
       t.starts_at + i * interval '4 hours', t.ends_at + i * interval '4 hours',
       t.busy_until + i * interval '4 hours', 'SCHEDULED', now()
FROM screening.showtimes t, generate_series(1, %(count)s) AS i
WHERE t.id = %(template)s
RETURNING id
"""
SWEEP_PRICES_SQL = """
INSERT INTO screening.showtime_prices (showtime_id, kind, amount_minor, currency)
SELECT s, p.kind, p.amount_minor, p.currency
FROM unnest(%(showtimes)s::uuid[]) AS s, screening.showtime_prices p
WHERE p.showtime_id = %(template)s
"""
SWEEP_HOLDS_SQL = """
CREATE TEMP TABLE sweep_holds ON COMMIT DROP AS
SELECT showtime_id, slot, booking.uuid_v7(created_at) AS hold_id, gen_random_uuid() AS customer_id, created_at
FROM (SELECT h.showtime_id, h.slot, now() - interval '15 minutes' + (h.k * interval '300 seconds') / %(holds)s AS created_at
      FROM (SELECT st.id AS showtime_id, st.n, slot, (st.n - 1) * %(per_showtime)s + slot AS k
            FROM unnest(%(showtimes)s::uuid[]) WITH ORDINALITY AS st (id, n),
                 generate_series(0, %(per_showtime)s - 1) AS slot) AS h
      WHERE h.k < %(holds)s) AS timed;
CREATE TEMP TABLE sweep_seats ON COMMIT DROP AS
SELECT id AS seat_id, (row_number() OVER (ORDER BY row_index, number) - 1) / %(per_hold)s AS slot
FROM screening.seats WHERE hall_id = %(hall)s AND retired_at IS NULL;
INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, created_at)
SELECT hold_id, showtime_id, customer_id, 'ACTIVE', created_at + interval '10 minutes', created_at FROM sweep_holds;
INSERT INTO booking.seat_claims
    (id, hold_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)
SELECT booking.uuid_v7(h.created_at), h.hold_id, h.showtime_id, s.seat_id, 'HELD', %(price)s, %(currency)s,
       h.created_at + interval '10 minutes', h.created_at
FROM sweep_holds h JOIN sweep_seats s USING (slot);
INSERT INTO booking.seat_events (showtime_id, version, changes, created_at)
SELECT h.showtime_id, row_number() OVER (PARTITION BY h.showtime_id ORDER BY h.slot), c.changes, h.created_at
FROM sweep_holds h
JOIN (SELECT slot, jsonb_agg(jsonb_build_array(seat_id::text, 'HELD')) AS changes FROM sweep_seats GROUP BY slot) AS c
  USING (slot);
INSERT INTO booking.showtime_versions (showtime_id, version)
SELECT showtime_id, count(*) FROM sweep_holds GROUP BY showtime_id
"""
SWEEP_TARGET_SECONDS = 5.0
# What must be true once the sweeper is done, over the whole database.
SWEEP_LEFT_SQL = {
    "expired ACTIVE holds": (
        "SELECT count(*) FROM booking.holds WHERE state = 'ACTIVE' AND greatest(expires_at, payment_deadline) <= now()"
    ),
    "expired HELD claims": (
        "SELECT count(*) FROM booking.seat_claims c JOIN booking.holds h ON h.id = c.hold_id"
        " WHERE c.status = 'HELD' AND greatest(c.expires_at, h.payment_deadline) <= now()"
    ),
    "double claims": DOUBLE_CLAIMS_SQL,
}
SWEEP_OUTCOME_SQL = """
SELECT (SELECT count(*) FROM booking.holds WHERE showtime_id = ANY(%(showtimes)s) AND state = 'EXPIRED'),
       (SELECT count(*) FROM booking.seat_claims WHERE showtime_id = ANY(%(showtimes)s) AND status = 'RELEASED'),
       (SELECT coalesce(sum(jsonb_array_length(changes)), 0) FROM booking.seat_events
         WHERE showtime_id = ANY(%(showtimes)s) AND changes -> 0 ->> 1 = 'FREE'),
       (SELECT count(*) FROM booking.showtime_versions v
         WHERE showtime_id = ANY(%(showtimes)s)
           AND version <> (SELECT max(version) FROM booking.seat_events e WHERE e.showtime_id = v.showtime_id))
"""


# ----------------------------------------------------------------------------- measuring


@dataclass
class Row:
    """One closed-loop run: what the clients saw and what it cost the server and PostgreSQL."""

    name: str
    concurrency: int
    calls: int = 0
    seconds: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    server_cpu_s: float = 0.0
    pg_cpu_s: float = 0.0
    # PostgreSQL backends' CPU by application_name (cinema-grpc is the request pool)
    pg_by_application_s: dict[str, float] = field(default_factory=dict)
    # All PostgreSQL processes' CPU by kind: "backend" (client connections), "walwriter", ...
    pg_by_kind_s: dict[str, float] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    note: str = ""
    # Plain holds per transaction of the holds' pool (cinema_db_hold_batch_size), where the
    # server exports it and the row placed plain holds.
    holds_per_transaction: float | None = None

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_ms(self) -> float:
        return self.server_cpu_s * 1000 / self.calls if self.calls else float("nan")

    @property
    def pg_ms(self) -> float:
        return self.pg_cpu_s * 1000 / self.calls if self.calls else float("nan")

    @property
    def pg_backend_ms(self) -> float:
        """What the client backends (the server's connections) used per call."""
        if not self.calls or not self.pg_by_kind_s:
            return float("nan")
        return self.pg_by_kind_s.get("backend", 0.0) * 1000 / self.calls

    def figures(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "calls": self.calls,
            "seconds": self.seconds,
            "rate": self.rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "server_cpu_ms_per_call": self.server_ms,
            "pg_cpu_ms_per_call": self.pg_ms,
            "pg_cpu_ms_per_call_by_kind": {
                kind: seconds * 1000 / self.calls if self.calls else None
                for kind, seconds in sorted(self.pg_by_kind_s.items())
            },
            "pg_cpu_ms_per_call_by_application": {
                name: seconds * 1000 / self.calls if self.calls else None
                for name, seconds in sorted(self.pg_by_application_s.items())
            },
            "failures": dict(self.failures),
            "note": self.note,
            "holds_per_transaction": self.holds_per_transaction,
        }


def hold_batches(metrics_url: str | None) -> tuple[float, float] | None:
    """The server's count and sum of cinema_db_hold_batch_size (transactions, plain holds), or
    None where it does not export them (older code, several workers)."""
    if metrics_url is None:
        return None
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    found = {
        name: float(value)
        for line in text.splitlines()
        if line.startswith("cinema_db_hold_batch_size_")
        for name, value in [line.split(" ", 1)]
    }
    if "cinema_db_hold_batch_size_count" not in found:
        return None
    return found["cinema_db_hold_batch_size_count"], found.get("cinema_db_hold_batch_size_sum", 0.0)


class Meter:
    """Runs closed-loop load from the load-generator processes and reads CPU at the window's edges."""

    # Server pid -> its metrics address (single-process servers).
    metrics: ClassVar[dict[int, str]] = {}

    def __init__(self, args: argparse.Namespace, pool: ProcessPoolExecutor, postmaster: int | None) -> None:
        self.args = args
        self.pool = pool
        self.postmaster = postmaster
        self.db: psycopg.Connection[tuple[Any, ...]] | None = None

    def backends(self) -> dict[int, str]:
        """Live PostgreSQL backends: pid -> application_name."""
        if self.db is None:
            return {}
        rows = self.db.execute(
            "SELECT pid, application_name FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
        return {int(pid): str(name or "?") for pid, name in rows.fetchall()}

    def by_application(self, backends: dict[int, str]) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pid in backends}

    def application_cpu(self) -> dict[int, tuple[str, float]]:
        """Each live backend's application_name and CPU seconds so far."""
        return {pid: (name, cpu_seconds(pid)) for pid, name in self.backends().items()}

    def cpu(self, server_pid: int) -> tuple[float, TreeCpu | None]:
        """The server's CPU seconds so far, and PostgreSQL's processes."""
        return tree_cpu_seconds(server_pid), tree_cpu(self.postmaster) if self.postmaster else None

    def run(
        self,
        name: str,
        address: str,
        server_pid: int,
        kind: str,
        *,
        concurrency: int | None = None,
        showtimes: Sequence[str] = (),
        pairs: Sequence[tuple[str, str]] = (),
        customers: Sequence[Metadata] = (),
        duration: float | None = None,
        stop_file: str = "",
        channels: int | None = None,
    ) -> tuple[Row, Any]:
        """Starts the load; returns the row (filled by ``finish``) and the futures."""
        args = self.args
        c = concurrency or args.concurrency
        processes = min(args.processes, c)
        if self.db is not None:
            # What earlier phases left to write out is written now, not in this row's window
            # (and before the window is set: a checkpoint after a phase's writes can take longer
            # than the lead, and the window would open before the load does).
            with contextlib.suppress(psycopg.Error):
                self.db.execute("CHECKPOINT")
        start = time.time() + args.lead + args.warmup
        end = start + (duration if duration is not None else args.duration)
        specs = [
            loadgen.LoadSpec(
                address=address,
                kind=kind,
                concurrency=c // processes + (1 if i < c % processes else 0),
                channels=max(1, (channels or args.channels) // processes),
                load_start=start - args.warmup,
                window_start=start,
                window_end=end,
                showtimes=list(showtimes),
                pairs=list(pairs[i::processes]),
                customers=list(customers[i::processes]),
                stop_file=stop_file,
            )
            for i in range(processes)
        ]
        futures = [self.pool.submit(loadgen.closed_loop, spec) for spec in specs]
        row = Row(name, c)
        return row, (futures, start, end, server_pid)

    def finish(self, row: Row, pending: Any, *, wait_window: bool = True) -> Row:
        futures, start, end, server_pid = pending
        time.sleep(max(0.0, start - time.time()))
        spy = None
        if self.args.py_spy and wait_window:
            # Samples of the server's stacks over the window (not counted in its CPU: py-spy is
            # a process of its own, and sampling pauses the server only for microseconds).
            folded = self.args.py_spy / f"{row.name.replace(' ', '_').replace('/', '_').replace(',', '')}.txt"
            spy = subprocess.Popen(
                [
                    shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy",
                    "record",
                    "--pid",
                    str(server_pid),
                    "--duration",
                    str(int(end - start)),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--subprocesses",
                    "--output",
                    str(folded),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        before = self.cpu(server_pid)  # first: the window is open
        if wait_window and (late := time.time() - start) > 0.5:
            # The CPU read at the edges would miss what the window used before this moment.
            row.note = f"CPU read {late:.1f} s after the window opened: its CPU figures are too low"
        backends = self.backends()
        backend_before = self.by_application(backends)
        batches_before = hold_batches(self.metrics.get(server_pid)) if wait_window else None
        if wait_window:
            time.sleep(max(0.0, end - time.time()))
        results: list[loadgen.LoadResult] = [f.result() for f in futures]
        if spy is not None:
            spy.wait(30)
        stopped = [r.exhausted_at for r in results if r.exhausted_at is not None]
        window_end = min([end, *stopped])
        after = self.cpu(server_pid)
        backend_after = self.by_application(backends)
        batches_after = hold_batches(self.metrics.get(server_pid)) if batches_before is not None else None
        if batches_before is not None and batches_after is not None and batches_after[0] > batches_before[0]:
            row.holds_per_transaction = (batches_after[1] - batches_before[1]) / (batches_after[0] - batches_before[0])
        for pid, name in backends.items():
            used = backend_after[pid] - backend_before[pid]
            row.pg_by_application_s[name] = row.pg_by_application_s.get(name, 0.0) + max(used, 0.0)
        latencies = [ms for r in results for ms in r.latencies_ms]
        row.calls = sum(r.ok for r in results)
        row.seconds = max(window_end - start, 0.0)
        row.p50_ms = loadgen.percentile(latencies, 50)
        row.p99_ms = loadgen.percentile(latencies, 99)
        if wait_window:
            row.server_cpu_s = after[0] - before[0]
            if after[1] is not None and before[1] is not None:
                row.pg_by_kind_s = after[1].used_since(before[1])
                row.pg_cpu_s = sum(row.pg_by_kind_s.values())
            else:
                row.pg_cpu_s = float("nan")
        else:  # stopped from outside at some moment: CPU per call would mean nothing
            row.server_cpu_s = row.pg_cpu_s = float("nan")
            row.pg_by_application_s = {}
        for r in results:
            row.failures.update(r.failures)
        row.note = "; ".join(sorted({r.note for r in results if r.note} | ({row.note} if row.note else set())))
        progress(
            f"  {row.name}: {row.rate:,.0f}/s, p50/p99 {row.p50_ms:.1f}/{row.p99_ms:.1f} ms,"
            f" server {row.server_ms:.3f} ms + PostgreSQL {row.pg_ms:.3f} ms CPU per call"
            + (f", {row.holds_per_transaction:.1f} holds per transaction" if row.holds_per_transaction else "")
            + (f", failures {dict(row.failures)}" if row.failures else "")
        )
        return row

    def measure(self, name: str, address: str, server_pid: int, kind: str, **options: Any) -> Row:
        row, pending = self.run(name, address, server_pid, kind, **options)
        return self.finish(row, pending)


@dataclass
class Contention:
    clients: int
    seats: int
    winners: int
    seats_won: int
    doubles: int
    refusals: Counter[str]
    refusal_p50_ms: float
    refusal_p99_ms: float
    slowest_ms: float


@dataclass
class FanOut:
    watchers: int
    snapshots: int
    snapshot_seconds: float
    expected: int
    delays_ms: list[float]
    hold_p50_ms: float
    errors: Counter[str]


@dataclass
class Sweep:
    holds: int
    seats: int
    showtimes: int
    seconds: float
    expired_holds: int
    released_claims: int
    announced_free: int
    version_mismatches: int
    left: dict[str, int]
    during: Row | None  # None: swept with no other load (--sweep-concurrency 0)
    # PostgreSQL CPU of the server's request-pool connections ("cinema-grpc") from the commit to
    # the end of the sweep: the sweeper's transactions (the HoldSeats load runs on the hold pool,
    # but a hold its statement leaves to the seat inventory runs here too).
    request_pool_pg_cpu_s: float

    @property
    def clean(self) -> bool:
        return (
            not any(self.left.values())
            and self.expired_holds == self.holds
            and self.released_claims == self.announced_free == self.seats
            and self.version_mismatches == 0
        )


@dataclass
class Results:
    rows: dict[str, Row] = field(default_factory=dict)
    ceilings: list[Row] = field(default_factory=list)
    doubles: int = 0
    contention: Contention | None = None
    fan_out: FanOut | None = None
    sweep: Sweep | None = None
    loads: dict[str, float] = field(default_factory=dict)
    workers_supported: bool = True

    @property
    def ceiling_rate(self) -> float:
        rates = [row.rate for row in self.ceilings if row.rate]
        return sum(rates) / len(rates) if rates else float("nan")


# ----------------------------------------------------------------------------- the phases


async def seed_expired_holds(db: AsyncDb, world: World, args: argparse.Namespace) -> list[uuid.UUID]:
    """`--sweep-holds` expired holds on extra showtimes (made after the last seeded one), in the
    caller's transaction: nobody sees them before it commits."""
    per_showtime = len(world.seats) // args.sweep_seats_per_hold
    count = math.ceil(args.sweep_holds / per_showtime)
    cursor = await db.execute(SWEEP_SHOWTIMES_SQL, {"count": count, "template": world.showtimes[-1]})
    showtimes = [row[0] for row in await cursor.fetchall()]
    await db.execute(SWEEP_PRICES_SQL, {"showtimes": showtimes, "template": world.showtimes[-1]})
    params = {
        "showtimes": showtimes,
        "holds": args.sweep_holds,
        "per_showtime": per_showtime,
        "per_hold": args.sweep_seats_per_hold,
        "hall": world.hall_id,
        "price": PRICE_MINOR,
        "currency": CURRENCY,
    }
    for statement in SWEEP_HOLDS_SQL.split(";\n"):
        await db.execute(statement, {k: v for k, v in params.items() if f"%({k})s" in statement} or None)
    await db.execute("ANALYZE booking.holds, booking.seat_claims, booking.seat_events, booking.showtime_versions")
    return showtimes


class Run:
    """One whole benchmark: database, servers, seeding, phases."""

    def __init__(self, args: argparse.Namespace, url: str, log_dir: Path, pool: ProcessPoolExecutor) -> None:
        self.args = args
        self.url = url
        self.log_dir = log_dir
        self.pool = pool
        self.rng = random.Random(args.seed)
        self.results = Results()

    def server(self, **options: Any) -> ServerProcess:
        return ServerProcess(self.url, self.args, self.log_dir, **options)

    async def execute(self) -> Results:
        args, results = self.args, self.results
        async with await psycopg.AsyncConnection.connect(libpq_url(self.url), autocommit=True) as db:
            backend = await scalar(db, "SELECT pg_backend_pid()")
            postmaster = parent_of(int(backend))
            meter = Meter(args, self.pool, postmaster)
            meter.db = psycopg.connect(libpq_url(self.url), autocommit=True)
            self.pool.submit(loadgen.warm_up).result()
            server = self.server()
            try:
                began = time.perf_counter()
                world = await seed(server.address, db, args)
                progress(
                    f"seeded {len(world.showtimes)} showtimes x {len(world.seats)} seats, one of"
                    f" {len(world.big_seats)} seats and {len(world.customers)} customers"
                    f" in {time.perf_counter() - began:.1f} s"
                )
                await reset_holds(db, args.history_holds)
                results.loads["after seeding"] = os.getloadavg()[0]
                if "ceiling" in args.phases:
                    self.ceiling(meter)
                self.reads(meter, server, world)
                await self.holds(meter, server, world, db)
                await self.contention(server, world, db)
                await self.fan_out(server, world, db)
                if "ceiling" in args.phases:
                    self.ceiling(meter)
            finally:
                server.stop()
            await self.workers(meter, world, db)
            await self.sweep(meter, world, db)
        results.loads["at the end"] = os.getloadavg()[0]
        return results

    def ceiling(self, meter: Meter) -> None:
        progress("ceiling: empty RPC on a bare grpc.aio server")
        bare = BareServer()
        try:
            self.results.ceilings.append(
                meter.measure("empty RPC, bare grpc.aio server (ceiling)", bare.address, bare.pid, "health")
            )
        finally:
            bare.stop()

    def reads(self, meter: Meter, server: ServerProcess, world: World) -> None:
        if "reads" not in self.args.phases:
            return
        rows = self.results.rows
        progress("reads")
        rows["health"] = meter.measure("Health/Check through cinema-grpc", server.address, server.pid, "health")
        rows["get_showtime"] = meter.measure(
            "GetShowtime", server.address, server.pid, "get_showtime", showtimes=world.showtimes
        )
        rows["seat_map"] = meter.measure(
            f"GetSeatMap ({len(world.seats)} seats)", server.address, server.pid, "seat_map", showtimes=world.showtimes
        )

    async def holds(self, meter: Meter, server: ServerProcess, world: World, db: AsyncDb) -> None:
        if "holds" not in self.args.phases:
            return
        rows = self.results.rows
        progress("HoldSeats")
        rows["hold_many"] = meter.measure(
            f"HoldSeats, {len(world.showtimes)} showtimes",
            server.address,
            server.pid,
            "hold",
            pairs=world.pairs(self.rng),
            customers=world.customers,
        )
        self.results.doubles += int(await scalar(db, DOUBLE_CLAIMS_SQL))
        await reset_holds(db, self.args.history_holds)
        rows["hold_one"] = meter.measure(
            "HoldSeats, one showtime",
            server.address,
            server.pid,
            "hold",
            pairs=world.big_pairs(self.rng),
            customers=world.customers,
        )
        self.results.doubles += int(await scalar(db, DOUBLE_CLAIMS_SQL))
        await reset_holds(db, self.args.history_holds)

    async def contention(self, server: ServerProcess, world: World, db: AsyncDb) -> None:
        args = self.args
        if "contention" not in args.phases:
            return
        progress(f"contention: {args.contention_clients} clients, {args.contention_seats} seats")
        seats = world.seats[: args.contention_seats]
        outcome = self.pool.submit(
            loadgen.contention, server.address, world.showtimes[0], seats, world.customers, args.contention_clients
        ).result()
        doubles = int(await scalar(db, DOUBLE_CLAIMS_SQL))
        self.results.doubles += doubles
        await reset_holds(db, self.args.history_holds)
        self.results.contention = Contention(
            clients=args.contention_clients,
            seats=len(seats),
            winners=outcome.winners,
            seats_won=outcome.seats_won,
            doubles=doubles,
            refusals=outcome.refusals,
            refusal_p50_ms=loadgen.percentile(outcome.refusal_ms, 50),
            refusal_p99_ms=loadgen.percentile(outcome.refusal_ms, 99),
            slowest_ms=outcome.slowest_ms,
        )

    async def fan_out(self, server: ServerProcess, world: World, db: AsyncDb) -> None:
        args = self.args
        if "fanout" not in args.phases:
            return
        progress(f"fan-out: {args.watchers} watchers, {args.events} holds")
        seats = world.seats[: args.events]
        outcome = self.pool.submit(
            loadgen.fan_out,
            server.address,
            world.showtimes[1 % len(world.showtimes)],
            seats,
            world.customers[0],
            args.watchers,
            args.watch_channels,
        ).result()
        await reset_holds(db, self.args.history_holds)
        self.results.fan_out = FanOut(
            watchers=args.watchers,
            snapshots=outcome.snapshots,
            snapshot_seconds=outcome.snapshot_seconds,
            expected=outcome.snapshots * len(seats),
            delays_ms=outcome.delays_ms,
            hold_p50_ms=outcome.hold_p50_ms,
            errors=outcome.errors,
        )

    async def workers(self, meter: Meter, world: World, db: AsyncDb) -> None:
        if "workers" not in self.args.phases:
            return
        if not supports_workers():
            self.results.workers_supported = False
            progress("workers: this code's serve has no --workers; skipped")
            return
        progress("2 workers")
        server = self.server(workers=2)
        # The kernel hands each connection to one worker (SO_REUSEPORT): with the 4 connections
        # of the other rows, all of them landed on one worker in some runs.
        channels = max(self.args.channels, 16)
        try:
            rows = self.results.rows
            rows["health_2"] = meter.measure(
                "Health/Check, 2 workers", server.address, server.pid, "health", channels=channels
            )
            rows["hold_many_2"] = meter.measure(
                f"HoldSeats, {len(world.showtimes)} showtimes, 2 workers",
                server.address,
                server.pid,
                "hold",
                pairs=world.pairs(self.rng),
                customers=world.customers,
                channels=channels,
            )
            self.results.doubles += int(await scalar(db, DOUBLE_CLAIMS_SQL))
            await reset_holds(db, self.args.history_holds)
        finally:
            server.stop()

    async def sweep(self, meter: Meter, world: World, db: AsyncDb) -> None:
        args = self.args
        if "sweep" not in args.phases:
            return
        load = f"HoldSeats c={args.sweep_concurrency}" if args.sweep_concurrency else "no other load"
        progress(f"sweep: a server sweeping every {args.sweep_interval:g} s, {load}")
        stop_file = self.log_dir / "sweep-over"
        server = self.server(CINEMA_SWEEP_INTERVAL_SECONDS=str(args.sweep_interval))
        try:
            # The expired holds appear at once, with their commit, while the HoldSeats load runs:
            # the sweep is timed from that commit, under that load.
            async with db.transaction():
                progress(f"sweep: seeding {args.sweep_holds:,} expired holds")
                showtimes = await seed_expired_holds(db, world, args)
                seats = int(await scalar(db, "SELECT count(*) FROM booking.seat_claims WHERE status = 'HELD'"))
                loaded = None
                if args.sweep_concurrency:
                    loaded = meter.run(
                        f"HoldSeats during the sweep, c={args.sweep_concurrency}",
                        server.address,
                        server.pid,
                        "hold",
                        concurrency=args.sweep_concurrency,
                        pairs=world.pairs(self.rng),
                        customers=world.customers,
                        duration=600,
                        stop_file=str(stop_file),
                    )
                    window_opens = loaded[1][1]
                    await asyncio.sleep(max(0.0, window_opens - time.time()))
            began = time.perf_counter()
            pool_before = meter.application_cpu()
            seconds = float("nan")
            while time.perf_counter() - began < args.sweep_timeout:
                if int(await scalar(db, SWEEP_LEFT_SQL["expired ACTIVE holds"])) == 0:
                    seconds = time.perf_counter() - began
                    break
                await asyncio.sleep(0.1)
            pool_cpu = sum(
                cpu - pool_before.get(pid, (name, 0.0))[1]
                for pid, (name, cpu) in meter.application_cpu().items()
                if name == "cinema-grpc"
            )
            stop_file.touch()
            during = meter.finish(*loaded, wait_window=False) if loaded is not None else None
        finally:
            server.stop()
        left = {name: int(await scalar(db, sql)) for name, sql in SWEEP_LEFT_SQL.items()}
        cursor = await db.execute(SWEEP_OUTCOME_SQL, {"showtimes": showtimes})
        outcome = await cursor.fetchone()
        assert outcome is not None
        self.results.doubles += left["double claims"]
        await reset_holds(db, self.args.history_holds)
        self.results.sweep = Sweep(
            holds=args.sweep_holds,
            seats=seats,
            showtimes=len(showtimes),
            seconds=seconds,
            expired_holds=int(outcome[0]),
            released_claims=int(outcome[1]),
            announced_free=int(outcome[2]),
            version_mismatches=int(outcome[3]),
            left=left,
            during=during,
            request_pool_pg_cpu_s=pool_cpu,
        )


# ----------------------------------------------------------------------------- the report


class Table:
    """A plain-text table, columns aligned."""

    def __init__(self, headings: Sequence[str]) -> None:
        self.headings = tuple(headings)
        self.rows: list[tuple[str, ...]] = []

    def add(self, *cells: str) -> None:
        self.rows.append(tuple(cells) + ("",) * (len(self.headings) - len(cells)))

    def render(self) -> str:
        rows = [self.headings, *self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.headings))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def failures_text(failures: Counter[str]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in failures.most_common()) or "none"


LOAD_HEADINGS = (
    "measure",
    "c",
    "rate /s",
    "p50 / p99 ms",
    "server CPU ms/call",
    "PG CPU ms/call",
    "of which backends",
    "of ceiling",
)


def load_table(results: Results) -> Table:
    table = Table((*LOAD_HEADINGS, "target", "verdict"))
    ceiling = results.ceiling_rate

    def add(row: Row, target: str = "", ok: bool | None = None) -> None:
        share = f"{row.rate / ceiling:.1%}" if ceiling == ceiling and ceiling else ""
        table.add(
            row.name,
            str(row.concurrency),
            f"{row.rate:,.0f}",
            f"{row.p50_ms:,.1f} / {row.p99_ms:,.1f}",
            f"{row.server_ms:.3f}",
            f"{row.pg_ms:.3f}",
            f"{row.pg_backend_ms:.3f}",
            share,
            target,
            "" if ok is None else verdict(ok),
        )
        if row.failures:
            table.add(f"  failures: {failures_text(row.failures)}", verdict="!")
        if row.note:
            table.add(f"  {row.note}")

    def more_targets(target: str, ok: bool) -> None:
        table.add(*[""] * len(LOAD_HEADINGS), target, verdict(ok))

    for row in results.ceilings:
        add(row)
    rows = results.rows
    for key in ("health", "get_showtime", "seat_map", "hold_many", "hold_one", "health_2", "hold_many_2"):
        row = rows.get(key)
        if row is None:
            continue
        if key == "get_showtime":
            add(row, f"<= {GET_SHOWTIME_CPU_TARGET} ms server", row.server_ms <= GET_SHOWTIME_CPU_TARGET)
        elif key == "seat_map":
            add(row, f"<= {SEAT_MAP_CPU_TARGET} ms server", row.server_ms <= SEAT_MAP_CPU_TARGET)
        elif key == "hold_many":
            add(row, f">= {HOLD_RATE_TARGET:,.0f}/s", row.rate >= HOLD_RATE_TARGET)
            more_targets(
                f">= {HOLD_SHARE_TARGET:.0%} of ceiling", ceiling == ceiling and row.rate >= HOLD_SHARE_TARGET * ceiling
            )
            more_targets(f"<= {HOLD_SERVER_CPU_TARGET} ms server", row.server_ms <= HOLD_SERVER_CPU_TARGET)
            more_targets(f"<= {HOLD_PG_CPU_TARGET} ms PG", row.pg_ms <= HOLD_PG_CPU_TARGET)
        elif key == "hold_one":
            add(row, f">= {ONE_SHOWTIME_RATE_TARGET:,.0f}/s", row.rate >= ONE_SHOWTIME_RATE_TARGET)
        elif key == "hold_many_2" and "hold_many" in rows and rows["hold_many"].rate:
            add(row, f"{row.rate / rows['hold_many'].rate:.2f}x 1 worker")
        else:
            add(row)
    return table


def phase_table(results: Results, args: argparse.Namespace) -> Table:
    table = Table(("measure", "value", "target", "verdict"))
    if not results.workers_supported:
        table.add("2 workers vs 1", "not measured: this code's serve has no --workers")
    if (con := results.contention) is not None:
        table.add(
            f"contention: winners of {con.clients} clients for {con.seats} seats",
            f"{con.winners} ({con.seats_won} distinct seats)",
            str(con.seats),
            verdict(con.winners == con.seats == con.seats_won),
        )
        table.add("  refusals", failures_text(con.refusals))
        table.add(
            "  refusal p50 / p99",
            f"{con.refusal_p50_ms:,.0f} / {con.refusal_p99_ms:,.0f} ms",
            f"p99 < {REFUSAL_P99_TARGET_MS:,.0f} ms",
            verdict(con.refusal_p99_ms < REFUSAL_P99_TARGET_MS),
        )
        table.add("  slowest answer", f"{con.slowest_ms:,.0f} ms")
    table.add("double claims in SQL (every hold phase)", str(results.doubles), "0", verdict(results.doubles == 0))
    if (fan := results.fan_out) is not None:
        p50, p99 = loadgen.percentile(fan.delays_ms, 50), loadgen.percentile(fan.delays_ms, 99)
        table.add(
            f"fan-out: watchers with a snapshot ({args.watch_channels} channels)",
            f"{fan.snapshots} / {fan.watchers} in {fan.snapshot_seconds:.1f} s",
            str(fan.watchers),
            "" if fan.snapshots == fan.watchers else "!",
        )
        table.add(
            f"  changes received ({args.events} holds x watchers)",
            f"{len(fan.delays_ms):,} / {fan.expected:,}",
            f"{args.events * fan.watchers:,}",
            "" if len(fan.delays_ms) == args.events * fan.watchers else "!",
        )
        table.add(
            "  delivery delay p50 / p99",
            f"{p50:,.1f} / {p99:,.1f} ms",
            f"p99 < {DELIVERY_P99_TARGET_MS:g} ms",
            verdict(p99 < DELIVERY_P99_TARGET_MS),
        )
        table.add("  HoldSeats p50 while watched", f"{fan.hold_p50_ms:,.1f} ms")
        if fan.errors:
            table.add("  watcher errors", failures_text(fan.errors), "none", "!")
    if (sweep := results.sweep) is not None:
        table.add(
            f"sweeper: {sweep.holds:,} expired holds ({sweep.seats:,} seats, {sweep.showtimes} showtimes)",
            f"{sweep.seconds:.1f} s",
            f"< {SWEEP_TARGET_SECONDS:g} s",
            verdict(sweep.seconds < SWEEP_TARGET_SECONDS),
        )
        if (during := sweep.during) is None:
            table.add("  HoldSeats during the sweep", "none (--sweep-concurrency 0)", "", "")
        else:
            table.add(
                f"  HoldSeats during the sweep, c={during.concurrency}",
                f"{during.rate:,.0f}/s, p50/p99 {during.p50_ms:,.1f}/{during.p99_ms:,.1f} ms"
                if during.calls
                else "none: the sweep was over before the load began",
                "",
                "!" if during.failures else "",
            )
        if during is not None and during.failures:
            table.add("  failed HoldSeats during the sweep", failures_text(during.failures))
        table.add(
            "  PostgreSQL CPU of the request pool (the sweeper's transactions)",
            f"{sweep.request_pool_pg_cpu_s:.1f} s",
            "",
            "",
        )
        table.add(
            "  holds EXPIRED / claims RELEASED / announced FREE",
            f"{sweep.expired_holds:,} / {sweep.released_claims:,} / {sweep.announced_free:,}",
            f"{sweep.holds:,} / {sweep.seats:,} / {sweep.seats:,}",
            verdict(sweep.clean),
        )
        table.add(
            f"  left: {' / '.join(sweep.left)}",
            " / ".join(map(str, sweep.left.values())),
            "0",
            verdict(not any(sweep.left.values())),
        )
    return table


def figures_of(results: Results) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "ceilings": [row.figures() for row in results.ceilings],
        "ceiling_rate": results.ceiling_rate,
        "rows": {key: {"name": row.name, **row.figures()} for key, row in results.rows.items()},
        "double_claims": results.doubles,
        "loads": results.loads,
    }
    if (con := results.contention) is not None:
        figures["contention"] = {
            "clients": con.clients,
            "seats": con.seats,
            "winners": con.winners,
            "seats_won": con.seats_won,
            "refusals": dict(con.refusals),
            "refusal_p50_ms": con.refusal_p50_ms,
            "refusal_p99_ms": con.refusal_p99_ms,
            "slowest_ms": con.slowest_ms,
        }
    if (fan := results.fan_out) is not None:
        figures["fan_out"] = {
            "watchers": fan.watchers,
            "snapshots": fan.snapshots,
            "snapshot_seconds": fan.snapshot_seconds,
            "received": len(fan.delays_ms),
            "expected": fan.expected,
            "delivery_p50_ms": loadgen.percentile(fan.delays_ms, 50),
            "delivery_p99_ms": loadgen.percentile(fan.delays_ms, 99),
            "errors": dict(fan.errors),
        }
    if (sweep := results.sweep) is not None:
        figures["sweep"] = {
            "holds": sweep.holds,
            "seats": sweep.seats,
            "seconds": sweep.seconds,
            "clean": sweep.clean,
            "left": sweep.left,
            "during": sweep.during.figures() if sweep.during is not None else None,
            "request_pool_pg_cpu_s": sweep.request_pool_pg_cpu_s,
        }
    return figures


def code_version() -> str:
    """The commit measured, and whether the server's code had uncommitted changes."""
    import cinema_grpc  # noqa: PLC0415 - where the measured code comes from

    root = Path(cinema_grpc.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "cinema_grpc"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return f"{root} (not a git checkout)"
    return f"commit {commit}" + (f" with {len(changed)} uncommitted files in cinema_grpc/" if changed else "")


def header(args: argparse.Namespace, where: str, results: Results, command: str) -> str:
    loads = ", ".join(f"{value:.2f} {moment}" for moment, value in results.loads.items())
    return "\n".join(
        [
            f"cinema-grpc booking benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"command   {command}",
            f"code      {code_version()}",
            f"machine   {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()},"
            f" grpcio {grpc.__version__}",
            f"load      1-minute load average {loads} (anything else on the machine counts too)",
            f"database  {where}",
            f"server    `cinema-grpc serve` in its own process, INFO JSON logs to a file,"
            f" pool {args.db_pool_size} + {args.db_max_overflow}, hold pool {args.db_hold_pool_size}"
            f" (batches of up to {args.db_hold_batch_size}),"
            f" seat events {'Redis' if args.redis_url else 'default bus'}",
            f"clients   {args.processes} load-generator processes, {args.channels} channels in all,"
            f" {args.duration:g} s measured after {args.warmup:g} s warm-up, closed loop",
            "CPU       from /proc: the server's process tree and every PostgreSQL process, over the"
            " measured window, divided by the calls completed in it",
            "ceiling   empty RPC on a bare grpc.aio server in its own process (mean of the runs shown)",
        ]
    )


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per row (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds of load before each row")
    parser.add_argument("--lead", type=float, default=1.5, help="seconds for the clients to connect (default 1.5)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes (default 2)")
    parser.add_argument("--channels", type=int, default=4, help="client channels in all (default 4)")
    parser.add_argument("--database-url", help="PostgreSQL server to use (a fresh database is made and dropped)")
    parser.add_argument("--redis-url", help="send seat events through this Redis")
    parser.add_argument("--db-pool-size", type=int, default=32, help="the server's pool (default 32)")
    parser.add_argument(
        "--db-hold-pool-size", type=int, default=8, help="the server's pool for plain holds (default 8)"
    )
    parser.add_argument(
        "--db-hold-batch-size",
        type=int,
        default=16,
        help="most plain holds per transaction when holds queue for a connection (default 16; 1: each alone)",
    )
    parser.add_argument(
        "--db-max-overflow",
        type=int,
        default=0,
        help="its overflow (default 0: overflow connections open and close under load)",
    )
    parser.add_argument("--showtimes", type=int, default=100)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--seats-per-row", type=int, default=20)
    parser.add_argument("--customers", type=int, default=128, help="signed-in customers (99 holds each at most)")
    parser.add_argument("--contention-clients", type=int, default=500)
    parser.add_argument("--contention-seats", type=int, default=10)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--watch-channels", type=int, default=40)
    parser.add_argument("--events", type=int, default=20, help="holds made while the watchers watch")
    parser.add_argument(
        "--history-holds", type=int, default=20_000, help="ended holds in the tables before each hold phase"
    )
    parser.add_argument("--sweep-holds", type=int, default=100_000)
    parser.add_argument("--sweep-seats-per-hold", type=int, default=2)
    parser.add_argument(
        "--sweep-concurrency", type=int, default=16, help="HoldSeats in flight while it sweeps (0: no other load)"
    )
    parser.add_argument("--sweep-interval", type=float, default=0.25, help="the sweeping server's job interval")
    parser.add_argument("--sweep-timeout", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=7, help="random seed of the seat order")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="sample the server with py-spy during each row (folded stacks to DIR)",
    )
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated (default {','.join(PHASES)})")
    args = parser.parse_args(argv)
    args.phases = {phase.strip() for phase in args.phases.split(",") if phase.strip()}
    if unknown := args.phases - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    args.signing_key = secrets.token_urlsafe(48)
    return args


def execute(args: argparse.Namespace) -> tuple[str, Results]:
    """The whole booking benchmark on a fresh database: (where the database is, results)."""
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    progress("starting PostgreSQL")
    with (
        provision_database(args.database_url) as (url, where),
        tempfile.TemporaryDirectory(prefix="cinema-bench-logs-") as logs,
        ProcessPoolExecutor(max_workers=max(args.processes, 1), mp_context=get_context("spawn")) as pool,
    ):
        results = asyncio.run(Run(args, url, Path(logs), pool).execute())
    return where, results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/booking_bench.py", *(sys.argv[1:] if argv is None else argv)])
    where, results = execute(args)
    print(header(args, where, results, command))
    print()
    print(load_table(results).render())
    print()
    print(phase_table(results, args).render())
    if args.json:
        args.json.write_text(json.dumps(figures_of(results), indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
