"""The live seat availability stream: snapshot then deltas in version order, consistent with
GetSeatMap; resuming from a version; expiry announced; slow watchers start over."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, timedelta

import grpc
import psycopg
import pytest

from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.availability_bus import InProcessBus, LocalHub
from cinema_grpc.adapters.clock import SystemClock
from cinema_grpc.domain.access import ANONYMOUS
from cinema_grpc.domain.booking.model import SeatEvent, SeatMap
from cinema_grpc.domain.booking.use_cases import SharedSeatMapReads, watch_seats
from cinema_grpc.storage.unit_of_work import SqlUnitOfWork
from tests.booking_data import Customer, Sale, hold, states
from tests.conftest import RunningServer
from tests.rpc_errors import failure
from tests.screening_data import at, grid, make_hall, make_movie, showtime_request
from tests.stream_reader import StreamReader

Db = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def watch(channel: grpc.Channel) -> Iterator[object]:
    readers: list[StreamReader] = []

    def start(showtime_id: str, since_version: int = 0) -> StreamReader:
        call = BookingServiceStub(channel).WatchSeatAvailability(
            bpb.WatchSeatAvailabilityRequest(showtime_id=showtime_id, since_version=since_version)
        )
        reader = StreamReader(call)
        readers.append(reader)
        return reader

    yield start
    for reader in readers:
        reader.close()


def apply(seat_map: dict[str, int], event: bpb.SeatAvailabilityEvent) -> None:
    for change in event.changes.changes:
        seat_map[change.seat_id] = change.state


def test_a_watcher_gets_a_snapshot_then_every_change_in_version_order(
    watch: object, ana: Customer, clerk: Customer, sale: Sale
) -> None:
    reader = watch(sale.showtime.id)  # type: ignore[operator]
    first = reader.next()
    assert first.WhichOneof("event") == "snapshot"
    seen = {s.seat_id: s.state for s in first.snapshot.seats}
    assert set(seen.values()) == {bpb.SEAT_STATE_FREE}
    version = first.snapshot.version

    held = hold(ana, sale, "C1", "C2")
    other = hold(ana, sale, "C3")
    ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=other.id))
    clerk.booking.SellHoldAtCounter(bpb.SellHoldAtCounterRequest(hold_id=held.id, payment=bpb.COUNTER_PAYMENT_CASH))

    expected = [
        {sale.seat("C1"): bpb.SEAT_STATE_HELD, sale.seat("C2"): bpb.SEAT_STATE_HELD},
        {sale.seat("C3"): bpb.SEAT_STATE_HELD},
        {sale.seat("C3"): bpb.SEAT_STATE_FREE},
        {sale.seat("C1"): bpb.SEAT_STATE_SOLD, sale.seat("C2"): bpb.SEAT_STATE_SOLD},
    ]
    for changes in expected:
        event = reader.next()
        assert event.WhichOneof("event") == "changes"
        assert event.changes.version == version + 1
        version = event.changes.version
        assert {c.seat_id: c.state for c in event.changes.changes} == changes
        apply(seen, event)
    now = ana.booking.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id))
    assert now.version == version
    assert {s.seat_id: s.state for s in now.seats} == seen


def _move_to_another_hall(screening: ScreeningServiceStub, sale: Sale) -> spb.Hall:
    """Moves the sale's showtime, at its own time, to a new smaller hall of its cinema."""
    other = make_hall(screening, sale.hall.cinema_id, "Studio", grid("FG", 6))
    request = spb.RescheduleShowtimeRequest(
        showtime_id=sale.showtime.id, start_time=sale.showtime.start_time, hall_id=other.id
    )
    moved = screening.RescheduleShowtime(request)
    assert moved.hall_id == other.id
    return other


def test_a_watcher_is_sent_the_new_halls_seat_map_when_its_showtime_moves(
    watch: object, screening: ScreeningServiceStub, ana: Customer, sale: Sale
) -> None:
    held = hold(ana, sale, "C1")
    ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id))
    reader = watch(sale.showtime.id)  # type: ignore[operator]
    before = reader.next().snapshot
    assert {s.seat_id for s in before.seats} == {s.id for s in sale.hall.seats}

    other = _move_to_another_hall(screening, sale)
    fresh = reader.next()
    assert fresh.WhichOneof("event") == "snapshot"
    assert fresh.snapshot.version == before.version + 1
    assert [s.seat_id for s in fresh.snapshot.seats] == [s.id for s in other.seats]
    assert {s.state for s in fresh.snapshot.seats} == {bpb.SEAT_STATE_FREE}
    # Seats of the new hall can be held, and the change follows the new seat map.
    ana.booking.HoldSeats(bpb.HoldSeatsRequest(showtime_id=sale.showtime.id, seat_ids=[other.seats[0].id]))
    change = reader.next()
    assert change.changes.version == fresh.snapshot.version + 1
    assert [(c.seat_id, c.state) for c in change.changes.changes] == [(other.seats[0].id, bpb.SEAT_STATE_HELD)]


def test_a_move_within_its_hall_keeps_the_seat_map(
    watch: object, screening: ScreeningServiceStub, ana: Customer, sale: Sale
) -> None:
    reader = watch(sale.showtime.id)  # type: ignore[operator]
    version = reader.next().snapshot.version
    later = sale.showtime.start_time.ToDatetime(tzinfo=UTC) + timedelta(minutes=15)
    screening.RescheduleShowtime(spb.RescheduleShowtimeRequest(showtime_id=sale.showtime.id, start_time=at(later)))
    assert reader.nothing_within(0.3)
    assert ana.booking.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id)).version == version


def test_a_watcher_resuming_from_before_a_move_gets_the_new_seat_map_not_changes(
    watch: object, screening: ScreeningServiceStub, ana: Customer, sale: Sale
) -> None:
    held = hold(ana, sale, "C1")
    seen = ana.booking.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id)).version
    ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id))
    other = _move_to_another_hall(screening, sale)
    hold(ana, Sale(sale.showtime, other), "F2")

    reader = watch(sale.showtime.id, since_version=seen)  # type: ignore[operator]
    fresh = reader.next()
    assert fresh.WhichOneof("event") == "snapshot"
    assert fresh.snapshot.version == seen + 3  # the release, the move, the hold
    assert [s.seat_id for s in fresh.snapshot.seats] == [s.id for s in other.seats]
    held_now = {s.seat_id for s in fresh.snapshot.seats if s.state == bpb.SEAT_STATE_HELD}
    assert held_now == {Sale(sale.showtime, other).seat("F2")}
    assert reader.nothing_within(0.3)
    # Resuming after the move is ordinary catching up again.
    after_move = watch(sale.showtime.id, since_version=seen + 2)  # type: ignore[operator]
    assert after_move.next().changes.version == seen + 3


def test_a_watcher_is_sent_the_new_seat_map_when_its_halls_layout_is_replaced(
    watch: object, screening: ScreeningServiceStub, ana: Customer, sale: Sale
) -> None:
    reader = watch(sale.showtime.id)  # type: ignore[operator]
    before = reader.next().snapshot
    relaid = screening.ReplaceHallLayout(spb.ReplaceHallLayoutRequest(hall_id=sale.hall.id, layout=grid("AB", 4)))
    fresh = reader.next()
    assert fresh.WhichOneof("event") == "snapshot"
    assert fresh.snapshot.version == before.version + 1
    assert [s.seat_id for s in fresh.snapshot.seats] == [s.id for s in relaid.seats]
    assert not {s.seat_id for s in before.seats} & {s.id for s in relaid.seats}


def _set_service(screening: ScreeningServiceStub, sale: Sale, label: str, in_service: bool) -> None:
    reason = "" if in_service else "broken armrest"
    request = spb.SetSeatServiceRequest(
        hall_id=sale.hall.id, seat_id=sale.seat(label), in_service=in_service, reason=reason
    )
    screening.SetSeatService(request)


def test_watchers_of_each_upcoming_showtime_see_a_seat_go_out_of_service_and_back(
    watch: object, screening: ScreeningServiceStub, ana: Customer, sale: Sale
) -> None:
    later_start = sale.showtime.start_time.ToDatetime(tzinfo=UTC) + timedelta(hours=4)
    later = Sale(screening.CreateShowtime(showtime_request(sale.hall, make_movie(screening), later_start)), sale.hall)
    readers = [watch(s.showtime.id) for s in (sale, later)]  # type: ignore[operator]
    versions = [reader.next().snapshot.version for reader in readers]

    _set_service(screening, sale, "D4", in_service=False)
    _set_service(screening, sale, "D4", in_service=False)  # a new reason only: no seat changes
    _set_service(screening, sale, "D4", in_service=True)
    for reader, version, showtime in zip(readers, versions, (sale, later), strict=True):
        out, back = reader.next(), reader.next()
        assert (out.changes.version, back.changes.version) == (version + 1, version + 2)
        assert [(c.seat_id, c.state) for c in out.changes.changes] == [(sale.seat("D4"), bpb.SEAT_STATE_OUT_OF_SERVICE)]
        assert [(c.seat_id, c.state) for c in back.changes.changes] == [(sale.seat("D4"), bpb.SEAT_STATE_FREE)]
        assert reader.nothing_within(0.2)
        now = ana.booking.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=showtime.showtime.id))
        assert (now.version, states(now, sale)) == (version + 2, {})


def test_the_seat_map_shows_each_change_of_its_halls_seats_at_once(
    screening: ScreeningServiceStub, ana: Customer, clerk: Customer, sale: Sale
) -> None:
    """The hall's seats are kept between reads until the hall changes: each read after a change
    shows it, to customers and to staff (who see who holds what)."""

    def read(who: Customer = ana) -> bpb.SeatMap:
        return who.booking.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id))

    assert states(read(), sale) == {}
    _set_service(screening, sale, "C3", in_service=False)
    assert states(read(), sale) == states(read(clerk), sale) == {"C3": bpb.SEAT_STATE_OUT_OF_SERVICE}
    held = hold(ana, sale, "C4")
    assert states(read(), sale) == {"C3": bpb.SEAT_STATE_OUT_OF_SERVICE, "C4": bpb.SEAT_STATE_HELD}
    staff_view = {s.seat_id: (s.holder_id, s.hold_id) for s in read(clerk).seats if s.holder_id}
    assert staff_view == {sale.seat("C4"): (ana.user.id, held.id)}
    assert not any(s.holder_id or s.hold_id for s in read().seats)
    _set_service(screening, sale, "C3", in_service=True)
    assert states(read(), sale) == {"C4": bpb.SEAT_STATE_HELD}
    ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id))
    relaid = screening.ReplaceHallLayout(spb.ReplaceHallLayoutRequest(hall_id=sale.hall.id, layout=grid("AB", 4)))
    seats = read().seats
    assert [(s.seat_id, s.row_label, s.number, s.state) for s in seats] == [
        (s.id, s.row_label, s.number, bpb.SEAT_STATE_FREE) for s in relaid.seats
    ]


def test_a_watcher_resuming_from_before_a_seat_went_out_of_service_catches_up(
    watch: object, screening: ScreeningServiceStub, ana: Customer, sale: Sale
) -> None:
    hold(ana, sale, "A1")  # a version to resume from
    seen = ana.booking.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id)).version
    _set_service(screening, sale, "E1", in_service=False)
    reader = watch(sale.showtime.id, since_version=seen)  # type: ignore[operator]
    missed = reader.next()
    assert missed.changes.version == seen + 1
    assert [(c.seat_id, c.state) for c in missed.changes.changes] == [(sale.seat("E1"), bpb.SEAT_STATE_OUT_OF_SERVICE)]
    _set_service(screening, sale, "E1", in_service=True)
    live = reader.next()
    assert live.changes.version == seen + 2
    assert [(c.seat_id, c.state) for c in live.changes.changes] == [(sale.seat("E1"), bpb.SEAT_STATE_FREE)]


def test_a_held_seat_taken_out_of_service_stays_held_until_its_hold_ends(
    watch: object, screening: ScreeningServiceStub, ana: Customer, sale: Sale
) -> None:
    held = hold(ana, sale, "B2")
    reader = watch(sale.showtime.id)  # type: ignore[operator]
    version = reader.next().snapshot.version
    _set_service(screening, sale, "B2", in_service=False)
    assert reader.nothing_within(0.3)
    now = ana.booking.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id))
    assert (now.version, states(now, sale)) == (version, {"B2": bpb.SEAT_STATE_HELD})
    assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).state == bpb.HOLD_STATE_ACTIVE
    # Once the hold ends the seat is out of service, on the stream as on the seat map.
    ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id))
    released = reader.next()
    assert released.changes.version == version + 1
    assert [(c.seat_id, c.state) for c in released.changes.changes] == [
        (sale.seat("B2"), bpb.SEAT_STATE_OUT_OF_SERVICE)
    ]
    now = ana.booking.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id))
    assert (now.version, states(now, sale)) == (version + 1, {"B2": bpb.SEAT_STATE_OUT_OF_SERVICE})


def test_a_watcher_that_reconnects_with_its_version_gets_only_what_it_missed(
    watch: object, ana: Customer, sale: Sale, db: Db
) -> None:
    hold(ana, sale, "C1")
    seen = ana.booking.GetSeatMap(bpb.GetSeatMapRequest(showtime_id=sale.showtime.id)).version
    hold(ana, sale, "C2")
    hold(ana, sale, "C3")
    reader = watch(sale.showtime.id, since_version=seen)  # type: ignore[operator]
    missed = [reader.next(), reader.next()]
    assert [e.changes.version for e in missed] == [seen + 1, seen + 2]
    assert [e.changes.changes[0].seat_id for e in missed] == sale.seats("C2", "C3")
    assert reader.nothing_within(0.3)

    db.execute("DELETE FROM booking.seat_events WHERE showtime_id = %s", (sale.showtime.id,))
    too_old = watch(sale.showtime.id, since_version=seen)  # type: ignore[operator]
    fresh = too_old.next()
    assert fresh.WhichOneof("event") == "snapshot"
    assert fresh.snapshot.version == seen + 2
    from_the_future = watch(sale.showtime.id, since_version=seen + 100)  # type: ignore[operator]
    assert from_the_future.next().WhichOneof("event") == "snapshot"


def test_expired_holds_released_by_the_sweeper_are_announced(
    server: RunningServer, watch: object, ana: Customer, sale: Sale, db: Db
) -> None:
    held = hold(ana, sale, "D1", "D2")
    reader = watch(sale.showtime.id)  # type: ignore[operator]
    version = reader.next().snapshot.version
    db.execute("UPDATE booking.holds SET expires_at = now() - interval '1 second' WHERE id = %s", (held.id,))
    db.execute("UPDATE booking.seat_claims SET expires_at = now() - interval '1 second' WHERE hold_id = %s", (held.id,))
    assert server.server is not None
    server.run(server.server.sweep_expired_holds())
    event = reader.next()
    assert event.changes.version == version + 1
    assert {(c.seat_id, c.state) for c in event.changes.changes} == {
        (sale.seat("D1"), bpb.SEAT_STATE_FREE),
        (sale.seat("D2"), bpb.SEAT_STATE_FREE),
    }


def test_a_watcher_that_does_not_read_slows_down_neither_holds_nor_other_watchers(
    channel: grpc.Channel, watch: object, clerk: Customer, sale: Sale
) -> None:
    stalled = BookingServiceStub(channel).WatchSeatAvailability(
        bpb.WatchSeatAvailabilityRequest(showtime_id=sale.showtime.id)
    )
    next(stalled)  # takes the snapshot, then never reads again
    reader = watch(sale.showtime.id)  # type: ignore[operator]
    reader.next()
    # The box office (not bound by the customers' hold rate) holds and releases 30 times.
    for label in [f"{row}{n}" for row in "BCDE" for n in range(1, 11)][:30]:
        held = hold(clerk, sale, label)
        clerk.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id))
    versions = [reader.next(timeout=5).changes.version for _ in range(60)]
    assert versions == list(range(versions[0], versions[0] + 60))
    stalled.cancel()


def test_a_watcher_whose_inbox_overflows_starts_over_from_a_fresh_seat_map(
    server: RunningServer, ana: Customer, sale: Sale
) -> None:
    assert server.server is not None
    database = server.server.database
    bus = InProcessBus(LocalHub(capacity=2))
    showtime_id = uuid.UUID(sale.showtime.id)

    async def scenario() -> list[SeatMap | SeatEvent]:
        def unit_of_work() -> SqlUnitOfWork:
            return SqlUnitOfWork(database.sessions, bus)

        reads = SharedSeatMapReads(unit_of_work, SystemClock())
        stream = watch_seats(unit_of_work, bus, reads, ANONYMOUS, showtime_id, 0)
        received = [await anext(stream)]
        assert isinstance(received[0], SeatMap)
        version = received[0].version
        await bus.publish([SeatEvent(showtime_id, version + i, ()) for i in range(1, 6)])
        received.append(await anext(stream))
        await stream.aclose()
        return received

    _, after_overflow = server.run(scenario())
    assert isinstance(after_overflow, SeatMap)
    assert bus.hub.watcher_count == 0


def test_watchers_connecting_together_share_seat_map_reads(server: RunningServer, sale: Sale) -> None:
    """Fifty watchers at once cost two seat-map reads, not fifty: the first, and one for everyone
    who arrived while it ran (a read that began before a watcher subscribed is not shared)."""
    assert server.server is not None
    database = server.server.database
    bus = InProcessBus(LocalHub())
    showtime_id = uuid.UUID(sale.showtime.id)
    opened = 0

    def unit_of_work() -> SqlUnitOfWork:
        nonlocal opened
        opened += 1
        return SqlUnitOfWork(database.sessions, bus)

    reads = SharedSeatMapReads(unit_of_work, SystemClock())

    async def scenario() -> list[SeatMap | SeatEvent]:
        streams = [watch_seats(unit_of_work, bus, reads, ANONYMOUS, showtime_id, 0) for _ in range(50)]
        first = await asyncio.gather(*(anext(stream) for stream in streams))
        for stream in streams:
            await stream.aclose()
        return list(first)

    maps = server.run(scenario())
    assert all(isinstance(m, SeatMap) and len(m.seats) == len(sale.hall.seats) for m in maps)
    assert opened == 2
    assert bus.hub.watcher_count == 0


def test_watching_an_unknown_or_malformed_showtime_fails_clearly(channel: grpc.Channel, db: Db) -> None:
    stub = BookingServiceStub(channel)
    for showtime_id, code, reason in (
        (str(uuid.uuid4()), grpc.StatusCode.NOT_FOUND, "SHOWTIME_NOT_FOUND"),
        ("nope", grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED"),
    ):
        call = stub.WatchSeatAvailability(bpb.WatchSeatAvailabilityRequest(showtime_id=showtime_id))
        with pytest.raises(grpc.RpcError) as caught:
            next(call)
        assert (failure(caught.value).code, failure(caught.value).reason) == (code, reason)


def test_a_hold_answer_names_its_version_and_each_change_carries_its_time(
    watch: object, ana: Customer, sale: Sale
) -> None:
    reader = watch(sale.showtime.id)  # type: ignore[operator]
    version = reader.next().snapshot.version
    before = time.time()
    held = hold(ana, sale, "C1")
    released = ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id))
    again = ana.booking.ReleaseHold(bpb.ReleaseHoldRequest(hold_id=held.id))
    after = time.time()
    assert (held.seat_map_version, released.seat_map_version) == (version + 1, version + 2)
    assert again.seat_map_version == 0  # already released: this answer changed no seat
    assert ana.booking.GetHold(bpb.GetHoldRequest(hold_id=held.id)).seat_map_version == 0
    for expected in (held.seat_map_version, released.seat_map_version):
        changes = reader.next().changes
        assert changes.version == expected
        assert before - 1 <= changes.change_time.seconds <= after + 1
