"""Repositories of the identity schema: users, roles, sessions and the login throttle."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from cinema_grpc.domain.access import Caller, Role
from cinema_grpc.domain.errors import EmailTaken
from cinema_grpc.domain.identity.model import Session, User
from cinema_grpc.domain.identity.throttle import SignInRecord
from cinema_grpc.storage.lone_read import read_rows
from cinema_grpc.storage.rows import RegistrationsByAddressRow, SessionRow, SignInRecordRow, UserRoleRow, UserRow


class SqlUserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def _roles(self, user_id: uuid.UUID) -> frozenset[Role]:
        rows = await self._session.scalars(select(UserRoleRow.role).where(UserRoleRow.user_id == user_id))
        return frozenset(Role[name] for name in rows)

    async def _user(self, row: UserRow | None) -> User | None:
        if row is None:
            return None
        return User(
            row.id,
            row.email,
            row.display_name,
            row.phone,
            await self._roles(row.id),
            row.password_hash,
            row.created_at,
            row.updated_at,
        )

    async def add(self, user: User) -> None:
        inserted = await self._session.scalar(
            insert(UserRow)
            .values(
                id=user.id,
                email=user.email,
                display_name=user.display_name,
                phone=user.phone,
                password_hash=user.password_hash,
                created_at=user.created_at,
                updated_at=user.updated_at,
            )
            .on_conflict_do_nothing(index_elements=[UserRow.email])
            .returning(UserRow.id)
        )
        if inserted is None:
            raise EmailTaken("an account with this email exists already")
        await self.set_roles(user.id, user.roles)

    async def get(self, user_id: uuid.UUID, *, for_update: bool = False) -> User | None:
        query = select(UserRow).where(UserRow.id == user_id)
        if for_update:
            query = query.with_for_update()
        return await self._user(await self._session.scalar(query))

    async def by_email(self, email: str) -> User | None:
        return await self._user(await self._session.scalar(select(UserRow).where(UserRow.email == email)))

    async def update_profile(self, user: User) -> None:
        await self._session.execute(
            update(UserRow)
            .where(UserRow.id == user.id)
            .values(display_name=user.display_name, phone=user.phone, updated_at=user.updated_at)
        )

    async def update_password(self, user: User) -> None:
        await self._session.execute(
            update(UserRow)
            .where(UserRow.id == user.id)
            .values(password_hash=user.password_hash, updated_at=user.updated_at)
        )

    async def set_roles(self, user_id: uuid.UUID, roles: frozenset[Role]) -> None:
        await self._session.execute(
            delete(UserRoleRow).where(UserRoleRow.user_id == user_id, UserRoleRow.role.not_in([r.name for r in roles]))
        )
        await self._session.execute(
            insert(UserRoleRow)
            .values([{"user_id": user_id, "role": role.name} for role in sorted(roles)])
            .on_conflict_do_nothing()
        )


def _session(row: SessionRow) -> Session:
    return Session(row.id, row.user_id, row.refresh_token_id, row.created_at, row.expires_at, row.revoked_at)


_CALLER = """
SELECT session.user_id, role.role
FROM identity.sessions AS session JOIN identity.user_roles AS role ON role.user_id = session.user_id
WHERE session.id = %(session_id)s AND session.revoked_at IS NULL AND session.expires_at > %(now)s
"""


class SqlSessionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, session: Session) -> None:
        self._session.add(
            SessionRow(
                id=session.id,
                user_id=session.user_id,
                refresh_token_id=session.refresh_token_id,
                created_at=session.created_at,
                expires_at=session.expires_at,
            )
        )
        await self._session.flush()

    async def get(self, session_id: uuid.UUID, *, for_update: bool = False) -> Session | None:
        query = select(SessionRow).where(SessionRow.id == session_id)
        if for_update:
            query = query.with_for_update()
        row = await self._session.scalar(query)
        return _session(row) if row else None

    async def rotate(self, session_id: uuid.UUID, refresh_token_id: str) -> None:
        await self._session.execute(
            update(SessionRow).where(SessionRow.id == session_id).values(refresh_token_id=refresh_token_id)
        )

    async def revoke(self, session_id: uuid.UUID, now: datetime) -> None:
        await self._session.execute(
            update(SessionRow)
            .where(SessionRow.id == session_id, SessionRow.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def revoke_all(self, user_id: uuid.UUID, now: datetime, *, keep: uuid.UUID | None = None) -> list[uuid.UUID]:
        query = (
            update(SessionRow)
            .where(SessionRow.user_id == user_id, SessionRow.revoked_at.is_(None))
            .values(revoked_at=now)
            .returning(SessionRow.id)
        )
        if keep is not None:
            query = query.where(SessionRow.id != keep)
        return list(await self._session.scalars(query))

    async def caller(self, session_id: uuid.UUID, now: datetime) -> Caller | None:
        # Every signed-in call asks this (at most once per session_cache_seconds): plain SQL, alone.
        rows = await read_rows(self._session, _CALLER, {"session_id": session_id, "now": now})
        if not rows:
            return None
        return Caller(rows[0][0], frozenset(Role[role] for _, role in rows), session_id)


# The row of an address over all accounts has this account (no email address is empty).
_WHOLE_ADDRESS = ""


def _record(row: SignInRecordRow | None) -> SignInRecord:
    if row is None:
        return SignInRecord()
    return SignInRecord(row.failures, row.last_failure_at, row.last_success_at)


class SqlLoginThrottle:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def records(self, account: str, address: str) -> tuple[SignInRecord, SignInRecord]:
        rows = {
            row.account: row
            for row in await self._session.scalars(
                select(SignInRecordRow).where(
                    SignInRecordRow.address == address, SignInRecordRow.account.in_([account, _WHOLE_ADDRESS])
                )
            )
        }
        return _record(rows.get(account)), _record(rows.get(_WHOLE_ADDRESS))

    async def _locked(self, account: str, address: str, now: datetime) -> SignInRecord:
        # Created first when missing so that there is a row to lock: parallel attempts of one
        # pair then queue on it and each sees the failures of those before it.
        await self._session.execute(
            insert(SignInRecordRow)
            .values(account=account, address=address, failures=0, touched_at=now)
            .on_conflict_do_nothing()
        )
        row = await self._session.scalar(
            select(SignInRecordRow)
            .where(SignInRecordRow.account == account, SignInRecordRow.address == address)
            .with_for_update()
        )
        return _record(row)

    async def lock_pair(self, account: str, address: str, now: datetime) -> SignInRecord:
        return await self._locked(account, address, now)

    async def lock_address(self, address: str, now: datetime) -> SignInRecord:
        return await self._locked(_WHOLE_ADDRESS, address, now)

    async def save(self, account: str | None, address: str, record: SignInRecord, now: datetime) -> None:
        await self._session.execute(
            update(SignInRecordRow)
            .where(SignInRecordRow.account == (account or _WHOLE_ADDRESS), SignInRecordRow.address == address)
            .values(
                failures=record.failures,
                last_failure_at=record.last_failure_at,
                last_success_at=record.last_success_at,
                touched_at=now,
            )
        )

    async def count_registration(self, address: str, now: datetime, window: timedelta) -> tuple[int, datetime]:
        stale = RegistrationsByAddressRow.window_start <= now - window
        row = (
            await self._session.execute(
                insert(RegistrationsByAddressRow)
                .values(address=address, window_start=now, registrations=1)
                .on_conflict_do_update(
                    index_elements=[RegistrationsByAddressRow.address],
                    set_={
                        "registrations": case((stale, 1), else_=RegistrationsByAddressRow.registrations + 1),
                        "window_start": case((stale, now), else_=RegistrationsByAddressRow.window_start),
                    },
                )
                .returning(RegistrationsByAddressRow.registrations, RegistrationsByAddressRow.window_start)
            )
        ).one()
        return int(row[0]), row[1]

    async def prune(self, untouched_before: datetime, windows_before: datetime) -> int:
        records = await self._session.execute(
            delete(SignInRecordRow).where(SignInRecordRow.touched_at < untouched_before)
        )
        windows = await self._session.execute(
            delete(RegistrationsByAddressRow).where(RegistrationsByAddressRow.window_start < windows_before)
        )
        return int(getattr(records, "rowcount", 0)) + int(getattr(windows, "rowcount", 0))
