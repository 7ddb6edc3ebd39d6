"""Every benchmark in one run: one table, a JSON file and a chart for docs/performance.md.

Not part of the test suite, and not a gate: it gives figures, not pass or fail. From the
project root:

    .venv/bin/python bench/suite.py

It runs bench/booking_bench.py (empty-RPC and raw-SQL ceilings and HoldSeats at several client
counts, the contention round, the stream fan-out, the sweeper on 100,000 expired holds) on one
server and database, then bench/reports_bench.py (reports on 1,000,000 tickets) on a fresh
database, prints one table with every figure, its ceiling or ratio, the target and the verdict,
and draws throughput and p99 latency against concurrent clients, the ceilings as lines.

Options not listed by --help are handed to booking_bench.py (see its --help), e.g.
--channels 8 or --redis-url URL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import booking_bench as booking
import grpc
import reports_bench as reports

DEFAULT_PNG = Path("docs/performance.png")
HEADINGS = ("measure", "value", "ceiling / ratio", "target", "verdict")
# The suite's defaults for booking_bench.py: more client counts, each measured for less time.
BOOKING_DEFAULTS = ("--concurrency", "1,4,16,32,64", "--duration", "3", "--warmup", "1")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """The suite's own options, and booking_bench.py's options (its parser, the suite's defaults)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Any other option goes to booking_bench.py; the suite's defaults there are "
        + " ".join(BOOKING_DEFAULTS)
        + ". See bench/booking_bench.py --help.",
    )
    parser.add_argument("--tickets", type=int, default=1_000_000, help="tickets for the reports (default 1000000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each report query (default 5)")
    parser.add_argument("--skip-reports", action="store_true", help="leave out the reports on a million tickets")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--png", type=Path, default=DEFAULT_PNG, help=f"the chart (default {DEFAULT_PNG})")
    parser.add_argument("--no-png", action="store_true", help="draw no chart")
    own, rest = parser.parse_known_args(argv)
    booking_args = booking.parse_args([*BOOKING_DEFAULTS, *rest])
    return own, booking_args


def run_reports(database_url: str | None, tickets: int, repeat: int) -> reports.ReportsRun:
    """The reports benchmark on a fresh database (embedded, or made on --database-url's server)."""
    booking.progress(f"reports: building {tickets:,} tickets")
    with booking.provision_database(database_url) as (url, _where):
        return reports.build_and_measure(url, tickets, repeat)


# ----------------------------------------------------------------------------- the table


def times(value: float, base: float) -> str:
    return f"{value / base:,.1f}x" if base > 0 else "?"


def add_level_rows(table: booking.Table, results: booking.Results, c: int) -> None:
    """Both ceilings at c clients, then HoldSeats against them: throughput and p50/p99."""
    empty, raw, run = results.empty.get(c), results.raw.get(c), results.holds.get(c)
    if empty is not None:
        table.add(
            f"empty RPC (Health/Check), c={c}",
            f"{booking.per_second(empty.rate)}, p50/p99 {empty.p(50):,.1f}/{empty.p(99):,.1f} ms",
            verdict=empty.note,
            middle=("ceiling 1",),
        )
    if raw is not None:
        table.add(
            f"raw SQL hold transaction, c={c}",
            f"{booking.per_second(raw.rate)}, p50/p99 {raw.p(50):,.1f}/{raw.p(99):,.1f} ms",
            verdict=raw.note,
            middle=("ceiling 2",),
        )
    if run is None:
        return
    hold = run.load
    shares = []
    if empty is not None and empty.rate:
        shares.append(f"{hold.rate / empty.rate:.1%} of 1")
    if raw is not None and raw.rate:
        shares.append(f"{hold.rate / raw.rate:.1%} of 2")
    ratio = hold.rate / empty.rate if empty is not None and empty.rate else float("nan")
    table.check(
        f"HoldSeats, c={c}",
        booking.per_second(hold.rate),
        f"{booking.HOLD_TARGET} of 1",
        ratio >= booking.HOLD_TARGET_RATIO,
        middle=(", ".join(shares),),
    )
    slower = []
    if empty is not None:
        slower.append(f"{times(hold.p(50), empty.p(50))}/{times(hold.p(99), empty.p(99))} of 1")
    if raw is not None:
        slower.append(f"{times(hold.p(50), raw.p(50))}/{times(hold.p(99), raw.p(99))} of 2")
    table.add(
        f"  HoldSeats p50 / p99, c={c}",
        f"{booking.ms(hold.p(50))} / {booking.ms(hold.p(99))}",
        verdict=hold.note,
        middle=(", ".join(slower),),
    )
    if hold.failures:
        table.add(f"  failed HoldSeats, c={c}", booking.failures_text(hold.failures), "none", "!")


def add_report_rows(table: booking.Table, run: reports.ReportsRun) -> None:
    for i, (name, median, worst) in enumerate(run.rows):
        measure = f"reports, {run.tickets:,} tickets: {name.removeprefix('ceiling: ')}" if i == 0 else f"  {name}"
        ratio = "ceiling 3" if i == 0 else f"{median / run.ceiling_ms:.1%} of 3"
        table.add(measure, f"{median:,.1f} ms median, max {worst:,.1f}", middle=(ratio,))


def build(
    booking_args: argparse.Namespace, results: booking.Results, report: reports.ReportsRun | None
) -> tuple[booking.Table, dict[str, Any]]:
    table = booking.Table(HEADINGS)
    for c in booking_args.levels:
        add_level_rows(table, results, c)
    figures: dict[str, Any] = {"levels": {str(c): booking.level_figures(results, c) for c in booking_args.levels}}
    figures.update(booking.add_phase_rows(table, results, booking_args))
    if report is not None:
        add_report_rows(table, report)
        figures["reports"] = {
            "tickets": report.tickets,
            "showtimes": report.showtimes,
            "bookings": report.bookings,
            "build_seconds": report.build_seconds,
            "repeat": report.repeat,
            "queries": {name: {"median_ms": median, "max_ms": worst} for name, median, worst in report.rows},
        }
    return table, figures


def code_version() -> str:
    """The commit measured, and whether the server's code had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "cinema_grpc"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}" + (f" with {len(changed)} uncommitted files in cinema_grpc/" if changed else "")


def move_notes(table: booking.Table) -> list[str]:
    """Long verdicts (why a measurement stopped early) become numbered notes under the table."""
    notes: list[str] = []
    for i, row in enumerate(table.rows):
        verdict = row[-1]
        if verdict not in ("", "!", "met", "NOT MET"):
            notes.append(verdict)
            table.rows[i] = (*row[:-1], f"! note {len(notes)}")
    return [f"note {n}: {text}" for n, text in enumerate(notes, 1)]


def header(booking_header: str, loads: dict[str, float], command: str, report: reports.ReportsRun | None) -> str:
    lines = booking_header.splitlines()[1:]  # without booking_bench's title line
    lines = [line for line in lines if not line.startswith("load ")]
    lines[1:1] = [f"load      1-minute load average {booking.load_text(loads)}"]
    if report is not None:
        lines.append(
            f"          reports {report.tickets:,} sold tickets in {report.showtimes:,} showtimes, {report.bookings:,}"
            f" bookings (built in {report.build_seconds:.0f} s, fresh database), {report.repeat} runs of each query"
        )
    return "\n".join(
        [
            f"cinema-grpc benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"command   {command}",
            f"code      {code_version()}",
            *lines,
            "ceilings  1 = empty RPC, 2 = raw SQL hold transaction (both at the same c),"
            " 3 = full scan of all tickets; AxB = A times the ceiling's p50 / B times its p99",
        ]
    )


# ----------------------------------------------------------------------------- the chart


def draw(path: Path, levels: Sequence[int], results: booking.Results, title: str) -> None:
    """Throughput and p99 against concurrent clients; the two ceilings as lines."""
    import matplotlib  # noqa: PLC0415 - only the chart needs it (the bench extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: PLC0415

    series = (
        ("empty RPC (ceiling 1)", results.empty, {"color": "tab:gray", "linestyle": "--", "marker": ""}),
        ("raw SQL hold transaction (ceiling 2)", results.raw, {"color": "tab:blue", "linestyle": ":", "marker": ""}),
        ("HoldSeats", {c: run.load for c, run in results.holds.items()}, {"color": "tab:red", "marker": "o"}),
    )
    figure, (rate_ax, p99_ax) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    for label, runs, style in series:
        xs = [c for c in levels if c in runs]
        if not xs:
            continue
        rates, p99s = [runs[c].rate for c in xs], [runs[c].p(99) for c in xs]
        rate_ax.plot(xs, rates, label=label, linewidth=2, **style)
        p99_ax.plot(xs, p99s, label=label, linewidth=2, **style)
        if style.get("marker"):  # the measured line, not a ceiling: label its points
            for ax, ys, unit in ((rate_ax, rates, "/s"), (p99_ax, p99s, " ms")):
                for x, y in zip(xs, ys, strict=True):
                    ax.annotate(f"{y:,.0f}{unit}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center")
    empties = [results.empty[c].rate for c in levels if c in results.empty]
    if empties:
        target = [booking.HOLD_TARGET_RATIO * results.empty[c].rate for c in levels if c in results.empty]
        rate_ax.plot(
            [c for c in levels if c in results.empty],
            target,
            color="tab:green",
            linestyle="-.",
            linewidth=1,
            label="target: 50 % of ceiling 1",
        )
    for ax, ylabel, what in (
        (rate_ax, "successful requests per second (log)", "throughput"),
        (p99_ax, "p99 latency, ms (log)", "p99 latency"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(levels), [str(c) for c in levels])
        ax.minorticks_off()
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,g}"))
        ax.set_xlabel("concurrent clients (requests in flight)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{what} against concurrent clients")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle(title, fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    own, booking_args = parse_args(argv)
    if not own.no_png:
        try:
            import matplotlib  # noqa: F401, PLC0415 - fail before the long run, not after it
        except ImportError:
            sys.exit("the chart needs matplotlib: .venv/bin/pip install -e '.[bench]' (or pass --no-png)")
    command = shlex.join([".venv/bin/python", "bench/suite.py", *(sys.argv[1:] if argv is None else argv)])
    loads = {"at the start": os.getloadavg()[0]}
    booking_header, results, _ = booking.execute(booking_args)
    loads["after seeding"] = results.loads["after seeding"]
    loads["after the booking phases"] = results.loads["at the end"]
    report = None
    if not own.skip_reports:
        report = run_reports(booking_args.database_url, own.tickets, own.repeat)
        loads["after the reports"] = os.getloadavg()[0]
    text = header(booking_header, loads, command, report)
    table, figures = build(booking_args, results, report)
    print(text)
    print()
    notes = move_notes(table)
    print(table.render())
    if notes:
        print()
        print("\n".join(notes))
    if own.json:
        figures.update(header=text, command=command, loads=loads, notes=notes)
        own.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    if not own.no_png:
        png = own.png if own.png.is_absolute() else Path.cwd() / own.png
        title = (
            f"cinema-grpc, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {os.cpu_count()} CPUs, load average"
            f" {min(loads.values()):.1f}-{max(loads.values()):.1f}; server and clients in one Python process,"
            f" grpcio {grpc.__version__}, Python {platform.python_version()}"
        )
        draw(png, booking_args.levels, results, title)
        booking.progress(f"chart written to {own.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
