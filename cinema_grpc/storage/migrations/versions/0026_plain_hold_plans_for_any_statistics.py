"""booking.hold_plain_seats reads only the customer's holds of the showtime and the seats asked,
whatever the statistics were when its plans were made.

Its plans are generic, made once per connection with the statistics of that moment, and they
read far more than a hold needs, with the statistics of a cinema in use (a customer's history of
holds, many showtimes) and even more when they were made while few holds were active (early in
the day, a new cinema, tables just cleaned up): an empty index of active holds costs the same as
any other, and the planner took whichever, for as long as the connection lived. Measured on a
premiere's showtime: 2.8-5.7 ms of PostgreSQL CPU per hold, growing with every hold, against
0.5-0.9 ms.
- An index on (customer_id, showtime_id) finds the customer's holds of the showtime (their seats
  of it, the re-hold cooldown) without the rest of the customer's history.
- The three indexes of active holds now answer only their own question: each one's predicate
  names the column or end its lookups have a condition on, so a lookup of another kind cannot
  walk it. By customer (the customer's active holds), by showtime (its earliest end, lapsed holds
  for the sweeper and the inventory) and by end (the sweeper's list, the gauge): the queries
  with those conditions are unchanged.
- The customer's active holds are counted up to the limit, by customer alone; the customer's
  ended holds of the showtime (the cooldown) are asked for so that holds_ended_idx cannot serve.
- The hold rate is counted in the order of holds_customer_created_idx, so the new index of the
  customer's holds does not serve it by reading the customer's whole history.
- Each hold's claims are counted by hold_id alone: with the status in the condition, the
  showtime's active claims could be walked for each hold.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-01
"""

import importlib

from alembic import op

previous = importlib.import_module("cinema_grpc.storage.migrations.versions.0025_plain_hold_customer_limits_first")

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

SIGNATURE = previous.SIGNATURE
INDEX = "holds_customer_showtime_idx ON booking.holds (customer_id, showtime_id)"
END = "greatest(expires_at, payment_deadline)"
# The indexes of active holds: (new, old) definitions. A partial index is used only by a query
# whose conditions imply its predicate; "x IS NOT NULL" follows from any "x = ..." or "x > ...".
ACTIVE_INDEXES = (
    (
        f"holds_active_end_idx ON booking.holds ({END}) WHERE state = 'ACTIVE' AND {END} IS NOT NULL",
        f"holds_active_expiry_idx ON booking.holds ({END}) WHERE state = 'ACTIVE'",
    ),
    (
        f"holds_active_showtime_end_idx ON booking.holds (showtime_id, {END})"
        " WHERE state = 'ACTIVE' AND showtime_id IS NOT NULL",
        f"holds_active_showtime_expiry_idx ON booking.holds (showtime_id, {END}) WHERE state = 'ACTIVE'",
    ),
    (
        f"holds_active_by_customer_idx ON booking.holds (customer_id, {END})"
        " WHERE state = 'ACTIVE' AND customer_id IS NOT NULL",
        f"holds_active_customer_end_idx ON booking.holds (customer_id, {END}) WHERE state = 'ACTIVE'",
    ),
)


# The function as this migration leaves it (0027 writes it again with time-ordered claim ids).
FUNCTION = f"""
    CREATE OR REPLACE FUNCTION {SIGNATURE}
    RETURNS TABLE (outcome text, version bigint, recorded_at timestamptz, seat_ids uuid[], row_labels text[],
                   numbers integer[], kinds text[], amounts bigint[], currencies text[])
    LANGUAGE plpgsql
    -- Generic plans, made once per connection: measured 1.3-1.9 ms of PostgreSQL CPU per hold
    -- against 1.9-2.1 ms with the default choice and 3.1-3.9 ms with a plan made for every call
    -- (docs/performance.md). Every statement in it looks rows up by key or by a narrow index.
    SET plan_cache_mode = force_generic_plan
    AS $$
    #variable_conflict use_column
    DECLARE
        wanted integer := cardinality(p_seat_ids);
        showtime record;
        seats record;
        taken record;
        locked boolean;
        customer_over boolean;
        cooled boolean;
        share_over boolean;
    BEGIN
        IF wanted IS NULL OR wanted = 0 OR wanted > p_max_seats_per_hold THEN
            RETURN QUERY SELECT 'DECIDE', NULL::bigint, NULL::timestamptz, NULL::uuid[], NULL::text[],
                                NULL::integer[], NULL::text[], NULL::bigint[], NULL::text[];
            RETURN;
        END IF;
        -- A retried request answers with what the first one did: the inventory's path.
        IF p_request_key IS NOT NULL THEN
            PERFORM pg_advisory_xact_lock(p_request_key);
            IF EXISTS (SELECT FROM api.request_log AS request
                       WHERE request.scope = p_request_scope AND request.request_id = p_request_id) THEN
                RETURN QUERY SELECT 'DECIDE', NULL::bigint, NULL::timestamptz, NULL::uuid[], NULL::text[],
                                    NULL::integer[], NULL::text[], NULL::bigint[], NULL::text[];
                RETURN;
            END IF;
        END IF;
        -- A seat already claimed is refused without waiting for the showtime's lock, as the
        -- seat inventory refuses it from its unlocked read: a premiere's crowd does not queue
        -- behind the holds that are being written. Everything else runs under the locks.
        locked := NOT EXISTS (SELECT FROM unnest(p_seat_ids) AS asked (id)
                              CROSS JOIN LATERAL (
                                  SELECT claim.status, claim.expires_at FROM booking.seat_claims AS claim
                                  WHERE claim.showtime_id = p_showtime_id AND claim.seat_id = asked.id
                                    AND claim.status IN ('HELD', 'SOLD')
                                  LIMIT 1) AS claim
                              WHERE claim.status = 'SOLD' OR claim.expires_at > p_now);
        -- The one lock order of a hold: the customer's, the showtime's, then the hall row FOR
        -- SHARE (a layout change takes it FOR UPDATE).
        IF locked THEN
            PERFORM pg_advisory_xact_lock(p_customer_key);
        END IF;
        -- The customer's own limits, read before the showtime's lock: only this customer's
        -- holds count, only they (under the customer's lock) add to them, and whatever else
        -- changes them (expiry, release, sale) lowers them. Over one of them, a hold that
        -- takes the locks is left to the inventory before the showtime's lock; one that does
        -- not (a seat is claimed) answers as before.
        -- One statement: the active holds and hold rate, the re-hold cooldown, and (for a hold
        -- that takes the locks) the customer's seats of the showtime, counted hold by hold
        -- through their claims' index (a join was planned as a scan of every claim).
        -- (The active holds through holds_active_by_customer_idx, by customer_id alone and up
        -- to the limit: with their end in the condition, holds_active_end_idx could serve it.)
        SELECT (SELECT count(*) FROM (SELECT FROM booking.holds AS hold
                                      WHERE hold.customer_id = p_customer_id AND hold.state = 'ACTIVE'
                                        AND (hold.expires_at > p_now OR hold.payment_deadline > p_now)
                                      LIMIT p_max_active_holds) AS active) >= p_max_active_holds
               -- (In the order of holds_customer_created_idx, so that no other index of the
               -- customer's holds serves it without a sort.)
               OR (NOT p_staff AND (SELECT count(*) FROM (SELECT FROM booking.holds AS hold
                                                         WHERE hold.customer_id = p_customer_id
                                                           AND hold.created_at > p_rate_since
                                                         ORDER BY hold.created_at DESC
                                                         LIMIT p_rate_limit) AS recent) >= p_rate_limit),
               NOT p_staff AND EXISTS (
                   SELECT FROM booking.holds AS hold JOIN booking.seat_claims AS claim ON claim.hold_id = hold.id
                   -- (The state written so that holds_ended_idx, every customer's ended
                   -- holds, cannot serve it: released or expired, by the table's CHECK.)
                   WHERE hold.customer_id = p_customer_id AND hold.showtime_id = p_showtime_id
                     AND hold.state <> 'ACTIVE' AND hold.state <> 'CONVERTED'
                     AND hold.ended_at > p_cooldown_since
                     AND claim.seat_id = ANY(p_seat_ids)),
               CASE WHEN locked AND NOT p_staff THEN coalesce((
                   -- The claims of each hold by its hold_id alone: with the status in the
                   -- condition, the showtime's active claims were planned as the way in.
                   SELECT sum((SELECT count(*) FILTER (WHERE claim.status = 'SOLD'
                                                       OR (claim.status = 'HELD' AND claim.expires_at > p_now))
                               FROM booking.seat_claims AS claim WHERE claim.hold_id = hold.id))
                   FROM booking.holds AS hold
                   WHERE hold.customer_id = p_customer_id AND hold.showtime_id = p_showtime_id
                     AND hold.state IN ('ACTIVE', 'CONVERTED')), 0) + wanted > p_max_seats_per_showtime
               ELSE false END
        INTO customer_over, cooled, share_over;
        IF locked THEN
            IF customer_over OR cooled OR share_over THEN
                -- Left to the inventory without queueing for the showtime's lock.
                RETURN QUERY SELECT 'DECIDE', NULL::bigint, NULL::timestamptz, NULL::uuid[], NULL::text[],
                                    NULL::integer[], NULL::text[], NULL::bigint[], NULL::text[];
                RETURN;
            END IF;
            PERFORM pg_advisory_xact_lock(p_showtime_key);
            SELECT s.hall_id, s.state, s.starts_at INTO showtime
            FROM screening.showtimes AS s JOIN screening.halls AS h ON h.id = s.hall_id
            WHERE s.id = p_showtime_id FOR SHARE OF h;
        ELSE
            SELECT s.hall_id, s.state, s.starts_at INTO showtime
            FROM screening.showtimes AS s WHERE s.id = p_showtime_id;
        END IF;
        IF NOT FOUND OR showtime.state <> 'SCHEDULED' OR p_now >= showtime.starts_at
           OR (NOT p_staff AND p_now >= showtime.starts_at - p_online_close)
           OR customer_over
           -- The inventory expires them in the version of its decision. (The earliest end of
           -- the showtime's active holds, the first entry of holds_active_showtime_end_idx.)
           OR (SELECT greatest(hold.expires_at, hold.payment_deadline) FROM booking.holds AS hold
               WHERE hold.showtime_id = p_showtime_id AND hold.state = 'ACTIVE'
               ORDER BY greatest(hold.expires_at, hold.payment_deadline)
               LIMIT 1) <= p_now
        THEN
            RETURN QUERY SELECT 'DECIDE', NULL::bigint, NULL::timestamptz, NULL::uuid[], NULL::text[],
                                NULL::integer[], NULL::text[], NULL::bigint[], NULL::text[];
            RETURN;
        END IF;
        -- The seats, in the order asked, with the showtime's price of their kind.
        SELECT count(*) AS found, count(DISTINCT price.currency) AS currencies_used,
               coalesce(sum(price.amount_minor), 0) AS total,
               array_agg(seat.id ORDER BY asked.position) AS ids,
               array_agg(seat.row_label::text ORDER BY asked.position) AS labels,
               array_agg(seat.number::integer ORDER BY asked.position) AS numbers,
               array_agg(seat.kind::text ORDER BY asked.position) AS kinds,
               array_agg(price.amount_minor::bigint ORDER BY asked.position) AS amounts,
               array_agg(price.currency::text ORDER BY asked.position) AS currencies
        INTO seats
        FROM unnest(p_seat_ids) WITH ORDINALITY AS asked (id, position)
        -- Each seat by its primary key; the other conditions stay outside the LIMIT.
        CROSS JOIN LATERAL (SELECT s.hall_id, s.id, s.row_label, s.number, s.kind, s.retired_at, s.in_service
                            FROM screening.seats AS s WHERE s.id = asked.id LIMIT 1) AS seat
        JOIN screening.showtime_prices AS price ON price.showtime_id = p_showtime_id AND price.kind = seat.kind
        WHERE seat.hall_id = showtime.hall_id AND seat.retired_at IS NULL AND seat.in_service
          AND seat.kind <> 'WHEELCHAIR';
        IF seats.found <> wanted OR cooled THEN
            RETURN QUERY SELECT 'DECIDE', NULL::bigint, NULL::timestamptz, NULL::uuid[], NULL::text[],
                                NULL::integer[], NULL::text[], NULL::bigint[], NULL::text[];
            RETURN;
        END IF;
        SELECT count(*) FILTER (WHERE claim.status = 'SOLD' OR claim.expires_at > p_now) AS live,
               count(*) AS claimed,
               array_agg(claim.seat_id ORDER BY claim.seat_id)
                   FILTER (WHERE claim.status = 'SOLD' OR claim.expires_at > p_now) AS ids
        INTO taken
        FROM unnest(p_seat_ids) AS asked (id)
        CROSS JOIN LATERAL (
            SELECT c.seat_id, c.status, c.expires_at FROM booking.seat_claims AS c
            WHERE c.showtime_id = p_showtime_id AND c.seat_id = asked.id AND c.status IN ('HELD', 'SOLD')
            LIMIT 1) AS claim;
        IF taken.claimed > taken.live THEN
            -- A claim whose time is up but whose hold is not: the inventory sorts it out.
            RETURN QUERY SELECT 'DECIDE', NULL::bigint, NULL::timestamptz, NULL::uuid[], NULL::text[],
                                NULL::integer[], NULL::text[], NULL::bigint[], NULL::text[];
            RETURN;
        END IF;
        IF taken.live > 0 THEN
            RETURN QUERY
            SELECT 'TAKEN', NULL::bigint, NULL::timestamptz, array_agg(seat.id ORDER BY seat.id),
                   array_agg(seat.row_label::text ORDER BY seat.id),
                   array_agg(seat.number::integer ORDER BY seat.id),
                   NULL::text[], NULL::bigint[], NULL::text[]
            FROM screening.seats AS seat WHERE seat.id = ANY(taken.ids);
            RETURN;
        END IF;
        IF NOT locked THEN
            -- Free again by now: decided under the locks, by the inventory.
            RETURN QUERY SELECT 'DECIDE', NULL::bigint, NULL::timestamptz, NULL::uuid[], NULL::text[],
                                NULL::integer[], NULL::text[], NULL::bigint[], NULL::text[];
            RETURN;
        END IF;
        IF seats.currencies_used <> 1 OR seats.total > p_card_limit OR share_over THEN
            RETURN QUERY SELECT 'DECIDE', NULL::bigint, NULL::timestamptz, NULL::uuid[], NULL::text[],
                                NULL::integer[], NULL::text[], NULL::bigint[], NULL::text[];
            RETURN;
        END IF;
        INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, extensions_used, created_at)
        VALUES (p_hold_id, p_showtime_id, p_customer_id, 'ACTIVE', p_expires_at, 0, p_now);
        INSERT INTO booking.seat_claims
            (id, hold_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)
        SELECT gen_random_uuid(), p_hold_id, p_showtime_id, claim.seat_id, 'HELD', claim.amount_minor,
               claim.currency, p_expires_at, p_now
        FROM unnest(seats.ids, seats.amounts, seats.currencies) AS claim (seat_id, amount_minor, currency);
        IF p_request_key IS NOT NULL THEN
            INSERT INTO api.request_log (scope, request_id, fingerprint, resource_id)
            VALUES (p_request_scope, p_request_id, p_fingerprint, p_hold_id);
        END IF;
        RETURN QUERY
        WITH next AS (
            INSERT INTO booking.showtime_versions AS current (showtime_id, version)
            VALUES (p_showtime_id, 1)
            ON CONFLICT (showtime_id) DO UPDATE SET version = current.version + 1
            RETURNING current.version
        ), event AS (
            INSERT INTO booking.seat_events AS event (showtime_id, version, changes)
            SELECT p_showtime_id, next.version,
                   (SELECT jsonb_agg(jsonb_build_array(seat_id, 'HELD') ORDER BY position)
                    FROM unnest(seats.ids) WITH ORDINALITY AS held (seat_id, position))
            FROM next
            RETURNING event.version, event.created_at
        )
        SELECT 'HELD', event.version, event.created_at, seats.ids, seats.labels, seats.numbers, seats.kinds,
               seats.amounts, seats.currencies
        FROM event;
    END
    $$
    """


def _swap(indexes: list[tuple[str, str]]) -> None:
    """Builds each first index and drops the second, without blocking writes (CONCURRENTLY
    cannot run in a transaction)."""
    with op.get_context().autocommit_block():
        for build, drop in indexes:
            op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {build}")
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS booking.{drop.split()[0]}")


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX}")
    _swap(list(ACTIVE_INDEXES))
    op.execute(FUNCTION)


def downgrade() -> None:
    previous.upgrade()
    _swap([(old, new) for new, old in ACTIVE_INDEXES])
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS booking.holds_customer_showtime_idx")
