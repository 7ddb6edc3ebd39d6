"""Booking schema: holds, bookings, claims linked to them, availability versions and events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- customer_id is an identity user id, deliberately without a foreign key into the
        -- identity schema (personal data stays isolated there).
        CREATE TABLE booking.holds (
            id              uuid PRIMARY KEY,
            showtime_id     uuid NOT NULL REFERENCES screening.showtimes (id),
            customer_id     uuid NOT NULL,
            state           text NOT NULL CHECK (state IN ('ACTIVE', 'RELEASED', 'EXPIRED', 'CONVERTED')),
            expires_at      timestamptz NOT NULL,
            extensions_used integer NOT NULL DEFAULT 0 CHECK (extensions_used >= 0),
            created_at      timestamptz NOT NULL,
            ended_at        timestamptz,
            CHECK ((state = 'ACTIVE') = (ended_at IS NULL))
        );
        -- The sweeper's and the per-customer limit's lookups touch active holds only.
        CREATE INDEX holds_active_expiry_idx ON booking.holds (expires_at) WHERE state = 'ACTIVE';
        CREATE INDEX holds_active_customer_idx ON booking.holds (customer_id) WHERE state = 'ACTIVE';

        CREATE TABLE booking.bookings (
            id              uuid PRIMARY KEY,
            showtime_id     uuid NOT NULL REFERENCES screening.showtimes (id),
            customer_id     uuid NOT NULL,
            hold_id         uuid NOT NULL UNIQUE REFERENCES booking.holds (id),
            state           text NOT NULL CHECK (state IN ('CONFIRMED', 'CANCELLED')),
            channel         text NOT NULL CHECK (channel IN ('COUNTER', 'ONLINE')),
            counter_payment text CHECK (counter_payment IN ('CASH', 'CARD_PRESENT')),
            refund_state    text NOT NULL CHECK (refund_state IN ('NONE', 'PENDING', 'REFUNDED')),
            created_at      timestamptz NOT NULL,
            cancelled_at    timestamptz,
            cancel_reason   text NOT NULL DEFAULT '',
            CHECK ((channel = 'COUNTER') = (counter_payment IS NOT NULL)),
            CHECK ((state = 'CANCELLED') = (cancelled_at IS NOT NULL))
        );
        CREATE INDEX bookings_customer_idx ON booking.bookings (customer_id, created_at DESC, id DESC);
        CREATE INDEX bookings_showtime_idx ON booking.bookings (showtime_id, created_at DESC, id DESC);

        -- A claim is a hold's seat while HELD (or RELEASED after), and a ticket once SOLD
        -- (CANCELLED after): one row carries a seat from hold to ticket, so the unique index
        -- on active claims covers holds and tickets alike.
        ALTER TABLE booking.seat_claims
            ADD COLUMN hold_id uuid NOT NULL REFERENCES booking.holds (id),
            ADD COLUMN booking_id uuid REFERENCES booking.bookings (id),
            ADD CONSTRAINT seat_claims_ticket_has_booking
                CHECK (status NOT IN ('SOLD', 'CANCELLED') OR booking_id IS NOT NULL);
        CREATE INDEX seat_claims_hold_idx ON booking.seat_claims (hold_id);
        CREATE INDEX seat_claims_booking_idx ON booking.seat_claims (booking_id) WHERE booking_id IS NOT NULL;

        -- Availability version per showtime, raised under the showtime's lock with every
        -- change, and the changes of each version for watchers that reconnect.
        CREATE TABLE booking.showtime_versions (
            showtime_id     uuid PRIMARY KEY REFERENCES screening.showtimes (id),
            version         bigint NOT NULL CHECK (version > 0)
        );
        CREATE TABLE booking.seat_events (
            showtime_id     uuid NOT NULL REFERENCES screening.showtimes (id),
            version         bigint NOT NULL,
            changes         jsonb NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (showtime_id, version)
        );
        CREATE INDEX seat_events_created_idx ON booking.seat_events (created_at);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE booking.seat_events, booking.showtime_versions;
        ALTER TABLE booking.seat_claims DROP COLUMN booking_id, DROP COLUMN hold_id;
        DROP TABLE booking.bookings, booking.holds;
        """
    )
