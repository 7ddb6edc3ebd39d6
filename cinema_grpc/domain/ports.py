"""What the domain needs from the outside world, as Protocols that storage and adapters implement."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from cinema_grpc.domain.access import Caller, Role
from cinema_grpc.domain.admission.model import (
    Admission,
    AdmissionSummary,
    DoorShowtime,
    RevokedTicket,
    Scan,
    ScannerShowtime,
    TicketFacts,
)
from cinema_grpc.domain.booking.inventory import NewHold, PlainHold, SeatInventory
from cinema_grpc.domain.booking.model import Booking, Hold, SeatEvent, SeatMap
from cinema_grpc.domain.errors import HallSuggestion
from cinema_grpc.domain.identity.model import AccessClaims, IssuedTokens, RefreshClaims, Session, User
from cinema_grpc.domain.identity.throttle import SignInRecord
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.pagination import Page, PageRequest
from cinema_grpc.domain.payment.audit import AuditCheckpoint
from cinema_grpc.domain.payment.model import AuditEntry, GatewayEvent, IntentStatus, Payment, Refund
from cinema_grpc.domain.screening.model import Cinema, Hall, Movie, Seat, Showtime

if TYPE_CHECKING:  # reports import this module for the UnitOfWork type
    from cinema_grpc.domain.reports import DayRevenue, MovieSales, Occupancy, Ranking


class AvailabilityBus(Protocol):
    """Carries seat events to the watchers of a showtime (in this process, or across replicas)."""

    async def publish(self, events: list[SeatEvent]) -> None: ...

    def watch(self, showtime_id: uuid.UUID) -> Watch: ...


class Watch(Protocol):
    """One watcher's bounded inbox. Falling behind empties it and raises WatcherLagging."""

    async def next(self) -> SeatEvent: ...

    def close(self) -> None: ...


class WatcherLagging(Exception):
    """The watcher's inbox overflowed; it must start over from a fresh seat map."""


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class HallSlotTaken(Exception):
    """Raised by storage when the database refuses a showtime that overlaps another in its hall."""


@dataclass(frozen=True)
class RecordedRequest:
    """A mutating request already carried out under a client request_id."""

    fingerprint: str
    resource_id: uuid.UUID


@dataclass(frozen=True)
class ShowtimeFilter:
    cinema_id: uuid.UUID | None = None
    movie_id: uuid.UUID | None = None
    hall_id: uuid.UUID | None = None
    starts_from: datetime | None = None
    starts_before: datetime | None = None
    include_cancelled: bool = False


@dataclass(frozen=True)
class MovieFilter:
    active_only: bool = False
    title_contains: str = ""


class CinemaRepository(Protocol):
    async def add(self, cinema: Cinema) -> None:
        """Raises CinemaNameTaken when the name is used."""
        ...

    async def get(self, cinema_id: uuid.UUID) -> Cinema | None: ...

    async def list_page(self, page: PageRequest) -> Page[Cinema]: ...


class HallRepository(Protocol):
    async def add(self, hall: Hall) -> None:
        """Stores the hall and all its seats. Raises HallNameTaken when the name is used."""
        ...

    async def get(self, hall_id: uuid.UUID, *, for_update: bool = False) -> Hall | None: ...

    async def share_lock(self, hall_id: uuid.UUID) -> None:
        """Keeps the hall's layout from changing until the transaction ends."""
        ...

    async def list_page(self, cinema_id: uuid.UUID, page: PageRequest) -> Page[Hall]: ...

    async def rename(self, hall: Hall) -> None: ...

    async def replace_seats(self, hall: Hall) -> None:
        """Retires the hall's current seats and stores ``hall.seats`` with its new layout."""
        ...

    async def update_seat(self, seat: Seat, updated_at: datetime) -> None: ...

    async def seats(
        self, hall_id: uuid.UUID, *, seat_ids: Collection[uuid.UUID] = (), rows: Collection[str] = ()
    ) -> tuple[Seat, ...]:
        """Current seats of the hall with these ids, or in these rows, in layout order."""
        ...

    async def capacities(self, cinema_id: uuid.UUID) -> list[HallSuggestion]:
        """Every hall of the cinema with its number of seats in service."""
        ...


class MovieRepository(Protocol):
    async def add(self, movie: Movie) -> None: ...

    async def get(self, movie_id: uuid.UUID, *, for_update: bool = False) -> Movie | None: ...

    async def list_page(self, movie_filter: MovieFilter, page: PageRequest) -> Page[Movie]: ...

    async def update(self, movie: Movie) -> None: ...


class ShowtimeRepository(Protocol):
    async def add(self, showtime: Showtime) -> None:
        """Raises HallSlotTaken when the database finds an overlap in the hall."""
        ...

    async def get(self, showtime_id: uuid.UUID, *, for_update: bool = False) -> Showtime | None: ...

    async def list_page(self, showtime_filter: ShowtimeFilter, page: PageRequest) -> Page[Showtime]: ...

    async def update_state(self, showtime: Showtime) -> None: ...

    async def move(self, showtime: Showtime) -> None:
        """Writes the showtime's hall and busy period. Raises HallSlotTaken when the database
        finds an overlap with another showtime of the hall (the transaction stays usable)."""
        ...

    async def first_overlapping(
        self, hall_id: uuid.UUID, starts_at: datetime, busy_until: datetime, *, besides: uuid.UUID | None = None
    ) -> Showtime | None:
        """The earliest scheduled showtime of the hall whose busy period meets the given one
        (other than ``besides``)."""
        ...

    async def busy_hall_ids(
        self, cinema_id: uuid.UUID, starts_at: datetime, busy_until: datetime, *, besides: uuid.UUID | None = None
    ) -> set[str]: ...

    async def upcoming_for_hall(self, hall_id: uuid.UUID, now: datetime) -> list[Showtime]:
        """Scheduled showtimes of the hall that have not ended."""
        ...


class RequestLog(Protocol):
    """Remembers mutating requests by client request_id (AIP-155) so retries are safe."""

    async def lock_and_find(self, scope: str, request_id: str) -> RecordedRequest | None:
        """Serialises concurrent requests with this id, then returns the earlier one if any."""
        ...

    async def record(self, scope: str, request_id: str, fingerprint: str, resource_id: uuid.UUID) -> None: ...

    async def prune(self, older_than: datetime, limit: int) -> int:
        """Forgets at most ``limit`` requests recorded before ``older_than``; returns how many."""
        ...


class UserRepository(Protocol):
    async def add(self, user: User) -> None:
        """Raises EmailTaken when the (normalised) email is used."""
        ...

    async def get(self, user_id: uuid.UUID, *, for_update: bool = False) -> User | None: ...

    async def by_email(self, email: str) -> User | None: ...

    async def update_profile(self, user: User) -> None: ...

    async def update_password(self, user: User) -> None: ...

    async def set_roles(self, user_id: uuid.UUID, roles: frozenset[Role]) -> None: ...


class SessionRepository(Protocol):
    async def add(self, session: Session) -> None: ...

    async def get(self, session_id: uuid.UUID, *, for_update: bool = False) -> Session | None: ...

    async def rotate(self, session_id: uuid.UUID, refresh_token_id: str) -> None: ...

    async def revoke(self, session_id: uuid.UUID, now: datetime) -> None: ...

    async def revoke_all(self, user_id: uuid.UUID, now: datetime, *, keep: uuid.UUID | None = None) -> list[uuid.UUID]:
        """Revokes every usable session of the user but ``keep``; returns the revoked ids."""
        ...

    async def caller(self, session_id: uuid.UUID, now: datetime) -> Caller | None:
        """The user of a usable session with their current roles, or None."""
        ...


class LoginThrottle(Protocol):
    """What is remembered of sign-ins per (account, address) and per address, and how many
    accounts each address registered lately."""

    async def records(self, account: str, address: str) -> tuple[SignInRecord, SignInRecord]:
        """The pair's record and the address's record (over all accounts), without locking."""
        ...

    async def lock_pair(self, account: str, address: str, now: datetime) -> SignInRecord:
        """The pair's record, locked until the transaction ends (created when missing)."""
        ...

    async def lock_address(self, address: str, now: datetime) -> SignInRecord:
        """The address's record over all accounts, locked like lock_pair; take it after the pair."""
        ...

    async def save(self, account: str | None, address: str, record: SignInRecord, now: datetime) -> None:
        """Stores a record locked before; ``account`` None is the address's record."""
        ...

    async def count_registration(self, address: str, now: datetime, window: timedelta) -> tuple[int, datetime]:
        """Counts one registration of the address in its current window (a new one when the last
        began ``window`` ago or more); returns the count and when the window began."""
        ...

    async def prune(self, untouched_before: datetime, windows_before: datetime) -> int:
        """Deletes records untouched since ``untouched_before`` and registration windows that
        began before ``windows_before``; returns how many rows went."""
        ...


class PasswordHasher(Protocol):
    async def hash(self, password: str) -> str: ...

    async def verify(self, password_hash: str, password: str) -> bool:
        """Also spends the time of a real check when ``password_hash`` is empty."""
        ...


class TokenCodec(Protocol):
    def issue(self, user: User, session: Session, now: datetime) -> IssuedTokens: ...

    def decode_access(self, token: str) -> AccessClaims:
        """Raises a TokenRejected error saying why the token cannot be used."""
        ...

    def decode_refresh(self, token: str) -> RefreshClaims: ...


@dataclass(frozen=True)
class BookingFilter:
    customer_id: uuid.UUID | None = None
    showtime_id: uuid.UUID | None = None


@dataclass(frozen=True)
class HoldFilter:
    customer_id: uuid.UUID | None = None
    showtime_id: uuid.UUID | None = None


class BookingRepository(Protocol):
    """Reads of holds, bookings, seat claims and availability versions. Seat decisions go
    through the showtime's inventory (``InventoryRepository``)."""

    async def get_hold(self, hold_id: uuid.UUID) -> Hold | None: ...

    async def get_booking(self, booking_id: uuid.UUID) -> Booking | None: ...

    async def list_bookings(self, booking_filter: BookingFilter, page: PageRequest) -> Page[Booking]: ...

    async def list_active_holds(self, hold_filter: HoldFilter, now: datetime, page: PageRequest) -> Page[Hold]:
        """Holds that keep their seats at ``now`` (lazily expired ones excluded), newest first."""
        ...

    async def mark_refunded(self, booking_id: uuid.UUID) -> bool:
        """A cancelled booking's money went back (its seats are not concerned). False when it
        was not a cancelled booking awaiting its refund (nothing changed)."""
        ...

    async def showtimes_with_expired_holds(self, now: datetime, limit: int) -> list[uuid.UUID]: ...

    async def current_version(self, showtime_id: uuid.UUID) -> int: ...

    async def seat_map(self, showtime_id: uuid.UUID, now: datetime) -> SeatMap | None:
        """The showtime's current seats with their states and its version, read in one
        snapshot (None: no such showtime)."""
        ...

    async def events_since(self, showtime_id: uuid.UUID, version: int) -> list[SeatEvent] | None:
        """The events after ``version`` in order, read in one snapshot with the current version,
        or None when some were already pruned (or ``version`` is ahead of the current one)."""
        ...

    async def prune_events(self, older_than: datetime) -> int: ...

    async def prune_ended_holds(self, ended_before: datetime, limit: int) -> int:
        """Deletes at most ``limit`` holds that were released or expired before ``ended_before``
        and that no payment refers to, with their seat claims; returns how many holds."""
        ...


class InventoryRepository(Protocol):
    """Seat inventories of showtimes, loaded locked. The unit of work persists the inventories
    it loaded (their writes, and their seat changes as each showtime's next availability
    version) when it commits, and publishes those events after the commit."""

    async def get_locked(
        self,
        showtime_id: uuid.UUID,
        now: datetime,
        *,
        holds: Collection[uuid.UUID] = (),
        bookings: Collection[uuid.UUID] = (),
        new_hold: NewHold | None = None,
        all_sales: bool = False,
    ) -> SeatInventory:
        """Takes every lock the change needs, once, in the one order used everywhere: the
        customer's (``new_hold`` only), the showtime's seat lock, a share of the hall's layout
        lock (``new_hold`` only). Then, in one snapshot taken with all of them held, loads the
        showtime, these holds and bookings of it (``all_sales``: its active holds and confirmed
        bookings), and for ``new_hold`` what the hold is decided on plus the showtime's lapsed
        holds. Raises Contention when a lock cannot be had in time.

        A ``new_hold`` that is not ``lock_first`` is read without locks: the locks are taken when
        the unit of work commits, in the pipeline that writes the hold, which first checks under
        them that what the decision read is unchanged, else raises StaleDecision (nothing is
        written; decide again, ``lock_first``)."""
        ...

    async def try_lock_lapsed(self, showtime_ids: Collection[uuid.UUID]) -> list[SeatInventory]:
        """Those of these showtimes whose seat lock is free now, locked without waiting for the
        others (a busy showtime never keeps the free ones locked), for ``expire_lapsed``: their
        holds are not loaded. Once the inventories are committed, each one's ``changes`` are the
        seats its bulk expiry freed."""
        ...


@dataclass(frozen=True)
class PaymentFilter:
    """Payments of a hold, or of the hold a booking was bought from; of one customer if set."""

    booking_id: uuid.UUID | None = None
    hold_id: uuid.UUID | None = None
    customer_id: uuid.UUID | None = None


class PaymentRepository(Protocol):
    async def add(self, payment: Payment) -> None:
        """Raises PaymentInProgress when the hold has a payment that has not failed."""
        ...

    async def get(self, payment_id: uuid.UUID, *, for_update: bool = False) -> Payment | None: ...

    async def list_page(self, wanted: PaymentFilter, page: PageRequest) -> Page[Payment]:
        """Oldest first."""
        ...

    async def by_intent(self, intent_id: str) -> Payment | None: ...

    async def update(self, payment: Payment) -> None: ...

    async def add_refund(self, refund: Refund) -> None: ...

    async def get_refund(self, refund_id: uuid.UUID, *, for_update: bool = False) -> Refund | None: ...

    async def update_refund(self, refund: Refund) -> None: ...

    async def pending_refunds(self, now: datetime, limit: int) -> list[Refund]:
        """PENDING refunds due for a try at ``now``, the longest waiting first."""
        ...

    async def unsettled(self, now: datetime, older_than: datetime, limit: int) -> list[Payment]:
        """INITIALIZED payments created before ``older_than`` and due for a check at ``now``,
        the least recently checked first."""
        ...

    async def owed_by_cancelled_bookings(self, limit: int) -> list[Payment]:
        """Paid payments whose booking was cancelled and which have no refund pending or failed."""
        ...

    async def open_for_hold(self, hold_id: uuid.UUID) -> Payment | None:
        """The hold's INITIALIZED payment, if any (there is at most one)."""
        ...

    async def check_again(self, payment_id: uuid.UUID, at: datetime, failures: int) -> None:
        """Reconciliation looks at the payment again from ``at`` (it goes to the back of the
        queue); ``failures``: checks in a row that learnt nothing."""
        ...

    async def record_webhook(self, event_id: str, event_type: str) -> bool:
        """True the first time an event id is seen, False for a redelivery."""
        ...


class AuditTrail(Protocol):
    """Append-only: the database refuses UPDATE, DELETE and TRUNCATE of its entries."""

    async def append(self, entry: AuditEntry) -> AuditEntry:
        """Chains the entry to the last one (keyed with the audit key) and stores it."""
        ...

    async def for_payment(self, payment_id: uuid.UUID) -> list[AuditEntry]: ...

    async def everything(self) -> list[AuditEntry]: ...

    async def head(self) -> AuditEntry | None:
        """The newest entry."""
        ...

    async def get(self, sequence: int) -> AuditEntry | None: ...

    async def after(self, sequence: int) -> list[AuditEntry]:
        """The entries newer than ``sequence``, oldest first."""
        ...


class AuditCheckpoints(Protocol):
    """Where signed checkpoints of the trail are kept, outside the database."""

    def latest(self) -> AuditCheckpoint | None: ...

    def save(self, checkpoint: AuditCheckpoint) -> bool:
        """Keeps the checkpoint unless one of a higher sequence is kept already (another
        process got further meanwhile); whether it did."""
        ...


class PaymentGateway(Protocol):
    """Stripe PaymentIntents. Every mutating call carries an idempotency key."""

    async def create_intent(
        self, payment_id: uuid.UUID, amount: Money, *, payment_method: str | None, idempotency_key: str
    ) -> IntentStatus: ...

    async def confirm_intent(self, intent_id: str, *, idempotency_key: str) -> IntentStatus:
        """A declined card is an IntentStatus with a failure reason, not an exception."""
        ...

    async def retrieve_intent(self, intent_id: str) -> IntentStatus: ...

    async def cancel_intent(self, intent_id: str) -> IntentStatus:
        """Cancels an intent that has not succeeded; returns its status afterwards."""
        ...

    async def refund(self, intent_id: str, amount: Money, *, idempotency_key: str) -> str:
        """Returns the refund id; raises PaymentProviderUnavailable when Stripe did not accept it."""
        ...

    def parse_webhook(self, payload: bytes, signature: str) -> GatewayEvent:
        """Raises InvalidWebhook unless the signature is valid for our webhook secret."""
        ...


class ReportsRepository(Protocol):
    async def occupancy(self, showtime_id: uuid.UUID, now: datetime) -> Occupancy | None: ...

    async def top_movies(
        self, cinema_id: uuid.UUID, sold_from: datetime, sold_before: datetime, limit: int, ranking: Ranking
    ) -> list[MovieSales]: ...

    async def revenue_by_day(
        self, cinema_id: uuid.UUID, sold_from: datetime, sold_before: datetime, time_zone: str
    ) -> list[DayRevenue]: ...


class AdmissionRepository(Protocol):
    """Tickets as the door sees them, their code issues, scans and admissions."""

    async def ticket(self, ticket_id: uuid.UUID, *, lock: bool = False) -> TicketFacts | None:
        """With ``lock``, the ticket's claim row is share-locked: a cancellation or a re-issue
        waits for this transaction, and this one for theirs."""
        ...

    async def lock_ticket_for_reissue(self, ticket_id: uuid.UUID) -> None:
        """Locks the ticket's claim row against check-ins (which share-lock it)."""
        ...

    async def door_showtime(self, showtime_id: uuid.UUID) -> DoorShowtime | None: ...

    async def lock_client_scans(self, device_id: str, client_scan_ids: Collection[str]) -> None:
        """Serialises retries of the same device scans (transaction advisory locks, key order)."""
        ...

    async def lock_tickets_for_admission(self, ticket_ids: Collection[uuid.UUID]) -> None:
        """Serialises judging scans of these tickets (transaction advisory locks, key order),
        taken at once for a whole upload, after the client-scan locks."""
        ...

    async def scan_by_client_id(self, device_id: str, client_scan_id: str) -> Scan | None: ...

    async def admit(self, admission: Admission) -> bool:
        """Records the admission unless its ticket has one not undone (the database decides,
        waiting for a concurrent admission to commit or roll back); False when it had."""
        ...

    async def active_admission(self, ticket_id: uuid.UUID) -> Admission | None: ...

    async def add_scan(self, scan: Scan, admission_id: uuid.UUID | None) -> None: ...

    async def set_issue(self, ticket_id: uuid.UUID, issue: int, now: datetime, by: uuid.UUID, reason: str) -> None: ...

    async def undo(self, admission: Admission) -> bool:
        """Marks the admission undone unless it was undone already; whether it was."""
        ...

    async def scanner_showtimes(
        self, cinema_id: uuid.UUID, starts_from: datetime, starts_before: datetime
    ) -> list[ScannerShowtime]: ...

    async def revoked_tickets(self, showtime_ids: Collection[uuid.UUID]) -> list[RevokedTicket]: ...

    async def summary(self, showtime_id: uuid.UUID, now: datetime) -> AdmissionSummary | None: ...


class UnitOfWork(Protocol):
    """One database transaction; rolls back on exit unless ``commit`` was called."""

    cinemas: CinemaRepository
    halls: HallRepository
    movies: MovieRepository
    showtimes: ShowtimeRepository
    requests: RequestLog
    users: UserRepository
    sessions: SessionRepository
    login_throttle: LoginThrottle
    booking: BookingRepository
    inventories: InventoryRepository
    payments: PaymentRepository
    audit: AuditTrail
    reports: ReportsRepository
    admission: AdmissionRepository

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None:
        """Persists the loaded inventories' changes, commits, then publishes their seat events
        (never before the data is durable)."""
        ...

    async def snapshot(self) -> None:
        """Makes this transaction one read-only, repeatable-read snapshot (call it first)."""
        ...

    async def place_plain_hold(self, plain: PlainHold) -> Hold | None:
        """Holds ``plain``'s seats in one statement of its own (called instead of ``async with``,
        never inside it) when the hold is plain (see PlainHold), then publishes its seat event.
        Raises SeatAlreadyTaken when that is the answer. None: not plain, or this store has no
        such statement; nothing was written, decide with the inventory."""
        ...
