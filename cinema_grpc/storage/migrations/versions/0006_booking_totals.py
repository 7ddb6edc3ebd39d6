"""Sales reports: each booking keeps its ticket count and total (fixed at sale: a booking is
cancelled whole, never partly), and an index over bookings by sale time covers the reports.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE booking.bookings
            ADD COLUMN ticket_count integer NOT NULL DEFAULT 0 CHECK (ticket_count >= 0),
            ADD COLUMN total_minor bigint NOT NULL DEFAULT 0 CHECK (total_minor >= 0),
            ADD COLUMN currency char(3) NOT NULL DEFAULT 'XXX' CHECK (currency ~ '^[A-Z]{3}$');
        UPDATE booking.bookings b
           SET ticket_count = t.n, total_minor = t.total, currency = t.currency
          FROM (SELECT booking_id, count(*) AS n, sum(amount_minor) AS total, min(currency) AS currency
                  FROM booking.seat_claims WHERE booking_id IS NOT NULL GROUP BY booking_id) AS t
         WHERE t.booking_id = b.id;
        ALTER TABLE booking.bookings
            ALTER COLUMN ticket_count DROP DEFAULT,
            ALTER COLUMN total_minor DROP DEFAULT,
            ALTER COLUMN currency DROP DEFAULT;
        CREATE INDEX bookings_sold_idx ON booking.bookings (created_at, showtime_id)
            INCLUDE (state, ticket_count, total_minor, currency);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX booking.bookings_sold_idx;
        ALTER TABLE booking.bookings DROP COLUMN currency, DROP COLUMN total_minor, DROP COLUMN ticket_count;
        """
    )
