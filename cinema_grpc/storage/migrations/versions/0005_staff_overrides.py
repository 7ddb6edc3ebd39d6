"""Who ended a hold or cancelled a booking, and why (staff overrides are recorded).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE booking.holds
            ADD COLUMN ended_by uuid,
            ADD COLUMN end_reason text NOT NULL DEFAULT '';
        ALTER TABLE booking.bookings ADD COLUMN cancelled_by uuid;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE booking.bookings DROP COLUMN cancelled_by;
        ALTER TABLE booking.holds DROP COLUMN end_reason, DROP COLUMN ended_by;
        """
    )
