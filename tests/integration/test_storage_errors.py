"""Database trouble reaches callers as retryable statuses, never as INTERNAL."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from cinema_grpc.domain.errors import Contention, ShowtimeNotFound, StorageUnavailable
from cinema_grpc.domain.screening import use_cases
from cinema_grpc.storage.database import sqlalchemy_url
from cinema_grpc.storage.unit_of_work import SqlUnitOfWork


def test_a_request_that_cannot_get_a_connection_in_time_is_told_to_retry(database_url: str) -> None:
    async def scenario() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url), pool_size=1, max_overflow=0, pool_timeout=0.2)
        try:
            async with engine.connect():  # the only connection is busy
                with pytest.raises(Contention):
                    await use_cases.get_cinema(SqlUnitOfWork(async_sessionmaker(engine)), uuid.uuid4())
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_an_unreachable_database_is_unavailable(database_url: str) -> None:
    async def scenario() -> None:
        dead = sqlalchemy_url(database_url).set(host="127.0.0.1", port=9, query={})
        engine = create_async_engine(dead, connect_args={"connect_timeout": 1})
        try:
            with pytest.raises(StorageUnavailable):
                await use_cases.get_cinema(SqlUnitOfWork(async_sessionmaker(engine)), uuid.uuid4())
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_a_connection_lost_after_the_work_is_done_does_not_fail_the_request(database_url: str) -> None:
    """PostgreSQL restarting between a request's last statement and the end of its unit of work
    (found by the soak test as an INTERNAL): the answer stands, the pool drops the connection."""

    async def scenario() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url))
        try:
            async with SqlUnitOfWork(async_sessionmaker(engine)) as uow:
                pid = await uow.session.scalar(text("SELECT pg_backend_pid()"))
                async with engine.connect() as other:
                    await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            # The next request gets a fresh connection.
            async with SqlUnitOfWork(async_sessionmaker(engine)) as uow:
                assert await uow.session.scalar(text("SELECT 1")) == 1
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_a_lone_read_meets_database_trouble_as_every_other_read(database_url: str) -> None:
    """GetShowtime's read borrows a pooled connection without a session: a busy pool is told to
    retry, a lost connection is unavailable and discarded (the next read gets a fresh one), an
    unreachable database is unavailable."""

    async def scenario() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url), pool_size=1, max_overflow=0, pool_timeout=0.2)
        sessions = async_sessionmaker(engine)
        showtime_id = uuid.uuid4()
        try:
            async with engine.connect():  # the only connection is busy
                with pytest.raises(Contention):
                    await use_cases.get_showtime(SqlUnitOfWork(sessions), showtime_id)
            async with engine.connect() as conn:
                pid = await conn.scalar(text("SELECT pg_backend_pid()"))
                await conn.rollback()
            killer = create_async_engine(sqlalchemy_url(database_url))
            async with killer.connect() as other:  # and waits until the backend is gone
                await other.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
            await killer.dispose()
            with pytest.raises(StorageUnavailable):
                await use_cases.get_showtime(SqlUnitOfWork(sessions), showtime_id)
            with pytest.raises(ShowtimeNotFound):
                await use_cases.get_showtime(SqlUnitOfWork(sessions), showtime_id)
        finally:
            await engine.dispose()
        dead = sqlalchemy_url(database_url).set(host="127.0.0.1", port=9, query={})
        unreachable = create_async_engine(dead, connect_args={"connect_timeout": 1})
        try:
            with pytest.raises(StorageUnavailable):
                await use_cases.get_showtime(SqlUnitOfWork(async_sessionmaker(unreachable)), showtime_id)
        finally:
            await unreachable.dispose()

    asyncio.run(scenario())
