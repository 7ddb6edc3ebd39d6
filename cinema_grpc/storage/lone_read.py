"""A read that opens its unit of work runs alone, in autocommit: one statement is one snapshot
anyway (READ COMMITTED), and without it psycopg sends a BEGIN and the unit of work a ROLLBACK,
each a round trip that costs the server a wait of its own (GetShowtime, GetSeatMap)."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession


async def read_rows(session: AsyncSession, sql: str, params: dict[str, Any]) -> list[Any]:
    """The rows of a read-only statement in the driver's paramstyle: alone in autocommit when
    no transaction is open on the session's connection, inside it otherwise. Errors are wrapped
    as SQLAlchemy wraps them, and SQLAlchemy's statement hooks see the statement."""
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
