"""The load generator: runs in processes of its own (never the server's), started by
booking_bench.py through a process pool. Each function takes plain data and returns plain data.

Closed loop: N workers, each with one request in flight; only requests that complete inside the
window (absolute wall-clock times, the same in every process) count, so the benchmark can read
the server's and PostgreSQL's CPU time at the window's edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub

Metadata = tuple[tuple[str, str], ...]
# Every client channel gets a TCP connection of its own: without this option gRPC shares one
# subchannel (one connection) between all channels with the same target and arguments.
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
# Settings caps max_active_holds_per_customer at 100: a customer is never asked for more than this.
HOLDS_PER_CUSTOMER = 99

_loop: asyncio.AbstractEventLoop | None = None


def _run(coroutine: Awaitable[Any]) -> Any:
    """One event loop for the life of the process (grpc.aio keeps state bound to its loop)."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop.run_until_complete(coroutine)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call (google.rpc details), else its status code."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return error.code().name


def open_channels(address: str, count: int) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(count)]


async def ready(channels: Sequence[grpc.aio.Channel]) -> None:
    await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), timeout=60)


async def close_channels(channels: Sequence[grpc.aio.Channel]) -> None:
    await asyncio.gather(*(ch.close() for ch in channels))


class Exhausted(Exception):
    """The run ran out of free seats or of customers below their hold limit."""


@dataclass
class LoadSpec:
    """One process's share of a closed-loop run."""

    address: str
    kind: str  # health | get_showtime | seat_map | hold
    concurrency: int
    channels: int
    load_start: float  # time.time(): the warm-up begins
    window_start: float  # the measured window begins
    window_end: float
    showtimes: list[str] = field(default_factory=list)  # reads: cycled through
    pairs: list[tuple[str, str]] = field(default_factory=list)  # holds: (showtime, seat), each used once
    customers: list[Metadata] = field(default_factory=list)  # holds: round-robin
    stop_file: str = ""  # holds during the sweep: stop once this file exists


@dataclass
class LoadResult:
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    exhausted_at: float | None = None  # time.time() when the run ran out of work
    note: str = ""


def _operation(spec: LoadSpec, channels: Sequence[grpc.aio.Channel]) -> Callable[[int], Awaitable[str | None]]:
    if spec.kind == "health":
        health_stubs = [health_pb2_grpc.HealthStub(ch) for ch in channels]
        check = health_pb2.HealthCheckRequest(service="")

        async def health_check(i: int) -> str | None:
            await health_stubs[i % len(health_stubs)].Check(check, timeout=30)
            return None

        return health_check
    if spec.kind == "get_showtime":
        screening = [ScreeningServiceStub(ch) for ch in channels]
        requests = [spb.GetShowtimeRequest(showtime_id=s) for s in spec.showtimes]
        counter = iter(range(1 << 62))

        async def get_showtime(i: int) -> str | None:
            await screening[i % len(screening)].GetShowtime(requests[next(counter) % len(requests)], timeout=30)
            return None

        return get_showtime
    if spec.kind == "seat_map":
        booking = [BookingServiceStub(ch) for ch in channels]
        maps = [bpb.GetSeatMapRequest(showtime_id=s) for s in spec.showtimes]
        counter = iter(range(1 << 62))

        async def seat_map(i: int) -> str | None:
            await booking[i % len(booking)].GetSeatMap(maps[next(counter) % len(maps)], timeout=30)
            return None

        return seat_map
    if spec.kind == "hold":
        booking = [BookingServiceStub(ch) for ch in channels]
        pairs = iter(spec.pairs)
        issued = 0
        limit = len(spec.customers) * HOLDS_PER_CUSTOMER

        async def hold(i: int) -> str | None:
            nonlocal issued
            if issued >= limit:
                raise Exhausted("every customer is at the active-hold limit")
            pair = next(pairs, None)
            if pair is None:
                raise Exhausted("no free seat left")
            customer = spec.customers[issued % len(spec.customers)]
            issued += 1
            request = bpb.HoldSeatsRequest(showtime_id=pair[0], seat_ids=[pair[1]])
            await booking[i % len(booking)].HoldSeats(request, metadata=customer, timeout=30)
            return None

        return hold
    raise ValueError(f"unknown load kind {spec.kind!r}")


async def _closed_loop(spec: LoadSpec) -> LoadResult:
    result = LoadResult()
    channels = open_channels(spec.address, spec.channels)
    stop_file = spec.stop_file
    try:
        await ready(channels)
        operation = _operation(spec, channels)
        stopped = False
        await asyncio.sleep(max(0.0, spec.load_start - time.time()))

        async def worker(i: int) -> None:
            nonlocal stopped
            while not stopped:
                started = time.perf_counter()
                if time.time() >= spec.window_end:
                    return
                if stop_file and i == 0 and _exists(stop_file):
                    stopped = True
                    result.exhausted_at = time.time()
                    return
                failure = None
                try:
                    await operation(i)
                except Exhausted as why:
                    if not stopped:
                        stopped = True
                        result.exhausted_at = time.time()
                        result.note = f"stopped early: {why}"
                    return
                except grpc.aio.AioRpcError as error:
                    failure = reason_of(error)
                done = time.perf_counter()
                if spec.window_start <= time.time() <= spec.window_end:
                    if failure is None:
                        result.ok += 1
                        result.latencies_ms.append((done - started) * 1000)
                    else:
                        result.failures[failure] += 1

        await asyncio.gather(*(worker(i) for i in range(spec.concurrency)))
    finally:
        await close_channels(channels)
    return result


def _exists(path: str) -> bool:
    return os.path.exists(path)


def closed_loop(spec: LoadSpec) -> LoadResult:
    """Entry point in a worker process."""
    result: LoadResult = _run(_closed_loop(spec))
    return result


# ----------------------------------------------------------------------------- contention


@dataclass
class ContentionOutcome:
    winners: int
    seats_won: int
    refusals: Counter[str]
    refusal_ms: list[float]
    slowest_ms: float


async def _contention(address: str, showtime: str, seats: list[str], customers: list[Metadata], clients: int) -> Any:
    channels = open_channels(address, clients)
    try:
        await ready(channels)
        start = asyncio.Event()

        async def one(i: int) -> tuple[bpb.Hold | str, float]:
            stub = BookingServiceStub(channels[i])
            request = bpb.HoldSeatsRequest(showtime_id=showtime, seat_ids=[seats[i % len(seats)]])
            await start.wait()
            began = time.perf_counter()
            try:
                hold = await stub.HoldSeats(request, metadata=customers[i % len(customers)], timeout=120)
            except grpc.aio.AioRpcError as error:
                return reason_of(error), (time.perf_counter() - began) * 1000
            return hold, (time.perf_counter() - began) * 1000

        tasks = [asyncio.create_task(one(i)) for i in range(clients)]
        await asyncio.sleep(0.2)  # every task is waiting at the start line
        start.set()
        results = await asyncio.gather(*tasks)
    finally:
        await close_channels(channels)
    wins = [outcome for outcome, _ in results if isinstance(outcome, bpb.Hold)]
    refused = [(outcome, ms) for outcome, ms in results if isinstance(outcome, str)]
    return ContentionOutcome(
        winners=len(wins),
        seats_won=len({seat.seat_id for hold in wins for seat in hold.seats}),
        refusals=Counter(reason for reason, _ in refused),
        refusal_ms=[ms for _, ms in refused],
        slowest_ms=max(ms for _, ms in results),
    )


def contention(address: str, showtime: str, seats: list[str], customers: list[Metadata], clients: int) -> Any:
    """Every client, each on its own channel, asks for one of a few seats at the same moment."""
    return _run(_contention(address, showtime, seats, customers, clients))


# ----------------------------------------------------------------------------- fan-out


@dataclass
class FanOutOutcome:
    snapshots: int
    snapshot_seconds: float
    delays_ms: list[float]
    hold_p50_ms: float
    errors: Counter[str]


async def _fan_out(
    address: str, showtime: str, seats: list[str], holder: Metadata, watchers: int, channel_count: int
) -> FanOutOutcome:
    arrivals: dict[str, list[float]] = {seat: [] for seat in seats}
    all_arrived = {seat: asyncio.Event() for seat in seats}
    errors: Counter[str] = Counter()
    counts = {"snapshots": 0, "ended": 0}
    settled = asyncio.Event()
    channels = open_channels(address, channel_count)
    calls: list[Any] = []
    stopping = False

    def check_settled() -> None:
        if counts["snapshots"] + counts["ended"] >= watchers:
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
                        counts["snapshots"] += 1
                        check_settled()
                    continue
                for change in message.changes.changes:
                    seen = arrivals.get(change.seat_id)
                    if seen is not None and change.state == bpb.SEAT_STATE_HELD:
                        seen.append(now)
                        if len(seen) == counts["snapshots"]:
                            all_arrived[change.seat_id].set()
        except grpc.aio.AioRpcError as error:
            if not stopping:
                errors[reason_of(error)] += 1
        finally:
            if not has_snapshot:
                counts["ended"] += 1
                check_settled()

    delays: list[float] = []
    hold_ms: list[float] = []
    try:
        await ready(channels)
        began = time.perf_counter()
        tasks = [asyncio.create_task(watch(i)) for i in range(watchers)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled.wait(), timeout=120)
        snapshot_seconds = time.perf_counter() - began
        booking = BookingServiceStub(channels[0])
        for seat in seats:
            sent = time.perf_counter()
            await booking.HoldSeats(
                bpb.HoldSeatsRequest(showtime_id=showtime, seat_ids=[seat]), metadata=holder, timeout=30
            )
            answered = time.perf_counter()
            hold_ms.append((answered - sent) * 1000)
            if len(arrivals[seat]) < counts["snapshots"]:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_arrived[seat].wait(), timeout=10)
            delays.extend((arrived - answered) * 1000 for arrived in arrivals[seat])
        stopping = True
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await close_channels(channels)
    return FanOutOutcome(counts["snapshots"], snapshot_seconds, delays, percentile(hold_ms, 50), errors)


def fan_out(
    address: str, showtime: str, seats: list[str], holder: Metadata, watchers: int, channel_count: int
) -> FanOutOutcome:
    """Watchers on one showtime; holds one after another; the delay from each HoldSeats response
    to each watcher receiving that seat's change (one clock: this process)."""
    outcome: FanOutOutcome = _run(_fan_out(address, showtime, seats, holder, watchers, channel_count))
    return outcome


def warm_up() -> bool:
    """Imports done and the loop made, before any measured run."""
    _run(asyncio.sleep(0))
    return True
