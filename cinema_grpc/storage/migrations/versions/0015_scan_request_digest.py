"""Each scan keeps a digest of what was scanned (showtime, door, code), so a client scan id sent
again with a different scan is refused instead of being answered with the first scan's verdict.
Scans recorded before have none and are answered as before.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: no table rewrite, and the scans' append-only
    # triggers (on UPDATE and DELETE) are not involved.
    op.execute("ALTER TABLE admission.scans ADD COLUMN request_digest text")


def downgrade() -> None:
    op.execute("ALTER TABLE admission.scans DROP COLUMN request_digest")
