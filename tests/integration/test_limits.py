"""Limits that keep one client from pinning the server: request size, a server-side time limit
for every unary RPC (whatever deadline the client sent, or none), a longest life for streams,
budgets for concurrent unary calls and for streams (streams never starve unary calls or health
checks), and a graceful shutdown that lets in-flight RPCs finish and ends
streams with a clear status."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.settings import Settings
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from tests.auth_client import sign_in, with_token
from tests.booking_data import Sale, open_sale
from tests.conftest import RunningServer
from tests.rpc_errors import RpcFailure, failure
from tests.stream_reader import StreamReader

Db = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def start_server(server_settings: Settings) -> Iterator[Callable[..., tuple[RunningServer, grpc.Channel]]]:
    """Starts a server of its own with some settings changed; stops it afterwards."""
    started: list[tuple[RunningServer, grpc.Channel]] = []

    def start(**changes: Any) -> tuple[RunningServer, grpc.Channel]:
        running = RunningServer(server_settings.model_copy(update=changes))
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        grpc.channel_ready_future(channel).result(timeout=10)
        started.append((running, channel))
        return running, channel

    yield start
    for running, channel in started:
        channel.close()
        if running.server is not None and running._thread.is_alive():
            running.stop()


def _sale_and_customer(channel: grpc.Channel, db: Db) -> tuple[Sale, BookingServiceStub]:
    admin = sign_in(channel, db, "ADMIN")[1].access_token
    sale = open_sale(ScreeningServiceStub(with_token(channel, admin)))
    token = sign_in(channel, db)[1].access_token
    return sale, BookingServiceStub(with_token(channel, token))


def _lock_showtime(db: Db, showtime_id: str) -> psycopg.Connection[tuple[object, ...]]:
    """A connection holding the showtime's seat lock, so every seat decision waits for it."""
    holder = psycopg.connect(db.info.dsn, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (advisory_key(LockNamespace.SHOWTIME_SEATS, showtime_id),))
    return holder


def _ending(watcher: StreamReader) -> grpc.RpcError:
    """Reads the stream until it fails; returns the error it ended with."""
    while True:
        try:
            watcher.next()
        except grpc.RpcError as error:
            return error


def test_a_request_larger_than_the_limit_is_refused(channel: grpc.Channel) -> None:
    screening = ScreeningServiceStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        screening.ListCinemas(spb.ListCinemasRequest(page_token="x" * (5 * 1024 * 1024)), timeout=10)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


def test_a_request_without_a_deadline_is_stopped_at_the_servers_limit(
    start_server: Callable[..., tuple[RunningServer, grpc.Channel]], db: Db
) -> None:
    _, channel = start_server(rpc_timeout_seconds=1.0, db_lock_timeout_ms=30_000)
    sale, booking = _sale_and_customer(channel, db)
    seat = sale.seat("B1")
    holder = _lock_showtime(db, sale.showtime.id)
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            booking.HoldSeats(bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[seat]))  # no deadline
        waited = time.monotonic() - started
    finally:
        holder.close()
    refused = failure(raised.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "SERVER_TIMEOUT")
    assert 0.9 < waited < 10
    # Nothing of the stopped request was kept, and the seat can be held now.
    assert db.execute("SELECT count(*) FROM booking.holds").fetchone() == (0,)
    hold = booking.HoldSeats(bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[seat]), timeout=10)
    assert [seat] == [s.seat_id for s in hold.seats]


def test_a_stream_ends_after_its_longest_life_and_resumes(
    start_server: Callable[..., tuple[RunningServer, grpc.Channel]], db: Db
) -> None:
    _, channel = start_server(stream_max_seconds=1.5)
    sale, booking = _sale_and_customer(channel, db)
    public = BookingServiceStub(channel)
    booking.HoldSeats(bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[sale.seat("B1")]))
    started = time.monotonic()
    watch = StreamReader(public.WatchSeatAvailability(bpb.WatchSeatAvailabilityRequest(showtime_id=sale.showtime.id)))
    try:
        version = watch.next().snapshot.version
        refused = failure(_ending(watch))
        assert 1.4 < time.monotonic() - started < 10
    finally:
        watch.close()
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "STREAM_LIFETIME_REACHED")
    assert refused.retry_delay_seconds == 0
    # Reconnecting with the version seen carries on with the events since.
    booking.HoldSeats(bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[sale.seat("B2")]))
    again = StreamReader(
        public.WatchSeatAvailability(
            bpb.WatchSeatAvailabilityRequest(showtime_id=sale.showtime.id, since_version=version)
        )
    )
    try:
        event = again.next()
    finally:
        again.close()
    assert event.WhichOneof("event") == "changes"
    assert event.changes.version == version + 1


def _refused_count(running: RunningServer, kind: str, reason: str, scope: str) -> float:
    """cinema_rpc_refused_total as the server's /metrics endpoint shows it."""
    assert running.server is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{running.server.metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cinema_rpc_refused_total" and sample.labels == {
                "kind": kind,
                "reason": reason,
                "scope": scope,
            }:
                return float(sample.value)
    return 0.0


def _serving(channel: grpc.Channel) -> bool:
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def _refusal_of(call: Any) -> RpcFailure:
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(call))
    return failure(raised.value)


def test_streams_past_the_servers_budget_are_refused_while_unary_calls_and_health_answer(
    start_server: Callable[..., tuple[RunningServer, grpc.Channel]], db: Db
) -> None:
    running, channel = start_server(max_streams=3, max_streams_per_address=100, max_concurrent_rpcs=5)
    sale, _ = _sale_and_customer(channel, db)
    public = BookingServiceStub(channel)
    request = bpb.WatchSeatAvailabilityRequest(showtime_id=sale.showtime.id)
    before = _refused_count(running, "stream", "STREAM_LIMIT_REACHED", "server")
    watchers = [StreamReader(public.WatchSeatAvailability(request)) for _ in range(3)]
    try:
        for watcher in watchers:
            watcher.next()
        refused = _refusal_of(public.WatchSeatAvailability(request, timeout=10))
        # Streams of grpc's own services (health Watch, reflection) share the stream budget.
        health_watch = _refusal_of(
            health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        )
        # Unary calls and health checks are not in the streams' budget: they still answer.
        seat_map = public.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id), timeout=10)
        assert _serving(channel)
    finally:
        for watcher in watchers:
            watcher.close()
    assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "STREAM_LIMIT_REACHED")
    assert refused.metadata["scope"] == "server"
    assert refused.metadata["limit"] == "3"
    assert refused.retry_delay_seconds == 5
    assert (health_watch.code, health_watch.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "STREAM_LIMIT_REACHED")
    assert len(seat_map.seats) == len(sale.hall.seats)
    assert _refused_count(running, "stream", "STREAM_LIMIT_REACHED", "server") == before + 2
    # Once the server has seen the streams end, there is room again.
    deadline = time.monotonic() + 10
    while True:
        again = StreamReader(public.WatchSeatAvailability(request))
        try:
            again.next()
            break
        except grpc.RpcError as error:
            assert failure(error).reason == "STREAM_LIMIT_REACHED"  # noqa: PT017
            assert time.monotonic() < deadline, "the stream budget did not free up after the streams ended"
            time.sleep(0.1)
        finally:
            again.close()


def test_one_address_and_one_caller_get_only_their_share_of_streams(
    start_server: Callable[..., tuple[RunningServer, grpc.Channel]], db: Db
) -> None:
    running, channel = start_server(max_streams=100, max_streams_per_address=3, max_streams_per_caller=1)
    sale, signed_in = _sale_and_customer(channel, db)
    public = BookingServiceStub(channel)
    request = bpb.WatchSeatAvailabilityRequest(showtime_id=sale.showtime.id)
    before = _refused_count(running, "stream", "STREAM_LIMIT_REACHED", "caller")
    own = StreamReader(signed_in.WatchSeatAvailability(request))
    watchers = [own]
    try:
        own.next()
        by_caller = _refusal_of(signed_in.WatchSeatAvailability(request, timeout=10))
        # Anonymous watchers from the same address are not that caller's: two more fit.
        watchers += [StreamReader(public.WatchSeatAvailability(request)) for _ in range(2)]
        for watcher in watchers[1:]:
            watcher.next()
        by_address = _refusal_of(public.WatchSeatAvailability(request, timeout=10))
        assert public.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id), timeout=10).seats
        assert _serving(channel)
    finally:
        for watcher in watchers:
            watcher.close()
    assert (by_caller.code, by_caller.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "STREAM_LIMIT_REACHED")
    assert (by_caller.metadata["scope"], by_caller.metadata["limit"]) == ("caller", "1")
    assert by_caller.retry_delay_seconds == 30
    assert (by_address.code, by_address.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "STREAM_LIMIT_REACHED")
    assert (by_address.metadata["scope"], by_address.metadata["limit"]) == ("address", "3")
    assert by_address.retry_delay_seconds == 30
    assert _refused_count(running, "stream", "STREAM_LIMIT_REACHED", "caller") == before + 1


def test_a_client_cannot_widen_its_address_share_of_streams_by_forwarding_other_addresses(
    start_server: Callable[..., tuple[RunningServer, grpc.Channel]], db: Db
) -> None:
    # The loopback peer is not a trusted proxy: each stream names another client, all count as one.
    channel = start_server(max_streams=100, max_streams_per_address=2, max_streams_per_caller=100)[1]
    sale = _sale_and_customer(channel, db)[0]
    public = BookingServiceStub(channel)
    request = bpb.WatchSeatAvailabilityRequest(showtime_id=sale.showtime.id)
    watchers = [
        StreamReader(public.WatchSeatAvailability(request, metadata=(("x-forwarded-for", f"198.51.100.{i}"),)))
        for i in (1, 2)
    ]
    try:
        for watcher in watchers:
            watcher.next()
        third = public.WatchSeatAvailability(request, timeout=10, metadata=(("x-forwarded-for", "198.51.100.3"),))
        refused = _refusal_of(third)
    finally:
        for watcher in watchers:
            watcher.close()
    assert (refused.reason, refused.metadata["scope"], refused.metadata["limit"]) == (
        "STREAM_LIMIT_REACHED",
        "address",
        "2",
    )


def test_unary_calls_beyond_their_cap_are_refused_with_a_reason_while_health_answers(
    start_server: Callable[..., tuple[RunningServer, grpc.Channel]], db: Db
) -> None:
    running, channel = start_server(max_concurrent_rpcs=1, db_lock_timeout_ms=30_000)
    sale, booking = _sale_and_customer(channel, db)
    public = BookingServiceStub(channel)
    before = _refused_count(running, "unary", "SERVER_BUSY", "server")
    holder = _lock_showtime(db, sale.showtime.id)
    with ThreadPoolExecutor(1) as pool:
        try:
            # One hold in flight, waiting for the showtime's lock: the unary budget is used up.
            pending = pool.submit(
                booking.HoldSeats,
                bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[sale.seat("B1")]),
                timeout=30,
            )
            waiting = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            deadline = time.monotonic() + 10
            while db.execute(waiting).fetchone() != (1,):
                assert time.monotonic() < deadline, "the hold did not reach the showtime lock"
                time.sleep(0.05)
            with pytest.raises(grpc.RpcError) as raised:
                public.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id), timeout=10)
            assert _serving(channel)
            # Streams have their own budget: a watcher is still admitted.
            watcher = StreamReader(
                public.WatchSeatAvailability(bpb.WatchSeatAvailabilityRequest(showtime_id=sale.showtime.id))
            )
            try:
                assert watcher.next().snapshot.version >= 0
            finally:
                watcher.close()
        finally:
            holder.close()
        assert pending.result().seats
    busy = failure(raised.value)
    assert (busy.code, busy.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SERVER_BUSY")
    assert busy.retry_delay_seconds == 1
    assert _refused_count(running, "unary", "SERVER_BUSY", "server") == before + 1
    # The finished hold gave its room back.
    assert public.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id), timeout=10).seats


def test_shutdown_lets_in_flight_rpcs_finish_and_ends_streams_clearly(
    start_server: Callable[..., tuple[RunningServer, grpc.Channel]], db: Db
) -> None:
    # The holds wait for the showtime's lock (and those queued behind them for a connection)
    # while the server starts to drain: on a loaded machine that can take longer than the
    # default lock timeout (3 s) and pool timeout (5 s).
    running, channel = start_server(shutdown_grace_seconds=10, db_lock_timeout_ms=20000, db_pool_timeout_seconds=30)
    sale, _ = _sale_and_customer(channel, db)
    public = BookingServiceStub(channel)
    seats = sale.seats(*(f"C{n}" for n in range(1, 9)))
    customers = [BookingServiceStub(with_token(channel, sign_in(channel, db)[1].access_token)) for _ in seats]
    watchers = [
        StreamReader(public.WatchSeatAvailability(bpb.WatchSeatAvailabilityRequest(showtime_id=sale.showtime.id)))
        for _ in range(5)
    ]
    for watcher in watchers:
        watcher.next()
    holder = _lock_showtime(db, sale.showtime.id)
    assert running.server is not None and running.server.database.plain_holds is not None
    plain_holds = running.server.database.plain_holds
    with ThreadPoolExecutor(len(seats)) as pool:
        # Eight holds in flight: the first waits for the showtime's lock, the seven behind it
        # queue to go together once it is done.
        pending = [
            pool.submit(who.HoldSeats, bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[seat]), timeout=30)
            for who, seat in zip(customers, seats, strict=True)
        ]
        deadline = time.monotonic() + 10
        waiting = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        while db.execute(waiting).fetchone() != (1,) or plain_holds.usage()[2] != len(seats) - 1:
            assert time.monotonic() < deadline, "the holds did not reach the showtime lock"
            time.sleep(0.05)
        stopping = threading.Thread(target=running.stop)
        stopping.start()
        # The server is draining (it refuses new calls) before the holds can go on.
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                draining = answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
            except grpc.RpcError:
                draining = True
            if draining:
                break
            assert time.monotonic() < deadline, "the server did not start draining"
            time.sleep(0.05)
        holder.close()  # the lock is free: the in-flight holds go on while the server drains
        holds = [future.result() for future in pending]
        stopping.join(30)
    assert sorted(hold.seats[0].seat_id for hold in holds) == sorted(seats)
    for watcher in watchers:
        refused = failure(_ending(watcher))
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "SERVER_SHUTTING_DOWN")
        watcher.close()
    with pytest.raises(grpc.RpcError) as raised:
        public.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id), timeout=2)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
