"""Admission use cases: scanner configuration, passes and their re-issue, check-in at the door
(online and uploaded from offline devices), undoing an admission, the admissions report."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import date, datetime

from cinema_grpc.domain.access import Caller
from cinema_grpc.domain.admission.model import (
    Admission,
    AdmissionRules,
    AdmissionSummary,
    CodeRejected,
    Scan,
    ScannerConfig,
    ScanRequest,
    ScanVerdict,
    TicketCode,
    TicketCodec,
    TicketFacts,
    TicketPass,
    UploadResult,
    judge,
)
from cinema_grpc.domain.errors import (
    AdmissionNotFound,
    CinemaNotFound,
    ClientScanIdReused,
    ShowtimeNotFound,
    TicketAlreadyAdmitted,
    TicketNotFound,
    TicketNotValid,
    TicketReissueLimit,
    Violations,
    invalid,
)
from cinema_grpc.domain.ids import new_id
from cinema_grpc.domain.ports import UnitOfWork
from cinema_grpc.domain.text import clean_text

MAX_CODE_LENGTH = 512
MAX_ID_LENGTH = 64
# How far from today a scanner configuration may be asked for.
MAX_CONFIG_DAYS = 31
ONLINE_DEVICE = "online"


@dataclass(frozen=True)
class ScanInput:
    """A scan as a request carries it, before validation."""

    showtime_id: uuid.UUID | None
    code: str
    door_id: str
    client_scan_id: str
    scanned_at: datetime | None


def _scan_request(
    violations: Violations, prefix: str, scan: ScanInput, device_id: str, *, offline: bool
) -> ScanRequest | None:
    code = scan.code.strip()
    if not code:
        violations.add(f"{prefix}code", "REQUIRED", "must not be empty")
    elif len(code) > MAX_CODE_LENGTH:
        violations.add(f"{prefix}code", "TOO_LONG", f"must be at most {MAX_CODE_LENGTH} characters")
    door = clean_text(violations, f"{prefix}door_id", scan.door_id, max_length=MAX_ID_LENGTH)
    client_scan_id = clean_text(
        violations, f"{prefix}client_scan_id", scan.client_scan_id, max_length=MAX_ID_LENGTH, required=offline
    )
    if scan.showtime_id is None or scan.scanned_at is None:
        return None
    return ScanRequest(scan.showtime_id, code, door, device_id, client_scan_id or None, scan.scanned_at, offline)


def _device(violations: Violations, device_id: str, *, required: bool) -> str:
    device = clean_text(violations, "device_id", device_id, max_length=MAX_ID_LENGTH, required=required)
    return device or ONLINE_DEVICE


def _verified(codec: TicketCodec, request: ScanRequest) -> TicketCode | None:
    """The code a scan carries, None when it is not genuine (verified offline: no I/O)."""
    try:
        return codec.verify(request.code)
    except CodeRejected:
        return None


async def _lock_tickets(uow: UnitOfWork, codes: list[TicketCode | None]) -> None:
    """Every ticket the scans name, locked at once in one order before any is judged: two
    devices uploading the same tickets in opposite orders would otherwise wait for each other."""
    await uow.admission.lock_tickets_for_admission({code.ticket_id for code in codes if code is not None})


async def _judge_and_record(
    uow: UnitOfWork,
    caller: Caller,
    request: ScanRequest,
    code: TicketCode | None,
    now: datetime,
    rules: AdmissionRules,
    field_prefix: str = "",
) -> Scan:
    """One scan in the caller's transaction, its ticket locked: the verdict, the admission if
    any, the record. ``code`` is the request's code verified, None when it is not genuine."""
    assert caller.user_id is not None
    if request.client_scan_id is not None:
        earlier = await uow.admission.scan_by_client_id(request.device_id, request.client_scan_id)
        if earlier is not None:
            if earlier.request_digest and earlier.request_digest != request.digest:
                raise ClientScanIdReused(
                    f"client_scan_id {request.client_scan_id} of device {request.device_id} was already used for "
                    "another scan (another code, door or showtime); give each scan an id of its own",
                    f"{field_prefix}client_scan_id",
                )
            return earlier
    door = await uow.admission.door_showtime(request.showtime_id)
    if door is None:
        raise ShowtimeNotFound(request.showtime_id)
    scan = Scan(
        id=new_id(),
        device_id=request.device_id,
        client_scan_id=request.client_scan_id,
        showtime_id=door.id,
        door_id=request.door_id,
        ticket_id=None,
        verdict=ScanVerdict.FORGED,
        scanned_at=request.scanned_at,
        recorded_at=now,
        offline=request.offline,
        scanner_id=caller.user_id,
        movie_title=door.movie_title,
        request_digest=request.digest,
    )
    if code is None:
        await uow.admission.add_scan(scan, None)
        return scan
    ticket = await uow.admission.ticket(code.ticket_id, lock=True)
    refusal = judge(code, ticket, door, request.scanned_at, rules)
    if ticket is not None and refusal is not ScanVerdict.FORGED:
        scan = replace(scan, ticket_id=ticket.ticket_id, seat_label=ticket.seat_label, movie_title=ticket.movie_title)
    if refusal is not None:
        scan = replace(scan, verdict=refusal)
        await uow.admission.add_scan(scan, None)
        return scan
    assert ticket is not None
    admission = Admission(
        id=new_id(),
        ticket_id=ticket.ticket_id,
        showtime_id=ticket.showtime_id,
        scan_id=scan.id,
        door_id=request.door_id,
        device_id=request.device_id,
        scanner_id=caller.user_id,
        admitted_at=request.scanned_at,
    )
    while True:
        if await uow.admission.admit(admission):
            scan = replace(scan, verdict=ScanVerdict.ADMITTED)
            await uow.admission.add_scan(scan, admission.id)
            return scan
        # The admission that won has committed; unless staff undid it meanwhile, it is there.
        first = await uow.admission.active_admission(ticket.ticket_id)
        if first is not None:
            scan = replace(scan, verdict=ScanVerdict.ALREADY_USED, first_admission=first)
            await uow.admission.add_scan(scan, first.id)
            return scan


async def check_in(
    uow: UnitOfWork,
    codec: TicketCodec,
    caller: Caller,
    scan: ScanInput,
    device_id: str,
    now: datetime,
    rules: AdmissionRules,
) -> Scan:
    violations = Violations()
    device = _device(violations, device_id, required=False)
    request = _scan_request(violations, "", replace(scan, scanned_at=now), device, offline=False)
    violations.raise_if_any()
    assert request is not None
    code = _verified(codec, request)
    async with uow:
        if request.client_scan_id is not None:
            await uow.admission.lock_client_scans(device, [request.client_scan_id])
        await _lock_tickets(uow, [code])
        result = await _judge_and_record(uow, caller, request, code, now, rules)
        await uow.commit()
    return result


async def upload_scans(
    uow: UnitOfWork,
    codec: TicketCodec,
    caller: Caller,
    device_id: str,
    scans: list[ScanInput],
    now: datetime,
    rules: AdmissionRules,
) -> UploadResult:
    """Judges a device's offline scans in the order given, each at its own time, in one
    transaction: a bad scan refuses the whole batch (nothing recorded), so the device can
    correct and resend it. The batch's tickets are locked first, all at once."""
    violations = Violations()
    device = _device(violations, device_id, required=True)
    if not scans:
        violations.add("scans", "REQUIRED", "must hold at least one scan")
    elif len(scans) > rules.max_batch:
        violations.add("scans", "TOO_MANY", f"must hold at most {rules.max_batch} scans per upload")
    requests: list[tuple[str, ScanRequest]] = []
    seen: set[str] = set()
    for i, scan in enumerate(scans[: rules.max_batch]):
        prefix = f"scans[{i}]."
        if scan.showtime_id is None:
            violations.add(f"{prefix}showtime_id", "REQUIRED", "must be a UUID")
        if scan.scanned_at is None:
            violations.add(f"{prefix}scan_time", "REQUIRED", "must be set")
        elif scan.scanned_at > now + rules.clock_leeway:
            violations.add(f"{prefix}scan_time", "OUT_OF_RANGE", "must not be in the future")
        elif scan.scanned_at < now - rules.upload_max_age:
            violations.add(f"{prefix}scan_time", "OUT_OF_RANGE", "is older than offline scans are kept")
        request = _scan_request(violations, prefix, scan, device, offline=True)
        if request is not None and request.client_scan_id is not None:
            if request.client_scan_id in seen:
                violations.add(f"{prefix}client_scan_id", "DUPLICATE", "appears twice in this upload")
            seen.add(request.client_scan_id)
            requests.append((prefix, request))
    violations.raise_if_any()
    codes = [_verified(codec, request) for _, request in requests]
    async with uow:
        await uow.admission.lock_client_scans(device, sorted(seen))
        await _lock_tickets(uow, codes)
        results = [
            await _judge_and_record(uow, caller, request, code, now, rules, prefix)
            for (prefix, request), code in zip(requests, codes, strict=True)
        ]
        await uow.commit()
    return UploadResult(results)


async def _owned_ticket(uow: UnitOfWork, caller: Caller, ticket_id: uuid.UUID, *, lock: bool = False) -> TicketFacts:
    ticket = await uow.admission.ticket(ticket_id, lock=lock)
    if ticket is None or not caller.may_see(ticket.customer_id):
        raise TicketNotFound(ticket_id)
    if not ticket.valid:
        raise TicketNotValid("the ticket was cancelled or refunded", subject=f"tickets/{ticket_id}")
    return ticket


def _pass(codec: TicketCodec, ticket: TicketFacts, rules: AdmissionRules) -> TicketPass:
    code = codec.sign(ticket.ticket_id, ticket.showtime_id, ticket.seat_label, ticket.issue)
    return TicketPass(ticket, code, codec.current_key_id, ticket.starts_at - rules.admission_window)


async def ticket_pass(
    uow: UnitOfWork, codec: TicketCodec, caller: Caller, ticket_id: uuid.UUID, rules: AdmissionRules
) -> TicketPass:
    async with uow:
        ticket = await _owned_ticket(uow, caller, ticket_id)
    return _pass(codec, ticket, rules)


async def reissue_pass(
    uow: UnitOfWork,
    codec: TicketCodec,
    caller: Caller,
    ticket_id: uuid.UUID,
    reason: str,
    now: datetime,
    rules: AdmissionRules,
) -> TicketPass:
    violations = Violations()
    why = clean_text(violations, "reason", reason, max_length=500, required=False)
    violations.raise_if_any()
    assert caller.user_id is not None
    async with uow:
        await uow.admission.lock_ticket_for_reissue(ticket_id)
        ticket = await _owned_ticket(uow, caller, ticket_id)
        if await uow.admission.active_admission(ticket_id) is not None:
            raise TicketAlreadyAdmitted("the ticket was admitted already", subject=f"tickets/{ticket_id}")
        if ticket.issue > rules.max_reissues:
            raise TicketReissueLimit(
                f"a pass is re-issued at most {rules.max_reissues} times", metadata={"ticket_id": str(ticket_id)}
            )
        ticket = replace(ticket, issue=ticket.issue + 1)
        await uow.admission.set_issue(ticket_id, ticket.issue, now, caller.user_id, why)
        await uow.commit()
    return _pass(codec, ticket, rules)


async def undo_admission(
    uow: UnitOfWork, caller: Caller, ticket_id: uuid.UUID, reason: str, now: datetime
) -> Admission:
    violations = Violations()
    why = clean_text(violations, "reason", reason, max_length=500)
    violations.raise_if_any()
    async with uow:
        admission = await uow.admission.active_admission(ticket_id)
        if admission is None:
            raise AdmissionNotFound(ticket_id)
        undone = replace(admission, undone_at=now, undone_by=caller.user_id, undo_reason=why)
        if not await uow.admission.undo(undone):
            raise AdmissionNotFound(ticket_id)  # another member of staff undid it a moment ago
        await uow.commit()
    return undone


async def scanner_config(
    uow: UnitOfWork,
    codec: TicketCodec,
    cinema_id: uuid.UUID,
    day: date | None,
    now: datetime,
    rules: AdmissionRules,
) -> ScannerConfig:
    async with uow:
        await uow.snapshot()
        cinema = await uow.cinemas.get(cinema_id)
        if cinema is None:
            raise CinemaNotFound(cinema_id)
        today = now.astimezone(cinema.zone).date()
        local_day = day or today
        if abs((local_day - today).days) > MAX_CONFIG_DAYS:
            raise invalid("date", "OUT_OF_RANGE", f"must be within {MAX_CONFIG_DAYS} days of today")
        begin, end = cinema.local_day_bounds(local_day.year, local_day.month, local_day.day)
        showtimes = await uow.admission.scanner_showtimes(cinema_id, begin, end)
        revoked = await uow.admission.revoked_tickets([s.id for s in showtimes])
    return ScannerConfig(
        cinema_id,
        cinema.time_zone,
        local_day,
        codec.verification_keys(),
        showtimes,
        revoked,
        rules.admission_window,
        now,
    )


async def showtime_admissions(uow: UnitOfWork, showtime_id: uuid.UUID, now: datetime) -> AdmissionSummary:
    async with uow:
        await uow.snapshot()
        summary = await uow.admission.summary(showtime_id, now)
    if summary is None:
        raise ShowtimeNotFound(showtime_id)
    return summary
