"""Admission entities and the pure rule that judges a scan: verdicts, codes, admissions."""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

from cinema_grpc.domain.money import Money
from cinema_grpc.domain.screening.model import zone_of


class ScanVerdict(enum.StrEnum):
    ADMITTED = "ADMITTED"
    ALREADY_USED = "ALREADY_USED"
    FORGED = "FORGED"
    CANCELLED = "CANCELLED"
    WRONG_SHOWTIME = "WRONG_SHOWTIME"
    TOO_EARLY = "TOO_EARLY"
    ENDED = "ENDED"
    SUPERSEDED = "SUPERSEDED"


@dataclass(frozen=True)
class AdmissionRules:
    # The doors of a showtime open this long before its start.
    admission_window: timedelta = timedelta(minutes=60)
    # Offline scans older than this, or further ahead of the server's clock, are refused.
    upload_max_age: timedelta = timedelta(days=7)
    clock_leeway: timedelta = timedelta(minutes=5)
    max_batch: int = 500
    # How often one ticket's pass may be re-issued.
    max_reissues: int = 10


@dataclass(frozen=True)
class TicketCode:
    """What a genuine code says: signed by ``key_id`` over the rest."""

    key_id: str
    ticket_id: uuid.UUID
    showtime_id: uuid.UUID
    seat_label: str
    issue: int


@dataclass(frozen=True)
class VerificationKey:
    key_id: str
    public_key: bytes
    current: bool


class CodeRejected(Exception):
    """A code that is not genuine: malformed, altered, or signed with an unknown key."""


class TicketCodec(Protocol):
    """Signs ticket codes with the current key and verifies codes of any known key."""

    @property
    def current_key_id(self) -> str: ...

    def sign(self, ticket_id: uuid.UUID, showtime_id: uuid.UUID, seat_label: str, issue: int) -> str:
        """The code's text, as a pass and its QR image carry it."""
        ...

    def verify(self, text: str) -> TicketCode:
        """The code a text carries, or CodeRejected."""
        ...

    def verification_keys(self) -> list[VerificationKey]: ...


@dataclass(frozen=True)
class TicketFacts:
    """A ticket as the door sees it, with what its pass prints."""

    ticket_id: uuid.UUID
    booking_id: uuid.UUID
    customer_id: uuid.UUID
    showtime_id: uuid.UUID
    row_label: str
    seat_number: int
    price: Money
    # Sold and its booking not cancelled.
    valid: bool
    # 1, raised by each re-issue; only the code of this issue admits.
    issue: int
    starts_at: datetime
    ends_at: datetime
    movie_title: str
    hall_name: str
    cinema_name: str
    time_zone: str

    @property
    def seat_label(self) -> str:
        return f"{self.row_label}{self.seat_number}"

    @property
    def local_start(self) -> datetime:
        """The start in the cinema's time zone, as a pass prints it."""
        zone = zone_of(self.time_zone)
        return self.starts_at.astimezone(zone) if zone is not None else self.starts_at


@dataclass(frozen=True)
class DoorShowtime:
    """The showtime a door admits to."""

    id: uuid.UUID
    starts_at: datetime
    ends_at: datetime
    movie_title: str

    def doors_open(self, rules: AdmissionRules) -> datetime:
        return self.starts_at - rules.admission_window


@dataclass(frozen=True)
class Admission:
    id: uuid.UUID
    ticket_id: uuid.UUID
    showtime_id: uuid.UUID
    scan_id: uuid.UUID
    door_id: str
    device_id: str
    scanner_id: uuid.UUID
    admitted_at: datetime
    undone_at: datetime | None = None
    undone_by: uuid.UUID | None = None
    undo_reason: str = ""


@dataclass(frozen=True)
class ScanRequest:
    """One scan to judge: online (now) or uploaded (its own time)."""

    showtime_id: uuid.UUID
    code: str
    door_id: str
    device_id: str
    client_scan_id: str | None
    scanned_at: datetime
    offline: bool

    @property
    def digest(self) -> str:
        """What was scanned, where: a retry under the same client scan id carries the same."""
        scanned = f"{self.showtime_id}\n{self.door_id}\n{self.code.strip().upper()}"
        return hashlib.sha256(scanned.encode()).hexdigest()


@dataclass(frozen=True)
class Scan:
    id: uuid.UUID
    device_id: str
    client_scan_id: str | None
    showtime_id: uuid.UUID
    door_id: str
    ticket_id: uuid.UUID | None
    verdict: ScanVerdict
    scanned_at: datetime
    recorded_at: datetime
    offline: bool
    scanner_id: uuid.UUID
    seat_label: str = ""
    movie_title: str = ""
    # With ALREADY_USED: the admission that used the ticket.
    first_admission: Admission | None = None
    # ScanRequest.digest of the scan this records ("" for scans recorded before digests were kept).
    request_digest: str = ""


@dataclass(frozen=True)
class UploadResult:
    scans: list[Scan]

    @property
    def admitted(self) -> int:
        return sum(scan.verdict is ScanVerdict.ADMITTED for scan in self.scans)

    @property
    def duplicates(self) -> int:
        return sum(scan.verdict is ScanVerdict.ALREADY_USED for scan in self.scans)


@dataclass(frozen=True)
class ScannerShowtime:
    id: uuid.UUID
    hall_id: uuid.UUID
    hall_name: str
    movie_title: str
    starts_at: datetime
    ends_at: datetime


@dataclass(frozen=True)
class RevokedTicket:
    ticket_id: uuid.UUID
    showtime_id: uuid.UUID
    # 0 when no code of the ticket admits.
    valid_issue: int


@dataclass(frozen=True)
class ScannerConfig:
    cinema_id: uuid.UUID
    time_zone: str
    day: date
    keys: list[VerificationKey]
    showtimes: list[ScannerShowtime]
    revoked: list[RevokedTicket]
    admission_window: timedelta
    generated_at: datetime


@dataclass(frozen=True)
class TicketPass:
    ticket: TicketFacts
    code: str
    key_id: str
    doors_open_at: datetime


@dataclass(frozen=True)
class AdmissionSummary:
    """Admission at the door of one showtime, for the report."""

    showtime_id: uuid.UUID
    tickets: int
    admitted: int
    undone: int
    refused: dict[ScanVerdict, int]
    ended: bool

    @property
    def not_admitted(self) -> int:
        return self.tickets - self.admitted


def judge(
    code: TicketCode, ticket: TicketFacts | None, door: DoorShowtime, at: datetime, rules: AdmissionRules
) -> ScanVerdict | None:
    """Why a genuine code does not admit at this door at ``at``, or None when it may admit
    (if its ticket was not admitted before: that is the database's call)."""
    if ticket is None or ticket.showtime_id != code.showtime_id or ticket.seat_label != code.seat_label:
        # Signed by our key, yet about no ticket we sold: treat as forged.
        return ScanVerdict.FORGED
    if code.showtime_id != door.id:
        return ScanVerdict.WRONG_SHOWTIME
    if not ticket.valid:
        return ScanVerdict.CANCELLED
    if code.issue != ticket.issue:
        return ScanVerdict.SUPERSEDED
    if at < door.doors_open(rules):
        return ScanVerdict.TOO_EARLY
    if at >= door.ends_at:
        return ScanVerdict.ENDED
    return None
