"""Publishing seat events never makes a response wait, and loses or reorders none."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from cinema_grpc.adapters.availability_bus import InProcessBus, LocalHub, Outbox, decode, encode
from cinema_grpc.domain.booking.model import SeatChange, SeatEvent, SeatState


def events(showtime: uuid.UUID, first: int, count: int) -> list[SeatEvent]:
    return [SeatEvent(showtime, version, ()) for version in range(first, first + count)]


def test_events_leave_in_publishing_order_while_the_publisher_goes_on() -> None:
    showtime = uuid.uuid4()

    async def scenario() -> tuple[bool, list[SeatEvent], int]:
        sent: list[SeatEvent] = []
        batches = 0
        gate = asyncio.Event()

        async def slow_send(batch: list[SeatEvent]) -> None:
            nonlocal batches
            await gate.wait()  # the network is slow
            batches += 1
            sent.extend(batch)

        outbox = Outbox(slow_send, "test-outbox")
        for first in range(1, 100, 10):
            outbox.put(events(showtime, first, 10))  # returns at once although nothing was sent
        nothing_sent_yet = not sent
        gate.set()
        await outbox.close()  # sends what waits before it stops
        return nothing_sent_yet, sent, batches

    nothing_sent_yet, sent, batches = asyncio.run(scenario())
    assert nothing_sent_yet
    assert sent == events(showtime, 1, 100)
    assert batches < 10  # what piled up while a send was slow went out together


def test_under_load_the_sends_are_spaced_and_after_a_quiet_moment_an_event_leaves_at_once() -> None:
    showtime = uuid.uuid4()
    spacing = 1.0  # wide enough that a stalled loop cannot pass for a send held back or not

    async def scenario() -> tuple[list[list[int]], list[float], float]:
        loop = asyncio.get_running_loop()
        batches: list[list[int]] = []
        sent_at: list[float] = []
        sends: asyncio.Queue[None] = asyncio.Queue()

        async def send(batch: list[SeatEvent]) -> None:
            batches.append([event.version for event in batch])
            sent_at.append(loop.time())
            sends.put_nowait(None)

        outbox = Outbox(send, "test-outbox", spacing=spacing)
        outbox.put(events(showtime, 1, 1))
        await asyncio.wait_for(sends.get(), 5)
        outbox.put(events(showtime, 2, 1))  # right after a send: held back ...
        await asyncio.sleep(0.05)
        outbox.put(events(showtime, 3, 2))  # ... and sent with what follows
        await asyncio.wait_for(sends.get(), 5)
        await asyncio.sleep(spacing)  # a quiet moment
        put_at = loop.time()
        outbox.put(events(showtime, 5, 1))
        await asyncio.wait_for(sends.get(), 5)
        await outbox.close()
        return batches, sent_at, put_at

    batches, sent_at, put_at = asyncio.run(scenario())
    assert batches == [[1], [2, 3, 4], [5]]
    assert sent_at[1] - sent_at[0] >= spacing - 0.01  # (a timer may fire a hair early)
    assert sent_at[2] - put_at < spacing / 2


def test_the_in_process_bus_delivers_after_the_publisher_returns_in_order() -> None:
    showtime = uuid.uuid4()

    async def scenario() -> tuple[int, list[SeatEvent]]:
        bus = InProcessBus(LocalHub())
        watch = bus.watch(showtime)
        await bus.publish(events(showtime, 1, 3))
        await bus.publish(events(showtime, 4, 2))
        waiting_at_return = watch.pending
        received = [await asyncio.wait_for(watch.next(), 1) for _ in range(5)]
        watch.close()
        return waiting_at_return, received

    waiting_at_return, received = asyncio.run(scenario())
    assert waiting_at_return == 0
    assert received == events(showtime, 1, 5)


def test_a_batch_that_fails_to_send_does_not_stop_the_later_ones() -> None:
    showtime = uuid.uuid4()

    async def scenario() -> list[SeatEvent]:
        sent: list[SeatEvent] = []

        async def flaky_send(batch: list[SeatEvent]) -> None:
            if batch[0].version == 1:
                raise RuntimeError("unexpected")
            sent.extend(batch)

        outbox = Outbox(flaky_send, "test-outbox")
        outbox.put(events(showtime, 1, 1))
        await asyncio.sleep(0)  # the first batch goes out (and fails) alone
        await asyncio.sleep(0)
        outbox.put(events(showtime, 2, 2))
        await outbox.close()
        return sent

    assert asyncio.run(scenario()) == events(showtime, 2, 2)


def test_an_event_crosses_redis_with_its_changes_and_whether_it_replaced_the_seats() -> None:
    at = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    changed = SeatEvent(uuid.uuid4(), 7, (SeatChange(uuid.uuid4(), SeatState.HELD),), at)
    replaced = SeatEvent(uuid.uuid4(), 8, (), at, layout_changed=True)
    assert decode(encode(changed)) == changed
    assert decode(encode(replaced)) == replaced
