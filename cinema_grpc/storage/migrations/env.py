"""Alembic environment: migrations run on one connection under an advisory lock."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text

from cinema_grpc.storage.locks import LockNamespace, advisory_key

config = context.config


def _run(connection: Connection) -> None:
    # Replicas that start together must not migrate at the same time.
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": advisory_key(LockNamespace.MIGRATIONS)})
    # A session lock: it outlives this commit, which leaves the migrations their own
    # transactions (and lets one build an index CONCURRENTLY, outside any transaction).
    connection.commit()
    try:
        context.configure(connection=connection, version_table_schema="public")
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": advisory_key(LockNamespace.MIGRATIONS)})
        connection.commit()


connectable = config.attributes.get("connection")
if connectable is not None:
    _run(connectable)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
