"""Seat events to watchers: an in-process hub, optionally fed through Redis pub/sub so that
events cross replicas."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cinema_grpc.domain.booking.model import SeatChange, SeatEvent, SeatState
from cinema_grpc.domain.errors import ServerShuttingDown, StreamLifetimeReached
from cinema_grpc.domain.ports import WatcherLagging

log = structlog.get_logger(__name__)
CHANNEL_PREFIX = "cinema:seat-events:"


class QueueWatch:
    """A bounded inbox. When it overflows it is emptied and the next read raises
    WatcherLagging, so a slow watcher costs publishers nothing and starts over.

    A watch lives at most ``lifetime`` seconds (then StreamLifetimeReached) and ends with
    ServerShuttingDown when the hub is closed, so no stream can pin the server forever.
    """

    def __init__(self, hub: LocalHub, showtime_id: uuid.UUID, capacity: int, lifetime: float) -> None:
        self._hub = hub
        self.showtime_id = showtime_id
        # None wakes the reader up to notice a state change (lagging, closing).
        self._queue: asyncio.Queue[SeatEvent | None] = asyncio.Queue(capacity)
        self._lagging = False
        self._closing = False
        self._ends_at = asyncio.get_running_loop().time() + lifetime

    def offer(self, event: SeatEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.start_over()

    def start_over(self) -> None:
        """Drops what is waiting; the reader gets WatcherLagging and a fresh seat map."""
        self._lagging = True
        self._wake()

    def end(self) -> None:
        self._closing = True
        self._wake()

    def _wake(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def next(self) -> SeatEvent:
        while True:
            if self._closing:
                raise ServerShuttingDown("the server is shutting down; reconnect to another replica")
            if self._lagging:
                self._lagging = False
                while not self._queue.empty():
                    self._queue.get_nowait()
                raise WatcherLagging
            try:
                async with asyncio.timeout_at(self._ends_at):
                    event = await self._queue.get()
            except TimeoutError:
                raise StreamLifetimeReached(
                    "the stream reached its longest life; reconnect with since_version to carry on"
                ) from None
            if event is not None:
                return event

    def close(self) -> None:
        self._hub.remove(self)


class LocalHub:
    """The watchers of this process, by showtime."""

    def __init__(self, capacity: int = 256, lifetime_seconds: float = 3600.0) -> None:
        self._capacity = capacity
        self._lifetime = lifetime_seconds
        self._watches: dict[uuid.UUID, set[QueueWatch]] = defaultdict(set)
        self._closed = False

    def watch(self, showtime_id: uuid.UUID) -> QueueWatch:
        watch = QueueWatch(self, showtime_id, self._capacity, self._lifetime)
        if self._closed:
            watch.end()
        self._watches[showtime_id].add(watch)
        return watch

    def remove(self, watch: QueueWatch) -> None:
        watchers = self._watches.get(watch.showtime_id)
        if watchers is not None:
            watchers.discard(watch)
            if not watchers:
                del self._watches[watch.showtime_id]

    def deliver(self, events: Iterable[SeatEvent]) -> None:
        for event in events:
            for watch in list(self._watches.get(event.showtime_id, ())):
                watch.offer(event)

    def _all(self) -> list[QueueWatch]:
        return [watch for watches in self._watches.values() for watch in watches]

    def resync(self) -> None:
        """Every watcher starts over from a fresh seat map (events may have been missed)."""
        for watch in self._all():
            watch.start_over()

    def close(self) -> None:
        """Ends every stream, now and from now on, with ServerShuttingDown."""
        self._closed = True
        for watch in self._all():
            watch.end()

    @property
    def watcher_count(self) -> int:
        return sum(len(w) for w in self._watches.values())


class InProcessBus:
    """Default: events reach the watchers of this process only (one replica)."""

    def __init__(self, hub: LocalHub | None = None) -> None:
        self.hub = hub or LocalHub()

    async def publish(self, events: list[SeatEvent]) -> None:
        self.hub.deliver(events)

    def watch(self, showtime_id: uuid.UUID) -> QueueWatch:
        return self.hub.watch(showtime_id)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def encode(event: SeatEvent) -> str:
    return json.dumps(
        {"s": str(event.showtime_id), "v": event.version, "c": [[str(c.seat_id), c.state.value] for c in event.changes]}
    )


def decode(raw: str | bytes) -> SeatEvent:
    data = json.loads(raw)
    return SeatEvent(
        uuid.UUID(data["s"]),
        int(data["v"]),
        tuple(SeatChange(uuid.UUID(s), SeatState(state)) for s, state in data["c"]),
    )


class RedisBus:
    """Events go through Redis pub/sub and come back to every replica's hub, this one included.

    If Redis is unreachable, events are still delivered to this replica's watchers, and
    watchers elsewhere catch up from the event log when the next event shows them a gap.
    When the subscription comes back after a loss, every watcher of this replica is sent a
    fresh seat map, since events of other replicas may have been missed meanwhile.
    """

    def __init__(self, url: str, hub: LocalHub | None = None) -> None:
        self.hub = hub or LocalHub()
        # Publishing gives up quickly when Redis stops answering (a seat RPC must not hang);
        # the subscriber waits for messages without a timeout.
        self._redis: Redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._subscriber: Redis = Redis.from_url(url, socket_connect_timeout=2, health_check_interval=30)
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="redis-seat-events")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout=5)
        except TimeoutError:
            log.warning("redis subscription not ready; seat events of other replicas may be late")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self._redis.aclose()
        await self._subscriber.aclose()

    async def _listen(self) -> None:
        lost = False
        while True:
            try:
                async with self._subscriber.pubsub() as pubsub:
                    await pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
                    self._ready.set()
                    if lost:
                        log.info("redis subscription restored; watchers get a fresh seat map")
                        self.hub.resync()
                        lost = False
                    async for message in pubsub.listen():
                        if message.get("type") == "pmessage":
                            self.hub.deliver([decode(message["data"])])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError) as exc:
                lost = True
                log.warning("redis subscription lost; retrying", error=str(exc))
                await asyncio.sleep(1)

    async def publish(self, events: list[SeatEvent]) -> None:
        try:
            for event in events:
                await self._redis.publish(f"{CHANNEL_PREFIX}{event.showtime_id}", encode(event))
        except (RedisError, OSError) as exc:
            log.warning("redis publish failed; delivering locally only", error=str(exc))
            self.hub.deliver(events)

    def watch(self, showtime_id: uuid.UUID) -> QueueWatch:
        return self.hub.watch(showtime_id)
