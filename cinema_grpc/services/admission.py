"""cinema.admission.v1.AdmissionService: passes, scanner configuration, check-in at the door."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from google.type import date_pb2

from cinema.admission.v1 import admission_pb2 as pb
from cinema.admission.v1 import admission_pb2_grpc
from cinema_grpc.domain.admission import use_cases as uc
from cinema_grpc.domain.admission.model import (
    Admission,
    AdmissionRules,
    Scan,
    ScanVerdict,
    TicketCodec,
    TicketPass,
)
from cinema_grpc.domain.errors import Violations
from cinema_grpc.domain.ports import Clock, UnitOfWork
from cinema_grpc.services.access import current_caller
from cinema_grpc.services.convert import Context, money, parse_id, parse_time, require_id, timestamp
from cinema_grpc.services.metrics import DOOR_SCANS

VERDICTS = {
    ScanVerdict.ADMITTED: pb.SCAN_VERDICT_ADMITTED,
    ScanVerdict.ALREADY_USED: pb.SCAN_VERDICT_ALREADY_USED,
    ScanVerdict.FORGED: pb.SCAN_VERDICT_FORGED,
    ScanVerdict.CANCELLED: pb.SCAN_VERDICT_CANCELLED,
    ScanVerdict.WRONG_SHOWTIME: pb.SCAN_VERDICT_WRONG_SHOWTIME,
    ScanVerdict.TOO_EARLY: pb.SCAN_VERDICT_TOO_EARLY,
    ScanVerdict.ENDED: pb.SCAN_VERDICT_ENDED,
    ScanVerdict.SUPERSEDED: pb.SCAN_VERDICT_SUPERSEDED,
}


def admission_message(admission: Admission) -> pb.Admission:
    message = pb.Admission(
        ticket_id=str(admission.ticket_id),
        showtime_id=str(admission.showtime_id),
        door_id=admission.door_id,
        device_id=admission.device_id,
        scanner_id=str(admission.scanner_id),
        admit_time=timestamp(admission.admitted_at),
        scan_id=str(admission.scan_id),
        undone_by=str(admission.undone_by) if admission.undone_by else "",
        undo_reason=admission.undo_reason,
    )
    if admission.undone_at is not None:
        message.undo_time.CopyFrom(timestamp(admission.undone_at))
    return message


def scan_message(scan: Scan) -> pb.Scan:
    message = pb.Scan(
        id=str(scan.id),
        device_id=scan.device_id,
        client_scan_id=scan.client_scan_id or "",
        showtime_id=str(scan.showtime_id),
        door_id=scan.door_id,
        ticket_id=str(scan.ticket_id) if scan.ticket_id else "",
        verdict=VERDICTS[scan.verdict],
        scan_time=timestamp(scan.scanned_at),
        offline=scan.offline,
        seat_label=scan.seat_label,
        movie_title=scan.movie_title,
    )
    if scan.first_admission is not None:
        message.first_admission.CopyFrom(admission_message(scan.first_admission))
    return message


def _count(scans: list[Scan]) -> None:
    # A retry answered from the record counts again: the counter is of answers given.
    for scan in scans:
        DOOR_SCANS.labels(scan.verdict.value, str(scan.offline).lower()).inc()


class AdmissionServicer(admission_pb2_grpc.AdmissionServiceServicer):
    def __init__(
        self,
        unit_of_work: Callable[[], UnitOfWork],
        clock: Clock,
        codec: TicketCodec,
        rules: AdmissionRules,
        qr_png: Callable[[str], bytes],
    ) -> None:
        self._uow = unit_of_work
        self._clock = clock
        self._codec = codec
        self._rules = rules
        self._qr_png = qr_png

    def _pass_message(self, ticket_pass: TicketPass) -> pb.TicketPass:
        ticket = ticket_pass.ticket
        return pb.TicketPass(
            ticket_id=str(ticket.ticket_id),
            booking_id=str(ticket.booking_id),
            showtime_id=str(ticket.showtime_id),
            code=ticket_pass.code,
            qr_png=self._qr_png(ticket_pass.code),
            key_id=ticket_pass.key_id,
            issue=ticket.issue,
            cinema_name=ticket.cinema_name,
            movie_title=ticket.movie_title,
            hall_name=ticket.hall_name,
            row_label=ticket.row_label,
            seat_number=ticket.seat_number,
            price=money(ticket.price),
            start_time=timestamp(ticket.starts_at),
            local_start_time=ticket.local_start.strftime("%Y-%m-%d %H:%M"),
            time_zone=ticket.time_zone,
            doors_open_time=timestamp(ticket_pass.doors_open_at),
        )

    async def GetScannerConfig(self, request: pb.GetScannerConfigRequest, context: Context) -> pb.ScannerConfig:
        violations = Violations()
        cinema_id = parse_id(violations, "cinema_id", request.cinema_id)
        day = None
        if request.HasField("date"):
            try:
                day = date(request.date.year, request.date.month, request.date.day)
            except ValueError:
                violations.add("date", "INVALID_DATE", "must be a full calendar date")
        violations.raise_if_any()
        assert cinema_id is not None
        config = await uc.scanner_config(self._uow(), self._codec, cinema_id, day, self._clock.now(), self._rules)
        window = config.admission_window
        return pb.ScannerConfig(
            cinema_id=str(config.cinema_id),
            time_zone=config.time_zone,
            date=date_pb2.Date(year=config.day.year, month=config.day.month, day=config.day.day),
            keys=[
                pb.VerificationKey(key_id=k.key_id, algorithm="Ed25519", public_key=k.public_key, current=k.current)
                for k in config.keys
            ],
            showtimes=[
                pb.ScannerShowtime(
                    showtime_id=str(s.id),
                    hall_id=str(s.hall_id),
                    hall_name=s.hall_name,
                    movie_title=s.movie_title,
                    start_time=timestamp(s.starts_at),
                    end_time=timestamp(s.ends_at),
                    doors_open_time=timestamp(s.starts_at - window),
                )
                for s in config.showtimes
            ],
            revoked_tickets=[
                pb.RevokedTicket(ticket_id=str(r.ticket_id), showtime_id=str(r.showtime_id), valid_issue=r.valid_issue)
                for r in config.revoked
            ],
            admission_window_minutes=int(window.total_seconds() // 60),
            generate_time=timestamp(config.generated_at),
        )

    async def GetTicketPass(self, request: pb.GetTicketPassRequest, context: Context) -> pb.TicketPass:
        ticket_id = require_id("ticket_id", request.ticket_id)
        ticket_pass = await uc.ticket_pass(self._uow(), self._codec, current_caller(), ticket_id, self._rules)
        return self._pass_message(ticket_pass)

    async def ReissueTicketPass(self, request: pb.ReissueTicketPassRequest, context: Context) -> pb.TicketPass:
        ticket_id = require_id("ticket_id", request.ticket_id)
        ticket_pass = await uc.reissue_pass(
            self._uow(), self._codec, current_caller(), ticket_id, request.reason, self._clock.now(), self._rules
        )
        return self._pass_message(ticket_pass)

    async def CheckInTicket(self, request: pb.CheckInTicketRequest, context: Context) -> pb.Scan:
        showtime_id = require_id("showtime_id", request.showtime_id)
        scan = uc.ScanInput(showtime_id, request.code, request.door_id, request.client_scan_id, None)
        result = await uc.check_in(
            self._uow(), self._codec, current_caller(), scan, request.device_id, self._clock.now(), self._rules
        )
        _count([result])
        return scan_message(result)

    async def UploadScans(self, request: pb.UploadScansRequest, context: Context) -> pb.UploadScansResponse:
        violations = Violations()
        if len(request.scans) > self._rules.max_batch:
            violations.add("scans", "TOO_MANY", f"must hold at most {self._rules.max_batch} scans per upload")
        scans = []
        for i, scan in enumerate(request.scans[: self._rules.max_batch]):
            showtime_id = parse_id(violations, f"scans[{i}].showtime_id", scan.showtime_id)
            scanned_at = parse_time(violations, f"scans[{i}].scan_time", scan, "scan_time")
            scans.append(uc.ScanInput(showtime_id, scan.code, scan.door_id, scan.client_scan_id, scanned_at))
        violations.raise_if_any()
        result = await uc.upload_scans(
            self._uow(), self._codec, current_caller(), request.device_id, scans, self._clock.now(), self._rules
        )
        _count(result.scans)
        return pb.UploadScansResponse(
            scans=[scan_message(s) for s in result.scans], admitted=result.admitted, duplicates=result.duplicates
        )

    async def UndoAdmission(self, request: pb.UndoAdmissionRequest, context: Context) -> pb.Admission:
        ticket_id = require_id("ticket_id", request.ticket_id)
        admission = await uc.undo_admission(self._uow(), current_caller(), ticket_id, request.reason, self._clock.now())
        return admission_message(admission)
