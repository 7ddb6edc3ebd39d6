"""What the order of ids costs the sweeper: its two updates of expired holds, with random ids
(UUID version 4) and with time-ordered ids (version 7, what the application writes), on the
same schema, alternated.

    .venv/bin/python bench/id_order_bench.py [--rounds 2] [--holds 100000] [--database-url URL]

Each round writes, in SQL, a week of 20,000 ended holds and 100,000 expired holds of 2 seats on
500 showtimes, made over 5 minutes: by default one showtime's after another's, as
bench/booking_bench.py's sweep phase writes them, or in turn (`--interleaved`); no showtimes or
seats are written (foreign keys are not checked while it writes). Then it runs `VACUUM
ANALYZE` and a `CHECKPOINT` and expires them as the sweeper's statement does, 50 showtimes per
transaction: holds to EXPIRED, their claims to RELEASED. It prints the CPU of the PostgreSQL backend that ran
the updates (from /proc) and the WAL they wrote. Without --database-url an embedded PostgreSQL
starts in a temporary directory.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import psycopg
from booking_bench import libpq_url, provision_database
from proc_cpu import cpu_seconds

Db = psycopg.Connection[Any]

KINDS = {"random": "gen_random_uuid()", "time-ordered": "booking.uuid_v7({at})"}
BATCH = 50  # showtimes per transaction, as the sweeper

SEED = """
SET session_replication_role = replica;
TRUNCATE booking.seat_claims, booking.holds, booking.seat_events, booking.showtime_versions CASCADE;
CREATE TEMP TABLE showtime ON COMMIT DROP AS SELECT gen_random_uuid() AS id, n FROM generate_series(0, 499) AS n;
CREATE TEMP TABLE customer ON COMMIT DROP AS SELECT gen_random_uuid() AS id, n FROM generate_series(0, 127) AS n;
INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, created_at, ended_at)
SELECT {hold_id}, (SELECT id FROM showtime WHERE n = i %% 500), (SELECT id FROM customer WHERE n = i %% 128),
       'EXPIRED', at + interval '10 minutes', at, at + interval '10 minutes'
FROM (SELECT i, now() - interval '7 days' + i * interval '30 seconds' AS at
      FROM generate_series(1, 20000) AS i) AS past;
INSERT INTO booking.holds (id, showtime_id, customer_id, state, expires_at, created_at)
SELECT {hold_id}, (SELECT id FROM showtime WHERE n = {showtime_of_i}), gen_random_uuid(), 'ACTIVE',
       at + interval '10 minutes', at
FROM (SELECT i, now() - interval '15 minutes' + i * interval '300 seconds' / %(holds)s AS at
      FROM generate_series(0, %(holds)s - 1) AS i) AS lapsed;
INSERT INTO booking.seat_claims
    (id, hold_id, showtime_id, seat_id, status, amount_minor, currency, expires_at, created_at)
SELECT {claim_id}, hold.id, hold.showtime_id, gen_random_uuid(),
       CASE hold.state WHEN 'ACTIVE' THEN 'HELD' ELSE 'RELEASED' END, 1200, 'EUR', hold.expires_at, hold.created_at
FROM booking.holds AS hold, generate_series(1, 2);
SET session_replication_role = DEFAULT;
"""
EXPIRE_HOLDS = """
UPDATE booking.holds AS hold SET state = 'EXPIRED', ended_at = now()
WHERE hold.showtime_id = ANY(%s) AND hold.state = 'ACTIVE' AND greatest(hold.expires_at, hold.payment_deadline) <= now()
RETURNING hold.id
"""
RELEASE_CLAIMS = """
UPDATE booking.seat_claims SET status = 'RELEASED'
WHERE showtime_id = ANY(%s) AND status = 'HELD' AND hold_id = ANY(%s)
"""


def expire(db: Db, showtimes: list[Any]) -> tuple[float, float]:
    """Expires these showtimes' lapsed holds as the sweeper does, BATCH showtimes per
    transaction: (backend CPU of both updates, of the holds' update)."""
    pid = db.info.backend_pid
    cpu_before, holds_cpu = cpu_seconds(pid), 0.0
    for start in range(0, len(showtimes), BATCH):
        batch = showtimes[start : start + BATCH]
        with db.transaction():
            before = cpu_seconds(pid)
            expired = [row[0] for row in db.execute(EXPIRE_HOLDS, (batch,))]
            holds_cpu += cpu_seconds(pid) - before
            db.execute(RELEASE_CLAIMS, (batch, expired))
    return cpu_seconds(pid) - cpu_before, holds_cpu


def round_of(url: str, kind: str, holds: int, interleaved: bool) -> tuple[float, float, float, float]:
    """(backend CPU of both updates, of the holds' update, wall seconds, WAL MB)."""
    expression = KINDS[kind]
    showtime_of_i = "i %% 500" if interleaved else "i * 500 / %(holds)s"
    with psycopg.connect(url, autocommit=True) as db:
        seed = SEED.format(
            hold_id=expression.format(at="at"),
            claim_id=expression.format(at="hold.created_at"),
            showtime_of_i=showtime_of_i,
        )
        with db.transaction(), psycopg.ClientCursor(db) as cursor:  # several statements with parameters
            cursor.execute(seed, {"holds": holds})
        db.execute("VACUUM ANALYZE booking.holds")
        db.execute("VACUUM ANALYZE booking.seat_claims")
        db.execute("CHECKPOINT")
        showtimes = [
            row[0] for row in db.execute("SELECT DISTINCT showtime_id FROM booking.holds WHERE state = 'ACTIVE'")
        ]
        showtimes.sort()
        wal_before = db.execute("SELECT pg_current_wal_lsn()").fetchone()
        began = time.perf_counter()
        cpu, holds_cpu = expire(db, showtimes)
        wall = time.perf_counter() - began
        wal = db.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", wal_before).fetchone()
        assert wal is not None
        return cpu, holds_cpu, wall, float(wal[0]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each kind of id, alternated")
    parser.add_argument("--holds", type=int, default=100_000)
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="the showtimes' holds made in turn over the 5 minutes (default: one showtime's after another's, as"
        " bench/booking_bench.py writes them, so a batch of 50 showtimes is 30 seconds of holds)",
    )
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with provision_database(args.database_url) as (url, where):
        order = "made in turn" if args.interleaved else "made one showtime after another"
        print(f"{args.holds:,} expired holds of 2 seats, 500 showtimes ({order}), {BATCH} per transaction; {where}")
        print(f"{platform.node()}: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
        print(f"{'ids':<13} {'backend CPU s':>13} {'of which holds':>14} {'wall s':>7} {'WAL MB':>7}")
        for number in range(args.rounds):
            for kind in KINDS:
                cpu, holds_cpu, wall, wal = round_of(libpq_url(url), kind, args.holds, args.interleaved)
                print(f"{kind:<13} {cpu:>13.2f} {holds_cpu:>14.2f} {wall:>7.2f} {wal:>7.0f}   (round {number + 1})")


if __name__ == "__main__":
    main()
