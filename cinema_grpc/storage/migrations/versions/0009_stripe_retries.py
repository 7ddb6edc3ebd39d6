"""Stripe retries: a refund that failed for a passing reason waits (longer each time) for its
next try; reconciliation checks a payment again from a moment it records, so a payment Stripe
cannot answer for goes to the back of the queue instead of staying at its head.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE payment.refunds ADD COLUMN next_attempt_at timestamptz;
        DROP INDEX payment.refunds_pending_idx;
        CREATE INDEX refunds_pending_idx ON payment.refunds (coalesce(next_attempt_at, created_at))
            WHERE state = 'PENDING';
        ALTER TABLE payment.payments
            ADD COLUMN next_check_at timestamptz,
            ADD COLUMN check_failures integer NOT NULL DEFAULT 0 CHECK (check_failures >= 0);
        DROP INDEX payment.payments_unsettled_idx;
        CREATE INDEX payments_unsettled_idx ON payment.payments (coalesce(next_check_at, created_at))
            WHERE state = 'INITIALIZED';
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX payment.payments_unsettled_idx;
        CREATE INDEX payments_unsettled_idx ON payment.payments (created_at) WHERE state = 'INITIALIZED';
        ALTER TABLE payment.payments DROP COLUMN check_failures, DROP COLUMN next_check_at;
        DROP INDEX payment.refunds_pending_idx;
        CREATE INDEX refunds_pending_idx ON payment.refunds (created_at) WHERE state = 'PENDING';
        ALTER TABLE payment.refunds DROP COLUMN next_attempt_at;
        """
    )
