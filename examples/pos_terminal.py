"""A box-office (POS) terminal on the generated stubs: sign in as staff, pick one of today's
showtimes, watch its seat map live, hold the best seats, sell them at the counter, print the
tickets and their passes (the signed code a door scanner reads; the QR images go to
--pass-dir when given).

    python examples/pos_terminal.py --server 127.0.0.1:50051 --email clerk@example.com \
        --password-stdin --cinema-id <id> --seats 2 [--pass-dir passes/] < password.txt
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.type import date_pb2

from cinema.admission.v1 import admission_pb2 as apb
from cinema.admission.v1.admission_pb2_grpc import AdmissionServiceStub
from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.common.v1 import money_pb2
from cinema.identity.v1 import identity_pb2 as ipb
from cinema.identity.v1.identity_pb2_grpc import IdentityServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub

STATE = {
    bpb.SEAT_STATE_FREE: ".",
    bpb.SEAT_STATE_HELD: "h",
    bpb.SEAT_STATE_SOLD: "X",
    bpb.SEAT_STATE_OUT_OF_SERVICE: "#",
}


_OUTPUT = threading.Lock()


def say(line: str) -> None:
    """Prints whole lines only: the live seat stream prints from its own thread."""
    with _OUTPUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def amount(money: money_pb2.Money) -> str:
    """Minor units as a decimal amount (two decimals, as for EUR and USD)."""
    whole, cents = divmod(money.amount_minor, 100)
    return f"{whole}.{cents:02d} {money.currency_code}"


def draw(seat_map: bpb.SeatMap) -> str:
    rows: dict[str, list[str]] = {}
    for seat in seat_map.seats:
        rows.setdefault(seat.row_label, []).append(STATE.get(seat.state, "?"))
    return "\n".join(f"  {label:>3} {''.join(marks)}" for label, marks in rows.items())


def watch(stub: BookingServiceStub, showtime_id: str, ready: threading.Event, changes: list[str]) -> grpc.Future:
    call = stub.WatchSeatAvailability(bpb.WatchSeatAvailabilityRequest(showtime_id=showtime_id))

    def read() -> None:
        try:
            for event in call:
                if event.WhichOneof("event") == "snapshot":
                    say(f"seat map, version {event.snapshot.version} (. free  h held  X sold  # broken):")
                    say(draw(event.snapshot))
                    ready.set()
                else:
                    line = ", ".join(f"{c.seat_id[:8]}->{bpb.SeatState.Name(c.state)}" for c in event.changes.changes)
                    say(f"live: version {event.changes.version}: {line}")
                    changes.append(line)  # after printing: the main thread exits once it sees two
        except grpc.RpcError:
            pass  # cancelled when the terminal closes

    threading.Thread(target=read, daemon=True).start()
    return call  # type: ignore[return-value]


def print_pass(ticket_pass: apb.TicketPass, args: argparse.Namespace) -> None:
    """The pass as a receipt printer would print it; the QR image as a PNG file."""
    doors = ticket_pass.doors_open_time.ToDatetime(tzinfo=UTC)
    say(
        f"PASS {ticket_pass.cinema_name} | {ticket_pass.movie_title} | {ticket_pass.local_start_time}"
        f" ({ticket_pass.time_zone}) | {ticket_pass.hall_name} | row {ticket_pass.row_label}"
        f" seat {ticket_pass.seat_number} | {amount(ticket_pass.price)} | doors open {doors:%H:%M} UTC"
    )
    say(f"  code {ticket_pass.code} (key {ticket_pass.key_id}, issue {ticket_pass.issue})")
    if args.pass_dir is not None:
        args.pass_dir.mkdir(parents=True, exist_ok=True)
        image = args.pass_dir / f"{ticket_pass.ticket_id}.png"
        image.write_bytes(ticket_pass.qr_png)
        say(f"  qr {image}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--email", required=True)
    parser.add_argument("--password-stdin", action="store_true", required=True, help="read the password from stdin")
    parser.add_argument("--cinema-id", required=True)
    parser.add_argument("--seats", type=int, default=2)
    parser.add_argument("--pass-dir", type=Path, help="write each pass's QR code there as <ticket id>.png")
    args = parser.parse_args()
    password = sys.stdin.readline().rstrip("\n")

    with grpc.insecure_channel(args.server) as channel:
        login = IdentityServiceStub(channel).Login(ipb.LoginRequest(email=args.email, password=password))
        auth = (("authorization", f"Bearer {login.access_token}"),)
        say(f"signed in as {login.user.display_name} ({', '.join(ipb.Role.Name(r) for r in login.user.roles)})")

        today = datetime.now(UTC)
        screening = ScreeningServiceStub(channel)
        showtimes = screening.ListShowtimes(
            spb.ListShowtimesRequest(
                cinema_id=args.cinema_id, date=date_pb2.Date(year=today.year, month=today.month, day=today.day)
            )
        ).showtimes
        upcoming = [s for s in showtimes if s.start_time.ToDatetime(tzinfo=UTC) > today]
        if not upcoming:
            upcoming = list(
                screening.ListShowtimes(spb.ListShowtimesRequest(cinema_id=args.cinema_id, page_size=5)).showtimes
            )
        if not upcoming:
            print("no showtimes to sell", file=sys.stderr)
            return 1
        showtime = upcoming[0]
        say(f"selling showtime {showtime.id} at {showtime.start_time.ToDatetime(tzinfo=UTC):%Y-%m-%d %H:%M} UTC")

        booking = BookingServiceStub(channel)
        ready, changes = threading.Event(), []
        stream = watch(booking, showtime.id, ready, changes)
        ready.wait(10)

        held = booking.HoldBestAvailable(
            bpb.HoldBestAvailableRequest(showtime_id=showtime.id, count=args.seats, request_id=str(uuid.uuid4())),
            metadata=auth,
        )
        seats = ", ".join(f"{s.row_label}{s.number}" for s in held.seats)
        say(f"held {seats} until {held.expire_time.ToDatetime():%H:%M:%S} UTC")
        sold = booking.SellHoldAtCounter(
            bpb.SellHoldAtCounterRequest(
                hold_id=held.id, payment=bpb.COUNTER_PAYMENT_CASH, request_id=str(uuid.uuid4())
            ),
            metadata=auth,
        )
        for ticket in sold.tickets:
            say(f"TICKET {ticket.id}  seat {ticket.seat.row_label}{ticket.seat.number}  {amount(ticket.seat.price)}")
        say(f"total {amount(sold.total)}, booking {sold.id}")
        admission = AdmissionServiceStub(channel)
        for ticket in sold.tickets:
            print_pass(admission.GetTicketPass(apb.GetTicketPassRequest(ticket_id=ticket.id), metadata=auth), args)
        deadline = time.monotonic() + 10
        while len(changes) < 2 and time.monotonic() < deadline:  # the hold and the sale, seen live
            time.sleep(0.05)
        stream.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
