"""Admission schema: ticket code issues, scans at the door, admissions (once per ticket), and
the scanner role.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE identity.user_roles DROP CONSTRAINT user_roles_role_check;
        ALTER TABLE identity.user_roles
            ADD CONSTRAINT user_roles_role_check CHECK (role IN ('CUSTOMER', 'STAFF', 'ADMIN', 'SCANNER'));

        CREATE SCHEMA admission;

        -- A ticket's code issue once re-issued (no row: issue 1). Only the code of the current
        -- issue admits; who re-issued it last, when and why.
        CREATE TABLE admission.ticket_issues (
            ticket_id       uuid PRIMARY KEY REFERENCES booking.seat_claims (id),
            issue           integer NOT NULL CHECK (issue BETWEEN 2 AND 65535),
            reissued_at     timestamptz NOT NULL,
            reissued_by     uuid NOT NULL,
            reason          text NOT NULL DEFAULT ''
        );

        -- A ticket let in. Undone admissions stay, with who undid them and why.
        CREATE TABLE admission.admissions (
            id              uuid PRIMARY KEY,
            ticket_id       uuid NOT NULL REFERENCES booking.seat_claims (id),
            showtime_id     uuid NOT NULL REFERENCES screening.showtimes (id),
            scan_id         uuid NOT NULL,
            door_id         text NOT NULL,
            device_id       text NOT NULL,
            scanner_id      uuid NOT NULL,
            admitted_at     timestamptz NOT NULL,
            undone_at       timestamptz,
            undone_by       uuid,
            undo_reason     text NOT NULL DEFAULT '',
            CHECK ((undone_at IS NULL) = (undone_by IS NULL))
        );
        -- A ticket admits once: whatever the doors, devices and replicas do, the database keeps
        -- at most one admission per ticket that is not undone. Check-in inserts with
        -- ON CONFLICT DO NOTHING, so a concurrent second scan waits for the first to commit and
        -- then learns it lost.
        CREATE UNIQUE INDEX admissions_once_per_ticket ON admission.admissions (ticket_id)
            WHERE undone_at IS NULL;
        CREATE INDEX admissions_showtime_idx ON admission.admissions (showtime_id);

        -- Every scan, admitted or not, with its verdict. client_scan_id is the device's id of
        -- the scan: a retry or a re-upload finds the first record instead of scanning again.
        CREATE TABLE admission.scans (
            id              uuid PRIMARY KEY,
            device_id       text NOT NULL,
            client_scan_id  text,
            showtime_id     uuid NOT NULL REFERENCES screening.showtimes (id),
            door_id         text NOT NULL,
            ticket_id       uuid REFERENCES booking.seat_claims (id),
            verdict         text NOT NULL CHECK (verdict IN ('ADMITTED', 'ALREADY_USED', 'FORGED', 'CANCELLED',
                                                             'WRONG_SHOWTIME', 'TOO_EARLY', 'ENDED', 'SUPERSEDED')),
            -- The admission this scan made (ADMITTED) or ran into (ALREADY_USED).
            admission_id    uuid REFERENCES admission.admissions (id),
            scanner_id      uuid NOT NULL,
            scanned_at      timestamptz NOT NULL,
            recorded_at     timestamptz NOT NULL,
            offline         boolean NOT NULL,
            UNIQUE (device_id, client_scan_id),
            CHECK ((verdict IN ('ADMITTED', 'ALREADY_USED')) = (admission_id IS NOT NULL))
        );
        CREATE INDEX scans_showtime_idx ON admission.scans (showtime_id, verdict);
        -- An admission is written just before the scan that made it, in the same transaction.
        ALTER TABLE admission.admissions ADD CONSTRAINT admissions_scan_fkey
            FOREIGN KEY (scan_id) REFERENCES admission.scans (id) DEFERRABLE INITIALLY DEFERRED;

        -- The door's record is evidence: scans are never changed or removed, admissions only
        -- undone (once).
        CREATE FUNCTION admission.refuse_scan_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'admission.scans is append-only' USING ERRCODE = 'insufficient_privilege';
        END;
        $$;
        CREATE FUNCTION admission.allow_undo_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND OLD.undone_at IS NULL AND NEW.undone_at IS NOT NULL
               AND (NEW.id, NEW.ticket_id, NEW.showtime_id, NEW.scan_id, NEW.door_id, NEW.device_id,
                    NEW.scanner_id, NEW.admitted_at)
                   IS NOT DISTINCT FROM (OLD.id, OLD.ticket_id, OLD.showtime_id, OLD.scan_id, OLD.door_id,
                                         OLD.device_id, OLD.scanner_id, OLD.admitted_at) THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'an admission may only be undone, once' USING ERRCODE = 'insufficient_privilege';
        END;
        $$;
        CREATE TRIGGER scans_append_only BEFORE UPDATE OR DELETE ON admission.scans
            FOR EACH ROW EXECUTE FUNCTION admission.refuse_scan_rewrite();
        CREATE TRIGGER admissions_undo_only BEFORE UPDATE OR DELETE ON admission.admissions
            FOR EACH ROW EXECUTE FUNCTION admission.allow_undo_only();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP SCHEMA admission CASCADE;
        DELETE FROM identity.user_roles WHERE role = 'SCANNER';
        ALTER TABLE identity.user_roles DROP CONSTRAINT user_roles_role_check;
        ALTER TABLE identity.user_roles
            ADD CONSTRAINT user_roles_role_check CHECK (role IN ('CUSTOMER', 'STAFF', 'ADMIN'));
        """
    )
