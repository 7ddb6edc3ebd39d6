"""The admission schema: code issues, scans and admissions, and tickets as the door sees them."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from cinema_grpc.domain.admission.model import (
    Admission,
    AdmissionSummary,
    DoorShowtime,
    RevokedTicket,
    Scan,
    ScannerShowtime,
    ScanVerdict,
    TicketFacts,
)
from cinema_grpc.domain.money import Money
from cinema_grpc.storage.locks import LockNamespace, advisory_key, ticket_admission_keys
from cinema_grpc.storage.rows import AdmissionRow, ScanRow, TicketIssueRow

# A ticket is a claim that became SOLD (CANCELLED once its booking is): valid while SOLD and
# its booking CONFIRMED. The claim row is locked FOR SHARE by check-ins (a cancellation, which
# updates it, and a re-issue, which locks it FOR NO KEY UPDATE, wait for them and they for it).
_TICKET = """
    SELECT c.id, c.booking_id, b.customer_id, c.showtime_id, s.row_label, s.number, c.amount_minor, c.currency,
           (c.status = 'SOLD' AND b.state = 'CONFIRMED') AS valid, coalesce(i.issue, 1) AS issue,
           st.starts_at, st.ends_at, m.title, h.name AS hall_name, ci.name AS cinema_name, ci.time_zone
    FROM booking.seat_claims c
    JOIN booking.bookings b ON b.id = c.booking_id
    JOIN screening.seats s ON s.id = c.seat_id
    JOIN screening.showtimes st ON st.id = c.showtime_id
    JOIN screening.movies m ON m.id = st.movie_id
    JOIN screening.halls h ON h.id = st.hall_id
    JOIN screening.cinemas ci ON ci.id = st.cinema_id
    LEFT JOIN admission.ticket_issues i ON i.ticket_id = c.id
    WHERE c.id = :ticket_id AND c.status IN ('SOLD', 'CANCELLED')
"""

# Takes the keys' transaction locks one by one in the order given (the callers sort them).
_ADVISORY_XACT_LOCKS = text("SELECT count(pg_advisory_xact_lock(key)) FROM unnest(CAST(:keys AS bigint[])) AS key")

_DOOR_SHOWTIME = text(
    """
    SELECT st.id, st.starts_at, st.ends_at, m.title
    FROM screening.showtimes st JOIN screening.movies m ON m.id = st.movie_id
    WHERE st.id = :showtime_id
    """
)

_SCANNER_SHOWTIMES = text(
    """
    SELECT st.id, st.hall_id, h.name AS hall_name, m.title, st.starts_at, st.ends_at
    FROM screening.showtimes st
    JOIN screening.halls h ON h.id = st.hall_id
    JOIN screening.movies m ON m.id = st.movie_id
    WHERE st.cinema_id = :cinema_id AND st.state = 'SCHEDULED'
      AND st.starts_at >= :starts_from AND st.starts_at < :starts_before
    ORDER BY st.starts_at, h.name, st.id
    """
)

# Tickets of these showtimes whose codes no longer admit (cancelled: no issue admits) or
# whose first codes do not (re-issued: only the current issue admits).
_REVOKED = text(
    """
    SELECT c.id, c.showtime_id,
           CASE WHEN c.status = 'SOLD' AND b.state = 'CONFIRMED' THEN coalesce(i.issue, 1) ELSE 0 END AS valid_issue
    FROM booking.seat_claims c
    JOIN booking.bookings b ON b.id = c.booking_id
    LEFT JOIN admission.ticket_issues i ON i.ticket_id = c.id
    WHERE c.showtime_id = ANY(:showtime_ids) AND c.status IN ('SOLD', 'CANCELLED')
      AND (c.status = 'CANCELLED' OR b.state <> 'CONFIRMED' OR i.ticket_id IS NOT NULL)
    ORDER BY c.showtime_id, c.id
    """
)

_SUMMARY = text(
    """
    SELECT st.ends_at,
        (SELECT count(*) FROM booking.seat_claims c JOIN booking.bookings b ON b.id = c.booking_id
          WHERE c.showtime_id = st.id AND c.status = 'SOLD' AND b.state = 'CONFIRMED') AS tickets,
        (SELECT count(*) FROM admission.admissions a JOIN booking.seat_claims c ON c.id = a.ticket_id
          JOIN booking.bookings b ON b.id = c.booking_id
          WHERE a.showtime_id = st.id AND a.undone_at IS NULL AND c.status = 'SOLD' AND b.state = 'CONFIRMED')
          AS admitted,
        (SELECT count(*) FROM admission.admissions a WHERE a.showtime_id = st.id AND a.undone_at IS NOT NULL)
          AS undone
    FROM screening.showtimes st
    WHERE st.id = :showtime_id
    """
)

_REFUSED = text(
    """
    SELECT verdict, count(*) AS scans FROM admission.scans
    WHERE showtime_id = :showtime_id AND verdict <> 'ADMITTED'
    GROUP BY verdict
    """
)


def _admission(row: Any) -> Admission:
    return Admission(
        id=row.id,
        ticket_id=row.ticket_id,
        showtime_id=row.showtime_id,
        scan_id=row.scan_id,
        door_id=row.door_id,
        device_id=row.device_id,
        scanner_id=row.scanner_id,
        admitted_at=row.admitted_at,
        undone_at=row.undone_at,
        undone_by=row.undone_by,
        undo_reason=row.undo_reason,
    )


class SqlAdmissionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def ticket(self, ticket_id: uuid.UUID, *, lock: bool = False) -> TicketFacts | None:
        query = _TICKET + (" FOR SHARE OF c" if lock else "")
        row = (await self._session.execute(text(query), {"ticket_id": ticket_id})).first()
        if row is None:
            return None
        return TicketFacts(
            ticket_id=row.id,
            booking_id=row.booking_id,
            customer_id=row.customer_id,
            showtime_id=row.showtime_id,
            row_label=row.row_label,
            seat_number=row.number,
            price=Money(int(row.amount_minor), row.currency),
            valid=bool(row.valid),
            issue=int(row.issue),
            starts_at=row.starts_at,
            ends_at=row.ends_at,
            movie_title=row.title,
            hall_name=row.hall_name,
            cinema_name=row.cinema_name,
            time_zone=row.time_zone,
        )

    async def lock_ticket_for_reissue(self, ticket_id: uuid.UUID) -> None:
        await self._session.execute(
            text("SELECT 1 FROM booking.seat_claims WHERE id = :ticket_id FOR NO KEY UPDATE"), {"ticket_id": ticket_id}
        )

    async def door_showtime(self, showtime_id: uuid.UUID) -> DoorShowtime | None:
        row = (await self._session.execute(_DOOR_SHOWTIME, {"showtime_id": showtime_id})).first()
        return DoorShowtime(row.id, row.starts_at, row.ends_at, row.title) if row else None

    async def lock_client_scans(self, device_id: str, client_scan_ids: Collection[str]) -> None:
        keys = sorted({advisory_key(LockNamespace.CLIENT_SCAN, f"{device_id}:{id_}") for id_ in client_scan_ids})
        if keys:
            await self._session.execute(
                _ADVISORY_XACT_LOCKS,
                {"keys": keys},
            )

    async def lock_tickets_for_admission(self, ticket_ids: Collection[uuid.UUID]) -> None:
        keys = ticket_admission_keys(ticket_ids)
        if keys:
            await self._session.execute(
                _ADVISORY_XACT_LOCKS,
                {"keys": keys},
            )

    async def scan_by_client_id(self, device_id: str, client_scan_id: str) -> Scan | None:
        row = (
            await self._session.execute(
                select(ScanRow).where(ScanRow.device_id == device_id, ScanRow.client_scan_id == client_scan_id)
            )
        ).scalar_one_or_none()
        if row is None:
            return None
        first = None
        if row.verdict == ScanVerdict.ALREADY_USED and row.admission_id is not None:
            admission = await self._session.get(AdmissionRow, row.admission_id)
            first = _admission(admission) if admission is not None else None
        seat_label, title = "", ""
        if row.ticket_id is not None:
            ticket = await self.ticket(row.ticket_id)
            if ticket is not None:
                seat_label, title = ticket.seat_label, ticket.movie_title
        if not title:
            door = await self.door_showtime(row.showtime_id)
            title = door.movie_title if door else ""
        return Scan(
            id=row.id,
            device_id=row.device_id,
            client_scan_id=row.client_scan_id,
            showtime_id=row.showtime_id,
            door_id=row.door_id,
            ticket_id=row.ticket_id,
            verdict=ScanVerdict(row.verdict),
            scanned_at=row.scanned_at,
            recorded_at=row.recorded_at,
            offline=row.offline,
            scanner_id=row.scanner_id,
            seat_label=seat_label,
            movie_title=title,
            first_admission=first,
            request_digest=row.request_digest or "",
        )

    async def admit(self, admission: Admission) -> bool:
        inserted = await self._session.execute(
            pg_insert(AdmissionRow)
            .values(
                id=admission.id,
                ticket_id=admission.ticket_id,
                showtime_id=admission.showtime_id,
                scan_id=admission.scan_id,
                door_id=admission.door_id,
                device_id=admission.device_id,
                scanner_id=admission.scanner_id,
                admitted_at=admission.admitted_at,
            )
            .on_conflict_do_nothing(index_elements=["ticket_id"], index_where=text("undone_at IS NULL"))
            .returning(AdmissionRow.id)
        )
        return inserted.first() is not None

    async def active_admission(self, ticket_id: uuid.UUID) -> Admission | None:
        row = (
            await self._session.execute(
                select(AdmissionRow).where(AdmissionRow.ticket_id == ticket_id, AdmissionRow.undone_at.is_(None))
            )
        ).scalar_one_or_none()
        return _admission(row) if row is not None else None

    async def add_scan(self, scan: Scan, admission_id: uuid.UUID | None) -> None:
        await self._session.execute(
            insert(ScanRow).values(
                id=scan.id,
                device_id=scan.device_id,
                client_scan_id=scan.client_scan_id,
                showtime_id=scan.showtime_id,
                door_id=scan.door_id,
                ticket_id=scan.ticket_id,
                verdict=scan.verdict.value,
                admission_id=admission_id,
                scanner_id=scan.scanner_id,
                scanned_at=scan.scanned_at,
                recorded_at=scan.recorded_at,
                offline=scan.offline,
                request_digest=scan.request_digest or None,
            )
        )

    async def set_issue(self, ticket_id: uuid.UUID, issue: int, now: datetime, by: uuid.UUID, reason: str) -> None:
        values = {"issue": issue, "reissued_at": now, "reissued_by": by, "reason": reason}
        await self._session.execute(
            pg_insert(TicketIssueRow)
            .values(ticket_id=ticket_id, **values)
            .on_conflict_do_update(index_elements=["ticket_id"], set_=values)
        )

    async def undo(self, admission: Admission) -> bool:
        # Only while not undone: a second undo that waited for the first finds no row, instead
        # of running into the trigger that lets an admission be undone once.
        undone = await self._session.execute(
            update(AdmissionRow)
            .where(AdmissionRow.id == admission.id, AdmissionRow.undone_at.is_(None))
            .values(undone_at=admission.undone_at, undone_by=admission.undone_by, undo_reason=admission.undo_reason)
            .returning(AdmissionRow.id)
        )
        return undone.first() is not None

    async def scanner_showtimes(
        self, cinema_id: uuid.UUID, starts_from: datetime, starts_before: datetime
    ) -> list[ScannerShowtime]:
        rows = await self._session.execute(
            _SCANNER_SHOWTIMES, {"cinema_id": cinema_id, "starts_from": starts_from, "starts_before": starts_before}
        )
        return [ScannerShowtime(r.id, r.hall_id, r.hall_name, r.title, r.starts_at, r.ends_at) for r in rows]

    async def revoked_tickets(self, showtime_ids: Collection[uuid.UUID]) -> list[RevokedTicket]:
        if not showtime_ids:
            return []
        rows = await self._session.execute(_REVOKED, {"showtime_ids": list(showtime_ids)})
        return [RevokedTicket(r.id, r.showtime_id, int(r.valid_issue)) for r in rows]

    async def summary(self, showtime_id: uuid.UUID, now: datetime) -> AdmissionSummary | None:
        row = (await self._session.execute(_SUMMARY, {"showtime_id": showtime_id})).first()
        if row is None:
            return None
        refused = {
            ScanVerdict(r.verdict): int(r.scans)
            for r in await self._session.execute(_REFUSED, {"showtime_id": showtime_id})
        }
        return AdmissionSummary(
            showtime_id, int(row.tickets), int(row.admitted), int(row.undone), refused, now >= row.ends_at
        )
