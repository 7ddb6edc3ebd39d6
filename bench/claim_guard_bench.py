"""What keeping the claimed-once guard in a table of its own would save the sweeper, and cost a
hold: a what-if on a copy of the schema, not the schema the application runs.

    .venv/bin/python bench/claim_guard_bench.py [--rounds 2] [--holds 100000] [--database-url URL]

Today a seat is claimed once through a partial unique index on the claims,
``seat_claims_active_key (showtime_id, seat_id) WHERE status IN ('HELD', 'SOLD')``. Its
predicate names ``status``, so no update of a claim's status can be heap-only: releasing a claim
writes a new version with new entries in every index of the claims. The variant measured here
("guard") moves that guard into ``booking.claimed_seats (showtime_id, seat_id) PRIMARY KEY``,
kept by statement-level triggers on the claims (an insert of a held or sold claim adds its row,
an update to another status deletes it), replaces the partial index by a plain one on
``(showtime_id, seat_id)`` for the reads, and leaves half of each page of the claims free
(``fillfactor``) so that their releases can stay on their page.

Two databases are made, the schema as migrated ("now") and the variant; each round, for each:

- the sweep: bench/id_order_bench.py's 100,000 expired holds of 2 seats on 500 showtimes
  (time-ordered ids), expired as the sweeper does, 50 showtimes per transaction, holds to
  EXPIRED, claims to RELEASED; the CPU of the PostgreSQL backend (from /proc), split into the
  holds' update and the claims' (for the variant, with its trigger);
- a hold's writes: ``--inserts`` transactions of one ``INSERT`` of 2 held claims each, the
  backend's CPU per transaction.

Like id_order_bench.py, it writes no showtimes, seats or holds for the claims to point at: the
claims' foreign keys are dropped in both databases.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time
import uuid
from typing import Any

import psycopg
from booking_bench import libpq_url, provision_database
from id_order_bench import BATCH, SEED, expire
from proc_cpu import cpu_seconds

Db = psycopg.Connection[Any]

GUARD_SCHEMA = """
CREATE TABLE booking.claimed_seats (
    showtime_id uuid NOT NULL,
    seat_id     uuid NOT NULL,
    claim_id    uuid NOT NULL,
    CONSTRAINT claimed_seats_key PRIMARY KEY (showtime_id, seat_id)
);
CREATE FUNCTION booking.claims_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO booking.claimed_seats (showtime_id, seat_id, claim_id)
    SELECT showtime_id, seat_id, id FROM inserted WHERE status IN ('HELD', 'SOLD');
    RETURN NULL;
END $$;
CREATE FUNCTION booking.claims_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM booking.claimed_seats AS guard USING updated
    WHERE updated.status NOT IN ('HELD', 'SOLD') AND guard.showtime_id = updated.showtime_id
      AND guard.seat_id = updated.seat_id AND guard.claim_id = updated.id;
    RETURN NULL;
END $$;
CREATE TRIGGER claims_inserted AFTER INSERT ON booking.seat_claims REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION booking.claims_inserted();
CREATE TRIGGER claims_updated AFTER UPDATE ON booking.seat_claims REFERENCING NEW TABLE AS updated
    FOR EACH STATEMENT EXECUTE FUNCTION booking.claims_updated();
DROP INDEX booking.seat_claims_active_key;
CREATE INDEX seat_claims_showtime_seat_idx ON booking.seat_claims (showtime_id, seat_id);
ALTER TABLE booking.seat_claims SET (fillfactor = 50);
"""
NO_FOREIGN_KEYS = """
DO $$
DECLARE name text;
BEGIN
    FOR name IN SELECT conname FROM pg_constraint WHERE conrelid = 'booking.seat_claims'::regclass AND contype = 'f' LOOP
        EXECUTE format('ALTER TABLE booking.seat_claims DROP CONSTRAINT %I', name);
    END LOOP;
END $$
"""
# The seed writes with triggers off (session_replication_role): the variant's guard rows after it.
GUARD_ROWS = """
TRUNCATE booking.claimed_seats;
INSERT INTO booking.claimed_seats SELECT showtime_id, seat_id, id FROM booking.seat_claims WHERE status IN ('HELD', 'SOLD')
"""
HOLD_INSERT = """
INSERT INTO booking.seat_claims (id, hold_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)
SELECT booking.uuid_v7(now()), %(hold)s, %(showtime)s, seat, 'HELD', 1200, 'EUR', now() + interval '10 minutes', now()
FROM unnest(%(seats)s::uuid[]) AS seat
"""


def sweep(db: Db, guard: bool) -> tuple[float, float, int, int]:
    """(backend CPU of both updates, of the holds' update, claims updated, of them heap-only)."""
    seed = SEED.format(
        hold_id="booking.uuid_v7(at)", claim_id="booking.uuid_v7(hold.created_at)", showtime_of_i="i * 500 / %(holds)s"
    )
    with db.transaction(), psycopg.ClientCursor(db) as cursor:  # several statements with parameters
        cursor.execute(seed, {"holds": 100_000})
        if guard:
            cursor.execute(GUARD_ROWS)
    for table in ("holds", "seat_claims", *(("claimed_seats",) if guard else ())):
        db.execute(f"VACUUM ANALYZE booking.{table}")
    db.execute("CHECKPOINT")
    showtimes = sorted(
        row[0] for row in db.execute("SELECT DISTINCT showtime_id FROM booking.holds WHERE state = 'ACTIVE'")
    )
    counters = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'booking.seat_claims'::regclass"
    db.execute("SELECT pg_stat_clear_snapshot()")
    before_counts = db.execute(counters).fetchone()
    cpu, holds_cpu = expire(db, showtimes)
    if guard:
        left = db.execute("SELECT count(*) FROM booking.claimed_seats").fetchone()
        assert left is not None and left[0] == 0, f"{left} guard rows left after the sweep"
    time.sleep(0.6)  # the statistics of the backend's transactions reach the cumulative counters
    db.execute("SELECT pg_stat_clear_snapshot()")
    after_counts = db.execute(counters).fetchone()
    assert before_counts is not None and after_counts is not None
    return cpu, holds_cpu, after_counts[0] - before_counts[0], after_counts[1] - before_counts[1]


def inserts(db: Db, count: int) -> float:
    """Backend CPU milliseconds per transaction of one INSERT of 2 held claims."""
    showtime, pid = uuid.uuid4(), db.info.backend_pid
    before = cpu_seconds(pid)
    for _ in range(count):
        with db.transaction():
            db.execute(HOLD_INSERT, {"hold": uuid.uuid4(), "showtime": showtime, "seats": [uuid.uuid4(), uuid.uuid4()]})
    return (cpu_seconds(pid) - before) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each schema, alternated")
    parser.add_argument("--inserts", type=int, default=5_000, help="hold-like transactions per round")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        now, where = stack.enter_context(provision_database(args.database_url))
        variant, _ = stack.enter_context(provision_database(args.database_url))
        for url in (now, variant):
            with psycopg.connect(libpq_url(url), autocommit=True) as db:
                db.execute(NO_FOREIGN_KEYS)
                if url == variant:
                    db.execute(GUARD_SCHEMA)
        print(f"100,000 expired holds of 2 seats, 500 showtimes, {BATCH} per transaction; {where} (and a second one)")
        print(f"{platform.node()}: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
        print(f"{'schema':<7} {'sweep CPU s':>11} {'holds s':>8} {'claims s':>9} {'heap-only':>16} {'hold ms':>8}")
        for number in range(args.rounds):
            for name, url in (("now", now), ("guard", variant)):
                with psycopg.connect(libpq_url(url), autocommit=True) as db:
                    cpu, holds_cpu, updated, hot = sweep(db, guard=name == "guard")
                    per_hold = inserts(db, args.inserts)
                print(
                    f"{name:<7} {cpu:>11.2f} {holds_cpu:>8.2f} {cpu - holds_cpu:>9.2f}"
                    f" {f'{hot:,} of {updated:,}':>16} {per_hold:>8.3f}   (round {number + 1})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
