"""Sign-in throttle per (account, address) and per address with growing delays, replacing the
fixed-window counters per account and per client; registrations counted per address.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DROP TABLE identity.login_failures;

        -- One row per (account, address) that tried to sign in, and one per address over all
        -- accounts (account = ''). Only failed sign-ins count; a success resets its pair and
        -- remembers that the account signs in from there.
        CREATE TABLE identity.sign_in_records (
            account          text NOT NULL CHECK (length(account) <= 254),
            address          text NOT NULL CHECK (length(address) <= 64),
            failures         integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
            last_failure_at  timestamptz,
            last_success_at  timestamptz,
            touched_at       timestamptz NOT NULL,
            PRIMARY KEY (account, address)
        );
        CREATE INDEX sign_in_records_touched_idx ON identity.sign_in_records (touched_at);

        -- Registrations per client address in fixed windows.
        CREATE TABLE identity.registrations_by_address (
            address        text PRIMARY KEY CHECK (length(address) <= 64),
            window_start   timestamptz NOT NULL,
            registrations  integer NOT NULL CHECK (registrations > 0)
        );
        CREATE INDEX registrations_by_address_window_idx ON identity.registrations_by_address (window_start);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE identity.registrations_by_address;
        DROP TABLE identity.sign_in_records;
        CREATE TABLE identity.login_failures (
            key           text PRIMARY KEY,
            window_start  timestamptz NOT NULL,
            failures      integer NOT NULL CHECK (failures > 0)
        );
        """
    )
