"""The audit chain is keyed: each entry says how its hash was made (scheme 1: plain SHA-256, the
entries written so far, which verify as before; scheme 2: HMAC-SHA256 with the audit key held
outside the database, every entry from now on).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A column with a constant default is added without rewriting the table, so the
    # append-only triggers (row triggers on UPDATE and DELETE) are not involved. The default
    # is dropped afterwards: every new entry must say its scheme.
    op.execute(
        """
        ALTER TABLE payment.audit_log
            ADD COLUMN scheme smallint NOT NULL DEFAULT 1 CONSTRAINT audit_log_scheme_check CHECK (scheme IN (1, 2));
        ALTER TABLE payment.audit_log ALTER COLUMN scheme DROP DEFAULT;
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE payment.audit_log DROP COLUMN scheme")
