"""SQLAlchemy row classes. They mirror the migrations (the schema comes only from migrations)
and never leave the storage package: repositories turn them into domain entities."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CHAR, BigInteger, Boolean, ForeignKey, Identity, Integer, MetaData, SmallInteger, Text, func
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Timestamp = TIMESTAMP(timezone=True)


class Row(DeclarativeBase):
    metadata = MetaData()


class CinemaRow(Row):
    __tablename__ = "cinemas"
    __table_args__ = {"schema": "screening"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    time_zone: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(CHAR(3))
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class HallRow(Row):
    __tablename__ = "halls"
    __table_args__ = {"schema": "screening"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    key: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True)
    cinema_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.cinemas.id"))
    name: Mapped[str] = mapped_column(Text)
    layout: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class SeatRow(Row):
    __tablename__ = "seats"
    __table_args__ = {"schema": "screening"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    hall_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.halls.id"))
    row_index: Mapped[int] = mapped_column(Integer)
    row_label: Mapped[str] = mapped_column(Text)
    number: Mapped[int] = mapped_column(Integer)
    grid_column: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(Text)
    in_service: Mapped[bool] = mapped_column(Boolean, default=True)
    out_of_service_reason: Mapped[str] = mapped_column(Text, default="")
    retired_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class MovieRow(Row):
    __tablename__ = "movies"
    __table_args__ = {"schema": "screening"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    duration_minutes: Mapped[int] = mapped_column(Integer)
    rating: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class ShowtimeRow(Row):
    __tablename__ = "showtimes"
    __table_args__ = {"schema": "screening"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    cinema_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.cinemas.id"))
    hall_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.halls.id"))
    hall_key: Mapped[int] = mapped_column(BigInteger, ForeignKey("screening.halls.key"))
    movie_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.movies.id"))
    starts_at: Mapped[datetime] = mapped_column(Timestamp)
    ends_at: Mapped[datetime] = mapped_column(Timestamp)
    busy_until: Mapped[datetime] = mapped_column(Timestamp)
    state: Mapped[str] = mapped_column(Text)
    cancel_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class ShowtimePriceRow(Row):
    __tablename__ = "showtime_prices"
    __table_args__ = {"schema": "screening"}

    showtime_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.showtimes.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))


class HoldRow(Row):
    __tablename__ = "holds"
    __table_args__ = {"schema": "booking"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    showtime_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.showtimes.id"))
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    state: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    extensions_used: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    ended_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    payment_deadline: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    ended_by: Mapped[uuid.UUID | None] = mapped_column(UUID, nullable=True)
    end_reason: Mapped[str] = mapped_column(Text, default="")


class BookingRow(Row):
    __tablename__ = "bookings"
    __table_args__ = {"schema": "booking"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    showtime_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.showtimes.id"))
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    hold_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("booking.holds.id"), unique=True)
    state: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(Text)
    counter_payment: Mapped[str | None] = mapped_column(Text, nullable=True)
    refund_state: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    cancelled_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    cancel_reason: Mapped[str] = mapped_column(Text, default="")
    cancelled_by: Mapped[uuid.UUID | None] = mapped_column(UUID, nullable=True)
    ticket_count: Mapped[int] = mapped_column(Integer)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))


class ShowtimeVersionRow(Row):
    __tablename__ = "showtime_versions"
    __table_args__ = {"schema": "booking"}

    showtime_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.showtimes.id"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class SeatEventRow(Row):
    __tablename__ = "seat_events"
    __table_args__ = {"schema": "booking"}

    showtime_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.showtimes.id"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    changes: Mapped[list[list[str]]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    layout_changed: Mapped[bool] = mapped_column(Boolean, default=False)


class SeatClaimRow(Row):
    __tablename__ = "seat_claims"
    __table_args__ = {"schema": "booking"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    hold_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("booking.holds.id"))
    booking_id: Mapped[uuid.UUID | None] = mapped_column(UUID, ForeignKey("booking.bookings.id"), nullable=True)
    showtime_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.showtimes.id"))
    seat_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.seats.id"))
    status: Mapped[str] = mapped_column(Text)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class RequestLogRow(Row):
    __tablename__ = "request_log"
    __table_args__ = {"schema": "api"}

    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    request_id: Mapped[str] = mapped_column(Text, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(Text)
    resource_id: Mapped[uuid.UUID] = mapped_column(UUID)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class UserRow(Row):
    __tablename__ = "users"
    __table_args__ = {"schema": "identity"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    email: Mapped[str] = mapped_column(Text, unique=True)
    display_name: Mapped[str] = mapped_column(Text)
    phone: Mapped[str] = mapped_column(Text)
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class UserRoleRow(Row):
    __tablename__ = "user_roles"
    __table_args__ = {"schema": "identity"}

    user_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("identity.users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(Text, primary_key=True)


class SessionRow(Row):
    __tablename__ = "sessions"
    __table_args__ = {"schema": "identity"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("identity.users.id"))
    refresh_token_id: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class SignInRecordRow(Row):
    __tablename__ = "sign_in_records"
    __table_args__ = {"schema": "identity"}

    account: Mapped[str] = mapped_column(Text, primary_key=True)
    address: Mapped[str] = mapped_column(Text, primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    touched_at: Mapped[datetime] = mapped_column(Timestamp)


class RegistrationsByAddressRow(Row):
    __tablename__ = "registrations_by_address"
    __table_args__ = {"schema": "identity"}

    address: Mapped[str] = mapped_column(Text, primary_key=True)
    window_start: Mapped[datetime] = mapped_column(Timestamp)
    registrations: Mapped[int] = mapped_column(Integer)


class PaymentRow(Row):
    __tablename__ = "payments"
    __table_args__ = {"schema": "payment"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    hold_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("booking.holds.id"))
    showtime_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.showtimes.id"))
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    channel: Mapped[str] = mapped_column(Text)
    booking_id: Mapped[uuid.UUID | None] = mapped_column(UUID, ForeignKey("booking.bookings.id"), nullable=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    refunded_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(CHAR(3))
    state: Mapped[str] = mapped_column(Text)
    intent_id: Mapped[str | None] = mapped_column(Text, unique=True, nullable=True)
    client_secret: Mapped[str] = mapped_column(Text, default="")
    failure_reason: Mapped[str] = mapped_column(Text, default="")
    refund_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    next_check_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    check_failures: Mapped[int] = mapped_column(Integer, default=0)


class RefundRow(Row):
    __tablename__ = "refunds"
    __table_args__ = {"schema": "payment"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    payment_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("payment.payments.id"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))
    state: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(Text)
    stripe_refund_id: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    next_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class WebhookEventRow(Row):
    __tablename__ = "webhook_events"
    __table_args__ = {"schema": "payment"}

    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    type: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class AuditLogRow(Row):
    __tablename__ = "audit_log"
    __table_args__ = {"schema": "payment"}

    sequence: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    payment_id: Mapped[uuid.UUID] = mapped_column(UUID)
    kind: Mapped[str] = mapped_column(Text)
    stripe_id: Mapped[str] = mapped_column(Text, default="")
    amount_minor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    currency: Mapped[str | None] = mapped_column(CHAR(3), nullable=True)
    actor: Mapped[str] = mapped_column(Text)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    prev_hash: Mapped[str] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(Text, unique=True)
    scheme: Mapped[int] = mapped_column(SmallInteger)


class TicketIssueRow(Row):
    __tablename__ = "ticket_issues"
    __table_args__ = {"schema": "admission"}

    ticket_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("booking.seat_claims.id"), primary_key=True)
    issue: Mapped[int] = mapped_column(Integer)
    reissued_at: Mapped[datetime] = mapped_column(Timestamp)
    reissued_by: Mapped[uuid.UUID] = mapped_column(UUID)
    reason: Mapped[str] = mapped_column(Text, default="")


class AdmissionRow(Row):
    __tablename__ = "admissions"
    __table_args__ = {"schema": "admission"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    ticket_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("booking.seat_claims.id"))
    showtime_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.showtimes.id"))
    # The scan is written just after its admission (the constraint is deferred).
    scan_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("admission.scans.id", use_alter=True))
    door_id: Mapped[str] = mapped_column(Text)
    device_id: Mapped[str] = mapped_column(Text)
    scanner_id: Mapped[uuid.UUID] = mapped_column(UUID)
    admitted_at: Mapped[datetime] = mapped_column(Timestamp)
    undone_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    undone_by: Mapped[uuid.UUID | None] = mapped_column(UUID, nullable=True)
    undo_reason: Mapped[str] = mapped_column(Text, default="")


class ScanRow(Row):
    __tablename__ = "scans"
    __table_args__ = {"schema": "admission"}

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    device_id: Mapped[str] = mapped_column(Text)
    client_scan_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    showtime_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("screening.showtimes.id"))
    door_id: Mapped[str] = mapped_column(Text)
    ticket_id: Mapped[uuid.UUID | None] = mapped_column(UUID, ForeignKey("booking.seat_claims.id"), nullable=True)
    verdict: Mapped[str] = mapped_column(Text)
    admission_id: Mapped[uuid.UUID | None] = mapped_column(UUID, ForeignKey("admission.admissions.id"), nullable=True)
    scanner_id: Mapped[uuid.UUID] = mapped_column(UUID)
    scanned_at: Mapped[datetime] = mapped_column(Timestamp)
    recorded_at: Mapped[datetime] = mapped_column(Timestamp)
    offline: Mapped[bool] = mapped_column(Boolean)
    # SHA-256 of what was scanned (showtime, door, code); none on scans recorded before 0015.
    request_digest: Mapped[str | None] = mapped_column(Text, nullable=True)
