"""One seat event reaches every watcher of its showtime cheaply: serialized once, the same bytes
written to every stream, and each watcher's inbox woken without a timer per read."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from cinema.booking.v1 import booking_pb2 as pb
from cinema_grpc.adapters.availability_bus import LocalHub
from cinema_grpc.domain.booking.model import SeatChange, SeatEvent, SeatState
from cinema_grpc.domain.errors import ServerShuttingDown, StreamLifetimeReached
from cinema_grpc.services.booking import _StreamMessages
from cinema_grpc.services.interceptors import _passing_bytes


def test_every_watcher_is_sent_the_same_bytes_of_an_event_serialized_once() -> None:
    seat = uuid.uuid4()
    event = SeatEvent(uuid.uuid4(), 7, (SeatChange(seat, SeatState.HELD),), datetime(2026, 12, 1, tzinfo=UTC))
    messages = _StreamMessages()
    sent = [messages.get(event) for _ in range(1000)]
    assert all(each is sent[0] for each in sent)
    parsed = pb.SeatAvailabilityEvent.FromString(sent[0])
    assert parsed.changes.version == 7
    assert [(c.seat_id, c.state) for c in parsed.changes.changes] == [(str(seat), pb.SEAT_STATE_HELD)]
    assert messages.get(SeatEvent(event.showtime_id, 8, ())) is not sent[0]


def test_a_stream_writes_bytes_as_they_are_and_serializes_messages() -> None:
    serialize = _passing_bytes(pb.SeatAvailabilityEvent.SerializeToString)
    assert serialize is not None
    message = pb.SeatAvailabilityEvent(changes=pb.SeatChanges(version=3))
    ready = message.SerializeToString()
    assert serialize(ready) is ready
    assert serialize(message) == ready
    assert _passing_bytes(None) is None


def test_a_watch_reaching_its_lifetime_first_hands_over_what_was_delivered() -> None:
    showtime = uuid.uuid4()

    async def scenario() -> list[int]:
        hub = LocalHub(lifetime_seconds=0.05)
        watch = hub.watch(showtime)
        hub.deliver([SeatEvent(showtime, 1, ()), SeatEvent(showtime, 2, ())])
        await asyncio.sleep(0.1)
        received = [(await watch.next()).version, (await watch.next()).version]
        with pytest.raises(StreamLifetimeReached):
            await asyncio.wait_for(watch.next(), 1)
        watch.close()
        assert hub.watcher_count == 0
        return received

    assert asyncio.run(scenario()) == [1, 2]


def test_a_waiting_watch_wakes_for_an_event_for_its_lifetime_and_for_the_close() -> None:
    showtime = uuid.uuid4()

    async def scenario() -> None:
        hub = LocalHub(lifetime_seconds=1.0)
        watch, other = hub.watch(showtime), hub.watch(showtime)
        waiting = asyncio.create_task(watch.next())
        await asyncio.sleep(0.01)
        hub.deliver([SeatEvent(showtime, 1, ())])
        assert (await asyncio.wait_for(waiting, 1)).version == 1
        assert (await asyncio.wait_for(other.next(), 1)).version == 1
        with pytest.raises(StreamLifetimeReached):
            await asyncio.wait_for(watch.next(), 5)  # woken by its lifetime, not by an event
        watch.close()
        other.close()
        lasting = LocalHub()
        open_watch = lasting.watch(showtime)
        closing = asyncio.create_task(open_watch.next())
        await asyncio.sleep(0.01)
        lasting.close()
        with pytest.raises(ServerShuttingDown):
            await asyncio.wait_for(closing, 1)
        open_watch.close()

    asyncio.run(scenario())
