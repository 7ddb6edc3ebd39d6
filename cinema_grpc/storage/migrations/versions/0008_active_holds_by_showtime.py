"""Active holds by showtime and expiry: a hold expires its showtime's due holds, and the sweeper
a batch of showtimes' due holds, with an index range scan instead of a walk over every due hold.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE INDEX holds_active_showtime_expiry_idx
            ON booking.holds (showtime_id, greatest(expires_at, payment_deadline)) WHERE state = 'ACTIVE';
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX booking.holds_active_showtime_expiry_idx;")
