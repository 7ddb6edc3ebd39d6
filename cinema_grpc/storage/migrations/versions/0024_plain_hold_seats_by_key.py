"""booking.hold_plain_seats looks each asked seat up by its key: its claim through
(showtime_id, seat_id) of seat_claims_active_key, the seat through its primary key. Planned once
per connection with statistics from small tables, "seat_id = ANY(the seats asked)" was left as a
filter: the look for claimed seats walked every active claim of the showtime (8.5 ms on a
premiere's showtime with a few thousand claims) and the seats were read as every seat of the
hall, each joined with its price (4 ms per hold in a hall of 400 seats). Each seat asked is now
one lateral lookup whose only condition is the key (LIMIT 1 keeps the other conditions out of
it), so the plan cannot depend on the statistics.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-01
"""

import importlib

from alembic import op

previous = importlib.import_module("cinema_grpc.storage.migrations.versions.0022_plain_hold_plans_by_index")

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

SIGNATURE = previous.SIGNATURE


def upgrade() -> None:
    op.execute(
        f"""
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
            IF locked THEN
                -- The one lock order of a hold: the customer's, the showtime's, then the hall row
                -- FOR SHARE (a layout change takes it FOR UPDATE).
                PERFORM pg_advisory_xact_lock(p_customer_key);
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
               OR (SELECT count(*) FROM booking.holds AS hold
                   WHERE hold.customer_id = p_customer_id AND hold.state = 'ACTIVE'
                     AND greatest(hold.expires_at, hold.payment_deadline) > p_now) >= p_max_active_holds
               OR (NOT p_staff AND (SELECT count(*) FROM (SELECT FROM booking.holds AS hold
                                                         WHERE hold.customer_id = p_customer_id
                                                           AND hold.created_at > p_rate_since
                                                         LIMIT p_rate_limit) AS recent) >= p_rate_limit)
               -- The inventory expires them in the version of its decision. (The earliest end of
               -- the showtime's active holds: read from holds_active_showtime_expiry_idx whatever
               -- the statistics say; an EXISTS was planned as a scan of every hold.)
               OR (SELECT min(greatest(hold.expires_at, hold.payment_deadline)) FROM booking.holds AS hold
                   WHERE hold.showtime_id = p_showtime_id AND hold.state = 'ACTIVE') <= p_now
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
            IF seats.found <> wanted
               OR (NOT p_staff AND EXISTS (
                   SELECT FROM booking.holds AS hold JOIN booking.seat_claims AS claim ON claim.hold_id = hold.id
                   WHERE hold.customer_id = p_customer_id AND hold.showtime_id = p_showtime_id
                     AND hold.state IN ('RELEASED', 'EXPIRED') AND hold.ended_at > p_cooldown_since
                     AND claim.seat_id = ANY(p_seat_ids)))
            THEN
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
            IF seats.currencies_used <> 1 OR seats.total > p_card_limit
               -- The customer's seats of the showtime, counted hold by hold through their claims'
               -- index (a join was planned as a scan of every claim).
               OR (NOT p_staff AND coalesce((
                   SELECT sum((SELECT count(*) FROM booking.seat_claims AS claim
                               WHERE claim.hold_id = hold.id AND claim.status IN ('HELD', 'SOLD')
                                 AND (claim.status = 'SOLD' OR claim.expires_at > p_now)))
                   FROM booking.holds AS hold
                   WHERE hold.customer_id = p_customer_id AND hold.showtime_id = p_showtime_id
                     AND hold.state IN ('ACTIVE', 'CONVERTED')), 0)
                   + wanted > p_max_seats_per_showtime)
            THEN
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
    )


def downgrade() -> None:
    previous.upgrade()
