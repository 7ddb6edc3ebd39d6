"""Seat events to watchers: an in-process hub, fed across processes and replicas through
PostgreSQL LISTEN/NOTIFY (the default) or Redis pub/sub.

Publishing never makes a response wait: events are handed to the hub on the next turn of the
event loop, and whatever goes over the network leaves through an outbox that one task drains
in order, so the events of a showtime go out in the order they were committed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import psycopg
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

    A watch lives at most ``lifetime`` seconds (then StreamLifetimeReached, once what was
    delivered before has been read) and ends with ServerShuttingDown when the hub is closed, so
    no stream can pin the server forever.

    One event reaches every watcher of a showtime, so an offer is kept cheap: an append and, when
    the reader waits, one future resolved; the lifetime is one timer per watch, not one per read.
    """

    def __init__(self, hub: LocalHub, showtime_id: uuid.UUID, capacity: int, lifetime: float) -> None:
        self._hub = hub
        self.showtime_id = showtime_id
        self._capacity = capacity
        self._events: deque[SeatEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lagging = False
        self._closing = False
        self._expired = False
        self._timer = asyncio.get_running_loop().call_later(lifetime, self._expire)

    @property
    def pending(self) -> int:
        """Events delivered and not read yet."""
        return len(self._events)

    def offer(self, event: SeatEvent) -> None:
        if len(self._events) >= self._capacity:
            self.start_over()
            return
        self._events.append(event)
        self._wake()

    def start_over(self) -> None:
        """Drops what is waiting; the reader gets WatcherLagging and a fresh seat map."""
        self._lagging = True
        self._events.clear()
        self._wake()

    def end(self) -> None:
        self._closing = True
        self._events.clear()
        self._wake()

    def _expire(self) -> None:
        self._expired = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> SeatEvent:
        while True:
            if self._closing:
                raise ServerShuttingDown("the server is shutting down; reconnect to another replica")
            if self._lagging:
                self._lagging = False
                self._events.clear()
                raise WatcherLagging
            if self._events:
                return self._events.popleft()
            if self._expired:
                raise StreamLifetimeReached(
                    "the stream reached its longest life; reconnect with since_version to carry on"
                )
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        self._timer.cancel()
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

    def watches(self, showtime_id: uuid.UUID) -> bool:
        return showtime_id in self._watches

    @property
    def showtimes(self) -> list[uuid.UUID]:
        """The showtimes this process has watchers for."""
        return list(self._watches)

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
    """Events reach the watchers of this process only."""

    def __init__(self, hub: LocalHub | None = None) -> None:
        self.hub = hub or LocalHub()

    async def publish(self, events: list[SeatEvent]) -> None:
        # Handed over on the next turn of the loop (callbacks run in the order they were added).
        asyncio.get_running_loop().call_soon(self.hub.deliver, events)

    def watch(self, showtime_id: uuid.UUID) -> QueueWatch:
        return self.hub.watch(showtime_id)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def encode(event: SeatEvent) -> str:
    data = {
        "s": str(event.showtime_id),
        "v": event.version,
        "c": [[str(c.seat_id), c.state.value] for c in event.changes],
    }
    if event.recorded_at is not None:
        data["t"] = event.recorded_at.isoformat()
    if event.layout_changed:
        data["l"] = True
    return json.dumps(data)


# Sends of an outbox start at least this long after the previous one ended: under load, the
# events of a few milliseconds leave as one batch (one NOTIFY or PUBLISH for several holds
# instead of one for every two or three), and after a quiet moment an event leaves at once.
# Watchers in other processes see a change up to this much later; those of the process, at once.
SEND_SPACING_SECONDS = 0.005


class Outbox:
    """Events waiting to leave the process, sent in order by one task, a batch at a time, the
    sends at least ``spacing`` seconds apart."""

    def __init__(self, send: Callable[[list[SeatEvent]], Awaitable[None]], name: str, *, spacing: float = 0.0) -> None:
        self._send = send
        self._name = name
        self._spacing = spacing
        self._last_sent = float("-inf")  # loop time at which the last send ended
        self._waiting: list[SeatEvent] = []
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()  # nothing waiting, nothing being sent
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def put(self, events: list[SeatEvent]) -> None:
        self._waiting.extend(events)
        self._idle.clear()
        self._ready.set()
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=self._name)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            if (pause := self._last_sent + self._spacing - loop.time()) > 0:
                await asyncio.sleep(pause)  # what arrives meanwhile leaves with it
            self._ready.clear()
            batch, self._waiting = self._waiting, []
            if batch:
                self._idle.clear()
                try:
                    await self._send(batch)  # the sender handles the failures it expects
                except Exception:  # one bad batch must not stop every later one
                    log.exception("seat events could not be sent", outbox=self._name, events=len(batch))
                finally:
                    self._last_sent = loop.time()
                    if not self._waiting:
                        self._idle.set()

    async def close(self, within_seconds: float = 5.0) -> None:
        """Sends what is waiting (for at most ``within_seconds``), then stops."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within_seconds)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None


def decode(raw: str | bytes) -> SeatEvent:
    data = json.loads(raw)
    return SeatEvent(
        uuid.UUID(data["s"]),
        int(data["v"]),
        tuple(SeatChange(uuid.UUID(s), SeatState(state)) for s, state in data["c"]),
        datetime.fromisoformat(data["t"]) if "t" in data else None,
        layout_changed=bool(data.get("l", False)),
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
        self._outbox = Outbox(self._send, "redis-seat-events-out", spacing=SEND_SPACING_SECONDS)

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="redis-seat-events")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout=5)
        except TimeoutError:
            log.warning("redis subscription not ready; seat events of other replicas may be late")

    async def stop(self) -> None:
        await self._outbox.close()
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
                        if message.get("type") == "pmessage" and self._watched(message["channel"]):
                            self.hub.deliver([decode(message["data"])])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError) as exc:
                lost = True
                log.warning("redis subscription lost; retrying", error=str(exc))
                await asyncio.sleep(1)

    def _watched(self, channel: bytes | str) -> bool:
        """Whether this replica has watchers for the channel's showtime: events of the others
        are not decoded at all."""
        name = channel.decode() if isinstance(channel, bytes) else channel
        try:
            return self.hub.watches(uuid.UUID(name.removeprefix(CHANNEL_PREFIX)))
        except ValueError:
            return False

    async def publish(self, events: list[SeatEvent]) -> None:
        self._outbox.put(events)

    async def _send(self, events: list[SeatEvent]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.publish(f"{CHANNEL_PREFIX}{event.showtime_id}", encode(event))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("redis publish failed; delivering locally only", error=str(exc))
            self.hub.deliver(events)

    def watch(self, showtime_id: uuid.UUID) -> QueueWatch:
        return self.hub.watch(showtime_id)


NOTIFY_CHANNEL = "cinema_seat_events"
# NOTIFY payloads must stay under 8000 bytes; an entry is a showtime id and a version.
_PAYLOAD_BYTES = 7000
_EVENTS_AFTER = """
SELECT e.showtime_id, e.version, e.changes, e.created_at, e.layout_changed
FROM unnest(%s::uuid[], %s::bigint[]) AS w (showtime_id, after)
JOIN booking.seat_events e ON e.showtime_id = w.showtime_id AND e.version > w.after
ORDER BY e.showtime_id, e.version
"""
_NEWEST = "SELECT showtime_id, max(version) FROM booking.seat_events WHERE showtime_id = ANY(%s) GROUP BY 1"


class PostgresBus:
    """Events cross the processes and replicas that share one PostgreSQL, with no broker.

    Watchers of this process get its events straight from the hub. After commit, one NOTIFY
    carries the showtime and version of each event (a batch of them per notification); every
    other process that has watchers for that showtime reads the events it has not delivered
    from the event log (booking.seat_events) and hands them to its hub in version order. The
    log, not the notification, carries the seat changes, so an event is never lost with a
    notification: the notification only says where to look.

    A notification can still go missing (its process died between commit and NOTIFY, or the
    listening connection dropped): every ``check_seconds`` the newest event of each watched
    showtime is compared with the last one delivered, and what is missing is read from the
    log; when the listening connection comes back after a loss, every watcher of this process
    is sent a fresh seat map. Watchers themselves fill any gap in versions from the log.
    """

    def __init__(self, conninfo: str, hub: LocalHub | None = None, *, check_seconds: float = 2.0) -> None:
        self.hub = hub or LocalHub()
        self._conninfo = conninfo
        self._check_seconds = check_seconds
        self._origin = uuid.uuid4().hex[:12]  # notifications of this process are skipped
        self._outbox = Outbox(self._notify, "postgres-seat-events-out", spacing=SEND_SPACING_SECONDS)
        self._delivered: dict[uuid.UUID, int] = {}  # showtime -> newest version handed to the hub
        self._wanted: dict[uuid.UUID, int] = {}  # showtime -> oldest notified version not yet read
        self._wake = asyncio.Event()
        self._work: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._work_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="postgres-seat-events-listen"),
            asyncio.create_task(self._read_wanted(), name="postgres-seat-events-read"),
            asyncio.create_task(self._check(), name="postgres-seat-events-check"),
        ]
        try:
            await asyncio.wait_for(self._listening.wait(), timeout=5)
        except TimeoutError:
            log.warning("not listening for seat events yet; those of other processes may be late")

    async def stop(self) -> None:
        await self._outbox.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._work is not None:
            await self._work.close()

    def watch(self, showtime_id: uuid.UUID) -> QueueWatch:
        return self.hub.watch(showtime_id)

    async def publish(self, events: list[SeatEvent]) -> None:
        asyncio.get_running_loop().call_soon(self._deliver, events)
        self._outbox.put(events)

    def _deliver(self, events: list[SeatEvent]) -> None:
        self.hub.deliver(events)
        for event in events:
            if event.version > self._delivered.get(event.showtime_id, 0):
                self._delivered[event.showtime_id] = event.version

    async def _connection(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        if self._work is None or self._work.closed:
            self._work = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                application_name="cinema-grpc-seat-events",
                # A notification is not data: its commit need not wait for the WAL to reach disk.
                options="-c synchronous_commit=off",
            )
        return self._work

    async def _notify(self, events: list[SeatEvent]) -> None:
        payloads: list[str] = []
        entries: list[str] = []
        size = 0
        for event in events:
            entry = f"{event.showtime_id}:{event.version}"
            if size + len(entry) > _PAYLOAD_BYTES:
                payloads.append(f"{self._origin}|{','.join(entries)}")
                entries, size = [], 0
            entries.append(entry)
            size += len(entry) + 1
        payloads.append(f"{self._origin}|{','.join(entries)}")
        try:
            async with self._work_lock:
                conn = await self._connection()
                await conn.execute(
                    "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload", (NOTIFY_CHANNEL, payloads)
                )
        except (psycopg.Error, OSError) as exc:
            # Other processes find these events at their next check of the log.
            log.warning("seat event notification failed", error=str(exc))
            with contextlib.suppress(psycopg.Error, OSError):
                if self._work is not None:
                    await self._work.close()

    async def _listen(self) -> None:
        lost = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, application_name="cinema-grpc-seat-events-listen"
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._listening.set()
                    if lost:
                        log.info("listening for seat events again; watchers get a fresh seat map")
                        self.hub.resync()
                        lost = False
                    async for notification in conn.notifies():
                        self._notified(notification.payload)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                lost = True
                log.warning("seat event listener lost its connection; retrying", error=str(exc))
                await asyncio.sleep(1)

    def _notified(self, payload: str) -> None:
        origin, _, entries = payload.partition("|")
        if origin == self._origin:
            return
        for entry in entries.split(","):
            showtime, _, version = entry.partition(":")
            try:
                showtime_id, number = uuid.UUID(showtime), int(version)
            except ValueError:
                continue
            # Only showtimes this process has watchers for are read.
            if not self.hub.watches(showtime_id) or number <= self._delivered.get(showtime_id, 0):
                continue
            self._wanted[showtime_id] = min(number, self._wanted.get(showtime_id, number))
            self._wake.set()

    async def _read_wanted(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            wanted, self._wanted = self._wanted, {}
            if wanted:
                await self._read(wanted)

    async def _read(self, wanted: dict[uuid.UUID, int]) -> None:
        showtimes = list(wanted)
        # From the newest delivered, or (nothing delivered yet) from the first version notified.
        after = [self._delivered.get(s, wanted[s] - 1) for s in showtimes]
        try:
            async with self._work_lock:
                conn = await self._connection()
                cursor = await conn.execute(_EVENTS_AFTER, (showtimes, after))
                rows = await cursor.fetchall()
        except (psycopg.Error, OSError) as exc:
            log.warning("reading seat events failed; the next check retries", error=str(exc))
            return
        events = [
            SeatEvent(
                showtime_id,
                int(version),
                tuple(SeatChange(uuid.UUID(seat), SeatState(state)) for seat, state in changes),
                recorded_at,
                layout_changed=relaid,
            )
            for showtime_id, version, changes, recorded_at, relaid in rows
            if int(version) > self._delivered.get(showtime_id, 0)
        ]
        if events:
            self._deliver(events)

    async def _check(self) -> None:
        """Finds events whose notification never came."""
        while True:
            await asyncio.sleep(self._check_seconds)
            watched = self.hub.showtimes
            for showtime_id in list(self._delivered):
                if not self.hub.watches(showtime_id):
                    del self._delivered[showtime_id]
            if not watched:
                continue
            try:
                async with self._work_lock:
                    conn = await self._connection()
                    cursor = await conn.execute(_NEWEST, (watched,))
                    newest = await cursor.fetchall()
            except (psycopg.Error, OSError) as exc:
                log.warning("checking for missed seat events failed", error=str(exc))
                continue
            with_events = {showtime_id for showtime_id, _ in newest}
            for showtime_id in watched:
                if showtime_id not in with_events:
                    self._delivered.setdefault(showtime_id, 0)  # no event yet: all will be new
            for showtime_id, version in newest:
                known = self._delivered.get(showtime_id)
                if known is None:
                    # First look at this showtime: its watchers started from a seat map read
                    # after they subscribed, so only what comes next is this bus's to deliver.
                    self._delivered[showtime_id] = int(version)
                elif int(version) > known:
                    self._wanted.setdefault(showtime_id, known + 1)
                    self._wake.set()
