"""The error catalogue: every failure a caller can see, each with a stable reason.

Services map an error's ``kind`` to a gRPC status code and its fields to google.rpc details;
clients branch on ``reason`` and never on message text.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar


class ErrorKind(enum.Enum):
    """What sort of failure an error is; decides the canonical status code."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    PERMISSION_DENIED = "permission_denied"
    UNAUTHENTICATED = "unauthenticated"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request; ``field`` is a path such as ``layout.rows[2].columns``."""

    field: str
    reason: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition: what kind, about which resource, and why."""

    type: str
    subject: str
    description: str


class DomainError(Exception):
    """Base of every error a caller may see."""

    kind: ClassVar[ErrorKind] = ErrorKind.INTERNAL
    reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        return ()

    @property
    def precondition_violations(self) -> tuple[PreconditionViolation, ...]:
        return ()

    @property
    def retry_after_seconds(self) -> float | None:
        return None


class ValidationFailed(DomainError):
    """The request is malformed; each bad field is named."""

    kind = ErrorKind.INVALID_ARGUMENT
    reason = "VALIDATION_FAILED"

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations = tuple(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {summary}")

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        return self.violations


@dataclass
class Violations:
    """Collects field violations so a caller learns every bad field at once."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, reason: str, description: str) -> None:
        self.items.append(FieldViolation(field_path, reason, description))

    def extend(self, violations: Iterable[FieldViolation]) -> None:
        self.items.extend(violations)

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationFailed(self.items)


def invalid(field_path: str, reason: str, description: str) -> ValidationFailed:
    """A validation error about a single field."""
    return ValidationFailed([FieldViolation(field_path, reason, description)])


class NotFound(DomainError):
    """A referenced resource does not exist (or the caller may not know it exists)."""

    kind = ErrorKind.NOT_FOUND
    resource_type: ClassVar[str] = "resource"

    def __init__(self, resource_id: object) -> None:
        self.resource_id = str(resource_id)
        super().__init__(
            f"{self.resource_type} {self.resource_id} not found",
            metadata={"resource_type": self.resource_type, "resource_id": self.resource_id},
        )


class CinemaNotFound(NotFound):
    reason = "CINEMA_NOT_FOUND"
    resource_type = "cinema"


class HallNotFound(NotFound):
    reason = "HALL_NOT_FOUND"
    resource_type = "hall"


class SeatNotFound(NotFound):
    reason = "SEAT_NOT_FOUND"
    resource_type = "seat"


class MovieNotFound(NotFound):
    reason = "MOVIE_NOT_FOUND"
    resource_type = "movie"


class ShowtimeNotFound(NotFound):
    reason = "SHOWTIME_NOT_FOUND"
    resource_type = "showtime"


class NameTaken(DomainError):
    """A name that must be unique within its scope is already used."""

    kind = ErrorKind.ALREADY_EXISTS


class CinemaNameTaken(NameTaken):
    reason = "CINEMA_NAME_TAKEN"


class HallNameTaken(NameTaken):
    reason = "HALL_NAME_TAKEN"


class RequestIdReused(DomainError):
    """A request_id came back with a different request: it cannot be a retry."""

    kind = ErrorKind.INVALID_ARGUMENT
    reason = "REQUEST_ID_REUSED"

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        return (FieldViolation("request_id", self.reason, self.message),)


class ClientScanIdReused(DomainError):
    """A device's client scan id came back with another scan (another code, door or showtime):
    it cannot be a retry, and answering it with the first scan's verdict could admit someone."""

    kind = ErrorKind.INVALID_ARGUMENT
    reason = "CLIENT_SCAN_ID_REUSED"

    def __init__(self, message: str, field_path: str) -> None:
        super().__init__(message)
        self.field_path = field_path

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        return (FieldViolation(self.field_path, self.reason, self.message),)


class PreconditionFailed(DomainError):
    """The request is well formed but the system is not in a state that allows it."""

    kind = ErrorKind.FAILED_PRECONDITION

    def __init__(self, message: str, *, subject: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, metadata=metadata)
        self.subject = subject

    @property
    def precondition_violations(self) -> tuple[PreconditionViolation, ...]:
        return (PreconditionViolation(self.reason, self.subject, self.message),)


class MovieInactive(PreconditionFailed):
    reason = "MOVIE_INACTIVE"


class HallHasClaims(PreconditionFailed):
    reason = "HALL_HAS_CLAIMS"


class ShowtimeAlreadyStarted(PreconditionFailed):
    reason = "SHOWTIME_ALREADY_STARTED"


class ShowtimePriceMissing(PreconditionFailed):
    reason = "SHOWTIME_PRICE_MISSING"


class ShowtimeHasSales(PreconditionFailed):
    """Seats of the showtime are held or sold, so it cannot be moved."""

    reason = "SHOWTIME_HAS_SALES"


@dataclass(frozen=True)
class HallSuggestion:
    """A hall offered instead of a busy one."""

    hall_id: str
    name: str
    seat_count: int


@dataclass(frozen=True)
class ShowtimeConflict:
    """The showtime in the way of a requested slot, and the halls free for that slot."""

    showtime_id: str
    starts_at: datetime
    busy_until: datetime
    free_halls: tuple[HallSuggestion, ...]


class ShowtimeOverlap(PreconditionFailed):
    """The hall is busy (cleaning buffer included); carries the halls free instead."""

    reason = "SHOWTIME_OVERLAP"

    def __init__(self, conflict: ShowtimeConflict) -> None:
        super().__init__(
            f"the hall is busy with showtime {conflict.showtime_id} until "
            f"{conflict.busy_until.isoformat()} (cleaning included); "
            f"{len(conflict.free_halls)} other hall(s) are free for this slot",
            subject=f"showtimes/{conflict.showtime_id}",
            metadata={
                "conflicting_showtime_id": conflict.showtime_id,
                "free_hall_ids": ",".join(h.hall_id for h in conflict.free_halls),
            },
        )
        self.conflict = conflict


class Contention(DomainError):
    """A lock could not be had in time; the same request may succeed when retried."""

    kind = ErrorKind.ABORTED
    reason = "CONTENTION"

    @property
    def retry_after_seconds(self) -> float | None:
        return 0.2


class StaleDecision(Contention):
    """What a decision was taken on changed before it could be written; nothing was written, and
    deciding again on a fresh read may succeed."""


class StorageUnavailable(DomainError):
    """The database cannot be reached; retry later."""

    kind = ErrorKind.UNAVAILABLE
    reason = "STORAGE_UNAVAILABLE"

    @property
    def retry_after_seconds(self) -> float | None:
        return 1.0


class MalformedMessage(DomainError):
    """The request bytes are not a valid protobuf message of the method's request type."""

    kind = ErrorKind.INVALID_ARGUMENT
    reason = "MALFORMED_MESSAGE"


class ServerTimeout(DomainError):
    """The request ran longer than the server lets any request run, and was stopped."""

    kind = ErrorKind.DEADLINE_EXCEEDED
    reason = "SERVER_TIMEOUT"


class StreamClosed(DomainError):
    """The server ended a stream; reconnecting (with the last version seen) carries on."""

    kind = ErrorKind.UNAVAILABLE

    @property
    def retry_after_seconds(self) -> float | None:
        return 1.0


class ServerShuttingDown(StreamClosed):
    reason = "SERVER_SHUTTING_DOWN"


class StreamLifetimeReached(StreamClosed):
    reason = "STREAM_LIFETIME_REACHED"

    @property
    def retry_after_seconds(self) -> float | None:
        return 0.0


class TokenRejected(DomainError):
    """A bearer token that cannot be used; each subclass says why."""

    kind = ErrorKind.UNAUTHENTICATED
    reason = "TOKEN_INVALID"


class TokenInvalid(TokenRejected):
    """Malformed, forged, signed with another key or algorithm, or for another audience."""

    reason = "TOKEN_INVALID"


class TokenExpired(TokenRejected):
    reason = "TOKEN_EXPIRED"


class TokenNotYetValid(TokenRejected):
    reason = "TOKEN_NOT_YET_VALID"


class WrongTokenType(TokenRejected):
    """A refresh token used as an access token or the other way round."""

    reason = "WRONG_TOKEN_TYPE"


class TokenRevoked(TokenRejected):
    """The session was signed out (logout, password change, refresh token reuse)."""

    reason = "TOKEN_REVOKED"


class RefreshTokenReused(TokenRejected):
    """A refresh token came back after it was rotated: the session is signed out."""

    reason = "REFRESH_TOKEN_REUSED"


class InvalidCredentials(DomainError):
    """Wrong email or password; deliberately does not say which."""

    kind = ErrorKind.UNAUTHENTICATED
    reason = "INVALID_CREDENTIALS"


class LoginThrottled(DomainError):
    kind = ErrorKind.RESOURCE_EXHAUSTED
    reason = "LOGIN_THROTTLED"

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message, metadata={"retry_after_seconds": str(int(retry_after_seconds))})
        self._retry_after = retry_after_seconds

    @property
    def retry_after_seconds(self) -> float | None:
        return self._retry_after


class RegistrationThrottled(DomainError):
    """Too many accounts registered from one address lately."""

    kind = ErrorKind.RESOURCE_EXHAUSTED
    reason = "REGISTRATION_THROTTLED"

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message, metadata={"retry_after_seconds": str(int(retry_after_seconds))})
        self._retry_after = retry_after_seconds

    @property
    def retry_after_seconds(self) -> float | None:
        return self._retry_after


class PasswordHashingBusy(DomainError):
    """As many password checks as the replica allows are running or waiting; a moment later
    one is free. Keeps a registration or sign-in flood from taking every thread and all memory."""

    kind = ErrorKind.RESOURCE_EXHAUSTED
    reason = "PASSWORD_HASHING_BUSY"

    @property
    def retry_after_seconds(self) -> float | None:
        return 1.0


class EmailTaken(DomainError):
    kind = ErrorKind.ALREADY_EXISTS
    reason = "EMAIL_TAKEN"


class UserNotFound(NotFound):
    reason = "USER_NOT_FOUND"
    resource_type = "user"


class RoleChangeRefused(PreconditionFailed):
    reason = "ROLE_CHANGE_REFUSED"


class HoldNotFound(NotFound):
    reason = "HOLD_NOT_FOUND"
    resource_type = "hold"


class BookingNotFound(NotFound):
    reason = "BOOKING_NOT_FOUND"
    resource_type = "booking"


class SeatAlreadyTaken(DomainError):
    """Some requested seats are held or sold; nothing was held."""

    kind = ErrorKind.FAILED_PRECONDITION
    reason = "SEAT_ALREADY_TAKEN"

    def __init__(self, seat_labels: dict[str, str]) -> None:
        self.seats = dict(sorted(seat_labels.items(), key=lambda item: item[1]))
        super().__init__(
            f"seat(s) {', '.join(self.seats.values())} are already held or sold; nothing was held",
            metadata={"seat_ids": ",".join(self.seats)},
        )

    @property
    def precondition_violations(self) -> tuple[PreconditionViolation, ...]:
        return tuple(
            PreconditionViolation(self.reason, f"seats/{seat_id}", f"seat {label} is taken")
            for seat_id, label in self.seats.items()
        )


class ShowtimeCancelled(PreconditionFailed):
    reason = "SHOWTIME_CANCELLED"


class HoldNotActive(PreconditionFailed):
    """The hold was released, expired or already became a booking."""

    reason = "HOLD_NOT_ACTIVE"


class NoAdjacentSeats(PreconditionFailed):
    reason = "NO_ADJACENT_SEATS"


class CancellationClosed(PreconditionFailed):
    reason = "CANCELLATION_CLOSED"


class OnlineSalesClosed(PreconditionFailed):
    """Online sales of the showtime have closed (the box office sells until it starts)."""

    reason = "ONLINE_SALES_CLOSED"


class NoCounterRefundDue(PreconditionFailed):
    """Recording a counter refund for a booking that is not a cancelled counter sale awaiting one."""

    reason = "NO_COUNTER_REFUND_DUE"


class LimitExceeded(DomainError):
    kind = ErrorKind.RESOURCE_EXHAUSTED


class ServerBusy(LimitExceeded):
    """The replica runs as many unary calls as it allows; retry shortly (or on another replica)."""

    reason = "SERVER_BUSY"

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message, metadata={"retry_after_seconds": f"{retry_after_seconds:g}"})
        self._retry_after = retry_after_seconds

    @property
    def retry_after_seconds(self) -> float | None:
        return self._retry_after


class StreamLimitReached(LimitExceeded):
    """A stream budget is used up: the server's (``scope`` "server"), the client address's
    ("address") or the signed-in caller's ("caller"). Unary calls are not affected."""

    reason = "STREAM_LIMIT_REACHED"

    def __init__(self, message: str, scope: str, limit: int, retry_after_seconds: float) -> None:
        super().__init__(
            message,
            metadata={"scope": scope, "limit": str(limit), "retry_after_seconds": f"{retry_after_seconds:g}"},
        )
        self.scope = scope
        self._retry_after = retry_after_seconds

    @property
    def retry_after_seconds(self) -> float | None:
        return self._retry_after


class RateLimited(LimitExceeded):
    """The caller calls this too often; RetryInfo says when the next call is allowed."""

    def __init__(self, message: str, limit: str, retry_after_seconds: float) -> None:
        super().__init__(
            message, metadata={"limit": limit, "retry_after_seconds": f"{max(retry_after_seconds, 0.001):.3g}"}
        )
        self._retry_after = max(retry_after_seconds, 0.001)

    @property
    def retry_after_seconds(self) -> float | None:
        return self._retry_after


class SyncRateLimited(RateLimited):
    reason = "SYNC_RATE_LIMITED"


class HoldRateLimited(RateLimited):
    reason = "HOLD_RATE_LIMITED"


class TooManySeatsForShowtime(LimitExceeded):
    reason = "TOO_MANY_SEATS_FOR_SHOWTIME"


class RecentlyHeldSeats(LimitExceeded):
    """The customer held these seats until moments ago: others get a chance at them first."""

    reason = "REHOLD_COOLDOWN"

    def __init__(self, seat_labels: dict[str, str], retry_after_seconds: float) -> None:
        labels = ", ".join(sorted(seat_labels.values()))
        super().__init__(
            f"seat(s) {labels} were held by you moments ago; you may hold them again later (others may now)",
            metadata={"seat_ids": ",".join(sorted(seat_labels)), "retry_after_seconds": f"{retry_after_seconds:.3g}"},
        )
        self._retry_after = max(retry_after_seconds, 0.001)

    @property
    def retry_after_seconds(self) -> float | None:
        return self._retry_after


class TooManySeats(LimitExceeded):
    reason = "TOO_MANY_SEATS"


class TooManyActiveHolds(LimitExceeded):
    reason = "TOO_MANY_ACTIVE_HOLDS"


class HoldExtensionLimit(LimitExceeded):
    reason = "HOLD_EXTENSION_LIMIT"


class PaymentNotFound(NotFound):
    reason = "PAYMENT_NOT_FOUND"
    resource_type = "payment"


class PaymentInProgress(PreconditionFailed):
    """The hold already has a payment that is not failed."""

    reason = "PAYMENT_IN_PROGRESS"


class PaymentNotRefundable(PreconditionFailed):
    reason = "PAYMENT_NOT_REFUNDABLE"


class PaymentProviderUnavailable(DomainError):
    """Stripe could not be reached or failed; nothing was charged twice, retry later."""

    kind = ErrorKind.UNAVAILABLE
    reason = "PAYMENT_PROVIDER_UNAVAILABLE"

    @property
    def retry_after_seconds(self) -> float | None:
        return 2.0


class PaymentRefused(DomainError):
    """Stripe refused the request for good (bad payment method, amount, key): retrying won't help."""

    kind = ErrorKind.FAILED_PRECONDITION
    reason = "PAYMENT_REFUSED_BY_PROVIDER"


class NothingToPay(PreconditionFailed):
    reason = "NOTHING_TO_PAY"


class AmountAboveCardLimit(PreconditionFailed):
    """The total is more than one card payment may take (Stripe's ceiling)."""

    reason = "AMOUNT_ABOVE_CARD_LIMIT"


class InvalidWebhook(DomainError):
    kind = ErrorKind.INVALID_ARGUMENT
    reason = "INVALID_WEBHOOK"


class TicketNotFound(NotFound):
    reason = "TICKET_NOT_FOUND"
    resource_type = "ticket"


class TicketNotValid(PreconditionFailed):
    """A cancelled or refunded ticket has no pass and admits nobody."""

    reason = "TICKET_NOT_VALID"


class TicketAlreadyAdmitted(PreconditionFailed):
    """A ticket used at the door gets no new code (undo the admission first)."""

    reason = "TICKET_ALREADY_ADMITTED"


class AdmissionNotFound(NotFound):
    reason = "ADMISSION_NOT_FOUND"
    resource_type = "admission"


class TicketReissueLimit(LimitExceeded):
    """A ticket's pass was re-issued as often as allowed; staff can still help at the door."""

    reason = "TICKET_REISSUE_LIMIT"
