"""Seat claims written by booking.hold_plain_seats get time-ordered ids (UUID version 7), as every
record the application writes by the thousand now does (cinema_grpc/domain/ids.py).

With random ids, each claim or hold went to a random page of its table's primary key and of
the claims' hold index, and a sweep of holds made together touched a different page for almost
every row. Claims and holds made together now sit together in those indexes: the sweeper's two
updates of 100,000 expired holds took about a fifth less PostgreSQL CPU in a direct comparison
(bench/id_order_bench.py; docs/performance.md, "Time-ordered ids").

booking.uuid_v7(at) builds one from a time (the current one by default: the machine's clock, as
the application's ids) in plain SQL, so it is the same on every PostgreSQL version this project
supports (15 and later; 18's own uuidv7() takes no timestamp).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-01
"""

import importlib

from alembic import op

previous = importlib.import_module("cinema_grpc.storage.migrations.versions.0026_plain_hold_plans_for_any_statistics")

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

# 48 bits of Unix milliseconds (bytes 0-5, big-endian), then the random bits of a version 4 UUID
# with the version set to 7 (the high half of byte 6: 0100 becomes 0111) and its variant (10)
# kept. set_bit counts a bytea's bits from the least significant bit of each byte: bits 52 and
# 53 are 0x10 and 0x20 of byte 6.
UUID_V7 = """
    CREATE FUNCTION booking.uuid_v7(at timestamptz DEFAULT clock_timestamp()) RETURNS uuid
    LANGUAGE sql VOLATILE PARALLEL SAFE
    AS $$
        SELECT encode(
            set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                                    PLACING substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint) FROM 3)
                                    FROM 1 FOR 6),
                            52, 1),
                    53, 1),
            'hex')::uuid
    $$
"""
RANDOM_CLAIM_ID = "SELECT gen_random_uuid(), p_hold_id"
TIME_ORDERED_CLAIM_ID = "SELECT booking.uuid_v7(), p_hold_id"
if previous.FUNCTION.count(RANDOM_CLAIM_ID) != 1:
    raise RuntimeError("0026's booking.hold_plain_seats no longer writes its claim ids where 0027 expects")

SIGNATURE = previous.SIGNATURE
# The function as this migration leaves it.
FUNCTION = previous.FUNCTION.replace(RANDOM_CLAIM_ID, TIME_ORDERED_CLAIM_ID)


def upgrade() -> None:
    op.execute(UUID_V7)
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute(previous.FUNCTION)
    op.execute("DROP FUNCTION booking.uuid_v7(timestamptz)")
