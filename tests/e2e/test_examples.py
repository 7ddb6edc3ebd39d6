"""The example clients in examples/ run against a real server."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from cinema.admission.v1 import admission_pb2 as apb
from cinema.admission.v1.admission_pb2_grpc import AdmissionServiceStub
from cinema.booking.v1 import booking_pb2 as bpb
from cinema.identity.v1 import identity_pb2 as ipb
from cinema.identity.v1.identity_pb2_grpc import IdentityServiceStub
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.local_stripe import LocalStripe
from tests.auth_client import PASSWORD, register, sign_in, with_token
from tests.booking_data import customer, hold, open_sale
from tests.ports import free_port

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).parents[2] / "examples"


def test_the_pos_terminal_example_sells_seats_and_sees_them_live(
    address: str,
    channel: grpc.Channel,
    screening: ScreeningServiceStub,
    db: psycopg.Connection[tuple[object, ...]],
    tmp_path: Path,
) -> None:
    sale = open_sale(screening, hours_ahead=3)
    clerk, _ = sign_in(channel, db, "STAFF")
    run = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "pos_terminal.py"),
            "--server",
            address,
            "--email",
            clerk.email,
            "--password-stdin",
            "--cinema-id",
            sale.showtime.cinema_id,
            "--seats",
            "3",
            "--pass-dir",
            str(tmp_path / "passes"),
        ],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert sum(line.startswith("TICKET") for line in lines) == 3, run.stdout
    assert any(line.startswith("seat map, version") for line in lines), run.stdout
    live = [line for line in lines if line.startswith("live:")]
    assert any("SEAT_STATE_HELD" in line for line in live), run.stdout
    assert any("SEAT_STATE_SOLD" in line for line in live), run.stdout
    assert "total 36.00 EUR" in run.stdout
    # Each ticket's pass: what the holder reads, the signed code, the QR image.
    passes = [line for line in lines if line.startswith("PASS ")]
    assert len(passes) == 3 and all("12.00 EUR" in line and "| Main | row " in line for line in passes), run.stdout
    assert sum(line.startswith("  code ") for line in lines) == 3, run.stdout
    images = sorted((tmp_path / "passes").glob("*.png"))
    assert len(images) == 3 and all(image.read_bytes().startswith(b"\x89PNG") for image in images)


def _scanner(address: str, email: str, sale_showtime: Any, state: Path, *codes: str, door: str = "main") -> list[str]:
    run = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "door_scanner.py"),
            "--server",
            address,
            "--email",
            email,
            "--password-stdin",
            "--cinema-id",
            sale_showtime.cinema_id,
            "--showtime-id",
            sale_showtime.id,
            "--door",
            door,
            "--device",
            f"tablet-{door}",
            "--state-dir",
            str(state),
            *codes,
        ],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.splitlines()


def test_the_door_scanner_example_verifies_offline_checks_in_and_uploads_what_it_queued(
    address: str,
    channel: grpc.Channel,
    admin_channel: grpc.Channel,
    screening: ScreeningServiceStub,
    db: psycopg.Connection[tuple[object, ...]],
    tmp_path: Path,
) -> None:
    sale = open_sale(screening, soon=True)
    ana = customer(channel, db)
    clerk = customer(channel, db, "STAFF")
    held = hold(ana, sale, "C1", "C2")
    sold = clerk.booking.SellHoldAtCounter(
        bpb.SellHoldAtCounterRequest(hold_id=held.id, payment=bpb.COUNTER_PAYMENT_CASH, request_id=str(uuid.uuid4()))
    )
    passes = AdmissionServiceStub(with_token(channel, ana.token))
    first, second = (passes.GetTicketPass(apb.GetTicketPassRequest(ticket_id=t.id)).code for t in sold.tickets)
    door = register(channel)
    IdentityServiceStub(admin_channel).GrantRole(ipb.GrantRoleRequest(user_id=door.id, role=ipb.ROLE_SCANNER))
    state = tmp_path / "scanner"

    online = _scanner(address, door.email, sale.showtime, state, first, "NOT-A-TICKET")
    assert online[-4:] == [
        "OFFLINE OK seat C1",
        "ONLINE SCAN_VERDICT_ADMITTED seat C1",
        "OFFLINE REFUSED FORGED",
        "ONLINE SCAN_VERDICT_FORGED seat ",
    ]
    # The server is gone: the kept configuration still verifies; scans are queued.
    offline = _scanner(f"127.0.0.1:{free_port()}", door.email, sale.showtime, state, second, first)
    assert offline[0] == "server unreachable: working offline"
    assert [line.split()[0] for line in offline[1:]] == ["OFFLINE", "QUEUED", "OFFLINE", "QUEUED"]
    # Back online: the queue is uploaded; the ticket used twice is reported as a duplicate.
    back = _scanner(address, door.email, sale.showtime, state)
    uploaded = [line for line in back if line.startswith("UPLOADED")]
    assert uploaded[0].endswith("SCAN_VERDICT_ADMITTED seat C2"), back
    assert "SCAN_VERDICT_ALREADY_USED seat C1 (DUPLICATE: first admitted at door main by tablet-main)" in uploaded[1]
    assert back[-1] == "uploaded 2 scans: 1 admitted, 1 duplicates"
    assert not (state / "queue.jsonl").exists()


def test_the_partner_curl_example_buys_and_refunds_through_the_gateway(
    gateway: str, screening: ScreeningServiceStub, local_stripe: LocalStripe
) -> None:
    sale = open_sale(screening, hours_ahead=5)
    run = subprocess.run(
        ["bash", str(EXAMPLES / "partner_curl.sh"), gateway, sale.showtime.cinema_id, local_stripe.api_base],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "PAYMENT " in out and "PAYMENT_STATE_INITIALIZED" in out
    assert "PAID PAYMENT_STATE_SUCCESS" in out
    assert "TICKETS " in out and len(out.split("TICKETS ")[1].split("\n")[0].split()) == 2
    assert "REFUNDED PAYMENT_STATE_REFUNDED 2400" in out


def test_the_partner_curl_example_without_a_stripe_server_stops_at_the_card_step_and_says_how_to_go_on(
    gateway: str, screening: ScreeningServiceStub
) -> None:
    sale = open_sale(screening, hours_ahead=6)
    run = subprocess.run(
        ["bash", str(EXAMPLES / "partner_curl.sh"), gateway, sale.showtime.cinema_id],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert "PAYMENT_STATE_INITIALIZED" in run.stdout
    assert "WAITING FOR CARD: confirm PaymentIntent pi_" in run.stdout and "cinema-grpc dev pay" in run.stdout
