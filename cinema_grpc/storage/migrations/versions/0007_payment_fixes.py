"""Payments: one *open* payment per hold (a declined payment may still succeed beside a new
attempt; a second success for one hold is refunded); refunds Stripe refuses for good end FAILED.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DROP INDEX payment.payments_one_live_per_hold;
        CREATE UNIQUE INDEX payments_one_open_per_hold ON payment.payments (hold_id) WHERE state = 'INITIALIZED';
        ALTER TABLE payment.refunds DROP CONSTRAINT refunds_state_check;
        ALTER TABLE payment.refunds
            ADD CONSTRAINT refunds_state_check CHECK (state IN ('PENDING', 'SUCCEEDED', 'FAILED'));
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE payment.refunds DROP CONSTRAINT refunds_state_check;
        ALTER TABLE payment.refunds ADD CONSTRAINT refunds_state_check CHECK (state IN ('PENDING', 'SUCCEEDED'));
        DROP INDEX payment.payments_one_open_per_hold;
        CREATE UNIQUE INDEX payments_one_live_per_hold ON payment.payments (hold_id) WHERE state <> 'FAILED';
        """
    )
