"""Seat events cross servers that share one PostgreSQL without Redis: LISTEN/NOTIFY says which
showtime moved to which version, the event log says what changed; a notification that never
came is made up for from the log; Redis replicas decode only the showtimes they watch."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters import availability_bus
from cinema_grpc.adapters.availability_bus import LocalHub, PostgresBus, RedisBus
from cinema_grpc.domain.booking.model import SeatChange, SeatEvent, SeatState
from cinema_grpc.settings import Settings
from tests.booking_data import Customer, Sale, hold
from tests.conftest import RunningServer, _libpq
from tests.screening_data import grid, make_hall
from tests.stream_reader import StreamReader

Db = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def second_server(server_settings: Settings) -> Iterator[RunningServer]:
    """Another server on the same database, as another worker process or replica would be."""
    running = RunningServer(server_settings)
    yield running
    running.stop()


def test_a_watcher_on_one_server_gets_the_holds_made_through_another_in_order(
    second_server: RunningServer, ana: Customer, sale: Sale
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{second_server.port}") as other:
        reader = StreamReader(
            BookingServiceStub(other).WatchSeatAvailability(
                bpb.WatchSeatAvailabilityRequest(showtime_id=sale.showtime.id)
            )
        )
        try:
            version = reader.next().snapshot.version
            labels = ("B1", "C3", "D4")  # three: the most one customer may hold
            for label in labels:
                hold(ana, sale, label)  # through the first server
            received = [reader.next(timeout=10).changes for _ in labels]
            assert [event.version for event in received] == [version + i for i in range(1, len(labels) + 1)]
            assert all(event.HasField("change_time") for event in received)
            assert [[(c.seat_id, c.state) for c in event.changes] for event in received] == [
                [(sale.seat(label), bpb.SEAT_STATE_HELD)] for label in labels
            ]
        finally:
            reader.close()


def test_a_watcher_on_one_server_gets_the_new_halls_seat_map_when_another_moves_the_showtime(
    second_server: RunningServer, screening: ScreeningServiceStub, sale: Sale
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{second_server.port}") as other:
        reader = StreamReader(
            BookingServiceStub(other).WatchSeatAvailability(
                bpb.WatchSeatAvailabilityRequest(showtime_id=sale.showtime.id)
            )
        )
        try:
            version = reader.next().snapshot.version
            studio = make_hall(screening, sale.hall.cinema_id, "Studio", grid("FG", 6))
            screening.RescheduleShowtime(  # through the first server
                spb.RescheduleShowtimeRequest(
                    showtime_id=sale.showtime.id, start_time=sale.showtime.start_time, hall_id=studio.id
                )
            )
            fresh = reader.next(timeout=10)
            assert fresh.WhichOneof("event") == "snapshot"
            assert fresh.snapshot.version == version + 1
            assert [s.seat_id for s in fresh.snapshot.seats] == [s.id for s in studio.seats]
        finally:
            reader.close()


def test_an_event_whose_notification_never_came_reaches_the_watchers_from_the_log(
    database_url: str, ana: Customer, sale: Sale, db: Db
) -> None:
    showtime_id = uuid.UUID(sale.showtime.id)
    silent_seat = uuid.UUID(sale.seat("F1"))

    async def scenario() -> tuple[SeatEvent, SeatEvent]:
        bus = PostgresBus(_libpq(database_url), LocalHub(), check_seconds=0.2)
        # The process that made the hold, as far as notifications go: the test server may publish
        # through Redis (REDIS_URL), so the notification of its hold is sent from here.
        holder = PostgresBus(_libpq(database_url), LocalHub())
        await bus.start()
        await holder.start()
        watch = bus.watch(showtime_id)
        try:
            # Notified by the process that made the hold: read from the log and delivered.
            held = await asyncio.to_thread(hold, ana, sale, "B1")
            await holder.publish([SeatEvent(showtime_id, held.seat_map_version, ())])
            notified = await asyncio.wait_for(watch.next(), 10)
            # Written to the log with no notification (its process died before sending one).
            await asyncio.to_thread(
                db.execute,
                "INSERT INTO booking.seat_events (showtime_id, version, changes) VALUES (%s, %s, %s)",
                (showtime_id, notified.version + 1, json.dumps([[str(silent_seat), "HELD"]])),
            )
            found = await asyncio.wait_for(watch.next(), 10)
            return notified, found
        finally:
            watch.close()
            await holder.stop()
            await bus.stop()

    notified, found = asyncio.run(scenario())
    assert notified.changes == (SeatChange(uuid.UUID(sale.seat("B1")), SeatState.HELD),)
    assert notified.recorded_at is not None  # the time the change was recorded, from the log
    assert (found.showtime_id, found.version, found.changes) == (
        showtime_id,
        notified.version + 1,
        (SeatChange(silent_seat, SeatState.HELD),),
    )


def test_a_redis_replica_decodes_only_the_events_of_showtimes_it_watches(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[SeatEvent] = []
    real_decode = availability_bus.decode

    def counting(raw: str | bytes) -> SeatEvent:
        decoded.append(real_decode(raw))
        return decoded[-1]

    monkeypatch.setattr(availability_bus, "decode", counting)
    watched, other = uuid.uuid4(), uuid.uuid4()

    async def scenario() -> SeatEvent:
        bus = RedisBus(redis_url)
        await bus.start()
        watch = bus.watch(watched)
        try:
            # Published in this order on one connection: once the watched one is here, the
            # other one has been received (and not decoded) before it.
            await bus.publish([SeatEvent(other, 1, ()), SeatEvent(other, 2, ()), SeatEvent(watched, 1, ())])
            return await asyncio.wait_for(watch.next(), 10)
        finally:
            watch.close()
            await bus.stop()

    assert asyncio.run(scenario()) == SeatEvent(watched, 1, ())
    assert decoded == [SeatEvent(watched, 1, ())]
