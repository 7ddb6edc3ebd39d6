"""Repositories of the identity schema: users, roles, sessions and the login throttle."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from cinema_grpc.domain.access import Caller, Role
from cinema_grpc.domain.errors import EmailTaken
from cinema_grpc.domain.identity.model import Session, User
from cinema_grpc.storage.rows import LoginFailureRow, SessionRow, UserRoleRow, UserRow


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
        query = (
            select(SessionRow.user_id, UserRoleRow.role)
            .join(UserRoleRow, UserRoleRow.user_id == SessionRow.user_id)
            .where(SessionRow.id == session_id, SessionRow.revoked_at.is_(None), SessionRow.expires_at > now)
        )
        rows = (await self._session.execute(query)).all()
        if not rows:
            return None
        return Caller(rows[0][0], frozenset(Role[role] for _, role in rows), session_id)


class SqlLoginThrottle:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def failures(self, key: str, since: datetime) -> tuple[int, datetime | None]:
        row = await self._session.get(LoginFailureRow, key)
        if row is None or row.window_start < since:
            return 0, None
        return row.failures, row.window_start

    async def record_failure(self, key: str, now: datetime, window_start_before: datetime) -> tuple[int, datetime]:
        stale = LoginFailureRow.window_start < window_start_before
        statement = insert(LoginFailureRow).values(key=key, window_start=now, failures=1)
        row = (
            await self._session.execute(
                statement.on_conflict_do_update(
                    index_elements=[LoginFailureRow.key],
                    set_={
                        "failures": case((stale, 1), else_=LoginFailureRow.failures + 1),
                        "window_start": case((stale, now), else_=LoginFailureRow.window_start),
                    },
                ).returning(LoginFailureRow.failures, LoginFailureRow.window_start)
            )
        ).one()
        return int(row[0]), row[1]

    async def forgive(self, key: str) -> None:
        await self._session.execute(
            delete(LoginFailureRow).where(LoginFailureRow.key == key, LoginFailureRow.failures <= 1)
        )
        # The guard keeps two sign-ins that forgive at once from going below one (the second
        # re-reads the row after the first and leaves it); at worst one forgiveness is lost.
        await self._session.execute(
            update(LoginFailureRow)
            .where(LoginFailureRow.key == key, LoginFailureRow.failures > 1)
            .values(failures=LoginFailureRow.failures - 1)
        )

    async def clear(self, key: str) -> None:
        await self._session.execute(delete(LoginFailureRow).where(LoginFailureRow.key == key))
