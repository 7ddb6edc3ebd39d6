"""The partner REST/JSON entry point: the real grpc-gateway binary, built from protos/, in front
of the test server. Every resource family over HTTP, the google.rpc error details as JSON,
newline-delimited streaming, the OpenAPI documents, and `cinema-grpc serve --gateway`."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import requests

from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.local_stripe import LocalStripe
from cinema_grpc.gateway import REPO_ROOT, GatewayProcess
from cinema_grpc.settings import Settings
from tests.auth_client import PASSWORD
from tests.booking_data import Sale, open_sale
from tests.conftest import RunningServer
from tests.e2e.test_command_line import embedded_server_env, wait_until_serving
from tests.payment_data import confirm_card
from tests.ports import free_port
from tests.screening_data import CINEMA_TIME_ZONE
from tests.tls_files import self_signed_certificate

pytestmark = pytest.mark.e2e
Db = psycopg.Connection[tuple[object, ...]]
BIN = Path(sys.executable).parent
TIMEOUT = 15


class Rest:
    """A partner's HTTP client: JSON in, JSON out, optionally signed in."""

    def __init__(self, base: str, token: str = "") -> None:
        self.base = base
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.base + path, json=body, timeout=TIMEOUT, **kwargs)

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        response = self.call(method, path, body, **kwargs)
        assert response.status_code == 200, (method, path, response.status_code, response.text)
        assert response.headers["Content-Type"] == "application/json"
        return response.json()


def detail(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """The google.rpc detail of a type (ErrorInfo, BadRequest, ...) in an error body."""
    found = [d for d in body["details"] if d["@type"] == f"type.googleapis.com/google.rpc.{kind}"]
    assert len(found) == 1, body
    return found[0]


def sign_up(rest: Rest) -> tuple[dict[str, Any], str]:
    """Registers a customer and signs in, over REST; returns the user and an access token."""
    email = f"{uuid.uuid4().hex[:12]}@Example.com"
    user = rest.ok("POST", "/v1/users:register", {"email": email, "password": PASSWORD, "display_name": "Ana"})
    assert user["email"] == email.lower() and user["roles"] == ["ROLE_CUSTOMER"]
    assert user["phone"] == ""  # zero values are emitted
    pair = rest.ok("POST", "/v1/sessions", {"email": email, "password": PASSWORD})
    assert pair["user"]["id"] == user["id"] and pair["access_token"] and pair["refresh_token"]
    return user, pair["access_token"]


@pytest.fixture
def sale(screening: ScreeningServiceStub) -> Sale:
    return open_sale(screening)


def test_openapi_documents_are_served(gateway: str) -> None:
    booking = requests.get(f"{gateway}/openapi/cinema/booking/v1/booking.swagger.json", timeout=TIMEOUT)
    assert booking.status_code == 200
    document = booking.json()
    assert document["swagger"] == "2.0"
    assert set(document["paths"]["/v1/showtimes/{showtime_id}/holds"]) == {"post"}
    assert "v1SeatMap" in document["definitions"]
    listing = requests.get(f"{gateway}/openapi/cinema/", timeout=TIMEOUT)
    assert listing.status_code == 200 and "booking/" in listing.text
    for area in ("screening", "identity", "booking", "payment", "admission"):
        assert requests.head(f"{gateway}/openapi/cinema/{area}/v1/{area}.swagger.json", timeout=TIMEOUT).ok
    refused = requests.post(f"{gateway}/openapi/cinema/booking/v1/booking.swagger.json", timeout=TIMEOUT)
    assert refused.status_code == 405


def test_a_customer_buys_and_refunds_over_rest(
    gateway: str, sale: Sale, local_stripe: LocalStripe, admin_token: str
) -> None:
    public = Rest(gateway)
    user, token = sign_up(public)
    ana = Rest(gateway, token)

    # identity: the own profile; /v1/users/me is GetMe, not GetUser("me")
    me = ana.ok("GET", "/v1/users/me")
    assert me["id"] == user["id"]
    # a FieldMask in its proto3 JSON form (a string of lowerCamelCase paths) is accepted
    updated = ana.ok(
        "PATCH",
        "/v1/users/me",
        {"user": {"display_name": "Ana B", "phone": "+49 30 1234567"}, "update_mask": "displayName,phone"},
    )
    assert (updated["display_name"], updated["phone"]) == ("Ana B", "+49 30 1234567")
    assert ana.ok("PATCH", "/v1/users/me", {"user": {"phone": ""}, "update_mask": {"paths": ["phone"]}})["phone"] == ""
    admin = Rest(gateway, admin_token)
    assert admin.ok("GET", f"/v1/users/{user['id']}")["display_name"] == "Ana B"

    # screening: the cinema's showtimes of the local day, with the date as query parameters
    showtime = sale.showtime
    start = showtime.start_time.ToDatetime(tzinfo=UTC).astimezone(ZoneInfo(CINEMA_TIME_ZONE))
    query = {
        "cinema_id": sale.hall.cinema_id,
        "date.year": start.year,
        "date.month": start.month,
        "date.day": start.day,
    }
    listed = public.ok("GET", "/v1/showtimes", params=query)
    assert [s["id"] for s in listed["showtimes"]] == [showtime.id]
    assert listed["showtimes"][0]["start_time"] == showtime.start_time.ToJsonString()
    assert public.ok("GET", f"/v1/halls/{sale.hall.id}")["seat_count"] == 60

    # booking: the seat map, then a hold of two seats
    seat_map = public.ok("GET", f"/v1/showtimes/{showtime.id}/seats")
    assert len(seat_map["seats"]) == 60 and {s["state"] for s in seat_map["seats"]} == {"SEAT_STATE_FREE"}
    seats = sale.seats("C4", "C5")
    held = ana.ok("POST", f"/v1/showtimes/{showtime.id}/holds", {"seat_ids": seats, "request_id": str(uuid.uuid4())})
    assert held["customer_id"] == user["id"]  # the bearer token reached the server
    assert held["state"] == "HOLD_STATE_ACTIVE" and sorted(s["seat_id"] for s in held["seats"]) == sorted(seats)
    assert held["total"] == {"amount_minor": "2400", "currency_code": "EUR"}  # int64 as a JSON string
    assert ana.ok("GET", f"/v1/holds/{held['id']}")["id"] == held["id"]

    # payment: a PaymentIntent, confirmed by "Stripe.js", settled by the webhook
    payment = ana.ok("POST", f"/v1/holds/{held['id']}/payments", {"request_id": str(uuid.uuid4())})
    assert payment["state"] == "PAYMENT_STATE_INITIALIZED" and payment["client_secret"]
    assert payment["booking_id"] == ""
    assert confirm_card(local_stripe, payment["intent_id"]) == "succeeded"
    deadline = time.monotonic() + TIMEOUT
    while (paid := ana.ok("GET", f"/v1/payments/{payment['id']}"))["state"] != "PAYMENT_STATE_SUCCESS":
        assert time.monotonic() < deadline, paid
        time.sleep(0.1)
    booking = ana.ok("GET", f"/v1/bookings/{paid['booking_id']}")
    assert booking["state"] == "BOOKING_STATE_CONFIRMED" and len(booking["tickets"]) == 2
    assert [b["id"] for b in ana.ok("GET", "/v1/bookings")["bookings"]] == [booking["id"]]
    sold = public.ok("GET", f"/v1/showtimes/{showtime.id}/seats")
    assert {s["seat_id"]: s["state"] for s in sold["seats"] if s["state"] != "SEAT_STATE_FREE"} == dict.fromkeys(
        seats, "SEAT_STATE_SOLD"
    )
    events = admin.ok("GET", f"/v1/payments/{payment['id']}/events")["events"]
    assert {"intent_created", "succeeded"} <= {e["kind"] for e in events}
    assert all(isinstance(e["sequence"], str) and len(e["hash"]) == 64 for e in events)

    # the customer refunds before the cut-off: the booking is cancelled
    refunded = ana.ok("POST", f"/v1/payments/{payment['id']}:refund", {"reason": "cannot come"})
    assert refunded["state"] == "PAYMENT_STATE_REFUNDED" and refunded["refunded"]["amount_minor"] == "2400"
    assert ana.ok("GET", f"/v1/bookings/{booking['id']}")["state"] == "BOOKING_STATE_CANCELLED"
    listed = ana.ok("GET", "/v1/payments", params={"booking_id": booking["id"]})["payments"]
    assert [(p["id"], p["state"]) for p in listed] == [(payment["id"], "PAYMENT_STATE_REFUNDED")]

    # signing out over REST ends the session: the token no longer works
    assert ana.ok("POST", "/v1/sessions:logout", {}) == {}
    revoked = ana.call("GET", "/v1/users/me")
    assert revoked.status_code == 401 and detail(revoked.json(), "ErrorInfo")["reason"] == "TOKEN_REVOKED"


def test_staff_move_a_showtime_over_rest(gateway: str, screening: ScreeningServiceStub, admin_token: str) -> None:
    sale = open_sale(screening, cinema_name="Moves")
    admin = Rest(gateway, admin_token)
    start = sale.showtime.start_time.ToDatetime(tzinfo=UTC) + timedelta(minutes=10)
    moved = admin.ok(
        "POST", f"/v1/showtimes/{sale.showtime.id}:reschedule", {"start_time": start.isoformat().replace("+00:00", "Z")}
    )
    assert (moved["id"], moved["hall_id"]) == (sale.showtime.id, sale.hall.id)
    assert moved["start_time"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    refused = Rest(gateway).call(
        "POST", f"/v1/showtimes/{sale.showtime.id}:reschedule", {"start_time": moved["start_time"]}
    )
    assert refused.status_code == 401


def test_door_admission_over_rest(gateway: str, screening: ScreeningServiceStub, admin_token: str) -> None:
    soon = open_sale(screening, soon=True, cinema_name="Door")
    showtime = soon.showtime
    admin = Rest(gateway, admin_token)
    _, token = sign_up(Rest(gateway))
    ana = Rest(gateway, token)
    held = ana.ok("POST", f"/v1/showtimes/{showtime.id}/holds", {"seat_ids": soon.seats("D1", "D2")})
    booking = admin.ok("POST", f"/v1/holds/{held['id']}:sellAtCounter", {"payment": "COUNTER_PAYMENT_CASH"})
    first, second = (t["id"] for t in booking["tickets"])

    # the holder's pass (the PNG as base64 in JSON) and a re-issue of the other one
    ticket_pass = ana.ok("GET", f"/v1/tickets/{first}/pass")
    assert base64.b64decode(ticket_pass["qr_png"]).startswith(b"\x89PNG") and ticket_pass["issue"] == 1
    reissued = ana.ok("POST", f"/v1/tickets/{second}/pass:reissue", {"reason": "lost phone"})
    assert reissued["issue"] == 2

    # an admin makes a door scanner, which fetches its configuration and checks both in
    door_user, door_token = sign_up(Rest(gateway))
    roles = admin.ok("POST", f"/v1/users/{door_user['id']}:grantRole", {"role": "ROLE_SCANNER"})["roles"]
    assert roles == ["ROLE_CUSTOMER", "ROLE_SCANNER"]
    door = Rest(gateway, door_token)
    config = door.ok("GET", f"/v1/cinemas/{showtime.cinema_id}/scannerConfig")
    assert config["keys"] and config["admission_window_minutes"] == 60
    scan = door.ok(
        "POST", f"/v1/showtimes/{showtime.id}/admissions:checkIn", {"code": ticket_pass["code"], "door_id": "main"}
    )
    assert (scan["verdict"], scan["seat_label"]) == ("SCAN_VERDICT_ADMITTED", "D1")
    offline = {
        "client_scan_id": "1",
        "showtime_id": showtime.id,
        "code": reissued["code"],
        "door_id": "side",
        "scan_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    uploaded = door.ok(
        "POST", "/v1/scans:upload", {"device_id": "tablet", "scans": [offline, {**offline, "client_scan_id": "2"}]}
    )
    assert [s["verdict"] for s in uploaded["scans"]] == ["SCAN_VERDICT_ADMITTED", "SCAN_VERDICT_ALREADY_USED"]
    assert (uploaded["admitted"], uploaded["duplicates"]) == (1, 1)
    refused = door.call("POST", f"/v1/tickets/{first}/admission:undo", {"reason": "mistake"})
    assert refused.status_code == 403
    undone = admin.ok("POST", f"/v1/tickets/{first}/admission:undo", {"reason": "mistake"})
    assert undone["undone_by"] and undone["door_id"] == "main"

    report = admin.ok("GET", f"/v1/showtimes/{showtime.id}/admissions")
    assert (report["tickets"], report["admitted"], report["not_admitted"], report["undone"]) == (2, 1, 1, 1)
    assert report["refused"] == [{"verdict": "SCAN_VERDICT_ALREADY_USED", "scans": 1}]
    occupancy = admin.ok("GET", f"/v1/showtimes/{showtime.id}/occupancy")
    assert (occupancy["sold"], occupancy["admitted"], occupancy["no_shows"]) == (2, 1, 0)


def test_staff_write_over_rest_and_a_request_id_round_trip(gateway: str, admin_token: str, db: Db) -> None:
    admin = Rest(gateway, admin_token)
    cinema = admin.ok(
        "POST", "/v1/cinemas", {"cinema": {"name": "Rialto", "time_zone": "Europe/Rome", "currency_code": "EUR"}}
    )
    hall = admin.ok(
        "POST",
        f"/v1/cinemas/{cinema['id']}/halls",
        {"name": "Sala 1", "layout": {"rows": [{"label": "A", "columns": 8, "kind": "SEAT_KIND_PREMIUM"}]}},
        headers={"X-Request-Id": "partner-req-42"},
    )
    assert hall["cinema_id"] == cinema["id"] and hall["seat_count"] == 8
    assert {s["kind"] for s in hall["seats"]} == {"SEAT_KIND_PREMIUM"}
    again = admin.call("GET", f"/v1/halls/{hall['id']}", headers={"X-Request-Id": "partner-req-43"})
    assert again.headers["X-Request-Id"] == "partner-req-43"  # the id the server logged the call under
    assert admin.call("GET", f"/v1/halls/{hall['id']}").headers["X-Request-Id"]  # one is made up when none is sent


def test_errors_carry_status_codes_and_google_rpc_details(gateway: str, sale: Sale, db: Db) -> None:
    public = Rest(gateway)
    _, token = sign_up(public)
    ana = Rest(gateway, token)

    missing = ana.call("GET", f"/v1/holds/{uuid.uuid4()}", headers={"X-Request-Id": "lost-hold"})
    assert missing.status_code == 404
    body = missing.json()
    assert body["code"] == 5 and body["message"] == body["error"]
    assert detail(body, "ErrorInfo") == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "HOLD_NOT_FOUND",
        "domain": "cinema",
        "metadata": detail(body, "ErrorInfo")["metadata"],
    }
    assert missing.headers["X-Request-Id"] == "lost-hold"

    anonymous = public.call("POST", f"/v1/showtimes/{sale.showtime.id}/holds", {"seat_ids": sale.seats("A3")})
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == 16
    assert detail(anonymous.json(), "ErrorInfo")["reason"] == "AUTHENTICATION_REQUIRED"
    forged = Rest(gateway, "not.a.jwt").call("GET", "/v1/users/me")
    assert forged.status_code == 401 and detail(forged.json(), "ErrorInfo")["reason"] == "TOKEN_INVALID"
    customer_only = ana.call(
        "POST", "/v1/cinemas", {"cinema": {"name": "X", "time_zone": "UTC", "currency_code": "EUR"}}
    )
    assert customer_only.status_code == 403
    assert detail(customer_only.json(), "ErrorInfo")["reason"] == "PERMISSION_DENIED"

    bad = public.call("POST", "/v1/users:register", {"email": "not-an-email", "password": PASSWORD, "display_name": ""})
    assert bad.status_code == 400
    assert detail(bad.json(), "ErrorInfo")["reason"] == "VALIDATION_FAILED"
    violations = {v["field"]: v for v in detail(bad.json(), "BadRequest")["field_violations"]}
    assert violations["email"]["reason"] == "INVALID_FORMAT"  # FieldViolation.reason survives the gateway
    assert violations["email"]["description"]
    assert violations["display_name"]["reason"] == "REQUIRED"

    ana.ok("POST", f"/v1/showtimes/{sale.showtime.id}/holds", {"seat_ids": sale.seats("A3")})
    taken = ana.call("POST", f"/v1/showtimes/{sale.showtime.id}/holds", {"seat_ids": sale.seats("A3", "A4")})
    assert taken.status_code == 412 and taken.json()["code"] == 9  # FAILED_PRECONDITION
    assert detail(taken.json(), "ErrorInfo")["reason"] == "SEAT_ALREADY_TAKEN"
    violations = detail(taken.json(), "PreconditionFailure")["violations"]
    assert [v["subject"] for v in violations] == [f"seats/{seat}" for seat in sale.seats("A3")]

    # malformed input never reaches the server: the gateway answers itself
    broken = public.call("POST", "/v1/sessions", data=b'{"email": ', headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["code"] == 3
    # unknown JSON fields are ignored (v1.6.4's default), so a misspelt field is a missing one
    misspelt = public.call("POST", "/v1/sessions", {"mail": "a@b.c", "password": PASSWORD})
    assert misspelt.status_code == 400
    assert detail(misspelt.json(), "BadRequest")["field_violations"][0]["field"] == "email"
    assert public.call("GET", "/v1/nowhere").status_code == 404


def test_a_spoofed_x_forwarded_for_does_not_reach_the_login_throttle(gateway: str, db: Db) -> None:
    public = Rest(gateway)
    wrong = {"email": "nobody@example.com", "password": "not the password at all"}
    for headers in ({"X-Forwarded-For": "203.0.113.9"}, {"Grpc-Metadata-X-Forwarded-For": "203.0.113.10"}):
        refused = public.call("POST", "/v1/sessions", wrong, headers=headers)
        assert refused.status_code == 401
        assert detail(refused.json(), "ErrorInfo")["reason"] == "INVALID_CREDENTIALS"
    # the gateway is believed (serve's key) and names the real client, here this machine
    records = set(db.execute("SELECT account, address FROM identity.sign_in_records"))
    assert records == {("nobody@example.com", "127.0.0.1"), ("", "127.0.0.1")}
    # a client at another address (127.0.0.2 reaches the gateway's 127.0.0.1 too) is told apart
    url = urllib.parse.urlsplit(gateway)
    other = http.client.HTTPConnection(url.hostname or "", url.port, timeout=TIMEOUT, source_address=("127.0.0.2", 0))
    other.request("POST", "/v1/sessions", json.dumps(wrong), {"Content-Type": "application/json"})
    assert other.getresponse().status == 401
    other.close()
    addresses = {row[0] for row in db.execute("SELECT address FROM identity.sign_in_records")}
    assert addresses == {"127.0.0.1", "127.0.0.2"}


def test_seat_availability_streams_as_newline_delimited_json(gateway: str, sale: Sale, db: Db) -> None:
    public = Rest(gateway)
    _, token = sign_up(public)
    ana = Rest(gateway, token)
    with requests.get(
        f"{gateway}/v1/showtimes/{sale.showtime.id}/seats:watch", stream=True, timeout=(TIMEOUT, TIMEOUT)
    ) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        snapshot = json.loads(next(lines))["result"]["snapshot"]
        assert snapshot["showtime_id"] == sale.showtime.id and len(snapshot["seats"]) == 60
        held = ana.ok("POST", f"/v1/showtimes/{sale.showtime.id}/holds", {"seat_ids": sale.seats("D1", "D2")})
        changes = json.loads(next(lines))["result"]["changes"]
        assert int(changes["version"]) == int(snapshot["version"]) + 1
        assert {c["seat_id"]: c["state"] for c in changes["changes"]} == dict.fromkeys(
            sale.seats("D1", "D2"), "SEAT_STATE_HELD"
        )
        ana.ok("POST", f"/v1/holds/{held['id']}:release", {})
        released = json.loads(next(lines))["result"]["changes"]
        assert {c["state"] for c in released["changes"]} == {"SEAT_STATE_FREE"}

    # an error before the first message: the HTTP status says it
    missing = requests.get(f"{gateway}/v1/showtimes/{uuid.uuid4()}/seats:watch", timeout=TIMEOUT)
    assert missing.status_code == 404
    error = json.loads(missing.text.splitlines()[0])  # the envelope of every other error
    assert error["code"] == 5 and error["message"] == error["error"] and "grpc_code" not in error
    assert detail(error, "ErrorInfo")["reason"] == "SHOWTIME_NOT_FOUND"


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    return embedded_server_env(tmp_path)


def test_serve_with_gateway_runs_and_stops_both(gateway_binary: Path, embedded_env: dict[str, str]) -> None:
    """`cinema-grpc serve --gateway`: REST answers on the gateway port; SIGTERM stops both."""
    port = int(embedded_env["CINEMA_GRPC_PORT"])
    http_port = free_port()
    process = subprocess.Popen(
        [str(BIN / "cinema-grpc"), "serve", "--gateway", "--gateway-port", str(http_port)],
        env=embedded_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        wait_until_serving(port, process, timeout=180)  # builds build/gateway first if needed
        deadline = time.monotonic() + 30
        while True:
            try:
                cinemas = requests.get(f"http://127.0.0.1:{http_port}/v1/cinemas", timeout=TIMEOUT)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.2)
        assert cinemas.status_code == 200 and cinemas.json() == {"cinemas": [], "next_page_token": ""}
        docs = requests.get(
            f"http://127.0.0.1:{http_port}/openapi/cinema/screening/v1/screening.swagger.json", timeout=TIMEOUT
        )
        assert docs.status_code == 200 and docs.json()["swagger"] == "2.0"
        process.send_signal(signal.SIGTERM)
        status = process.wait(60)
        assert status == 0, process.stderr.read() if process.stderr else status
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{http_port}/v1/cinemas", timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_serve_refuses_gateway_flags_without_gateway() -> None:
    refused = subprocess.run(
        [str(BIN / "cinema-grpc"), "serve", "--gateway-port", "9000"], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2 and "need --gateway" in refused.stderr
    bad_port = subprocess.run(
        [str(BIN / "cinema-grpc"), "serve", "--gateway", "--gateway-port", "70000"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad_port.returncode == 2 and "invalid port 70000" in bad_port.stderr
    helped = subprocess.run([str(BIN / "cinema-grpc"), "gateway", "build", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--out DIR" in helped.stdout


@pytest.fixture
def strict_gateway(gateway_binary: Path, address: str) -> Iterator[GatewayProcess]:
    """A gateway with short limits (the defaults are 30 s, 30 s, 120 s and 1 MiB)."""
    flags = ["-read-timeout", "1s", "-write-timeout", "1s", "-idle-timeout", "1s", "-max-body-bytes", "4096"]
    process = GatewayProcess(gateway_binary)
    process.start(address, "127.0.0.1", free_port(), None, flags=flags)
    yield process
    process.stop()


def _envelope(raw: bytes) -> dict[str, Any]:
    """The JSON error body of a raw HTTP/1.1 response."""
    body: dict[str, Any] = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    return body


def test_a_client_that_sends_its_body_slowly_is_cut_off(strict_gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", strict_gateway.http_port), timeout=10) as client:
        client.sendall(
            b"POST /v1/sessions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"email": '
        )
        started = time.monotonic()
        answer = b""
        while chunk := client.recv(65536):  # the gateway closes the connection
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 0.9 < waited < 5
    body = _envelope(answer)
    assert body["code"] == 4 and detail(body, "ErrorInfo")["reason"] == "REQUEST_BODY_TIMEOUT"


def test_a_body_over_the_limit_gets_413_with_the_json_error_envelope(strict_gateway: GatewayProcess) -> None:
    too_large = b'{"email": "' + b"a" * 5000 + b'"}'
    declared = requests.post(f"{strict_gateway.url}/v1/sessions", data=too_large, timeout=TIMEOUT)
    chunked = requests.post(f"{strict_gateway.url}/v1/sessions", data=iter([too_large]), timeout=TIMEOUT)
    for refused in (declared, chunked):
        assert refused.status_code == 413
        assert refused.headers["Content-Type"] == "application/json"
        body = refused.json()
        assert body["code"] == 8  # RESOURCE_EXHAUSTED
        info = detail(body, "ErrorInfo")
        assert (info["reason"], info["metadata"]) == ("REQUEST_TOO_LARGE", {"limit_bytes": "4096"})


def test_an_idle_keep_alive_connection_is_closed(strict_gateway: GatewayProcess) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", strict_gateway.http_port, timeout=10)
    connection.request("GET", "/v1/cinemas")
    answer = connection.getresponse()
    assert answer.status == 200 and answer.getheader("Connection") != "close"
    answer.read()
    assert connection.sock is not None
    started = time.monotonic()
    assert connection.sock.recv(1) == b""  # closed by the gateway
    assert time.monotonic() - started < 5
    connection.close()


def test_a_watch_stream_outlives_the_read_and_write_timeouts(strict_gateway: GatewayProcess, sale: Sale) -> None:
    _, token = sign_up(Rest(strict_gateway.url))
    ana = Rest(strict_gateway.url, token)
    watch = f"{strict_gateway.url}/v1/showtimes/{sale.showtime.id}/seats:watch"
    with requests.get(watch, stream=True, timeout=(TIMEOUT, TIMEOUT)) as stream:
        lines = stream.iter_lines()
        snapshot = json.loads(next(lines))["result"]["snapshot"]
        time.sleep(2.5)  # longer than both timeouts, with nothing to send
        ana.ok("POST", f"/v1/showtimes/{sale.showtime.id}/holds", {"seat_ids": sale.seats("D1")})
        changes = json.loads(next(lines))["result"]["changes"]
    assert int(changes["version"]) == int(snapshot["version"]) + 1


def test_the_gateway_serves_https_and_reaches_a_tls_grpc_server(
    gateway_binary: Path, server_settings: Settings, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    running = RunningServer(server_settings.model_copy(update={"tls_cert_file": cert, "tls_key_file": key}))
    try:
        with GatewayProcess(gateway_binary) as process:
            process.start(f"127.0.0.1:{running.port}", "127.0.0.1", free_port(), None, grpc_ca=cert, tls=(cert, key))
            assert process.url.startswith("https://")
            cinemas = requests.get(f"{process.url}/v1/cinemas", verify=str(cert), timeout=TIMEOUT)
            assert cinemas.status_code == 200 and "cinemas" in cinemas.json()
            with pytest.raises(requests.exceptions.SSLError):
                requests.get(f"{process.url}/v1/cinemas", timeout=TIMEOUT)  # the system does not trust it
    finally:
        running.stop()


def test_every_gateway_error_is_the_json_envelope_with_a_reason(gateway: str, gateway_binary: Path) -> None:
    public = Rest(gateway)

    def reason(response: requests.Response, status: int, code: int) -> str:
        assert response.status_code == status, response.text
        assert response.headers["Content-Type"] == "application/json"
        body = response.json()
        assert body["code"] == code and body["message"] == body["error"], body
        return str(detail(body, "ErrorInfo")["reason"])

    broken = public.call("POST", "/v1/sessions", data=b'{"email": ', headers={"Content-Type": "application/json"})
    assert reason(broken, 400, 3) == "INVALID_JSON"
    assert broken.json()["message"].startswith("the request body is not valid JSON")
    assert reason(public.call("GET", "/v1/showtimes", params={"page_size": "many"}), 400, 3) == "INVALID_PARAMETER"
    assert reason(public.call("GET", "/v1/nowhere"), 404, 5) == "ROUTE_NOT_FOUND"
    assert reason(public.call("DELETE", "/v1/cinemas"), 405, 12) == "METHOD_NOT_ALLOWED"
    assert reason(requests.get(f"{gateway}/openapi/cinema/nothing.json", timeout=TIMEOUT), 404, 5) == "ROUTE_NOT_FOUND"
    refused = requests.post(f"{gateway}/openapi/cinema/booking/v1/booking.swagger.json", timeout=TIMEOUT)
    assert reason(refused, 405, 12) == "METHOD_NOT_ALLOWED"

    orphan = GatewayProcess(gateway_binary)  # in front of a port where no server listens
    orphan.start(f"127.0.0.1:{free_port()}", "127.0.0.1", free_port(), None)
    try:
        down = requests.get(f"{orphan.url}/v1/cinemas", timeout=TIMEOUT)
        assert reason(down, 503, 14) == "BACKEND_UNAVAILABLE"
    finally:
        orphan.stop()


def test_json_omits_unset_messages_keeps_zero_values_and_writes_html_characters_as_is(
    gateway: str, admin_token: str, sale: Sale
) -> None:
    admin = Rest(gateway, admin_token)
    movie = admin.call("POST", "/v1/movies", {"movie": {"title": "Cats <& Dogs>", "duration_minutes": 90}})
    assert movie.status_code == 200, movie.text
    assert '"title":"Cats <& Dogs>"' in movie.text and "\\u003c" not in movie.text
    assert movie.json()["rating"] == "" and movie.json()["active"] is False  # zero values stay

    _, token = sign_up(Rest(gateway))
    held = Rest(gateway, token).ok("POST", f"/v1/showtimes/{sale.showtime.id}/holds", {"seat_ids": sale.seats("B1")})
    assert "payment_deadline" not in held and held["keep_until"] == held["expire_time"]  # no payment in flight
    assert held["ended_by"] == "" and held["seat_map_version"] != "0"

    bad = Rest(gateway).call("POST", "/v1/users:register", {"email": "nope", "password": PASSWORD, "display_name": ""})
    violations = detail(bad.json(), "BadRequest")["field_violations"]
    assert violations and all("localized_message" not in v for v in violations)
    assert "null" not in bad.text


def test_openapi_documents_say_what_the_api_is_and_how_to_authenticate(gateway: str) -> None:
    booking = requests.get(f"{gateway}/openapi/cinema/booking/v1/booking.swagger.json", timeout=TIMEOUT).json()
    assert booking["info"]["title"] == "cinema.booking.v1.BookingService"
    assert booking["info"]["version"] == "v1"
    assert booking["info"]["description"].startswith("Seat holds, bookings with tickets")
    assert booking["securityDefinitions"]["bearer"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": booking["securityDefinitions"]["bearer"]["description"],
    }
    assert booking["security"] == [{"bearer": []}]
    paths = booking["paths"]
    assert paths["/v1/showtimes/{showtime_id}/seats"]["get"]["security"] == []  # public: no token needed
    assert "security" not in paths["/v1/showtimes/{showtime_id}/holds"]["post"]  # the document's bearer scheme
    identity = requests.get(f"{gateway}/openapi/cinema/identity/v1/identity.swagger.json", timeout=TIMEOUT).json()
    assert identity["paths"]["/v1/sessions"]["post"]["security"] == []  # Login
