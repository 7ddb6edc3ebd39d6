"""The unit of work: one database transaction per RPC that rolls back unless committed."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import psycopg.errors
import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cinema_grpc.domain.booking.inventory import PlainHold
from cinema_grpc.domain.booking.model import Hold
from cinema_grpc.domain.errors import Contention, DomainError, StorageUnavailable
from cinema_grpc.domain.ports import (
    AdmissionRepository,
    AuditTrail,
    AvailabilityBus,
    BookingRepository,
    CinemaRepository,
    HallRepository,
    InventoryRepository,
    LoginThrottle,
    MovieRepository,
    PaymentRepository,
    ReportsRepository,
    RequestLog,
    SessionRepository,
    ShowtimeRepository,
    UserRepository,
)
from cinema_grpc.storage.admission_repository import SqlAdmissionRepository
from cinema_grpc.storage.booking_repository import SqlBookingRepository
from cinema_grpc.storage.identity_repositories import SqlLoginThrottle, SqlSessionRepository, SqlUserRepository
from cinema_grpc.storage.inventory_repository import SqlInventoryRepository
from cinema_grpc.storage.payment_repository import SqlAuditTrail, SqlPaymentRepository
from cinema_grpc.storage.plain_holds import PlainHolds, driver_error
from cinema_grpc.storage.reports_repository import SqlReportsRepository
from cinema_grpc.storage.screening_repositories import (
    SqlCinemaRepository,
    SqlHallRepository,
    SqlMovieRepository,
    SqlRequestLog,
    SqlShowtimeRepository,
)

log = structlog.get_logger(__name__)


def translate_database_error(exc: DBAPIError) -> DomainError | None:
    """The domain error a database failure means to a caller, or None for a bug (INTERNAL)."""
    if isinstance(exc.orig, psycopg.Error) and (error := driver_error(exc.orig)) is not None:
        return error
    if exc.connection_invalidated:
        return StorageUnavailable("the database is unreachable; retry later")
    return None


class SqlUnitOfWork:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bus: AvailabilityBus | None = None,
        *,
        audit_key: bytes | None = None,
        plain_holds: PlainHolds | None = None,
    ) -> None:
        self._sessions = sessions
        self._bus = bus
        self._audit_key = audit_key
        self._plain_holds = plain_holds

    async def __aenter__(self) -> Self:
        self.session = self._sessions()
        self.cinemas: CinemaRepository = SqlCinemaRepository(self.session)
        self.halls: HallRepository = SqlHallRepository(self.session)
        self.movies: MovieRepository = SqlMovieRepository(self.session)
        self.showtimes: ShowtimeRepository = SqlShowtimeRepository(self.session)
        self.requests: RequestLog = SqlRequestLog(self.session)
        self.users: UserRepository = SqlUserRepository(self.session)
        self.sessions: SessionRepository = SqlSessionRepository(self.session)
        self.login_throttle: LoginThrottle = SqlLoginThrottle(self.session)
        self.booking: BookingRepository = SqlBookingRepository(self.session)
        self._inventories = SqlInventoryRepository(self.session)
        self.inventories: InventoryRepository = self._inventories
        self.payments: PaymentRepository = SqlPaymentRepository(self.session)
        self.audit: AuditTrail = SqlAuditTrail(self.session, self._audit_key)
        self.reports: ReportsRepository = SqlReportsRepository(self.session)
        self.admission: AdmissionRepository = SqlAdmissionRepository(self.session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._inventories.end()
            # A session that never began (nothing read, or only lone reads) has nothing to end.
            if self.session.in_transaction():
                await self.session.rollback()
                await self.session.close()
        except DBAPIError as cleanup_error:
            # The connection is gone; the pool discards it. The original error matters more, and
            # without one the work is done already (committed, or only read): nothing is lost.
            log.warning("database connection lost while ending a unit of work", error=str(cleanup_error.orig))
        if isinstance(exc, DBAPIError) and (domain_error := translate_database_error(exc)) is not None:
            raise domain_error from exc
        if isinstance(exc, PoolTimeout):
            # Every connection is busy: the server is overloaded, not broken.
            raise Contention("the server is busy; retry shortly") from exc

    async def commit(self) -> None:
        # The inventories' writes go with the COMMIT (then the session has nothing left to commit).
        events = await self._inventories.commit()
        await self.session.commit()
        if events and self._bus is not None:
            await self._bus.publish(events)

    async def place_plain_hold(self, plain: PlainHold) -> Hold | None:
        if self._plain_holds is None or (placed := await self._plain_holds.place(plain)) is None:
            return None
        hold, event = placed
        if self._bus is not None:
            await self._bus.publish([event])
        return hold

    async def snapshot(self) -> None:
        await self.session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
