"""booking.require(condition, message): fails the statement (SQLSTATE CIN01) unless the condition
holds. A new hold is decided on a read taken without locks; the statement that writes it first
checks under the locks that nothing the decision read has changed, and aborts the transaction
(the writes sent with it included) when something has.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION booking.require(condition boolean, message text) RETURNS boolean
        LANGUAGE plpgsql AS $$
        BEGIN
            IF condition IS NOT TRUE THEN
                RAISE EXCEPTION USING ERRCODE = 'CIN01', MESSAGE = message;
            END IF;
            RETURN true;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION booking.require(boolean, text)")
