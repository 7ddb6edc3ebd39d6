"""The example clients in examples/ run against a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import psycopg
import pytest

from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.local_stripe import LocalStripe
from tests.auth_client import PASSWORD, sign_in
from tests.booking_data import open_sale

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).parents[2] / "examples"


def test_the_pos_terminal_example_sells_seats_and_sees_them_live(
    address: str, channel: grpc.Channel, screening: ScreeningServiceStub, db: psycopg.Connection[tuple[object, ...]]
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
