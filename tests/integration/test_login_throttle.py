"""The login throttle's counters under concurrent sign-ins."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from cinema_grpc.storage.database import sqlalchemy_url
from cinema_grpc.storage.unit_of_work import SqlUnitOfWork

Db = psycopg.Connection[tuple[object, ...]]


def test_two_sign_ins_forgiving_one_failure_at_once_never_break_the_counter(database_url: str, db: Db) -> None:
    """Two successful sign-ins from one address forgive a failure each at the same moment: the
    second must not take the counter below one (a CHECK violation answered as INTERNAL)."""
    key = "client:192.0.2.7"

    async def scenario() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url))
        sessions = async_sessionmaker(engine)
        now = datetime.now(UTC)
        try:
            async with SqlUnitOfWork(sessions) as uow:
                for _ in range(2):
                    await uow.login_throttle.record_failure(key, now, now - timedelta(minutes=15))
                await uow.commit()
            async with SqlUnitOfWork(sessions) as first, SqlUnitOfWork(sessions) as second:
                await first.login_throttle.forgive(key)  # holds the row until it commits
                racing = asyncio.create_task(second.login_throttle.forgive(key))
                await asyncio.sleep(0.3)
                assert not racing.done(), "the second forgiveness waits for the first"
                await first.commit()
                await racing
                await second.commit()
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    rows = db.execute("SELECT failures FROM identity.login_failures WHERE key = %s", (key,)).fetchall()
    assert rows in ([], [(1,)])
