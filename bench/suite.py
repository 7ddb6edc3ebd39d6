"""Every benchmark in one run: one table, a JSON file and a chart for docs/performance.md.

Not part of the test suite, and not a gate: it gives figures, not pass or fail. From the
project root:

    .venv/bin/python bench/suite.py

It runs bench/booking_bench.py (the empty-RPC ceiling on a bare grpc.aio server, Health/Check,
GetShowtime, GetSeatMap and HoldSeats through cinema-grpc with the server's and PostgreSQL's
CPU per call, contention, stream fan-out, 2 workers against 1, the sweeper on 100,000 expired
holds): about 3 to 4 minutes. With --reports it then runs bench/reports_bench.py (reports on
1,000,000 tickets) on a fresh database, a few minutes more.

Options not listed by --help are handed to booking_bench.py (see its --help).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import booking_bench as booking

DEFAULT_PNG = Path("docs/performance.png")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Any other option goes to booking_bench.py; see bench/booking_bench.py --help.",
    )
    parser.add_argument("--reports", action="store_true", help="also run the reports on a million tickets")
    parser.add_argument("--tickets", type=int, default=1_000_000, help="tickets for the reports (default 1000000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each report query (default 5)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--png", type=Path, default=DEFAULT_PNG, help=f"the chart (default {DEFAULT_PNG})")
    parser.add_argument("--no-png", action="store_true", help="draw no chart")
    own, rest = parser.parse_known_args(argv)
    return own, booking.parse_args(rest)


def draw(path: Path, results: booking.Results, title: str) -> None:
    """Per row: calls per second, and the server's and PostgreSQL's CPU per call."""
    import matplotlib  # noqa: PLC0415 - only the chart needs it (the bench extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = [*results.ceilings[:1], *results.rows.values()]
    names = [row.name for row in rows][::-1]
    figure, (rate_ax, cpu_ax) = plt.subplots(1, 2, figsize=(13, 0.45 * len(rows) + 1.6), constrained_layout=True)
    rates = [row.rate for row in rows][::-1]
    rate_ax.barh(names, rates, color="tab:blue")
    for y, rate in enumerate(rates):
        rate_ax.annotate(f"{rate:,.0f}/s", (rate, y), xytext=(3, -4), textcoords="offset points", fontsize="small")
    rate_ax.set_xlabel("successful calls per second, c=64")
    server = [row.server_ms for row in rows][::-1]
    pg = [0.0 if row.pg_ms != row.pg_ms else row.pg_ms for row in rows][::-1]
    cpu_ax.barh(names, server, color="tab:orange", label="server")
    cpu_ax.barh(names, pg, left=server, color="tab:green", label="PostgreSQL")
    for y, (s, p) in enumerate(zip(server, pg, strict=True)):
        cpu_ax.annotate(f"{s:.2f} + {p:.2f}", (s + p, y), xytext=(3, -4), textcoords="offset points", fontsize="small")
    cpu_ax.set_xlabel("CPU ms per call")
    cpu_ax.set_yticks([])
    cpu_ax.legend(loc="lower right")
    figure.suptitle(title, fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    own, args = parse_args(argv)
    if not own.no_png:
        try:
            import matplotlib  # noqa: F401, PLC0415 - fail before the long run, not after it
        except ImportError:
            sys.exit("the chart needs matplotlib: .venv/bin/pip install -e '.[bench]' (or pass --no-png)")
    command = shlex.join([".venv/bin/python", "bench/suite.py", *(sys.argv[1:] if argv is None else argv)])
    where, results = booking.execute(args)
    report = None
    if own.reports:
        import reports_bench  # noqa: PLC0415 - only with --reports

        booking.progress(f"reports: building {own.tickets:,} tickets")
        with booking.provision_database(args.database_url) as (url, _where):
            report = reports_bench.build_and_measure(url, own.tickets, own.repeat)
    text = booking.header(args, where, results, command)
    print(text)
    print()
    print(booking.load_table(results).render())
    print()
    print(booking.phase_table(results, args).render())
    figures: dict[str, Any] = booking.figures_of(results)
    if report is not None:
        print()
        table = booking.Table(("report", f"{report.tickets:,} tickets: median ms", "max ms"))
        for name, median, worst in report.rows:
            table.add(name, f"{median:,.1f}", f"{worst:,.1f}")
        print(table.render())
        figures["reports"] = {name: {"median_ms": median, "max_ms": worst} for name, median, worst in report.rows}
    if own.json:
        figures.update(header=text, command=command)
        own.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    if not own.no_png:
        draw(own.png, results, text.splitlines()[0] + "; " + text.splitlines()[4].removeprefix("load      "))
        booking.progress(f"chart written to {own.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
