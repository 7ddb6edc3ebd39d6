"""A payment's booking is checked when the transaction commits: the seat inventory writes the
booking a payment settles into when its unit of work commits, after the payment's own update.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE payment.payments ALTER CONSTRAINT payments_booking_id_fkey DEFERRABLE INITIALLY DEFERRED")


def downgrade() -> None:
    op.execute("ALTER TABLE payment.payments ALTER CONSTRAINT payments_booking_id_fkey NOT DEFERRABLE")
