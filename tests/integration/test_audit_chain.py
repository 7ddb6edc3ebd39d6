"""The audit chain against those who can write the database: keyed hashes, signed checkpoints
outside the database, and a runtime role that cannot rewrite the trail.

Each test gets a database of its own on the session's PostgreSQL, since it tampers with the
trail or creates roles."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psycopg
import pytest
from pydantic import SecretStr
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from cinema.identity.v1 import identity_pb2 as ipb
from cinema.identity.v1.identity_pb2_grpc import IdentityServiceStub
from cinema.payment.v1 import payment_pb2 as ppb
from cinema.payment.v1.payment_pb2_grpc import PaymentServiceStub
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.audit_checkpoints import FileCheckpoints
from cinema_grpc.adapters.local_stripe import LocalStripe
from cinema_grpc.domain.money import Money
from cinema_grpc.domain.payment.audit import AuditProblem, AuditVerdict
from cinema_grpc.domain.payment.model import GENESIS_HASH, AuditEntry, AuditScheme
from cinema_grpc.domain.payment.use_cases import checkpoint_audit_trail, verify_audit_trail
from cinema_grpc.settings import Settings
from cinema_grpc.storage import migrations
from cinema_grpc.storage.database import grant_runtime_role, migrate, schema_behind, sqlalchemy_url
from cinema_grpc.storage.unit_of_work import SqlUnitOfWork
from tests.auth_client import PASSWORD, register, with_token
from tests.booking_data import customer, hold, open_sale
from tests.conftest import TEST_AUDIT_KEY, RunningServer, _libpq
from tests.payment_data import confirm_card

Db = psycopg.Connection[tuple[object, ...]]
KEY = TEST_AUDIT_KEY.encode()
CLI = str(Path(sys.executable).parent / "cinema-grpc")


class Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def database(admin: Db, url: str, *, owner: str | None = None) -> str:
    """A new empty database (owned by ``owner``); its URL."""
    name = f"cinema_audit_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def as_role(url: str, role: str, password: str) -> str:
    return make_url(url).set(username=role, password=password).render_as_string(hide_password=False)


def append(url: str, count: int, *, note: str = "") -> None:
    """Appends ``count`` keyed entries, each in a transaction of its own, as the server does."""

    async def go() -> None:
        engine = create_async_engine(sqlalchemy_url(url))
        try:
            for i in range(count):
                async with SqlUnitOfWork(async_sessionmaker(engine), audit_key=KEY) as uow:
                    entry = AuditEntry(
                        uuid.uuid4(), "succeeded", f"pi_{i}", Money(1150 + i, "EUR"), "stripe", note, datetime.now(UTC)
                    )
                    await uow.audit.append(entry)
                    await uow.commit()
        finally:
            await engine.dispose()

    asyncio.run(go())


def verify(url: str, checkpoints: FileCheckpoints) -> AuditVerdict:
    async def go() -> AuditVerdict:
        engine = create_async_engine(sqlalchemy_url(url))
        try:
            return await verify_audit_trail(SqlUnitOfWork(async_sessionmaker(engine)), KEY, checkpoints)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def checkpoint(url: str, checkpoints: FileCheckpoints) -> object:
    async def go() -> object:
        engine = create_async_engine(sqlalchemy_url(url))
        try:
            return await checkpoint_audit_trail(SqlUnitOfWork(async_sessionmaker(engine)), KEY, checkpoints, Clock())
        finally:
            await engine.dispose()

    return asyncio.run(go())


def rows(conn: Db) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT sequence, payment_id, kind, stripe_id, amount_minor, currency, actor, note, created_at, scheme"
        " FROM payment.audit_log ORDER BY sequence"
    ).fetchall()


def recompute_without_the_key(conn: Db, *, scheme: AuditScheme | None = None, start: int = 1) -> None:
    """What a writer without the key can do: recompute the hashes from entry ``start`` on with
    the public SHA-256 chain (optionally also marking those entries plain), behind the
    triggers' back."""
    conn.execute("ALTER TABLE payment.audit_log DISABLE TRIGGER audit_log_append_only")
    before = conn.execute("SELECT hash FROM payment.audit_log WHERE sequence = %s", (start - 1,)).fetchone()
    previous = str(before[0]) if before else GENESIS_HASH
    for sequence, payment_id, kind, stripe_id, amount, currency, actor, note, created_at, _ in rows(conn):
        if int(str(sequence)) < start:
            continue
        entry = AuditEntry(
            uuid.UUID(str(payment_id)),
            str(kind),
            str(stripe_id),
            Money(int(str(amount)), str(currency)) if amount is not None else None,
            str(actor),
            str(note),
            created_at,  # type: ignore[arg-type]
            scheme=AuditScheme.PLAIN_SHA256,
        )
        digest = entry.chained_hash(previous, None)
        conn.execute(
            "UPDATE payment.audit_log SET prev_hash = %s, hash = %s, scheme = COALESCE(%s, scheme) WHERE sequence = %s",
            (previous, digest, int(scheme) if scheme else None, sequence),
        )
        previous = digest
    conn.execute("ALTER TABLE payment.audit_log ENABLE TRIGGER audit_log_append_only")


def drop(admin: Db, url: str) -> None:
    admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


@pytest.fixture
def empty_database(db_admin: Db, database_url: str) -> Iterator[str]:
    """A new empty database for one test (its URL), dropped after it."""
    url = database(db_admin, database_url)
    yield url
    drop(db_admin, url)


@pytest.fixture(scope="module")
def template(db_admin: Db, database_url: str) -> Iterator[str]:
    """A migrated database to copy, so each test starts from a fresh one quickly."""
    url = database(db_admin, database_url)
    migrate(sqlalchemy_url(url))
    yield str(make_url(url).database)
    drop(db_admin, url)


@pytest.fixture
def fresh(db_admin: Db, database_url: str, template: str) -> Iterator[str]:
    name = f"cinema_audit_{uuid.uuid4().hex[:10]}"
    db_admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    db_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_entries_written_before_the_chain_was_keyed_still_verify(empty_database: str, tmp_path: Path) -> None:
    url = empty_database
    migrate(sqlalchemy_url(url), "0010")
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        previous = GENESIS_HASH
        for i in range(3):  # as the code before the keyed chain wrote them
            entry = AuditEntry(
                uuid.uuid4(),
                "created",
                f"pi_old_{i}",
                Money(900, "EUR"),
                "system",
                "",
                datetime.now(UTC),
                scheme=AuditScheme.PLAIN_SHA256,
            )
            digest = entry.chained_hash(previous, None)
            conn.execute(
                "INSERT INTO payment.audit_log (payment_id, kind, stripe_id, amount_minor, currency, actor, note,"
                " created_at, prev_hash, hash) VALUES (%s, %s, %s, 900, 'EUR', 'system', '', %s, %s, %s)",
                (entry.payment_id, entry.kind, entry.stripe_id, entry.created_at, previous, digest),
            )
            previous = digest
    migrate(sqlalchemy_url(url))
    append(url, 2)
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        assert [row[-1] for row in rows(conn)] == [1, 1, 1, 2, 2]
    verdict = verify(url, FileCheckpoints(tmp_path / "checkpoint.json"))
    assert (verdict.intact, verdict.entries_checked) == (True, 5)


def test_a_chain_rewritten_and_recomputed_without_the_key_is_caught(fresh: str, tmp_path: Path) -> None:
    checkpoints = FileCheckpoints(tmp_path / "checkpoint.json")
    append(fresh, 4)
    assert checkpoint(fresh, checkpoints) is not None
    with psycopg.connect(_libpq(fresh), autocommit=True) as attacker:
        attacker.execute("ALTER TABLE payment.audit_log DISABLE TRIGGER audit_log_append_only")
        attacker.execute("UPDATE payment.audit_log SET amount_minor = 1 WHERE sequence = 2")
        recompute_without_the_key(attacker)
    altered = verify(fresh, checkpoints)
    assert (altered.intact, altered.first_broken_sequence, altered.problem) == (False, 1, AuditProblem.ENTRY_ALTERED)

    # every entry marked plain, so the chain is consistent in itself: the checkpoint catches it
    with psycopg.connect(_libpq(fresh), autocommit=True) as attacker:
        recompute_without_the_key(attacker, scheme=AuditScheme.PLAIN_SHA256)
    downgraded = verify(fresh, checkpoints)
    assert (downgraded.intact, downgraded.problem) == (False, AuditProblem.ENTRY_ALTERED)
    assert downgraded.first_broken_sequence == downgraded.checkpoint_sequence == 4


def test_a_plain_entry_after_keyed_ones_is_a_downgrade(fresh: str, tmp_path: Path) -> None:
    append(fresh, 3)
    with psycopg.connect(_libpq(fresh), autocommit=True) as attacker:
        attacker.execute("ALTER TABLE payment.audit_log DISABLE TRIGGER audit_log_append_only")
        attacker.execute("UPDATE payment.audit_log SET amount_minor = 1 WHERE sequence = 3")
        recompute_without_the_key(attacker, scheme=AuditScheme.PLAIN_SHA256, start=3)
    verdict = verify(fresh, FileCheckpoints(tmp_path / "none.json"))
    assert (verdict.first_broken_sequence, verdict.problem) == (3, AuditProblem.KEYED_CHAIN_DOWNGRADED)


def test_deleting_the_newest_entries_is_caught_by_the_checkpoint(fresh: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    checkpoints = FileCheckpoints(data_dir / "audit-checkpoint.json")
    append(fresh, 3)
    assert checkpoint(fresh, checkpoints) is not None
    assert os.stat(checkpoints.path).st_mode & 0o777 == 0o600
    assert verify(fresh, checkpoints).intact
    with psycopg.connect(_libpq(fresh), autocommit=True) as attacker:
        attacker.execute("ALTER TABLE payment.audit_log DISABLE TRIGGER audit_log_append_only")
        attacker.execute("DELETE FROM payment.audit_log WHERE sequence = 3")
        attacker.execute("ALTER TABLE payment.audit_log ENABLE TRIGGER audit_log_append_only")
    missing = verify(fresh, checkpoints)
    assert (missing.intact, missing.first_broken_sequence, missing.problem) == (
        False,
        3,
        AuditProblem.ENTRIES_MISSING,
    )
    # new entries do not move the checkpoint past the gap, so the deletion stays visible
    append(fresh, 1)
    assert checkpoint(fresh, checkpoints) is None
    assert checkpoints.latest() is not None and checkpoints.latest().sequence == 3  # type: ignore[union-attr]
    env = {**os.environ, "DATABASE_URL": fresh, "CINEMA_AUDIT_KEY": TEST_AUDIT_KEY, "CINEMA_DATA_DIR": str(data_dir)}
    command = subprocess.run([CLI, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert command.returncode == 1
    assert "BROKEN at entry 3: ENTRIES_MISSING" in command.stderr


def test_verify_without_the_audit_key_says_so_instead_of_calling_the_trail_broken(fresh: str, tmp_path: Path) -> None:
    append(fresh, 2)
    data_dir = tmp_path / "ops-box"
    env = {k: v for k, v in os.environ.items() if k != "CINEMA_AUDIT_KEY"}
    env.update(DATABASE_URL=fresh, CINEMA_DATA_DIR=str(data_dir))
    command = subprocess.run([CLI, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert command.returncode == 2
    assert "no audit key: set CINEMA_AUDIT_KEY" in command.stderr and "BROKEN" not in command.stderr
    assert not (data_dir / "audit-chain-key").exists()  # no key of its own made up
    # A key file others may read is named, without a traceback.
    data_dir.mkdir()
    (data_dir / "audit-chain-key").write_text(TEST_AUDIT_KEY)
    (data_dir / "audit-chain-key").chmod(0o644)
    command = subprocess.run([CLI, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert command.returncode == 2
    assert "has mode 0644" in command.stderr and "Traceback" not in command.stderr
    (data_dir / "audit-chain-key").chmod(0o600)
    command = subprocess.run([CLI, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert command.returncode == 0, command.stderr
    assert "audit trail intact: 2 entries checked" in command.stdout


def test_an_edited_checkpoint_is_reported(fresh: str, tmp_path: Path) -> None:
    checkpoints = FileCheckpoints(tmp_path / "checkpoint.json")
    append(fresh, 2)
    checkpoint(fresh, checkpoints)
    checkpoints.path.write_text(checkpoints.path.read_text().replace('"sequence": 2', '"sequence": 1'))
    verdict = verify(fresh, checkpoints)
    assert (verdict.intact, verdict.problem) == (False, AuditProblem.CHECKPOINT_FORGED)


@pytest.fixture
def roles(db_admin: Db, database_url: str) -> Iterator[tuple[str, str]]:
    """A database owned by an owner role and migrated by it, and the runtime role the command
    line creates: (owner URL, runtime URL)."""
    suffix = uuid.uuid4().hex[:8]
    owner, runtime = f"cinema_owner_{suffix}", f"cinema_app_{suffix}"
    db_admin.execute(f"CREATE ROLE \"{owner}\" LOGIN CREATEROLE PASSWORD 'owner-password'")
    url = database(db_admin, database_url, owner=owner)
    owner_url = as_role(url, owner, "owner-password")
    migrate(sqlalchemy_url(owner_url))
    created = subprocess.run(
        [CLI, "grant-runtime-role", runtime, "--password-stdin"],
        input="runtime-password\n",
        env={**os.environ, "DATABASE_URL": owner_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    yield owner_url, as_role(url, runtime, "runtime-password")
    drop(db_admin, url)
    db_admin.execute(f'DROP ROLE IF EXISTS "{runtime}"')
    db_admin.execute(f'DROP ROLE IF EXISTS "{owner}"')


def test_the_runtime_role_cannot_rewrite_the_audit_trail(roles: tuple[str, str]) -> None:
    owner_url, runtime_url = roles
    append(runtime_url, 2)  # it appends, as the server does
    with psycopg.connect(_libpq(runtime_url), autocommit=True) as app:
        assert app.execute("SELECT count(*) FROM payment.audit_log").fetchone() == (2,)
        for statement in (
            "UPDATE payment.audit_log SET amount_minor = 1",
            "DELETE FROM payment.audit_log",
            "TRUNCATE payment.audit_log",
            "ALTER TABLE payment.audit_log DISABLE TRIGGER audit_log_append_only",
            "ALTER TABLE payment.audit_log DROP COLUMN scheme",
            "DROP TRIGGER audit_log_append_only ON payment.audit_log",
            "SET session_replication_role = replica",
            "CREATE TABLE payment.audit_log_copy (LIKE payment.audit_log)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)
    # the grant is idempotent, and the owner still migrates
    grant_runtime_role(sqlalchemy_url(owner_url), str(make_url(runtime_url).username), None)
    assert schema_behind(sqlalchemy_url(runtime_url)) is None


def test_the_server_works_normally_as_the_runtime_role(
    roles: tuple[str, str], server_settings: Settings, local_stripe: LocalStripe, tmp_path: Path
) -> None:
    owner_url, runtime_url = roles
    settings = server_settings.model_copy(
        update={"database_url": SecretStr(runtime_url), "data_dir": tmp_path / "data"}
    )
    running = RunningServer(settings)
    assert running.server is not None
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
            psycopg.connect(_libpq(owner_url), autocommit=True) as owner,
        ):
            admin = register(channel)
            owner.execute("INSERT INTO identity.user_roles (user_id, role) VALUES (%s, 'ADMIN')", (admin.id,))
            token = IdentityServiceStub(channel).Login(ipb.LoginRequest(email=admin.email, password=PASSWORD))
            sale = open_sale(ScreeningServiceStub(with_token(channel, token.access_token)))
            ana = customer(channel, owner)
            held = hold(ana, sale, "A1", "A2")
            payments = PaymentServiceStub(with_token(channel, ana.token))
            payment = payments.CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id))
            assert confirm_card(local_stripe, payment.intent_id) == "succeeded"
            paid = payments.SyncPayment(ppb.SyncPaymentRequest(payment_id=payment.id))
            assert paid.state == ppb.PAYMENT_STATE_SUCCESS and paid.booking_id
            # the background jobs too
            running.run(running.server.sweep_expired_holds())
            running.run(running.server.reconcile_payments())
            running.run(running.server.prune_sign_in_records())
            running.run(running.server.prune_old_records())
            assert running.run(running.server.checkpoint_audit_trail()) is not None
            verdict = PaymentServiceStub(with_token(channel, token.access_token)).VerifyAuditTrail(
                ppb.VerifyAuditTrailRequest()
            )
            assert verdict.intact and verdict.entries_checked >= 2
            assert verdict.checkpoint_sequence == verdict.entries_checked and verdict.problem == ""
    finally:
        running.stop()
    assert (tmp_path / "data" / "audit-checkpoint.json").exists()


def test_serve_without_migrations_names_a_schema_that_is_behind(empty_database: str) -> None:
    url = empty_database
    newest = sorted(p.name[:4] for p in (Path(migrations.__file__).parent / "versions").glob("[0-9]*.py"))[-1]
    assert schema_behind(sqlalchemy_url(url)) == (
        f"the database schema is at migration (none), this server needs {newest}"
    )
