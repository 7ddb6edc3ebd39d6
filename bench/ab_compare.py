"""Two versions of the server side by side, rows alternated: for changes smaller than the spread
between runs minutes apart on a shared machine.

    git archive <commit> | tar -x -C /tmp/before
    .venv/bin/python bench/ab_compare.py --before /tmp/before --rounds 6 --kinds health,get_showtime,hold

Starts `cinema-grpc serve` twice on one database (the work tree's code, and the code in
``--before`` through PYTHONPATH), and the bare grpc.aio server of the ceiling; seeds through the
work tree's server; then measures each row kind on each server in turn, round after round (the
order rotated every round), with booking_bench.py's clients and CPU accounting. Prints
every round's server CPU ms per call, its rate and the load average, and the mean of each.
The bare server answers Health/Check only. Both versions must have the same migrations: the
database is migrated by the work tree's code, and a server that finds a revision it does not
know refuses to start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import booking_bench as bb
import loadgen
import psycopg


def compare(args: argparse.Namespace) -> dict[tuple[str, str], list[tuple[float, float, float]]]:
    bench_args = bb.parse_args(
        ["--duration", str(args.duration), "--showtimes", "100", "--customers", "64", "--phases", "reads"]
    )
    before = str(Path(args.before).resolve())
    with (
        bb.provision_database(args.database_url) as (url, _),
        tempfile.TemporaryDirectory(prefix="cinema-ab-") as logs,
        ProcessPoolExecutor(max_workers=bench_args.processes, mp_context=get_context("spawn")) as pool,
    ):

        async def run() -> dict[tuple[str, str], list[tuple[float, float, float]]]:
            async with await psycopg.AsyncConnection.connect(bb.libpq_url(url), autocommit=True) as db:
                backend = await bb.scalar(db, "SELECT pg_backend_pid()")
                meter = bb.Meter(bench_args, pool, bb.parent_of(int(backend)))
                meter.db = psycopg.connect(bb.libpq_url(url), autocommit=True)
                pool.submit(loadgen.warm_up).result()
                servers: dict[str, Any] = {
                    "before": bb.ServerProcess(
                        url, bench_args, Path(logs), PYTHONPATH=f"{before}{os.pathsep}{before}/generated"
                    ),
                    "after": bb.ServerProcess(url, bench_args, Path(logs)),
                    "bare": bb.BareServer(),
                }
                try:
                    world = await bb.seed(servers["after"].address, db, bench_args)
                    rng = random.Random(bench_args.seed)
                    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
                    names = list(servers)
                    for round_ in range(args.rounds):
                        for kind in args.kinds.split(","):
                            # Each server in each place of the order in turn (the order rotates).
                            shift = round_ % len(names)
                            for name in names[shift:] + names[:shift]:
                                if name == "bare" and kind != "health":
                                    continue
                                server = servers[name]
                                # Holds: each row on 100 showtimes, as booking_bench.py's, the seats
                                # freed after it.
                                extra: dict[str, Any] = (
                                    {"pairs": world.pairs(rng), "customers": world.customers} if kind == "hold" else {}
                                )
                                row = meter.measure(
                                    f"{kind}, {name}",
                                    server.address,
                                    server.pid,
                                    kind,
                                    showtimes=world.showtimes,
                                    **extra,
                                )
                                if kind == "hold":
                                    await bb.reset_holds(db)
                                results.setdefault((kind, name), []).append(
                                    (row.server_ms, row.rate, os.getloadavg()[0])
                                )
                    return results
                finally:
                    for server in servers.values():
                        server.stop()

        return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a directory with the other version's code")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--kinds", default="health,get_showtime", help="row kinds of loadgen.py, comma-separated")
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("--database-url", help="a PostgreSQL server to use (default: an embedded one)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    results = compare(args)
    for (kind, name), rows in sorted(results.items()):
        figures = " ".join(f"{ms:.3f}" for ms, _, _ in rows)
        mean = sum(ms for ms, _, _ in rows) / len(rows)
        rates = " ".join(f"{rate:,.0f}" for _, rate, _ in rows)
        loads = " ".join(f"{load:.0f}" for _, _, load in rows)
        print(f"{kind:<14} {name:<7} server ms/call {figures} | mean {mean:.3f} | calls/s {rates} | load {loads}")


if __name__ == "__main__":
    main()
