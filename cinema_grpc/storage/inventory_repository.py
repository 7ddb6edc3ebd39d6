"""Seat inventories in PostgreSQL: loaded in one round trip, persisted with the commit in one.

Plain SQL sent through the connection (no ORM entities, no statement building). The writes of a
unit of work go out together with its COMMIT, one statement per kind of change, each for every
inventory at once, so no lock taken there is held across a client round trip.

An inventory loaded for a change of existing holds or bookings is locked as it is read: the
locks and the read go out together, the read in a statement of its own so that its snapshot is
taken with every lock held. An inventory loaded for a new hold (the hot path) is read without
locks; its locks are taken in the pipeline that writes the hold, where a check re-reads, under
the locks, everything the decision depended on (the showtime still on sale, in the slot and hall
it was read in; the customer's active holds; every seat claimed still free and in service; the
lapsed holds it expires still active) and aborts the whole pipeline when anything changed
(StaleDecision: decide again).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cinema_grpc.domain.booking.inventory import (
    BookingCancelled,
    HoldAdded,
    HoldEnded,
    HoldKept,
    HoldOffer,
    HoldSold,
    LapsedHoldsExpired,
    NewHold,
    SeatInventory,
    one_version,
)
from cinema_grpc.domain.booking.model import (
    Booking,
    BookingState,
    ClaimedSeat,
    CounterPayment,
    Hold,
    HoldState,
    RefundState,
    SaleChannel,
    SeatChange,
    SeatEvent,
    SeatState,
    Ticket,
)
from cinema_grpc.domain.errors import SeatAlreadyTaken, StaleDecision
from cinema_grpc.domain.ids import new_id
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.screening.model import Seat, SeatKind
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from cinema_grpc.storage.screening_repositories import SHOWTIME_COLUMNS, showtime_of

# The showtime's seat lock. Transaction-scoped: released at commit or rollback, never leaked.
# The connection's lock_timeout bounds the wait (Contention, i.e. ABORTED with retry advice).
_LOCK_SHOWTIME = "SELECT pg_advisory_xact_lock(%(showtime_key)s)"

# For a new hold: the customer's lock, then the showtime's, then the hall row FOR SHARE (a layout
# change takes it FOR UPDATE). The hall lock is in a subquery of the locks' row, so it is taken
# after them.
_LOCK_FOR_HOLD = """
SELECT (SELECT h.id FROM screening.halls AS h JOIN screening.showtimes AS s ON s.hall_id = h.id
        WHERE s.id = %(showtime_id)s FOR SHARE OF h)
FROM (SELECT pg_advisory_xact_lock(%(customer_key)s) AS customer,
             pg_advisory_xact_lock(%(showtime_key)s) AS showtime OFFSET 0) AS locks
"""

# Try-locks never wait, so their order does not matter and two sweepers cannot deadlock.
_TRY_LOCK_SHOWTIMES = """
SELECT showtime_id FROM unnest(%(showtime_ids)s::uuid[], %(keys)s::bigint[]) AS t(showtime_id, key)
WHERE pg_try_advisory_xact_lock(key)
"""

# A hold as a JSON array, its seats with their frozen prices in layout order (and whether each
# seat is in service: a seat whose claim ends shows as out of service if it is).
HOLD_JSON = """
json_build_array(hold.id, hold.customer_id, hold.state, hold.expires_at, hold.extensions_used, hold.created_at,
                 hold.payment_deadline, hold.ended_by, hold.end_reason,
                 (SELECT json_agg(json_build_array(claim.seat_id, seat.row_label, seat.number, seat.kind,
                                                   claim.amount_minor, claim.currency, seat.in_service)
                                  ORDER BY seat.row_index, seat.grid_column)
                  FROM booking.seat_claims AS claim JOIN screening.seats AS seat ON seat.id = claim.seat_id
                  WHERE claim.hold_id = hold.id))
"""

_BOOKING_JSON = """
json_build_array(booking.id, booking.customer_id, booking.hold_id, booking.state, booking.channel,
                 booking.counter_payment, booking.refund_state, booking.created_at, booking.cancelled_at,
                 booking.cancel_reason, booking.cancelled_by,
                 (SELECT json_agg(json_build_array(claim.seat_id, seat.row_label, seat.number, seat.kind,
                                                   claim.amount_minor, claim.currency, claim.id, claim.status,
                                                   seat.in_service)
                                  ORDER BY seat.row_index, seat.grid_column)
                  FROM booking.seat_claims AS claim JOIN screening.seats AS seat ON seat.id = claim.seat_id
                  WHERE claim.booking_id = booking.id))
"""


# The showtime with the holds and bookings a change needs.
_LOAD = f"""
SELECT {SHOWTIME_COLUMNS},
       (SELECT json_agg({HOLD_JSON}) FROM booking.holds AS hold
        WHERE hold.showtime_id = showtime.id
          AND (hold.id = ANY(%(hold_ids)s::uuid[]) OR (%(all_sales)s AND hold.state = 'ACTIVE'))),
       (SELECT json_agg({_BOOKING_JSON}) FROM booking.bookings AS booking
        WHERE booking.showtime_id = showtime.id
          AND (booking.id = ANY(%(booking_ids)s::uuid[]) OR (%(all_sales)s AND booking.state = 'CONFIRMED')))
FROM screening.showtimes AS showtime WHERE showtime.id = %(showtime_id)s
"""


def _compact(sql: str) -> str:
    """The statement without comments and runs of white space: psycopg caches the parsing of
    statements up to 4 KiB only, and the read of a new hold is longer than that as written."""
    return " ".join(re.sub(r"--[^\n]*", "", sql).split())


# Everything a new hold is decided on, in one snapshot: the showtime with its prices, the
# customer's active holds, the seats asked for (all of the hall for the best available; the
# requested ones and the rows of requested wheelchair spaces, for their companion seats) and
# which of them are taken, and the showtime's lapsed holds (expired with the decision).
_LOAD_FOR_HOLD = _compact(f"""
WITH showtime AS (
    SELECT * FROM screening.showtimes WHERE id = %(showtime_id)s
), asked AS (
    SELECT seat.* FROM screening.seats AS seat JOIN showtime ON seat.hall_id = showtime.hall_id
    WHERE seat.id = ANY(%(seat_ids)s::uuid[]) AND seat.retired_at IS NULL
), wanted AS (
    SELECT * FROM asked
    UNION
    SELECT seat.* FROM screening.seats AS seat JOIN showtime ON seat.hall_id = showtime.hall_id
    WHERE seat.retired_at IS NULL
      AND seat.row_label = ANY(ARRAY(SELECT asked.row_label FROM asked WHERE asked.kind = 'WHEELCHAIR'))
    UNION
    SELECT seat.* FROM screening.seats AS seat JOIN showtime ON seat.hall_id = showtime.hall_id
    WHERE %(all_seats)s AND seat.retired_at IS NULL
)
SELECT {SHOWTIME_COLUMNS},
       (SELECT json_agg({HOLD_JSON}) FROM booking.holds AS hold
        WHERE hold.showtime_id = %(showtime_id)s AND hold.state = 'ACTIVE'
          AND greatest(hold.expires_at, hold.payment_deadline) <= %(now)s),
       (SELECT count(*) FROM booking.holds AS hold
        WHERE hold.customer_id = %(customer_id)s AND hold.state = 'ACTIVE'
          AND greatest(hold.expires_at, hold.payment_deadline) > %(now)s),
       (SELECT json_agg(json_build_array(wanted.id, wanted.row_label, wanted.number, wanted.grid_column,
                                         wanted.kind, wanted.in_service, wanted.out_of_service_reason)
                        ORDER BY wanted.row_index, wanted.grid_column)
        FROM wanted),
       (SELECT array_agg(claim.seat_id) FROM wanted JOIN booking.seat_claims AS claim
            ON claim.showtime_id = %(showtime_id)s AND claim.seat_id = wanted.id
        WHERE claim.status IN ('HELD', 'SOLD') AND (claim.status = 'SOLD' OR claim.expires_at > %(now)s)),
       -- The customer limits (not read for staff): when the customer's latest holds started,
       (SELECT array_agg(recent.created_at ORDER BY recent.created_at DESC)
        FROM (SELECT hold.created_at FROM booking.holds AS hold
              WHERE %(limited)s AND hold.customer_id = %(customer_id)s AND hold.created_at > %(rate_since)s
              ORDER BY hold.created_at DESC LIMIT %(rate_limit)s) AS recent),
       -- how many seats of the showtime they hold (unlapsed) or bought (read from their own holds,
       -- so a busy showtime's many claims are not walked),
       (SELECT count(*) FROM booking.holds AS hold JOIN booking.seat_claims AS claim ON claim.hold_id = hold.id
        WHERE %(limited)s AND hold.customer_id = %(customer_id)s AND hold.showtime_id = %(showtime_id)s
          AND hold.state IN ('ACTIVE', 'CONVERTED')
          AND claim.status IN ('HELD', 'SOLD') AND (claim.status = 'SOLD' OR claim.expires_at > %(now)s)),
       -- and the seats of their holds of the showtime that ended (or lapsed) since the cooldown began.
       (SELECT json_agg(json_build_array(ended.seat_id, ended.at))
        FROM (SELECT claim.seat_id, max(coalesce(hold.ended_at, greatest(hold.expires_at, hold.payment_deadline))) AS at
              FROM booking.holds AS hold JOIN booking.seat_claims AS claim ON claim.hold_id = hold.id
              WHERE %(limited)s AND hold.customer_id = %(customer_id)s AND hold.showtime_id = %(showtime_id)s
                AND ((hold.state IN ('RELEASED', 'EXPIRED') AND hold.ended_at > %(cooldown_since)s)
                     OR (hold.state = 'ACTIVE'
                         AND greatest(hold.expires_at, hold.payment_deadline) <= %(now)s
                         AND greatest(hold.expires_at, hold.payment_deadline) > %(cooldown_since)s))
              GROUP BY claim.seat_id) AS ended)
FROM showtime
""")

# ---------------------------------------------------------------- writes, in this order

# A new hold decided on an unlocked read: under its locks, what the decision depended on is
# unchanged, or the transaction aborts (SQLSTATE CIN01) and nothing sent with it is written.
_CHECK_NEW_HOLD = """
SELECT booking.require(
    (SELECT showtime.state = 'SCHEDULED' AND showtime.starts_at > %(now)s
            AND showtime.starts_at = %(starts_at)s AND showtime.hall_id = %(hall_id)s
     FROM screening.showtimes AS showtime WHERE showtime.id = %(showtime_id)s)
    AND (SELECT count(*) FROM booking.holds AS hold
         WHERE hold.customer_id = %(customer_id)s AND hold.state = 'ACTIVE'
           AND greatest(hold.expires_at, hold.payment_deadline) > %(now)s) = %(active_holds)s
    AND NOT EXISTS (SELECT FROM booking.seat_claims AS claim
                    WHERE claim.showtime_id = %(showtime_id)s AND claim.seat_id = ANY(%(seat_ids)s::uuid[])
                      AND claim.status IN ('HELD', 'SOLD') AND (claim.status = 'SOLD' OR claim.expires_at > %(now)s))
    AND (SELECT count(*) FROM screening.seats AS seat
         WHERE seat.id = ANY(%(seat_ids)s::uuid[]) AND seat.retired_at IS NULL AND seat.in_service)
        = cardinality(%(seat_ids)s::uuid[])
    AND (SELECT count(*) FROM booking.holds AS hold WHERE hold.id = ANY(%(lapsed)s::uuid[]) AND hold.state = 'ACTIVE')
        = cardinality(%(lapsed)s::uuid[])
    -- the customer limits: their recent holds and their seats of the showtime are as read
    AND (NOT %(limited)s OR (
        (SELECT count(*) FROM (SELECT FROM booking.holds AS hold
                               WHERE hold.customer_id = %(customer_id)s AND hold.created_at > %(rate_since)s
                               LIMIT %(rate_limit)s) AS recent) = %(recent_holds)s
        AND (SELECT count(*) FROM booking.holds AS hold JOIN booking.seat_claims AS claim ON claim.hold_id = hold.id
             WHERE hold.customer_id = %(customer_id)s AND hold.showtime_id = %(showtime_id)s
               AND hold.state IN ('ACTIVE', 'CONVERTED')
               AND claim.status IN ('HELD', 'SOLD') AND (claim.status = 'SOLD' OR claim.expires_at > %(now)s))
            = %(seats_of_customer)s)),
    'the seats changed while the hold was decided')
"""
STALE_DECISION = "CIN01"

# The same, with the locks, the expiry of the lapsed holds, the hold and the next version, as one
# statement (migration 0019): sent alone in autocommit it is its own transaction.
_PLACE_HOLD = """
SELECT %(showtime_id)s, new_version, recorded_at FROM booking.place_hold(
    %(customer_key)s, %(showtime_key)s, %(showtime_id)s, %(starts_at)s, %(hall_id)s, %(customer_id)s, %(now)s,
    %(active_holds)s, %(seat_ids)s::uuid[], %(limited)s, %(rate_since)s, %(rate_limit)s, %(recent_holds)s,
    %(seats_of_customer)s, %(ended_ids)s::uuid[], %(ended_states)s::text[], %(ended_ats)s::timestamptz[],
    %(ended_bys)s::uuid[], %(ended_reasons)s::text[], %(hold_id)s, %(expires_at)s, %(created_at)s,
    %(claim_ids)s::uuid[], %(amounts)s::bigint[], %(currencies)s::text[], %(changes)s::jsonb)
"""

_END_HOLDS = """
WITH ended AS (
    UPDATE booking.holds AS hold
    SET state = ended.state, ended_at = ended.at, ended_by = ended.by, end_reason = ended.reason
    FROM unnest(%(ids)s::uuid[], %(states)s::text[], %(ats)s::timestamptz[], %(bys)s::uuid[], %(reasons)s::text[])
        AS ended (id, state, at, by, reason)
    WHERE hold.id = ended.id AND hold.state = 'ACTIVE'
    RETURNING hold.id
)
UPDATE booking.seat_claims SET status = 'RELEASED'
WHERE hold_id IN (SELECT id FROM ended) AND status = 'HELD'
"""

# Claims carry the moment their seat is free again, so "is it taken?" reads one table.
_KEEP_HOLDS = """
WITH kept AS (
    UPDATE booking.holds AS hold
    SET expires_at = kept.expires_at, extensions_used = kept.extensions_used, payment_deadline = kept.deadline
    FROM unnest(%(ids)s::uuid[], %(expires)s::timestamptz[], %(extensions)s::int[], %(deadlines)s::timestamptz[],
                %(untils)s::timestamptz[])
        AS kept (id, expires_at, extensions_used, deadline, until)
    WHERE hold.id = kept.id
    RETURNING hold.id, kept.until
)
UPDATE booking.seat_claims AS claim SET expires_at = kept.until
FROM kept WHERE claim.hold_id = kept.id AND claim.status = 'HELD'
"""

# The unique index on active claims still refuses a double claim (seat_claims_active_key).
_ADD_HOLD = """
WITH hold AS (
    INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, extensions_used, created_at)
    VALUES (%(hold_id)s, %(showtime_id)s, %(customer_id)s, 'ACTIVE', %(expires_at)s, 0, %(created_at)s)
)
INSERT INTO booking.seat_claims
    (id, hold_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)
SELECT claim.id, %(hold_id)s, %(showtime_id)s, claim.seat_id, 'HELD', claim.amount_minor, claim.currency,
       %(expires_at)s, %(created_at)s
FROM unnest(%(claim_ids)s::uuid[], %(seat_ids)s::uuid[], %(amounts)s::bigint[], %(currencies)s::text[])
    AS claim (id, seat_id, amount_minor, currency)
"""

_SELL_HOLD = """
WITH booking AS (
    INSERT INTO booking.bookings (id, showtime_id, customer_id, hold_id, state, channel, counter_payment,
                                  refund_state, created_at, ticket_count, total_minor, currency)
    VALUES (%(booking_id)s, %(showtime_id)s, %(customer_id)s, %(hold_id)s, 'CONFIRMED', %(channel)s,
            %(counter_payment)s, 'NONE', %(created_at)s, %(ticket_count)s, %(total_minor)s, %(currency)s)
), hold AS (
    UPDATE booking.holds SET state = 'CONVERTED', ended_at = %(created_at)s
    WHERE id = %(hold_id)s AND state = 'ACTIVE'
)
UPDATE booking.seat_claims SET status = 'SOLD', booking_id = %(booking_id)s, expires_at = NULL
WHERE hold_id = %(hold_id)s AND status = 'HELD'
"""

_CANCEL_BOOKINGS = """
WITH cancelled AS (
    UPDATE booking.bookings AS booking
    SET state = 'CANCELLED', refund_state = 'PENDING', cancelled_at = cancelled.at,
        cancel_reason = cancelled.reason, cancelled_by = cancelled.by
    FROM unnest(%(ids)s::uuid[], %(ats)s::timestamptz[], %(reasons)s::text[], %(bys)s::uuid[])
        AS cancelled (id, at, reason, by)
    WHERE booking.id = cancelled.id AND booking.state = 'CONFIRMED'
    RETURNING booking.id
)
UPDATE booking.seat_claims SET status = 'CANCELLED'
WHERE booking_id IN (SELECT id FROM cancelled) AND status = 'SOLD'
"""

# The next availability version of each showtime and its event, in one statement.
_NEXT_VERSIONS = """
WITH changed AS (
    SELECT * FROM unnest(%(showtime_ids)s::uuid[], %(changes)s::jsonb[], %(layout_changed)s::boolean[])
        AS changed (showtime_id, changes, layout_changed)
), version AS (
    INSERT INTO booking.showtime_versions AS current (showtime_id, version)
    SELECT showtime_id, 1 FROM changed
    ON CONFLICT (showtime_id) DO UPDATE SET version = current.version + 1
    RETURNING showtime_id, version
)
INSERT INTO booking.seat_events (showtime_id, version, changes, layout_changed)
SELECT version.showtime_id, version.version, changed.changes, changed.layout_changed
FROM version JOIN changed USING (showtime_id)
RETURNING showtime_id, version, created_at
"""


# The sweeper's bulk expiry, for every showtime swept (each locked) in one statement: their lapsed
# holds expire, their claims are released, and each showtime's freed seats become its next
# version and event (each seat FREE, or OUT_OF_SERVICE), the event's JSON built here in the form
# _changes_json gives. A hold whose card payment is in flight is kept until its payment deadline.
_EXPIRE_LAPSED = """
WITH swept AS (
    SELECT * FROM unnest(%(showtime_ids)s::uuid[], %(ats)s::timestamptz[]) AS swept (showtime_id, at)
), expired AS (
    UPDATE booking.holds AS hold SET state = 'EXPIRED', ended_at = swept.at
    FROM swept
    WHERE hold.showtime_id = swept.showtime_id AND hold.state = 'ACTIVE'
      AND greatest(hold.expires_at, hold.payment_deadline) <= swept.at
    RETURNING hold.id
), freed AS (
    UPDATE booking.seat_claims SET status = 'RELEASED'
    WHERE showtime_id = ANY(%(showtime_ids)s::uuid[]) AND status = 'HELD'
      AND hold_id IN (SELECT id FROM expired)
    RETURNING showtime_id, seat_id
), shown AS (
    -- A seat whose claim ends shows as the seat map shows an unclaimed seat.
    SELECT freed.showtime_id, freed.seat_id,
           CASE WHEN seat.in_service THEN 'FREE' ELSE 'OUT_OF_SERVICE' END AS state
    FROM freed JOIN screening.seats AS seat ON seat.id = freed.seat_id
), by_showtime AS (
    SELECT showtime_id, array_agg(seat_id ORDER BY seat_id) AS seat_ids, array_agg(state ORDER BY seat_id) AS states,
           jsonb_agg(jsonb_build_array(seat_id, state) ORDER BY seat_id) AS changes
    FROM shown GROUP BY showtime_id
), version AS (
    INSERT INTO booking.showtime_versions AS current (showtime_id, version)
    SELECT showtime_id, 1 FROM by_showtime
    ON CONFLICT (showtime_id) DO UPDATE SET version = current.version + 1
    RETURNING showtime_id, version
), event AS (
    INSERT INTO booking.seat_events (showtime_id, version, changes)
    SELECT version.showtime_id, version.version, by_showtime.changes FROM version JOIN by_showtime USING (showtime_id)
    RETURNING showtime_id, version, created_at
)
SELECT event.showtime_id, event.version, event.created_at, by_showtime.seat_ids, by_showtime.states
FROM event JOIN by_showtime USING (showtime_id)
"""


# A swept seat's state by name: a sweep announces 200,000 seats, each looked up here.
_STATES = {state.value: state for state in SeatState}


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _uuid(value: str | None) -> uuid.UUID | None:
    return uuid.UUID(value) if value is not None else None


def _claimed(seat_id: str, row_label: str, number: int, kind: str, amount: int, currency: str) -> ClaimedSeat:
    return ClaimedSeat(uuid.UUID(seat_id), row_label, number, SeatKind(kind), Money(amount, currency))


def hold_of(showtime_id: uuid.UUID, item: list[Any]) -> Hold:
    (hold_id, customer_id, state, expires_at, extensions, created_at, deadline, ended_by, end_reason, seats) = item
    return Hold(
        uuid.UUID(hold_id),
        showtime_id,
        uuid.UUID(customer_id),
        tuple(_claimed(*seat[:6]) for seat in seats or ()),
        HoldState(state),
        datetime.fromisoformat(expires_at),
        int(extensions),
        datetime.fromisoformat(created_at),
        _time(deadline),
        _uuid(ended_by),
        end_reason,
    )


def _booking(showtime_id: uuid.UUID, item: list[Any]) -> Booking:
    (
        booking_id,
        customer_id,
        hold_id,
        state,
        channel,
        counter_payment,
        refund_state,
        created_at,
        cancelled_at,
        cancel_reason,
        cancelled_by,
        tickets,
    ) = item
    return Booking(
        uuid.UUID(booking_id),
        showtime_id,
        uuid.UUID(customer_id),
        uuid.UUID(hold_id),
        tuple(
            Ticket(uuid.UUID(claim_id), _claimed(*seat), status == "SOLD")
            for *seat, claim_id, status, _ in tickets or ()
        ),
        BookingState(state),
        SaleChannel(channel),
        CounterPayment(counter_payment) if counter_payment else None,
        RefundState(refund_state),
        datetime.fromisoformat(created_at),
        _time(cancelled_at),
        cancel_reason,
        _uuid(cancelled_by),
    )


def _out_of_service(holds: Iterable[list[Any]], bookings: Iterable[list[Any]] = ()) -> frozenset[uuid.UUID]:
    """The seats of these holds and bookings (as JSON arrays) that are out of service now."""
    seats = [seat for item in holds for seat in item[9] or ()] + [seat for item in bookings for seat in item[11] or ()]
    return frozenset(uuid.UUID(seat[0]) for seat in seats if not seat[-1])


def _changes_json(changes: Sequence[SeatChange]) -> str:
    return json.dumps([[str(change.seat_id), change.state.value] for change in changes])


class SqlInventoryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self._seen: list[SeatInventory] = []
        # Inventories read without locks for a new hold, with what the decision read.
        self._unlocked: dict[int, tuple[NewHold, HoldOffer]] = {}
        # A connection whose transaction this repository begins itself (see _load_for_hold).
        self._own_begin: psycopg.AsyncConnection[Any] | None = None

    async def _driver(self) -> psycopg.AsyncConnection[Any]:
        connection = await self._session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        assert isinstance(driver, psycopg.AsyncConnection)
        return driver

    async def _pipeline(self, *statements: tuple[str, dict[str, Any]], rows_of: int = -1) -> list[Any]:
        """Sends the statements together (one round trip, BEGIN included when the transaction
        starts with them) and returns the rows of the one at ``rows_of`` (the last). They still run one after another,
        each with its own snapshot. Errors are wrapped as SQLAlchemy would wrap them (lock
        timeouts become Contention in the unit of work), and SQLAlchemy's statement hooks see
        each statement."""
        connection = await self._session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        sync = connection.sync_connection
        assert isinstance(driver, psycopg.AsyncConnection) and sync is not None
        sql, params = statements[-1]
        try:
            if len(statements) == 1:
                # Pipeline mode would only add its own sync and waits to a lone statement.
                sync.dispatch.before_cursor_execute(sync, None, sql, params, None, False)
                cursors = [await driver.execute(sql, params)]
            else:
                async with driver.pipeline():
                    cursors = []
                    for sql, params in statements:
                        sync.dispatch.before_cursor_execute(sync, None, sql, params, None, False)
                        cursors.append(await driver.execute(sql, params))
            wanted = cursors[rows_of]
            return await wanted.fetchall() if wanted.description is not None else []
        except psycopg.Error as exc:
            raise DBAPIError.instance(sql, params, exc, psycopg.Error, hide_parameters=True) from exc

    async def end(self) -> None:
        """Gives the connection back as it was lent (the unit of work calls this when it ends):
        a transaction this repository began and did not commit is rolled back."""
        driver, self._own_begin = self._own_begin, None
        if driver is None or driver.closed:
            return
        try:
            if driver.info.transaction_status is not psycopg.pq.TransactionStatus.IDLE:
                await driver.rollback()
            await driver.set_autocommit(False)
        except psycopg.Error:
            # Never lend it again in autocommit: closed, the pool discards it.
            await driver.close()

    def _new_hold_locks_and_check(
        self, inventory: SeatInventory, new_hold: NewHold, offer: HoldOffer
    ) -> list[tuple[str, dict[str, Any]]]:
        """The locks a new hold needs, in the one order, then the check that its decision, taken
        on an unlocked read, still holds under them."""
        now = next(w.hold.created_at for w in inventory.writes if isinstance(w, HoldAdded))
        locks = {
            "customer_key": advisory_key(LockNamespace.CUSTOMER_HOLDS, str(new_hold.customer_id)),
            "showtime_key": advisory_key(LockNamespace.SHOWTIME_SEATS, str(inventory.showtime_id)),
            "showtime_id": inventory.showtime_id,
        }
        assert inventory.showtime is not None
        check = {
            "showtime_id": inventory.showtime_id,
            # A move between the read and the locks changes the slot or the seats' hall.
            "starts_at": inventory.showtime.starts_at,
            "hall_id": inventory.showtime.hall_id,
            "customer_id": new_hold.customer_id,
            "now": now,
            "active_holds": offer.active_holds,
            "seat_ids": [s.seat_id for w in inventory.writes if isinstance(w, HoldAdded) for s in w.hold.seats],
            "lapsed": [w.hold.id for w in inventory.writes if isinstance(w, HoldEnded)],
            "limited": not new_hold.staff,
            "rate_since": new_hold.rate_since or now,
            "rate_limit": new_hold.rate_limit,
            "recent_holds": len(offer.recent_holds),
            "seats_of_customer": offer.seats_of_customer,
        }
        return [(_LOCK_FOR_HOLD, locks), (_CHECK_NEW_HOLD, check)]

    def _placed_hold(
        self, inventories: list[SeatInventory], unlocked: dict[int, tuple[NewHold, HoldOffer]]
    ) -> tuple[str, dict[str, Any]] | None:
        """The one statement that writes a new hold decided on an unlocked read, when that hold
        (with the lapsed holds it expires) is all the unit of work changed."""
        changed = [inventory for inventory in inventories if inventory.writes]
        if len(changed) != 1 or id(changed[0]) not in unlocked:
            return None
        inventory = changed[0]
        added = [w.hold for w in inventory.writes if isinstance(w, HoldAdded)]
        ended = [w for w in inventory.writes if isinstance(w, HoldEnded)]
        if len(added) != 1 or len(added) + len(ended) != len(inventory.writes) or inventory.layout_changed:
            return None
        hold = added[0]
        new_hold, offer = unlocked[id(inventory)]
        assert inventory.showtime is not None
        return (
            _PLACE_HOLD,
            {
                "customer_key": advisory_key(LockNamespace.CUSTOMER_HOLDS, str(new_hold.customer_id)),
                "showtime_key": advisory_key(LockNamespace.SHOWTIME_SEATS, str(inventory.showtime_id)),
                "showtime_id": inventory.showtime_id,
                # A move between the read and the locks changes the slot or the seats' hall.
                "starts_at": inventory.showtime.starts_at,
                "hall_id": inventory.showtime.hall_id,
                "customer_id": new_hold.customer_id,
                "now": hold.created_at,
                "active_holds": offer.active_holds,
                "seat_ids": [seat.seat_id for seat in hold.seats],
                "limited": not new_hold.staff,
                "rate_since": new_hold.rate_since or hold.created_at,
                "rate_limit": new_hold.rate_limit,
                "recent_holds": len(offer.recent_holds),
                "seats_of_customer": offer.seats_of_customer,
                "ended_ids": [w.hold.id for w in ended],
                "ended_states": [w.hold.state.value for w in ended],
                "ended_ats": [w.at for w in ended],
                "ended_bys": [w.hold.ended_by for w in ended],
                "ended_reasons": [w.hold.end_reason for w in ended],
                "hold_id": hold.id,
                "expires_at": hold.expires_at,
                "created_at": hold.created_at,
                "claim_ids": [new_id() for _ in hold.seats],
                "amounts": [seat.price.amount_minor for seat in hold.seats],
                "currencies": [seat.price.currency for seat in hold.seats],
                "changes": _changes_json(one_version(inventory.changes)),
            },
        )

    def _loaded(self, inventory: SeatInventory) -> SeatInventory:
        self._seen.append(inventory)
        return inventory

    async def get_locked(
        self,
        showtime_id: uuid.UUID,
        now: datetime,
        *,
        holds: Collection[uuid.UUID] = (),
        bookings: Collection[uuid.UUID] = (),
        new_hold: NewHold | None = None,
        all_sales: bool = False,
    ) -> SeatInventory:
        showtime_key = advisory_key(LockNamespace.SHOWTIME_SEATS, str(showtime_id))
        if new_hold is not None:
            return self._loaded(await self._load_for_hold(showtime_id, now, new_hold))
        rows = await self._pipeline(
            (_LOCK_SHOWTIME, {"showtime_key": showtime_key}),
            (
                _LOAD,
                {
                    "showtime_id": showtime_id,
                    "hold_ids": list(holds),
                    "booking_ids": list(bookings),
                    "all_sales": all_sales,
                },
            ),
        )
        if not rows:
            return self._loaded(SeatInventory(showtime_id, None))
        row = rows[0]
        return self._loaded(
            SeatInventory(
                showtime_id,
                showtime_of(showtime_id, row[:10]),
                holds=[hold_of(showtime_id, item) for item in row[10] or ()],
                bookings=[_booking(showtime_id, item) for item in row[11] or ()],
                out_of_service=_out_of_service(row[10] or (), row[11] or ()),
            )
        )

    async def _load_for_hold(self, showtime_id: uuid.UUID, now: datetime, new_hold: NewHold) -> SeatInventory:
        locks = {
            "customer_key": advisory_key(LockNamespace.CUSTOMER_HOLDS, str(new_hold.customer_id)),
            "showtime_key": advisory_key(LockNamespace.SHOWTIME_SEATS, str(showtime_id)),
            "showtime_id": showtime_id,
        }
        read = {
            "showtime_id": showtime_id,
            "customer_id": new_hold.customer_id,
            "now": now,
            "all_seats": new_hold.seat_ids is None,
            "seat_ids": list(new_hold.seat_ids or ()),
            "limited": not new_hold.staff,
            "rate_since": new_hold.rate_since or now,
            "rate_limit": new_hold.rate_limit,
            "cooldown_since": new_hold.cooldown_since or now,
        }
        if new_hold.lock_first:
            rows = await self._pipeline((_LOCK_FOR_HOLD, locks), (_LOAD_FOR_HOLD, read))
        else:
            driver = await self._driver()
            if driver.info.transaction_status is psycopg.pq.TransactionStatus.IDLE:
                # The read needs no transaction; the writes begin theirs in their own pipeline.
                # (psycopg waits for the answer to a BEGIN it sends itself, even in a pipeline.)
                await driver.set_autocommit(True)
                self._own_begin = driver
            rows = await self._pipeline((_LOAD_FOR_HOLD, read))
        if not rows:
            return SeatInventory(showtime_id, None, offer=HoldOffer(new_hold.customer_id, 0, (), frozenset()))
        row = rows[0]
        showtime = showtime_of(showtime_id, row[:10])
        lapsed, active_holds, seats, taken, recent, seats_of_customer, ended = row[10:]
        offer = HoldOffer(
            new_hold.customer_id,
            int(active_holds),
            tuple(
                Seat(uuid.UUID(seat_id), showtime.hall_id, label, number, column, SeatKind(kind), in_service, reason)
                for seat_id, label, number, column, kind, in_service, reason in seats or ()
            ),
            frozenset(taken or ()),
            staff=new_hold.staff,
            recent_holds=tuple(recent or ()),
            seats_of_customer=int(seats_of_customer),
            recently_ended=tuple((uuid.UUID(seat_id), datetime.fromisoformat(at)) for seat_id, at in ended or ()),
        )
        inventory = SeatInventory(
            showtime_id,
            showtime,
            holds=[hold_of(showtime_id, item) for item in lapsed or ()],
            offer=offer,
            out_of_service=_out_of_service(lapsed or ()),
        )
        if not new_hold.lock_first:
            self._unlocked[id(inventory)] = (new_hold, offer)
        return inventory

    async def try_lock_lapsed(self, showtime_ids: Collection[uuid.UUID]) -> list[SeatInventory]:
        ids = list(showtime_ids)
        keys = [advisory_key(LockNamespace.SHOWTIME_SEATS, str(showtime_id)) for showtime_id in ids]
        connection = await self._session.connection()
        locked = [
            row[0] for row in await connection.exec_driver_sql(_TRY_LOCK_SHOWTIMES, {"showtime_ids": ids, "keys": keys})
        ]
        # Nothing is read: their lapsed holds are expired in bulk (expire_lapsed), by a statement
        # that runs, as each statement does, in a snapshot taken with these locks held.
        return [self._loaded(SeatInventory(showtime_id, None)) for showtime_id in locked]

    async def _commit_bulk_expiry(self, inventories: list[SeatInventory]) -> list[SeatEvent]:
        """Writes the bulk expiries of these inventories, and commits, in one round trip."""
        writes = [(inventory.showtime_id, write) for inventory in inventories for write in inventory.writes]
        expiries = {showtime_id: write.at for showtime_id, write in writes if isinstance(write, LapsedHoldsExpired)}
        if len(expiries) != len(writes):
            raise ValueError("a unit of work that expires lapsed holds in bulk writes nothing else")
        try:
            rows = await self._pipeline(
                (_EXPIRE_LAPSED, {"showtime_ids": list(expiries), "ats": list(expiries.values())}),
                ("COMMIT", {}),
                rows_of=0,
            )
        finally:
            await self.end()
        events = [
            SeatEvent(
                showtime_id,
                int(version),
                tuple(SeatChange(seat_id, _STATES[state]) for seat_id, state in zip(seat_ids, states, strict=True)),
                at,
            )
            for showtime_id, version, at, seat_ids, states in rows
        ]
        recorded = {event.showtime_id: event for event in events}
        for inventory in inventories:
            if (event := recorded.get(inventory.showtime_id)) is not None:
                inventory.version = event.version
                inventory.changes = list(event.changes)
        return events

    async def commit(self) -> list[SeatEvent]:
        """Writes what the loaded inventories changed, and their seat changes as each showtime's
        next version, and commits, in one round trip; returns those events. When nothing was
        changed, nothing is sent (the caller commits). Raises SeatAlreadyTaken when the database
        finds a seat claimed twice (the unique index on active claims), StaleDecision when a new
        hold's decision no longer holds under its locks."""
        inventories, self._seen = self._seen, []
        unlocked, self._unlocked = self._unlocked, {}
        if any(isinstance(write, LapsedHoldsExpired) for inventory in inventories for write in inventory.writes):
            return await self._commit_bulk_expiry(inventories)
        writes = [write for inventory in inventories for write in inventory.writes]
        statements: list[tuple[str, dict[str, Any]]] = []
        placed = self._placed_hold(inventories, unlocked)
        if placed is not None:
            statements.append(placed)
            writes = []
        for inventory in inventories:
            if id(inventory) in unlocked and inventory.writes and placed is None:
                statements += self._new_hold_locks_and_check(inventory, *unlocked[id(inventory)])
        ended = [w for w in writes if isinstance(w, HoldEnded)]
        if ended:
            statements.append(
                (
                    _END_HOLDS,
                    {
                        "ids": [w.hold.id for w in ended],
                        "states": [w.hold.state.value for w in ended],
                        "ats": [w.at for w in ended],
                        "bys": [w.hold.ended_by for w in ended],
                        "reasons": [w.hold.end_reason for w in ended],
                    },
                )
            )
        kept = [w.hold for w in writes if isinstance(w, HoldKept)]
        if kept:
            statements.append(
                (
                    _KEEP_HOLDS,
                    {
                        "ids": [h.id for h in kept],
                        "expires": [h.expires_at for h in kept],
                        "extensions": [h.extensions_used for h in kept],
                        "deadlines": [h.payment_deadline for h in kept],
                        "untils": [h.kept_until for h in kept],
                    },
                )
            )
        added = [w.hold for w in writes if isinstance(w, HoldAdded)]
        for hold in added:
            statements.append(
                (
                    _ADD_HOLD,
                    {
                        "hold_id": hold.id,
                        "showtime_id": hold.showtime_id,
                        "customer_id": hold.customer_id,
                        "expires_at": hold.expires_at,
                        "created_at": hold.created_at,
                        "claim_ids": [new_id() for _ in hold.seats],
                        "seat_ids": [seat.seat_id for seat in hold.seats],
                        "amounts": [seat.price.amount_minor for seat in hold.seats],
                        "currencies": [seat.price.currency for seat in hold.seats],
                    },
                )
            )
        for sold in (w for w in writes if isinstance(w, HoldSold)):
            booking = sold.booking
            statements.append(
                (
                    _SELL_HOLD,
                    {
                        "booking_id": booking.id,
                        "showtime_id": booking.showtime_id,
                        "customer_id": booking.customer_id,
                        "hold_id": sold.hold.id,
                        "channel": booking.channel.value,
                        "counter_payment": booking.counter_payment.value if booking.counter_payment else None,
                        "created_at": booking.created_at,
                        "ticket_count": len(booking.tickets),
                        "total_minor": booking.total.amount_minor,
                        "currency": booking.total.currency,
                    },
                )
            )
        cancelled = [w.booking for w in writes if isinstance(w, BookingCancelled)]
        if cancelled:
            statements.append(
                (
                    _CANCEL_BOOKINGS,
                    {
                        "ids": [b.id for b in cancelled],
                        "ats": [b.cancelled_at for b in cancelled],
                        "reasons": [b.cancel_reason for b in cancelled],
                        "bys": [b.cancelled_by for b in cancelled],
                    },
                )
            )
        changed = {
            inventory.showtime_id: one_version(inventory.changes) for inventory in inventories if inventory.announces
        }
        relaid = {inventory.showtime_id for inventory in inventories if inventory.layout_changed}
        versions_at = len(statements)
        if placed is not None:
            versions_at = 0
        elif changed:
            statements.append(
                (
                    _NEXT_VERSIONS,
                    {
                        "showtime_ids": list(changed),
                        "changes": [_changes_json(c) for c in changed.values()],
                        "layout_changed": [showtime_id in relaid for showtime_id in changed],
                    },
                )
            )
        if not statements:
            return []
        # The commit goes in the same pipeline: no lock taken here waits for this process. A
        # placed hold alone in autocommit is a transaction of its own.
        if placed is None or self._own_begin is None:
            if self._own_begin is not None:
                statements.insert(0, ("BEGIN", {}))
                versions_at += 1
            statements.append(("COMMIT", {}))
        try:
            rows = await self._pipeline(*statements, rows_of=versions_at)
        except IntegrityError as exc:
            # The unique index on active claims caught a double claim the locks should have
            # prevented: refuse it like any taken seat. The transaction rolls back whole.
            if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) == "seat_claims_active_key":
                raise SeatAlreadyTaken({str(s.seat_id): s.label for h in added for s in h.seats}) from exc
            raise
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == STALE_DECISION:
                raise StaleDecision("the seats changed while the hold was decided; decide again") from exc
            raise
        finally:
            await self.end()
        recorded = {showtime_id: (int(version), at) for showtime_id, version, at in rows} if changed else {}
        for inventory in inventories:
            if inventory.showtime_id in recorded:
                inventory.version = recorded[inventory.showtime_id][0]
        return [
            SeatEvent(
                showtime_id,
                recorded[showtime_id][0],
                changes,
                recorded[showtime_id][1],
                layout_changed=showtime_id in relaid,
            )
            for showtime_id, changes in changed.items()
        ]
