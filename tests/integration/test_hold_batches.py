"""Plain holds that queue for a connection are written together, in one transaction, and each
still gets the answer it would get alone: the same seat twice in a batch is held once, a batch
the database refuses is placed again hold by hold, two replicas' batches never wait for each
other in a circle, and a hold that waits too long for a connection is refused with nothing
written."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.domain.booking.inventory import PlainHold
from cinema_grpc.domain.booking.model import BookingRules, Hold
from cinema_grpc.domain.errors import Contention, SeatAlreadyTaken
from cinema_grpc.settings import Settings
from cinema_grpc.storage.database import open_database
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from cinema_grpc.storage.plain_holds import HOLD_STATEMENT, PlainHolds
from tests.booking_data import Customer, Sale, open_sale
from tests.conftest import RunningServer
from tests.integration.test_plain_hold import plain

Db = psycopg.Connection[tuple[object, ...]]

# Limits far from every test's holds: what is tested here is the batching, not the limits.
RULES = BookingRules(max_active_holds=1000, max_holds_per_window=1000, max_seats_per_showtime=1000)
LABELS = [f"{row}{number}" for row in "BCDE" for number in range(1, 11)]


Batches = list[tuple[int, bool]]


def with_holds(
    server: RunningServer, settings: Settings, work: Callable[[PlainHolds], Awaitable[Any]], **pool: Any
) -> tuple[Any, Batches]:
    """Runs ``work`` with the plain holds of a database opened with these settings (and pool
    settings), and returns its result with every batch it reported: (size, refused)."""

    async def run() -> tuple[Any, Batches]:
        database = open_database(settings.model_copy(update=pool), run_migrations=False)
        batches: Batches = []
        try:
            assert database.plain_holds is not None
            database.plain_holds.on_batch = lambda size, refused: batches.append((size, refused))
            return await work(database.plain_holds), batches
        finally:
            await database.close()

    return server.run(run())


async def answers(holds: PlainHolds, asked: list[PlainHold]) -> list[Hold | BaseException | None]:
    """Every hold placed at once (they queue in this order); each its hold, None or its error."""
    placed = await asyncio.gather(*(holds.place(hold) for hold in asked), return_exceptions=True)
    return [answer if isinstance(answer, BaseException) or answer is None else answer[0] for answer in placed]


def three_holds(ana: Customer, ben: Customer, clerk: Customer, sale: Sale) -> list[PlainHold]:
    """B1 for ana, B2 for ben, B3 for the clerk at the box office."""
    return [
        plain(ana, sale, "B1", rules=RULES),
        plain(ben, sale, "B2", rules=RULES),
        plain(clerk, sale, "B3", rules=RULES, staff=True),
    ]


def transactions(db: Db, holds: list[PlainHold]) -> list[object]:
    """The transaction that wrote each hold (its row's xmin), None for a hold not written."""
    written = dict(
        db.execute(
            "SELECT id, xmin::text FROM booking.holds WHERE id = ANY(%s)", ([hold.hold_id for hold in holds],)
        ).fetchall()
    )
    return [written.get(hold.hold_id) for hold in holds]


def test_holds_that_queue_for_a_connection_commit_together_each_with_its_answer(
    server: RunningServer, ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    # One connection: the first hold takes it, the nine behind it queue and go as one batch.
    asked = [plain(ana if i % 2 else ben, sale, label, rules=RULES) for i, label in enumerate(LABELS[:10])]
    placed, batches = with_holds(server, server.settings, lambda h: answers(h, asked), db_hold_pool_size=1)
    assert all(isinstance(hold, Hold) for hold in placed), placed
    assert batches == [(1, False), (9, False)]
    written = transactions(db, asked)
    assert written[0] != written[1] and len(set(written[1:])) == 1  # the nine in one transaction
    # Each hold is announced in a version of its own, in the order of the batch.
    versions = [hold.seat_map_version for hold in placed if isinstance(hold, Hold)]
    assert versions == list(range(versions[0], versions[0] + 10))
    events = db.execute(
        "SELECT count(*) FROM booking.seat_events WHERE showtime_id = %s", (sale.showtime.id,)
    ).fetchone()
    assert events == (10,)


def test_the_same_seat_twice_in_a_batch_is_held_once(
    server: RunningServer, ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    first = plain(ana, sale, "E1", rules=RULES)
    twice = [plain(ana, sale, "D1", "D2", rules=RULES), plain(ben, sale, "D2", "D3", rules=RULES)]
    placed, batches = with_holds(server, server.settings, lambda h: answers(h, [first, *twice]), db_hold_pool_size=1)
    assert batches == [(1, False), (2, False)]
    assert isinstance(placed[1], Hold)
    assert isinstance(placed[2], SeatAlreadyTaken) and placed[2].seats == {sale.seat("D2"): "D2"}
    claims = db.execute(
        "SELECT count(*) FROM booking.seat_claims WHERE showtime_id = %s AND seat_id = %s",
        (sale.showtime.id, sale.seat("D2")),
    ).fetchone()
    assert claims == (1,)
    assert transactions(db, twice)[1] is None


def test_a_batch_the_database_refuses_is_placed_again_hold_by_hold(
    server: RunningServer, ana: Customer, ben: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    # Another session holds ben's customer lock: the batch's locks time out, nothing of it is
    # written, and each hold is placed alone: ana's and the clerk's are held, ben's is refused
    # as busy (to be retried) after its own wait.
    first = plain(ana, sale, "E1", rules=RULES)
    batch = three_holds(ana, ben, clerk, sale)
    with psycopg.connect(db.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (advisory_key(LockNamespace.CUSTOMER_HOLDS, ben.user.id),))
        placed, batches = with_holds(
            server, server.settings, lambda h: answers(h, [first, *batch]), db_hold_pool_size=1, db_lock_timeout_ms=300
        )
    assert batches == [(1, False), (3, True)]
    assert isinstance(placed[1], Hold) and isinstance(placed[3], Hold)
    assert isinstance(placed[2], Contention)
    written = transactions(db, batch)
    assert written[1] is None and None not in (written[0], written[2]) and written[0] != written[2]


def test_two_replicas_batches_take_their_locks_in_one_order_and_never_deadlock(
    server: RunningServer, screening: ScreeningServiceStub, ana: Customer, ben: Customer, clerk: Customer, db: Db
) -> None:
    # Two processes' batches of holds of the same customers on the same showtimes, shuffled: a
    # batch that took its locks hold by hold (customer, then showtime, then the next hold's)
    # would wait for the other's while holding its own.
    sales = [open_sale(screening, cinema_name=f"Odeon {i}") for i in range(5)]
    people = [ana, ben, clerk]
    asked = [
        plain(who, sale, label, rules=RULES, staff=who is clerk)
        for sale in sales
        for label in LABELS
        for who in [people[LABELS.index(label) % 3]]
    ]
    random.Random(12).shuffle(asked)
    halves = asked[::2], asked[1::2]

    async def replica(share: list[PlainHold]) -> tuple[list[Hold | BaseException | None], Batches]:
        database = open_database(server.settings.model_copy(update={"db_hold_pool_size": 2}), run_migrations=False)
        seen: Batches = []
        try:
            assert database.plain_holds is not None
            database.plain_holds.on_batch = lambda size, refused: seen.append((size, refused))
            return await answers(database.plain_holds, share), seen
        finally:
            await database.close()

    async def race() -> tuple[list[Hold | BaseException | None], Batches]:
        (first, first_batches), (second, second_batches) = await asyncio.gather(replica(halves[0]), replica(halves[1]))
        return first + second, first_batches + second_batches

    placed, batches = server.run(race())
    assert all(isinstance(hold, Hold) for hold in placed), [p for p in placed if not isinstance(p, Hold)][:3]
    assert not [batch for batch in batches if batch[1]], "a batch was refused (a deadlock or a lock timeout)"
    assert max(size for size, _ in batches) > 1
    doubles = db.execute(
        "SELECT count(*) FROM (SELECT showtime_id, seat_id FROM booking.seat_claims"
        " GROUP BY 1, 2 HAVING count(*) > 1) AS d"
    ).fetchone()
    assert doubles == (0,)
    assert db.execute("SELECT count(*) FROM booking.holds").fetchone() == (len(asked),)


def test_a_hold_that_waits_too_long_for_a_connection_is_refused_and_not_written(
    server: RunningServer, ana: Customer, ben: Customer, sale: Sale, db: Db
) -> None:
    # The one connection waits for a showtime lock another session holds; the hold behind it
    # is refused when the pool's timeout is up, and no batch writes it afterwards.
    stuck = plain(ana, sale, "B1", rules=RULES)
    late = plain(ben, sale, "B2", rules=RULES)

    async def work(holds: PlainHolds) -> list[Hold | BaseException | None]:
        placing = asyncio.ensure_future(answers(holds, [stuck]))
        await asyncio.sleep(0.2)  # the first one has the connection
        refused = await answers(holds, [late])
        return [*(await placing), *refused]

    with psycopg.connect(db.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (advisory_key(LockNamespace.SHOWTIME_SEATS, sale.showtime.id),))
        placed, batches = with_holds(
            server,
            server.settings,
            work,
            db_hold_pool_size=1,
            db_pool_timeout_seconds=0.5,
            db_lock_timeout_ms=1500,
        )
    assert isinstance(placed[0], Contention) and isinstance(placed[1], Contention)
    assert batches == [(1, False)]
    assert transactions(db, [stuck, late]) == [None, None]


def test_with_batches_of_one_every_hold_is_its_own_transaction(
    server: RunningServer, ana: Customer, sale: Sale, db: Db
) -> None:
    asked = [plain(ana, sale, label, rules=RULES) for label in LABELS[:4]]
    placed, batches = with_holds(
        server, server.settings, lambda h: answers(h, asked), db_hold_pool_size=1, db_hold_batch_size=1
    )
    assert all(isinstance(hold, Hold) for hold in placed)
    assert batches == [(1, False)] * 4
    assert len(set(transactions(db, asked))) == 4


def test_a_caller_stopped_while_its_batch_runs_keeps_nothing_and_the_others_are_held(
    server: RunningServer, ana: Customer, ben: Customer, clerk: Customer, sale: Sale, db: Db
) -> None:
    # The batch waits for ana's customer lock, which another session holds; ben's call is
    # stopped meanwhile (its deadline). The batch is stopped with it, and once the lock is free
    # ana's and the clerk's holds are placed again and held; nothing of ben's is written.
    first = plain(ben, sale, "E1", rules=RULES)
    batch = three_holds(ana, ben, clerk, sale)
    ana_key = advisory_key(LockNamespace.CUSTOMER_HOLDS, ana.user.id)

    async def work(holds: PlainHolds) -> list[Hold | BaseException | None]:
        calls = [asyncio.ensure_future(answers(holds, [hold])) for hold in [first, *batch]]
        await asyncio.sleep(0.5)  # the first is held, the batch waits for ana's lock
        calls[2].cancel()
        await asyncio.sleep(0.2)
        free.set()
        return [(await call)[0] if not call.cancelled() else None for call in calls]

    free = asyncio.Event()
    with psycopg.connect(db.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (ana_key,))

        async def release_when_free() -> None:
            await free.wait()
            await asyncio.to_thread(other.execute, "SELECT pg_advisory_unlock(%s)", (ana_key,))

        async def both(holds: PlainHolds) -> list[Hold | BaseException | None]:
            _, placed = await asyncio.gather(release_when_free(), work(holds))
            return placed

        placed, batches = with_holds(server, server.settings, both, db_hold_pool_size=1, db_lock_timeout_ms=5000)
    assert isinstance(placed[0], Hold) and isinstance(placed[1], Hold) and isinstance(placed[3], Hold)
    assert placed[2] is None  # stopped
    written = transactions(db, batch)
    assert written[1] is None and written[0] is not None and written[0] == written[2]
    assert batches == [(1, False), (2, False)]  # the stopped batch did not end; the two went again


def test_a_caller_stopped_while_its_batch_is_being_sent_keeps_nothing(
    server: RunningServer,
    ana: Customer,
    ben: Customer,
    clerk: Customer,
    sale: Sale,
    db: Db,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PostgreSQL has run the batch's locks and its first hold, and waits, idle, for the rest: a
    # cancel request then finds no statement to stop. The first hold's caller is stopped at that
    # moment, while the client sends the second hold. What PostgreSQL ran of the batch must not
    # be committed (the pipeline's Sync would commit an implicit transaction); the two others
    # go again and are held.
    first = plain(ben, sale, "E1", rules=RULES)
    batch = three_holds(ana, ben, clerk, sale)
    calls: dict[uuid.UUID, asyncio.Future[Any]] = {}
    sent = 0
    execute = psycopg.AsyncConnection.execute

    async def slow_second_hold(connection: Any, query: Any, params: Any = None, **options: Any) -> Any:
        nonlocal sent
        if query == HOLD_STATEMENT and connection.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF:
            sent += 1
            if sent == 2:
                await asyncio.sleep(0.3)  # PostgreSQL runs what it has, and waits
                calls[batch[0].hold_id].cancel()
                await asyncio.sleep(0)  # the stopped caller stops the batch here
        return await execute(connection, query, params, **options)

    monkeypatch.setattr(psycopg.AsyncConnection, "execute", slow_second_hold)

    async def work(holds: PlainHolds) -> list[Hold | BaseException | None]:
        for plain_hold in [first, *batch]:
            calls[plain_hold.hold_id] = asyncio.ensure_future(holds.place(plain_hold))
        await asyncio.wait(calls.values())
        return [
            None if call.cancelled() else call.exception() or call.result()[0]  # type: ignore[index]
            for call in calls.values()
        ]

    placed, batches = with_holds(server, server.settings, work, db_hold_pool_size=1)
    assert placed[1] is None  # stopped
    assert all(isinstance(hold, Hold) for hold in (placed[0], placed[2], placed[3])), placed
    written = transactions(db, batch)
    assert written[0] is None, "a stopped caller's hold was committed"
    assert written[1] is not None and written[1] == written[2]
    assert batches == [(1, False), (2, False)]  # the stopped batch did not end; the two went again


def test_a_stopped_caller_hears_so_only_once_its_statement_is_stopped(
    server: RunningServer, ana: Customer, sale: Sale, db: Db
) -> None:
    # The hold waits for the showtime's lock. Its caller is stopped; the moment it hears so, the
    # lock is freed: the statement must be stopped by then, or it would write the hold after.
    lone = plain(ana, sale, "B1", rules=RULES)
    showtime_key = advisory_key(LockNamespace.SHOWTIME_SEATS, sale.showtime.id)
    with psycopg.connect(db.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (showtime_key,))

        async def work(holds: PlainHolds) -> bool:
            call = asyncio.ensure_future(holds.place(lone))
            await asyncio.sleep(0.5)  # at the lock
            call.cancel()
            await asyncio.wait((call,))
            running = other.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'cinema-grpc-holds' AND state = 'active'"
            ).fetchone()
            other.execute("SELECT pg_advisory_unlock(%s)", (showtime_key,))
            await asyncio.sleep(0.5)  # time enough for a statement still running to write
            return call.cancelled() and running == (0,)

        stopped, batches = with_holds(server, server.settings, work, db_hold_pool_size=1, db_lock_timeout_ms=5000)
    assert stopped, "the caller heard it was stopped while its statement still ran"
    assert batches == [(1, False)]
    assert transactions(db, [lone]) == [None]
