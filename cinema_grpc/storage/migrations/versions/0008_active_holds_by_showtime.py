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
    # Built without blocking holds (booking.holds keeps every hold ever made); CONCURRENTLY
    # cannot run in a transaction. The migrations' advisory lock is a session lock, so it stays.
    with op.get_context().autocommit_block():
        op.execute(
            """
            CREATE INDEX CONCURRENTLY IF NOT EXISTS holds_active_showtime_expiry_idx
                ON booking.holds (showtime_id, greatest(expires_at, payment_deadline)) WHERE state = 'ACTIVE';
            """
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS booking.holds_active_showtime_expiry_idx;")
