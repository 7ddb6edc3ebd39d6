"""A read that opens its unit of work runs alone, in autocommit: one statement is one snapshot
anyway (READ COMMITTED), and without it psycopg sends a BEGIN and the unit of work a ROLLBACK,
each a round trip that costs the server a wait of its own (GetShowtime, GetSeatMap).

Alone, it does not go through the session either: it borrows a connection of the engine's pool
for the statement and gives it back, without the session's transaction, the engine's
connection and their rollbacks around it (about half of such a read's CPU in this process).
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.util import greenlet_spawn


async def read_rows(session: AsyncSession, sql: str, params: dict[str, Any]) -> list[Any]:
    """The rows of a read-only statement in the driver's paramstyle: alone in autocommit when
    nothing has run in the session's transaction yet, inside it otherwise. Errors are wrapped
    as SQLAlchemy wraps them, and SQLAlchemy's statement hooks see the statement."""
    if not session.in_transaction() and isinstance(session.bind, AsyncEngine):
        return await _alone(session.bind.sync_engine, sql, params)
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    sync = connection.sync_connection
    assert isinstance(driver, psycopg.AsyncConnection) and sync is not None
    alone = driver.info.transaction_status is psycopg.pq.TransactionStatus.IDLE and not driver.autocommit
    sync.dispatch.before_cursor_execute(sync, None, sql, params, None, False)
    try:
        if alone:
            await driver.set_autocommit(True)
        try:
            cursor = await driver.execute(sql, params)
            return await cursor.fetchall()
        finally:
            if alone:
                await driver.set_autocommit(False)
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, params, exc, psycopg.Error, hide_parameters=True) from exc


async def _alone(engine: Engine, sql: str, params: dict[str, Any]) -> list[Any]:
    """The statement on a connection borrowed from the pool (its checkout and checkin events run
    as usual), in autocommit; a connection that failed is not given back but discarded."""
    try:
        pooled = await greenlet_spawn(engine.pool.connect)
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, params, exc, psycopg.Error, hide_parameters=True) from exc
    driver = pooled.driver_connection
    assert isinstance(driver, psycopg.AsyncConnection)
    broken: psycopg.Error | None = None
    try:
        if engine.dispatch.before_cursor_execute:
            # No engine connection here: the hooks get None for it.
            engine.dispatch.before_cursor_execute(None, None, sql, params, None, False)
        await driver.set_autocommit(True)
        try:
            cursor = await driver.execute(sql, params)
            return await cursor.fetchall()
        finally:
            await driver.set_autocommit(False)
    except psycopg.Error as exc:
        if driver.broken or driver.closed:
            broken = exc
        raise DBAPIError.instance(
            sql, params, exc, psycopg.Error, hide_parameters=True, connection_invalidated=broken is not None
        ) from exc
    finally:
        if broken is not None:
            await greenlet_spawn(pooled.invalidate, broken)
        else:
            await greenlet_spawn(pooled.close)
