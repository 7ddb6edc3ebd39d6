"""What operators rely on: Prometheus metrics, and health that follows the database."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import Iterator

import grpc
import psycopg
from grpc_health.v1 import health, health_pb2
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError

from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.monitoring import DatabaseHealth, refresh_selling_gauges
from cinema_grpc.storage.database import sqlalchemy_url
from tests.booking_data import customer, hold, open_sale
from tests.conftest import RunningServer

Db = psycopg.Connection[tuple[object, ...]]


def scrape(server: RunningServer) -> str:
    assert server.server is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_metrics_count_rpcs_by_method_and_status_and_show_the_selling_state(
    server: RunningServer, screening: ScreeningServiceStub, channel: grpc.Channel, db: Db
) -> None:
    sale = open_sale(screening)
    ana = customer(channel, db)
    hold(ana, sale, "C1")
    with contextlib.suppress(grpc.RpcError):
        hold(ana, sale, "C1")
    assert server.server is not None
    server.run(refresh_selling_gauges(server.server.database.engine))
    # The gauges are the process's: other tests' servers may have taken them since this one began.
    server.server.publish_pool_gauges(server.settings)
    text = scrape(server)
    method = "/cinema.booking.v1.BookingService/HoldSeats"
    assert metric(text, "cinema_rpc_requests_total", method=method, code="OK", reason="") >= 1
    assert (
        metric(
            text, "cinema_rpc_requests_total", method=method, code="FAILED_PRECONDITION", reason="SEAT_ALREADY_TAKEN"
        )
        >= 1
    )
    assert metric(text, "cinema_rpc_duration_seconds_count", method=method) >= 2
    assert metric(text, "cinema_active_holds") == 1
    assert "cinema_stream_watchers" in text and "cinema_database_up" in text
    # The pools: the hold went through the plain holds' pool, the rest through the requests' pool.
    settings = server.settings
    assert metric(text, "cinema_db_pool_size", pool="holds") == settings.db_hold_pool_size
    assert metric(text, "cinema_db_pool_size", pool="requests") == settings.db_pool_size + settings.db_max_overflow
    for pool in ("holds", "requests"):
        open_connections = sum(
            metric(text, "cinema_db_pool_connections", pool=pool, state=s) for s in ("in_use", "idle")
        )
        assert open_connections >= 1, pool
    assert metric(text, "cinema_db_pool_waiting", pool="holds") == 0
    # Each transaction of the plain holds' pool, by how many holds it wrote (a hold alone: 1).
    assert metric(text, "cinema_db_hold_batch_size_bucket", le="1.0") >= 2
    assert "cinema_db_hold_batches_refused_total" in text


def test_health_is_not_serving_while_the_database_is_unreachable_and_serving_again_after(database_url: str) -> None:
    async def scenario() -> list[int]:
        servicer = health.aio.HealthServicer()
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        alive = create_engine(sqlalchemy_url(database_url))
        seen = []
        probe = DatabaseHealth(
            sqlalchemy_url(database_url).set(host="127.0.0.1", port=9, query={}),
            servicer,
            ["cinema.booking.v1.BookingService"],
        )
        try:
            assert not await probe.probe(within_seconds=2)
            seen.append((await servicer.Check(health_pb2.HealthCheckRequest(service=""), None)).status)
            await probe.close()
            probe._engine = alive
            assert await probe.probe()
            seen.append(
                (
                    await servicer.Check(
                        health_pb2.HealthCheckRequest(service="cinema.booking.v1.BookingService"), None
                    )
                ).status
            )
        finally:
            await probe.close()
        return seen

    assert asyncio.run(scenario()) == [
        health_pb2.HealthCheckResponse.NOT_SERVING,
        health_pb2.HealthCheckResponse.SERVING,
    ]


def test_a_busy_pool_is_not_an_unreachable_database(server: RunningServer) -> None:
    """The health probe has its own connection: with every request connection taken, the
    replica stays SERVING (a load balancer must not drain a replica for being busy)."""
    running = server.server
    assert running is not None

    async def with_the_pool_exhausted() -> bool:
        settings = running.settings
        async with contextlib.AsyncExitStack() as taken:
            for _ in range(settings.db_pool_size + settings.db_max_overflow):
                await taken.enter_async_context(running.database.engine.connect())
            return await running.database_health.probe()

    assert server.run(with_the_pool_exhausted())


def test_a_database_refusing_more_connections_is_up_not_unreachable(database_url: str) -> None:
    """PostgreSQL at max_connections answers "too many clients": it is up (the request pools
    still work), so replicas are not drained because their probe could not get in."""

    class Full(Exception):
        sqlstate = "53300"

    class FullEngine:
        def connect(self) -> contextlib.AbstractContextManager[None]:
            @contextlib.contextmanager
            def refused() -> Iterator[None]:
                raise DBAPIError("connect", None, Full("sorry, too many clients already"))
                yield

            return refused()

        def dispose(self) -> None:
            return None

    async def scenario() -> bool:
        servicer = health.aio.HealthServicer()
        probe = DatabaseHealth(sqlalchemy_url(database_url), servicer, [])
        await probe.close()
        probe._engine = FullEngine()  # type: ignore[assignment]
        return await probe.probe()

    assert asyncio.run(scenario())


def test_a_cpu_saturated_server_is_not_reported_as_a_lost_database(server: RunningServer) -> None:
    """The event loop busy for longer than the probe's time limit (as on a machine whose cores
    are all taken) must not turn into NOT_SERVING: the probe times the database, not the loop."""
    running = server.server
    assert running is not None

    async def probe_while_the_loop_is_busy() -> tuple[bool, bool]:
        async def hog() -> None:
            # Starts once the probe waits for its first answer, and keeps the loop that long.
            until = time.monotonic() + 2.5
            while time.monotonic() < until:  # CPU work that never yields, as a saturated loop
                pass

        up, _ = await asyncio.gather(running.database_health.probe(within_seconds=2), hog())
        return up, running.database_health.serving

    assert server.run(probe_while_the_loop_is_busy()) == (True, True)
