"""Payment schema: payments with a guarded state machine, refunds, processed webhooks, and the
append-only, hash-chained audit trail. Holds learn to wait for a payment in flight.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE booking.holds ADD COLUMN payment_deadline timestamptz;
        DROP INDEX booking.holds_active_expiry_idx;
        CREATE INDEX holds_active_expiry_idx ON booking.holds (greatest(expires_at, payment_deadline))
            WHERE state = 'ACTIVE';

        CREATE SCHEMA payment;

        CREATE TABLE payment.payments (
            id              uuid PRIMARY KEY,
            hold_id         uuid NOT NULL REFERENCES booking.holds (id),
            showtime_id     uuid NOT NULL REFERENCES screening.showtimes (id),
            customer_id     uuid NOT NULL,
            channel         text NOT NULL CHECK (channel IN ('ONLINE', 'TERMINAL')),
            booking_id      uuid REFERENCES booking.bookings (id),
            amount_minor    bigint NOT NULL CHECK (amount_minor >= 0),
            refunded_minor  bigint NOT NULL DEFAULT 0 CHECK (refunded_minor BETWEEN 0 AND amount_minor),
            currency        char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
            state           text NOT NULL CHECK (
                state IN ('INITIALIZED', 'SUCCESS', 'FAILED', 'PARTIALLY_REFUNDED', 'REFUNDED')
            ),
            intent_id       text UNIQUE,
            client_secret   text NOT NULL DEFAULT '',
            failure_reason  text NOT NULL DEFAULT '',
            refund_reason   text NOT NULL DEFAULT '',
            created_at      timestamptz NOT NULL,
            updated_at      timestamptz NOT NULL
        );
        -- One payment at a time per hold: a new attempt only after the last one failed.
        CREATE UNIQUE INDEX payments_one_live_per_hold ON payment.payments (hold_id) WHERE state <> 'FAILED';
        CREATE INDEX payments_unsettled_idx ON payment.payments (created_at) WHERE state = 'INITIALIZED';
        CREATE INDEX payments_booking_idx ON payment.payments (booking_id) WHERE booking_id IS NOT NULL;

        -- The state machine, enforced by the database as well as by the domain.
        CREATE FUNCTION payment.check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.state IS DISTINCT FROM OLD.state AND NOT (
                (OLD.state = 'INITIALIZED' AND NEW.state IN ('SUCCESS', 'FAILED'))
                OR (OLD.state = 'FAILED' AND NEW.state = 'SUCCESS')
                OR (OLD.state IN ('SUCCESS', 'PARTIALLY_REFUNDED') AND NEW.state IN ('PARTIALLY_REFUNDED', 'REFUNDED'))
            ) THEN
                RAISE EXCEPTION 'payment % cannot go from % to %', OLD.id, OLD.state, NEW.state
                    USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER payments_state_machine BEFORE UPDATE ON payment.payments
            FOR EACH ROW EXECUTE FUNCTION payment.check_transition();

        CREATE TABLE payment.refunds (
            id               uuid PRIMARY KEY,
            payment_id       uuid NOT NULL REFERENCES payment.payments (id),
            amount_minor     bigint NOT NULL CHECK (amount_minor > 0),
            currency         char(3) NOT NULL,
            state            text NOT NULL CHECK (state IN ('PENDING', 'SUCCEEDED')),
            reason           text NOT NULL DEFAULT '',
            actor            text NOT NULL,
            stripe_refund_id text NOT NULL DEFAULT '',
            attempts         integer NOT NULL DEFAULT 0,
            last_error       text NOT NULL DEFAULT '',
            created_at       timestamptz NOT NULL
        );
        CREATE INDEX refunds_pending_idx ON payment.refunds (created_at) WHERE state = 'PENDING';
        CREATE INDEX refunds_payment_idx ON payment.refunds (payment_id);

        -- Stripe event ids already processed: a redelivered event is acknowledged and skipped.
        CREATE TABLE payment.webhook_events (
            event_id      text PRIMARY KEY,
            type          text NOT NULL,
            received_at   timestamptz NOT NULL DEFAULT now()
        );

        -- Every money movement, forever. No foreign key: the trail outlives what it describes.
        CREATE TABLE payment.audit_log (
            sequence      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            payment_id    uuid NOT NULL,
            kind          text NOT NULL,
            stripe_id     text NOT NULL DEFAULT '',
            amount_minor  bigint,
            currency      char(3),
            actor         text NOT NULL,
            note          text NOT NULL DEFAULT '',
            created_at    timestamptz NOT NULL,
            prev_hash     text NOT NULL,
            hash          text NOT NULL UNIQUE
        );
        CREATE INDEX audit_log_payment_idx ON payment.audit_log (payment_id, sequence);
        CREATE FUNCTION payment.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the payment audit trail is append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$;
        CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON payment.audit_log
            FOR EACH ROW EXECUTE FUNCTION payment.refuse_change();
        CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON payment.audit_log
            FOR EACH STATEMENT EXECUTE FUNCTION payment.refuse_change();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP SCHEMA payment CASCADE;
        DROP INDEX booking.holds_active_expiry_idx;
        ALTER TABLE booking.holds DROP COLUMN payment_deadline;
        CREATE INDEX holds_active_expiry_idx ON booking.holds (expires_at) WHERE state = 'ACTIVE';
        """
    )
