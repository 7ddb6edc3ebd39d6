"""Index for the sales reports: bookings by the time they were made.

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
    op.execute("CREATE INDEX bookings_created_idx ON booking.bookings (created_at, showtime_id)")


def downgrade() -> None:
    op.execute("DROP INDEX booking.bookings_created_idx")
