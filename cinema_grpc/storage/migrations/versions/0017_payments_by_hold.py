"""An index on the payments of a hold in creation order, for ListPayments (a booking's payments
are those of the hold it was bought from).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX payments_hold_idx ON payment.payments (hold_id, created_at, id)")


def downgrade() -> None:
    op.execute("DROP INDEX payment.payments_hold_idx")
