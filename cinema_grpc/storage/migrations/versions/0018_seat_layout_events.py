"""A seat event may announce that a showtime's seats were replaced (the showtime moved to another
hall, or its hall's layout was regenerated) instead of listing seat changes, so watchers and
clients catching up from the log take a fresh seat map.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE booking.seat_events ADD COLUMN layout_changed boolean NOT NULL DEFAULT false")


def downgrade() -> None:
    op.execute("ALTER TABLE booking.seat_events DROP COLUMN layout_changed")
