"""Hold limits and retention: a customer's holds by start time (the per-customer hold rate and
the re-hold cooldown read them under the customer's lock), ended holds by end time and request
log rows by age (the retention job deletes the old ones).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

INDEXES = (
    "holds_customer_created_idx ON booking.holds (customer_id, created_at)",
    "holds_ended_idx ON booking.holds (ended_at) WHERE state IN ('RELEASED', 'EXPIRED')",
    "request_log_created_idx ON api.request_log (created_at)",
)


def upgrade() -> None:
    # Built without blocking writes; CONCURRENTLY cannot run in a transaction.
    with op.get_context().autocommit_block():
        for index in INDEXES:
            op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index}")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for index in INDEXES:
            name = index.split(" ON ")[0]
            schema = "api" if "request_log" in index else "booking"
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {schema}.{name}")
