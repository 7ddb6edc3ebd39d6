"""booking.place_hold(...): writes a new hold decided on an unlocked read in one statement. It
takes the hold's locks (the customer's, the showtime's, the hall FOR SHARE), checks under them
that nothing the decision read has changed (booking.require, SQLSTATE CIN01), ends the lapsed
holds the decision expires, inserts the hold and its claims, and records the showtime's next
version with its seat changes. Called on its own in autocommit it is its own transaction: the
locks live only while the database runs it, and the client sends one statement instead of
seven (BEGIN, locks, check, expiry, insert, version, COMMIT), each of which cost the server a
wait of its own. The constraints (seat_claims_active_key above all) still guard every write.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

SIGNATURE = """booking.place_hold(
    customer_key bigint, showtime_key bigint, p_showtime_id uuid, p_starts_at timestamptz, p_hall_id uuid,
    p_customer_id uuid, p_now timestamptz, p_active_holds bigint, p_seat_ids uuid[], p_limited boolean,
    p_rate_since timestamptz, p_rate_limit integer, p_recent_holds bigint, p_seats_of_customer bigint,
    p_ended_ids uuid[], p_ended_states text[], p_ended_ats timestamptz[], p_ended_bys uuid[], p_ended_reasons text[],
    p_hold_id uuid, p_expires_at timestamptz, p_created_at timestamptz, p_claim_ids uuid[], p_amounts bigint[],
    p_currencies text[], p_changes jsonb
)"""


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION {SIGNATURE} RETURNS TABLE (new_version bigint, recorded_at timestamptz)
        LANGUAGE plpgsql AS $$
        BEGIN
            -- The one lock order of a hold: the customer's, the showtime's, then the hall row
            -- FOR SHARE (a layout change takes it FOR UPDATE).
            PERFORM pg_advisory_xact_lock(customer_key);
            PERFORM pg_advisory_xact_lock(showtime_key);
            PERFORM FROM screening.halls AS h JOIN screening.showtimes AS s ON s.hall_id = h.id
            WHERE s.id = p_showtime_id FOR SHARE OF h;
            -- Each statement below reads a snapshot taken with the locks held (READ COMMITTED,
            -- a volatile function): what the decision read is unchanged, or nothing is written.
            PERFORM booking.require(
                (SELECT showtime.state = 'SCHEDULED' AND showtime.starts_at > p_now
                        AND showtime.starts_at = p_starts_at AND showtime.hall_id = p_hall_id
                 FROM screening.showtimes AS showtime WHERE showtime.id = p_showtime_id)
                AND (SELECT count(*) FROM booking.holds AS hold
                     WHERE hold.customer_id = p_customer_id AND hold.state = 'ACTIVE'
                       AND greatest(hold.expires_at, hold.payment_deadline) > p_now) = p_active_holds
                AND NOT EXISTS (SELECT FROM booking.seat_claims AS claim
                                WHERE claim.showtime_id = p_showtime_id AND claim.seat_id = ANY(p_seat_ids)
                                  AND claim.status IN ('HELD', 'SOLD')
                                  AND (claim.status = 'SOLD' OR claim.expires_at > p_now))
                AND (SELECT count(*) FROM screening.seats AS seat
                     WHERE seat.id = ANY(p_seat_ids) AND seat.retired_at IS NULL AND seat.in_service)
                    = cardinality(p_seat_ids)
                AND (SELECT count(*) FROM booking.holds AS hold
                     WHERE hold.id = ANY(p_ended_ids) AND hold.state = 'ACTIVE') = cardinality(p_ended_ids)
                -- the customer limits: their recent holds and their seats of the showtime are as read
                AND (NOT p_limited OR (
                    (SELECT count(*) FROM (SELECT FROM booking.holds AS hold
                                           WHERE hold.customer_id = p_customer_id AND hold.created_at > p_rate_since
                                           LIMIT p_rate_limit) AS recent) = p_recent_holds
                    AND (SELECT count(*) FROM booking.holds AS hold
                         JOIN booking.seat_claims AS claim ON claim.hold_id = hold.id
                         WHERE hold.customer_id = p_customer_id AND hold.showtime_id = p_showtime_id
                           AND hold.state IN ('ACTIVE', 'CONVERTED')
                           AND claim.status IN ('HELD', 'SOLD')
                           AND (claim.status = 'SOLD' OR claim.expires_at > p_now)) = p_seats_of_customer)),
                'the seats changed while the hold was decided');
            IF cardinality(p_ended_ids) > 0 THEN
                WITH ended AS (
                    UPDATE booking.holds AS hold
                    SET state = ended.state, ended_at = ended.at, ended_by = ended.by, end_reason = ended.reason
                    FROM unnest(p_ended_ids, p_ended_states, p_ended_ats, p_ended_bys, p_ended_reasons)
                        AS ended (id, state, at, by, reason)
                    WHERE hold.id = ended.id AND hold.state = 'ACTIVE'
                    RETURNING hold.id
                )
                UPDATE booking.seat_claims SET status = 'RELEASED'
                WHERE hold_id IN (SELECT id FROM ended) AND status = 'HELD';
            END IF;
            INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, extensions_used, created_at)
            VALUES (p_hold_id, p_showtime_id, p_customer_id, 'ACTIVE', p_expires_at, 0, p_created_at);
            -- The unique index on active claims still refuses a double claim (seat_claims_active_key).
            INSERT INTO booking.seat_claims
                (id, hold_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)
            SELECT claim.id, p_hold_id, p_showtime_id, claim.seat_id, 'HELD', claim.amount_minor, claim.currency,
                   p_expires_at, p_created_at
            FROM unnest(p_claim_ids, p_seat_ids, p_amounts, p_currencies)
                AS claim (id, seat_id, amount_minor, currency);
            RETURN QUERY
            WITH version AS (
                INSERT INTO booking.showtime_versions AS current (showtime_id, version)
                VALUES (p_showtime_id, 1)
                ON CONFLICT (showtime_id) DO UPDATE SET version = current.version + 1
                RETURNING current.version
            )
            INSERT INTO booking.seat_events AS event (showtime_id, version, changes)
            SELECT p_showtime_id, version.version, p_changes FROM version
            RETURNING event.version, event.created_at;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION booking.place_hold(bigint, bigint, uuid, timestamptz, uuid, uuid, timestamptz, bigint, uuid[],"
        " boolean, timestamptz, integer, bigint, bigint, uuid[], text[], timestamptz[], uuid[], text[], uuid,"
        " timestamptz, timestamptz, uuid[], bigint[], text[], jsonb)"
    )
