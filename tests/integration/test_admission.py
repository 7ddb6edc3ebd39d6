"""Admission at the door over a real channel and PostgreSQL: passes, offline verification,
check-in once per ticket (also under 50 concurrent scans across two replicas), every refusal
with its own verdict, staff undo, offline uploads with duplicates, and the reports."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import timestamp_pb2
from google.type import date_pb2
from pydantic import SecretStr

from cinema.admission.v1 import admission_pb2 as apb
from cinema.admission.v1.admission_pb2_grpc import AdmissionServiceStub
from cinema.booking.v1 import booking_pb2 as bpb
from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.identity.v1 import identity_pb2 as ipb
from cinema.identity.v1.identity_pb2_grpc import IdentityServiceStub
from cinema.reports.v1 import reports_pb2 as rpb
from cinema.reports.v1.reports_pb2_grpc import ReportsServiceStub
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.ticket_codes import new_private_key
from cinema_grpc.services.metrics import REGISTRY
from cinema_grpc.settings import Settings
from tests.auth_client import PASSWORD, register, with_token
from tests.booking_data import Customer, Sale, hold, open_sale
from tests.conftest import RunningServer, _libpq
from tests.rpc_errors import call_fails, failure
from tests.screening_data import CINEMA_TIME_ZONE

Db = psycopg.Connection[tuple[object, ...]]


@dataclass
class Door:
    """A signed-in scanner account at a door."""

    admission: AdmissionServiceStub
    user_id: str
    token: str


def sell(who: Customer, clerk: Customer, sale: Sale, *labels: str) -> bpb.Booking:
    held = hold(who, sale, *labels)
    return clerk.booking.SellHoldAtCounter(
        bpb.SellHoldAtCounterRequest(hold_id=held.id, payment=bpb.COUNTER_PAYMENT_CASH, request_id=str(uuid.uuid4()))
    )


def admission_of(who: Customer, channel: grpc.Channel) -> AdmissionServiceStub:
    return AdmissionServiceStub(with_token(channel, who.token))


def a_pass(who: Customer, channel: grpc.Channel, ticket_id: str) -> apb.TicketPass:
    return admission_of(who, channel).GetTicketPass(apb.GetTicketPassRequest(ticket_id=ticket_id))


def check_in(door: Door, sale: Sale, code: str, door_id: str = "left", **extra: str) -> apb.Scan:
    return door.admission.CheckInTicket(
        apb.CheckInTicketRequest(showtime_id=sale.showtime.id, code=code, door_id=door_id, **extra)
    )


@pytest.fixture
def door(channel: grpc.Channel, admin_channel: grpc.Channel, db: Db) -> Door:
    """A scanner account, made the way an admin makes one: GrantRole(ROLE_SCANNER)."""
    user = register(channel)
    IdentityServiceStub(admin_channel).GrantRole(ipb.GrantRoleRequest(user_id=user.id, role=ipb.ROLE_SCANNER))
    token = IdentityServiceStub(channel).Login(ipb.LoginRequest(email=user.email, password=PASSWORD)).access_token
    return Door(AdmissionServiceStub(with_token(channel, token)), user.id, token)


@pytest.fixture
def soon(screening: ScreeningServiceStub) -> Sale:
    """A showtime starting within the hour: its doors are open."""
    return open_sale(screening, soon=True, cinema_name="Soon")


def scanner_config(door: Door, sale: Sale, moment: datetime) -> apb.ScannerConfig:
    """The configuration of the cinema's local day of ``moment``."""
    day = moment.astimezone(ZoneInfo(CINEMA_TIME_ZONE)).date()
    return door.admission.GetScannerConfig(
        apb.GetScannerConfigRequest(
            cinema_id=sale.showtime.cinema_id, date=date_pb2.Date(year=day.year, month=day.month, day=day.day)
        )
    )


def scans_counted(verdict: str) -> float:
    return REGISTRY.get_sample_value("cinema_door_scans_total", {"verdict": verdict, "offline": "false"}) or 0.0


def scans(db: Db) -> list[tuple[object, ...]]:
    return db.execute("SELECT verdict, door_id, device_id FROM admission.scans ORDER BY recorded_at, id").fetchall()


def verify_offline(config: apb.ScannerConfig, code: str) -> tuple[str, str, str, int]:
    """What a scanner does without the server: the layout of docs/operations.md, checked with
    the public keys of the configuration. Returns (ticket id, showtime id, seat, issue)."""
    raw = base64.b32decode(code + "=" * (-len(code) % 8))
    payload, signature = raw[:-64], raw[-64:]
    key = next(k for k in config.keys if k.key_id == payload[1:5].hex())
    Ed25519PublicKey.from_public_bytes(key.public_key).verify(signature, b"cinema-ticket-code:" + payload)
    issue, length = int.from_bytes(payload[37:39], "big"), payload[39]
    return (
        str(uuid.UUID(bytes=payload[5:21])),
        str(uuid.UUID(bytes=payload[21:37])),
        payload[40 : 40 + length].decode(),
        issue,
    )


def test_a_pass_verifies_offline_and_admits_once_then_says_when_and_where_it_was_used(
    ana: Customer, clerk: Customer, soon: Sale, door: Door, channel: grpc.Channel, db: Db
) -> None:
    booking = sell(ana, clerk, soon, "F5")
    ticket = booking.tickets[0]
    ticket_pass = a_pass(ana, channel, ticket.id)
    assert ticket_pass.qr_png.startswith(b"\x89PNG\r\n\x1a\n")
    assert ticket_pass.movie_title and ticket_pass.cinema_name == "Soon"
    assert (ticket_pass.hall_name, ticket_pass.row_label, ticket_pass.seat_number) == ("Main", "F", 5)
    assert ticket_pass.price == ticket.seat.price and ticket_pass.issue == 1
    start = ticket_pass.start_time.ToDatetime(tzinfo=UTC).astimezone(ZoneInfo(ticket_pass.time_zone))
    assert ticket_pass.local_start_time == start.strftime("%Y-%m-%d %H:%M")
    # Staff see any pass; another customer does not learn the ticket exists.
    assert a_pass(clerk, channel, ticket.id).code == ticket_pass.code

    config = scanner_config(door, soon, start)
    assert [s.showtime_id for s in config.showtimes] == [soon.showtime.id]
    assert verify_offline(config, ticket_pass.code) == (ticket.id, soon.showtime.id, "F5", 1)
    assert [k.current for k in config.keys if k.key_id == ticket_pass.key_id] == [True]

    first = check_in(door, soon, ticket_pass.code, "left")
    assert (first.verdict, first.ticket_id, first.seat_label) == (apb.SCAN_VERDICT_ADMITTED, ticket.id, "F5")
    again = check_in(door, soon, ticket_pass.code.lower(), "right")
    assert again.verdict == apb.SCAN_VERDICT_ALREADY_USED
    assert again.first_admission.door_id == "left"
    assert again.first_admission.admit_time == first.scan_time
    assert again.first_admission.scanner_id == door.user_id
    assert scans(db) == [("ADMITTED", "left", "online"), ("ALREADY_USED", "right", "online")]
    # Once used at the door, a pass is not re-issued.
    refused = call_fails(
        admission_of(ana, channel).ReissueTicketPass, apb.ReissueTicketPassRequest(ticket_id=ticket.id)
    )
    assert refused.reason == "TICKET_ALREADY_ADMITTED"


def test_another_customer_cannot_see_a_pass(
    ana: Customer, ben: Customer, clerk: Customer, soon: Sale, channel: grpc.Channel
) -> None:
    ticket = sell(ana, clerk, soon, "F5").tickets[0]
    failed = call_fails(admission_of(ben, channel).GetTicketPass, apb.GetTicketPassRequest(ticket_id=ticket.id))
    assert failed.reason == "TICKET_NOT_FOUND"


def test_each_refusal_has_its_own_verdict_and_every_scan_is_recorded(
    ana: Customer,
    clerk: Customer,
    soon: Sale,
    screening: ScreeningServiceStub,
    door: Door,
    channel: grpc.Channel,
    db: Db,
) -> None:
    later = open_sale(screening, hours_ahead=30, cinema_name="Later")
    soon_tickets = [t.id for t in sell(ana, clerk, soon, "F1", "F2", "F3").tickets]
    later_ticket = sell(ana, clerk, later, "F1").tickets[0].id
    codes = {t: a_pass(ana, channel, t).code for t in [*soon_tickets, later_ticket]}

    # Forged: garbage, and a genuine code with one character changed.
    code = codes[soon_tickets[0]]
    altered = code[:20] + ("A" if code[20] != "A" else "B") + code[21:]
    assert check_in(door, soon, "HELLO").verdict == apb.SCAN_VERDICT_FORGED
    assert check_in(door, soon, altered).verdict == apb.SCAN_VERDICT_FORGED
    # A ticket of another showtime, at this door; and at its own door long before it starts.
    assert check_in(door, soon, codes[later_ticket]).verdict == apb.SCAN_VERDICT_WRONG_SHOWTIME
    assert check_in(door, later, codes[later_ticket]).verdict == apb.SCAN_VERDICT_TOO_EARLY
    # Re-issued: the old code is superseded, the new one admits.
    reissued = admission_of(ana, channel).ReissueTicketPass(
        apb.ReissueTicketPassRequest(ticket_id=soon_tickets[1], reason="screenshot shared")
    )
    assert reissued.issue == 2 and reissued.code != codes[soon_tickets[1]]
    assert check_in(door, soon, codes[soon_tickets[1]]).verdict == apb.SCAN_VERDICT_SUPERSEDED
    assert check_in(door, soon, reissued.code).verdict == apb.SCAN_VERDICT_ADMITTED
    # Cancelled (refunded): neither a pass nor entry.
    third = sell(ana, clerk, soon, "E1").tickets[0].id
    codes[third] = a_pass(ana, channel, third).code
    booking_id = db.execute("SELECT booking_id FROM booking.seat_claims WHERE id = %s", (third,)).fetchone()
    assert booking_id is not None
    clerk.booking.ForceCancelBooking(bpb.ForceCancelBookingRequest(booking_id=str(booking_id[0]), reason="refund"))
    failed = call_fails(admission_of(ana, channel).GetTicketPass, apb.GetTicketPassRequest(ticket_id=third))
    assert failed.reason == "TICKET_NOT_VALID"
    assert check_in(door, soon, codes[third]).verdict == apb.SCAN_VERDICT_CANCELLED
    # The configuration tells offline scanners which codes stopped admitting.
    config = scanner_config(door, soon, soon.showtime.start_time.ToDatetime(tzinfo=UTC))
    assert {(r.ticket_id, r.valid_issue) for r in config.revoked_tickets} == {(soon_tickets[1], 2), (third, 0)}
    # Ended: the showtime is over.
    db.execute(
        "UPDATE screening.showtimes SET starts_at = now() - interval '3 hours', ends_at = now() - interval '1 hour',"
        " busy_until = now() - interval '30 minutes' WHERE id = %s",
        (soon.showtime.id,),
    )
    assert check_in(door, soon, codes[soon_tickets[0]]).verdict == apb.SCAN_VERDICT_ENDED

    assert [row[0] for row in scans(db)] == [
        "FORGED",
        "FORGED",
        "WRONG_SHOWTIME",
        "TOO_EARLY",
        "SUPERSEDED",
        "ADMITTED",
        "CANCELLED",
        "ENDED",
    ]
    report = ReportsServiceStub(with_token(channel, clerk.token))
    admissions = report.GetShowtimeAdmissions(rpb.GetShowtimeAdmissionsRequest(showtime_id=soon.showtime.id))
    assert (admissions.tickets, admissions.admitted, admissions.not_admitted, admissions.ended) == (3, 1, 2, True)
    assert {(c.verdict, c.scans) for c in admissions.refused} == {
        (apb.SCAN_VERDICT_FORGED, 2),
        (apb.SCAN_VERDICT_WRONG_SHOWTIME, 1),
        (apb.SCAN_VERDICT_SUPERSEDED, 1),
        (apb.SCAN_VERDICT_CANCELLED, 1),
        (apb.SCAN_VERDICT_ENDED, 1),
    }


def test_staff_undo_an_admission_with_a_reason_and_the_ticket_admits_again(
    ana: Customer, clerk: Customer, soon: Sale, door: Door, channel: grpc.Channel, db: Db
) -> None:
    ticket = sell(ana, clerk, soon, "C3").tickets[0]
    code = a_pass(ana, channel, ticket.id).code
    assert check_in(door, soon, code).verdict == apb.SCAN_VERDICT_ADMITTED
    # A scanner may not undo; staff may, and must say why.
    refused = call_fails(door.admission.UndoAdmission, apb.UndoAdmissionRequest(ticket_id=ticket.id, reason="x"))
    assert refused.code is grpc.StatusCode.PERMISSION_DENIED
    staff = admission_of(clerk, channel)
    missing = call_fails(staff.UndoAdmission, apb.UndoAdmissionRequest(ticket_id=ticket.id))
    assert missing.fields == {"reason": "REQUIRED"}
    undone = staff.UndoAdmission(apb.UndoAdmissionRequest(ticket_id=ticket.id, reason="scanned the wrong phone"))
    assert (undone.undone_by, undone.undo_reason, undone.door_id) == (clerk.user.id, "scanned the wrong phone", "left")
    assert undone.HasField("undo_time")
    assert check_in(door, soon, code, "right").verdict == apb.SCAN_VERDICT_ADMITTED
    gone = call_fails(staff.UndoAdmission, apb.UndoAdmissionRequest(ticket_id=str(uuid.uuid4()), reason="x"))
    assert gone.reason == "ADMISSION_NOT_FOUND"
    # The undone admission is kept, and the database refuses to rewrite it.
    assert db.execute(
        "SELECT count(*), count(undone_at) FROM admission.admissions WHERE ticket_id = %s", (ticket.id,)
    ).fetchone() == (2, 1)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("UPDATE admission.admissions SET undo_reason = 'nothing happened'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("DELETE FROM admission.scans")


def test_two_staff_undoing_one_admission_at_once_undo_it_once_and_the_other_is_told_it_is_gone(
    ana: Customer, clerk: Customer, soon: Sale, door: Door, channel: grpc.Channel, db: Db, database_url: str
) -> None:
    ticket = sell(ana, clerk, soon, "C4").tickets[0]
    assert check_in(door, soon, a_pass(ana, channel, ticket.id).code).verdict == apb.SCAN_VERDICT_ADMITTED
    staff = admission_of(clerk, channel)
    # Both undos read the admission, then wait at its row, held here, so both write after reading.
    with psycopg.connect(_libpq(database_url)) as holder:
        holder.execute("SELECT 1 FROM admission.admissions WHERE ticket_id = %s FOR UPDATE", (ticket.id,))
        with ThreadPoolExecutor(2) as pool:
            calls = [
                pool.submit(staff.UndoAdmission.with_call, apb.UndoAdmissionRequest(ticket_id=ticket.id, reason=why))
                for why in ("wrong phone", "scanned twice")
            ]
            deadline = time.monotonic() + 20
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s"
            while db.execute(waiting, ("UPDATE admission.admissions%",)).fetchone() != (2,):
                assert time.monotonic() < deadline, "the undos never reached the admission's row"
                time.sleep(0.05)
            holder.commit()
            outcomes = []
            for call in calls:
                try:
                    call.result()
                    outcomes.append("OK")
                except grpc.RpcError as exc:
                    outcomes.append(failure(exc).reason)
    assert sorted(outcomes) == ["ADMISSION_NOT_FOUND", "OK"]
    assert db.execute(
        "SELECT count(*), count(undone_at) FROM admission.admissions WHERE ticket_id = %s", (ticket.id,)
    ).fetchone() == (1, 1)


def test_a_pass_is_reissued_a_limited_number_of_times(
    ana: Customer, clerk: Customer, soon: Sale, channel: grpc.Channel
) -> None:
    ticket = sell(ana, clerk, soon, "D7").tickets[0]
    stub = admission_of(ana, channel)
    issues = [stub.ReissueTicketPass(apb.ReissueTicketPassRequest(ticket_id=ticket.id)).issue for _ in range(10)]
    assert issues == list(range(2, 12))
    refused = call_fails(stub.ReissueTicketPass, apb.ReissueTicketPassRequest(ticket_id=ticket.id))
    assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TICKET_REISSUE_LIMIT")
    assert a_pass(ana, channel, ticket.id).issue == 11


def test_a_retried_check_in_gets_the_first_answer_not_already_used(
    ana: Customer, clerk: Customer, soon: Sale, door: Door, channel: grpc.Channel, db: Db
) -> None:
    ticket = sell(ana, clerk, soon, "D4").tickets[0]
    code = a_pass(ana, channel, ticket.id).code
    first = check_in(door, soon, code, device_id="gate-1", client_scan_id="s-1")
    retry = check_in(door, soon, code, device_id="gate-1", client_scan_id="s-1")
    assert first == retry and first.verdict == apb.SCAN_VERDICT_ADMITTED
    assert len(scans(db)) == 1


def test_a_client_scan_id_sent_again_with_another_code_is_refused_not_answered_with_the_first_verdict(
    ana: Customer, clerk: Customer, soon: Sale, door: Door, channel: grpc.Channel, db: Db
) -> None:
    admitted, other = (t.id for t in sell(ana, clerk, soon, "D5", "D6").tickets)
    first = check_in(door, soon, a_pass(ana, channel, admitted).code, device_id="gate-2", client_scan_id="s-1")
    assert first.verdict == apb.SCAN_VERDICT_ADMITTED
    # A device that reuses its scan ids (reset counter, second device with the same id) scans
    # another code: answering it ADMITTED from the first scan would let its holder in unchecked.
    forged = call_fails(door.admission.CheckInTicket, _check_in_request(soon, "ABC", "gate-2", "s-1"))
    assert (forged.code, forged.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CLIENT_SCAN_ID_REUSED")
    assert forged.fields == {"client_scan_id": "CLIENT_SCAN_ID_REUSED"}
    other_code = a_pass(ana, channel, other).code
    elsewhere = call_fails(door.admission.CheckInTicket, _check_in_request(soon, other_code, "gate-2", "s-1"))
    assert elsewhere.reason == "CLIENT_SCAN_ID_REUSED"
    # In an upload, the batch is refused whole, naming the scan.
    doors_open = soon.showtime.start_time.ToDatetime(tzinfo=UTC) - timedelta(hours=1)
    reused = apb.OfflineScan(
        client_scan_id="s-1",
        showtime_id=soon.showtime.id,
        code=other_code,
        door_id="left",
        scan_time=_at(max(doors_open, datetime.now(UTC) - timedelta(minutes=1))),
    )
    fresh = apb.OfflineScan(
        client_scan_id="s-2",
        showtime_id=soon.showtime.id,
        code=other_code,
        door_id="left",
        scan_time=reused.scan_time,
    )
    upload = call_fails(door.admission.UploadScans, apb.UploadScansRequest(device_id="gate-2", scans=[fresh, reused]))
    assert upload.fields == {"scans[1].client_scan_id": "CLIENT_SCAN_ID_REUSED"}
    assert len(scans(db)) == 1
    # The real retry still gets the first answer, the code's case and spaces aside.
    code = a_pass(ana, channel, admitted).code
    retried = check_in(door, soon, f" {code.lower()} ", device_id="gate-2", client_scan_id="s-1")
    assert retried == first


def _check_in_request(sale: Sale, code: str, device_id: str, client_scan_id: str) -> apb.CheckInTicketRequest:
    return apb.CheckInTicketRequest(
        showtime_id=sale.showtime.id, code=code, door_id="left", device_id=device_id, client_scan_id=client_scan_id
    )


def test_check_in_refuses_malformed_requests_by_field_and_records_nothing(soon: Sale, door: Door, db: Db) -> None:
    failed = call_fails(
        door.admission.CheckInTicket,
        apb.CheckInTicketRequest(showtime_id=soon.showtime.id, code="", door_id="x" * 65, client_scan_id="\x07"),
    )
    assert failed.fields == {"code": "REQUIRED", "door_id": "TOO_LONG", "client_scan_id": "INVALID_CHARACTERS"}
    unknown = call_fails(
        door.admission.CheckInTicket,
        apb.CheckInTicketRequest(showtime_id=str(uuid.uuid4()), code="ABC", door_id="left"),
    )
    assert unknown.reason == "SHOWTIME_NOT_FOUND"
    assert scans(db) == []


def _at(moment: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment)
    return ts


def test_offline_scans_upload_idempotently_and_tickets_used_twice_are_reported_as_duplicates(
    ana: Customer, clerk: Customer, soon: Sale, door: Door, channel: grpc.Channel, db: Db
) -> None:
    one, two, three = (t.id for t in sell(ana, clerk, soon, "B1", "B2", "B3").tickets)
    code = {t: a_pass(ana, channel, t).code for t in (one, two, three)}
    # Scans of the last minutes, all after the doors opened (an hour before the start).
    doors_open = soon.showtime.start_time.ToDatetime(tzinfo=UTC) - timedelta(hours=1)
    since = max(doors_open, datetime.now(UTC) - timedelta(minutes=10))

    def offline(client_scan_id: str, ticket: str, second: int, door_id: str = "left") -> apb.OfflineScan:
        return apb.OfflineScan(
            client_scan_id=client_scan_id,
            showtime_id=soon.showtime.id,
            code=code[ticket],
            door_id=door_id,
            scan_time=_at(since + timedelta(seconds=second)),
        )

    batch_a = apb.UploadScansRequest(
        device_id="tablet-a",
        scans=[offline("a1", one, 1), offline("a2", two, 2), offline("a3", one, 3)],
    )
    uploaded = door.admission.UploadScans(batch_a)
    assert [s.verdict for s in uploaded.scans] == [
        apb.SCAN_VERDICT_ADMITTED,
        apb.SCAN_VERDICT_ADMITTED,
        apb.SCAN_VERDICT_ALREADY_USED,
    ]
    assert (uploaded.admitted, uploaded.duplicates) == (2, 1)
    assert all(s.offline for s in uploaded.scans)
    assert uploaded.scans[0].scan_time == batch_a.scans[0].scan_time  # judged and admitted at its own time

    # Another device let ticket two in as well while offline: reported against tablet A's admission.
    batch_b = apb.UploadScansRequest(
        device_id="tablet-b", scans=[offline("a1", two, 4, "right"), offline("b2", three, 5, "right")]
    )
    other = door.admission.UploadScans(batch_b)
    assert [s.verdict for s in other.scans] == [apb.SCAN_VERDICT_ALREADY_USED, apb.SCAN_VERDICT_ADMITTED]
    assert other.duplicates == 1
    assert (other.scans[0].first_admission.device_id, other.scans[0].first_admission.door_id) == ("tablet-a", "left")

    # Uploading the same batch again (the answer was lost) changes nothing and answers the same.
    assert door.admission.UploadScans(batch_a) == uploaded
    assert len(scans(db)) == 5
    assert db.execute("SELECT count(*) FROM admission.admissions").fetchone() == (3,)


def test_an_upload_with_a_bad_scan_is_refused_whole_naming_the_scan(soon: Sale, door: Door, db: Db) -> None:
    now = datetime.now(UTC)
    good = apb.OfflineScan(
        client_scan_id="g", showtime_id=soon.showtime.id, code="ABC", door_id="left", scan_time=_at(now)
    )
    future = apb.OfflineScan(
        client_scan_id="f",
        showtime_id=soon.showtime.id,
        code="ABC",
        door_id="left",
        scan_time=_at(now + timedelta(hours=1)),
    )
    failed = call_fails(door.admission.UploadScans, apb.UploadScansRequest(device_id="t", scans=[good, future, good]))
    assert failed.fields == {"scans[1].scan_time": "OUT_OF_RANGE", "scans[2].client_scan_id": "DUPLICATE"}
    too_many = call_fails(door.admission.UploadScans, apb.UploadScansRequest(device_id="t", scans=[good] * 501))
    assert too_many.fields["scans"] == "TOO_MANY"
    assert scans(db) == []


def test_customers_cannot_scan_and_scanners_cannot_sell(
    ana: Customer, door: Door, soon: Sale, channel: grpc.Channel, db: Db
) -> None:
    denied = call_fails(
        admission_of(ana, channel).CheckInTicket,
        apb.CheckInTicketRequest(showtime_id=soon.showtime.id, code="ABC", door_id="left"),
    )
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED
    assert denied.metadata.get("required_role") == "SCANNER"
    # The scanner role reaches the door RPCs only: no counter sales, no reports.
    as_scanner = with_token(channel, door.token)
    sell_denied = call_fails(
        BookingServiceStub(as_scanner).SellHoldAtCounter,
        bpb.SellHoldAtCounterRequest(hold_id=str(uuid.uuid4()), payment=bpb.COUNTER_PAYMENT_CASH),
    )
    report_denied = call_fails(
        ReportsServiceStub(as_scanner).GetShowtimeAdmissions,
        rpb.GetShowtimeAdmissionsRequest(showtime_id=soon.showtime.id),
    )
    assert sell_denied.code is report_denied.code is grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture
def second_replica(server_settings: Settings) -> Iterator[RunningServer]:
    """Another server on the same database, as a second replica behind a load balancer."""
    running = RunningServer(server_settings)
    yield running
    running.stop()


def test_fifty_scans_of_one_code_at_once_across_two_replicas_admit_exactly_once(
    ana: Customer,
    clerk: Customer,
    soon: Sale,
    door: Door,
    channel: grpc.Channel,
    second_replica: RunningServer,
    db: Db,
) -> None:
    ticket = sell(ana, clerk, soon, "A5").tickets[0]
    code = a_pass(ana, channel, ticket.id).code
    counted_before = {verdict: scans_counted(verdict) for verdict in ("ADMITTED", "ALREADY_USED")}
    with grpc.insecure_channel(f"127.0.0.1:{second_replica.port}") as other:
        stubs = [AdmissionServiceStub(with_token(ch, door.token)) for ch in (channel, other)]
        start = threading.Barrier(50)

        def scan(i: int) -> apb.Scan:
            request = apb.CheckInTicketRequest(
                showtime_id=soon.showtime.id, code=code, door_id=f"door-{i % 2}", device_id=f"gate-{i}"
            )
            start.wait(30)
            for _ in range(5):
                try:
                    return stubs[i % 2].CheckInTicket(request, timeout=60)
                except grpc.RpcError as error:
                    # A gate retries a scan answered CONTENTION (ABORTED): on a loaded machine the
                    # 50 scans of one ticket, queued on its lock, can outlast the lock timeout.
                    # Such a scan wrote nothing (its transaction was rolled back).
                    if error.code() is not grpc.StatusCode.ABORTED:
                        raise
            raise AssertionError(f"scan {i} was answered CONTENTION five times")

        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(scan, range(50)))
    verdicts = [r.verdict for r in results]
    assert verdicts.count(apb.SCAN_VERDICT_ADMITTED) == 1
    assert verdicts.count(apb.SCAN_VERDICT_ALREADY_USED) == 49
    winner = next(r for r in results if r.verdict == apb.SCAN_VERDICT_ADMITTED)
    assert {r.first_admission.scan_id for r in results if r.verdict == apb.SCAN_VERDICT_ALREADY_USED} == {winner.id}
    assert db.execute("SELECT count(*) FROM admission.admissions").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM admission.scans").fetchone() == (50,)
    # Both replicas run in this process and count into one registry.
    assert scans_counted("ADMITTED") - counted_before["ADMITTED"] == 1
    assert scans_counted("ALREADY_USED") - counted_before["ALREADY_USED"] == 49


def test_two_devices_uploading_the_same_tickets_in_opposite_orders_at_once_admit_each_once(
    ana: Customer, ben: Customer, clerk: Customer, soon: Sale, door: Door, channel: grpc.Channel, db: Db
) -> None:
    tickets = [t.id for t in sell(ana, clerk, soon, *(f"B{n}" for n in range(1, 11))).tickets]
    tickets += [t.id for t in sell(ben, clerk, soon, *(f"C{n}" for n in range(1, 11))).tickets]
    code = {t: a_pass(clerk, channel, t).code for t in tickets}
    scanned_at = max(soon.showtime.start_time.ToDatetime(tzinfo=UTC) - timedelta(hours=1), datetime.now(UTC))

    def upload(device: str, ordered: list[str], start: threading.Barrier) -> apb.UploadScansResponse | str:
        request = apb.UploadScansRequest(
            device_id=device,
            scans=[
                apb.OfflineScan(
                    client_scan_id=t,
                    showtime_id=soon.showtime.id,
                    code=code[t],
                    door_id=device,
                    scan_time=_at(scanned_at),
                )
                for t in ordered
            ],
        )
        start.wait(30)
        try:
            return door.admission.UploadScans(request, timeout=60)
        except grpc.RpcError as exc:
            return f"{exc.code().name} {failure(exc).reason}"

    # Each round, two devices that were offline upload scans of the same four tickets, one
    # device in the other's reverse order: without one lock order they wait for each other.
    for round_ in range(5):
        both = tickets[4 * round_ : 4 * round_ + 4]
        start = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            left = pool.submit(upload, "tablet-left", both, start)
            right = pool.submit(upload, "tablet-right", both[::-1], start)
            uploads = [left.result(), right.result()]
        assert not [u for u in uploads if isinstance(u, str)], f"round {round_}: {uploads}"
        verdicts: dict[str, list[int]] = {t: [] for t in both}
        for uploaded in uploads:
            assert not isinstance(uploaded, str)
            for scan in uploaded.scans:
                verdicts[scan.ticket_id].append(scan.verdict)
        assert {t: sorted(v) for t, v in verdicts.items()} == {
            t: sorted([apb.SCAN_VERDICT_ADMITTED, apb.SCAN_VERDICT_ALREADY_USED]) for t in both
        }
        # The results come back in the order each device sent its scans.
        assert [s.ticket_id for s in uploads[0].scans] == both  # type: ignore[union-attr]
        assert [s.ticket_id for s in uploads[1].scans] == both[::-1]  # type: ignore[union-attr]
    admitted = db.execute("SELECT ticket_id::text, count(*) FROM admission.admissions GROUP BY ticket_id").fetchall()
    assert dict(admitted) == dict.fromkeys(tickets, 1)


def test_occupancy_counts_admitted_tickets_and_no_shows_once_the_showtime_ended(
    ana: Customer, clerk: Customer, soon: Sale, door: Door, channel: grpc.Channel, db: Db
) -> None:
    tickets = sell(ana, clerk, soon, "F7", "F8", "F9").tickets
    check_in(door, soon, a_pass(ana, channel, tickets[0].id).code)
    reports = ReportsServiceStub(with_token(channel, clerk.token))
    request = rpb.GetShowtimeOccupancyRequest(showtime_id=soon.showtime.id)
    during = reports.GetShowtimeOccupancy(request)
    assert (during.sold, during.admitted, during.no_shows) == (3, 1, 0)
    db.execute(
        "UPDATE screening.showtimes SET starts_at = now() - interval '3 hours', ends_at = now() - interval '1 hour',"
        " busy_until = now() - interval '30 minutes' WHERE id = %s",
        (soon.showtime.id,),
    )
    after = reports.GetShowtimeOccupancy(request)
    assert (after.sold, after.admitted, after.no_shows) == (3, 1, 2)


def test_after_a_key_rotation_passes_issued_before_still_admit_and_new_passes_use_the_new_key(
    ana: Customer, clerk: Customer, soon: Sale, door: Door, channel: grpc.Channel, server_settings: Settings
) -> None:
    before, after = (t.id for t in sell(ana, clerk, soon, "E5", "E6").tickets)
    old_pass = a_pass(ana, channel, before)
    old_key = base64.b64encode(
        next(k.public_key for k in scanner_config(door, soon, datetime.now(UTC)).keys if k.current)
    ).decode()
    rotated = RunningServer(
        server_settings.model_copy(
            update={
                "ticket_signing_key": SecretStr(new_private_key()),
                "ticket_retired_public_keys": old_key,
            }
        )
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{rotated.port}") as replaced:
            scanner = Door(AdmissionServiceStub(with_token(replaced, door.token)), door.user_id, door.token)
            config = scanner_config(scanner, soon, datetime.now(UTC))
            assert {k.key_id: k.current for k in config.keys} == {
                old_pass.key_id: False,
                next(k.key_id for k in config.keys if k.current): True,
            }
            new_pass = AdmissionServiceStub(with_token(replaced, ana.token)).GetTicketPass(
                apb.GetTicketPassRequest(ticket_id=after)
            )
            assert new_pass.key_id != old_pass.key_id
            assert check_in(scanner, soon, old_pass.code).verdict == apb.SCAN_VERDICT_ADMITTED
            assert check_in(scanner, soon, new_pass.code).verdict == apb.SCAN_VERDICT_ADMITTED
    finally:
        rotated.stop()
