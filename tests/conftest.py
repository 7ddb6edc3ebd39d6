"""Shared fixtures: a real PostgreSQL (embedded by default, or DATABASE_URL's server) and a real
cinema-grpc server on a loopback port, reached through a real gRPC channel."""

from __future__ import annotations

import os

# The tests start processes (servers, PostgreSQL, Redis) while client threads use gRPC; every
# child execs at once, so gRPC's fork handlers have nothing to do and are turned off before
# gRPC loads (with them, a child could crash between fork and exec).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncio
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from sqlalchemy import make_url

from cinema.identity.v1 import identity_pb2 as ipb
from cinema.identity.v1.identity_pb2_grpc import IdentityServiceStub
from cinema.screening.v1 import screening_pb2_grpc
from cinema_grpc.adapters.local_stripe import API_KEY, LocalStripe
from cinema_grpc.log_config import configure_logging
from cinema_grpc.server import CinemaServer, create_server
from cinema_grpc.settings import Settings
from cinema_grpc.storage.database import EmbeddedPostgres, migrate, open_database, sqlalchemy_url
from tests.auth_client import PASSWORD, sign_in, with_token
from tests.private_redis import PrivateRedis

SCHEMAS = ("screening", "booking", "api", "payment", "admission")
# Shared by every server a test starts, in process or as a separate process.
TEST_SIGNING_KEY = "test-signing-key-0123456789abcdefghijklmnop"
# Signs ticket codes (Ed25519 private key, base64); shared like the token key.
TEST_TICKET_SIGNING_KEY = "k34VLbSX66mRfOfFJEM+PVBxO7U3xX8DNlubpKVm2SE="
TEST_AUDIT_KEY = "test-audit-chain-key-0123456789abcdefghijkl"
# Append-only by design (the database refuses TRUNCATE); entries of earlier tests stay.
KEPT_TABLES = ("payment.audit_log",)
T = TypeVar("T")

# Warnings and errors only: expected failures of RPCs under test would drown the output.
configure_logging("WARNING", "console")


def _libpq(url: str) -> str:
    """A URL psycopg accepts (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database for this test session.

    With DATABASE_URL set, a fresh database is created on that server and dropped afterwards;
    otherwise an embedded PostgreSQL runs in a temporary directory.
    """
    configured = os.environ.get("DATABASE_URL")
    if configured:
        name = f"cinema_test_{uuid.uuid4().hex[:12]}"
        admin = psycopg.connect(_libpq(configured), autocommit=True)
        admin.execute(f'CREATE DATABASE "{name}"')
        url = make_url(_libpq(configured)).set(database=name).render_as_string(hide_password=False)
        try:
            migrate(sqlalchemy_url(url))
            yield url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()
        return
    embedded = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pg")) / "pgdata")
    url = embedded.start()
    try:
        migrate(sqlalchemy_url(url))
        yield url
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def db_admin(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A direct autocommit connection for looking at rows and arranging states."""
    with psycopg.connect(_libpq(database_url), autocommit=True) as conn:
        yield conn


@pytest.fixture
def db(db_admin: psycopg.Connection[tuple[object, ...]]) -> psycopg.Connection[tuple[object, ...]]:
    """The admin connection, on emptied business tables.

    Accounts are kept (tests use unique emails), so the signed-in staff of the session stays;
    the sign-in and registration throttles are emptied because all tests sign in from the same
    address.
    """
    tables = db_admin.execute(
        "SELECT format('%%I.%%I', schemaname, tablename) FROM pg_tables"
        " WHERE schemaname = ANY(%s) AND format('%%I.%%I', schemaname, tablename) <> ALL(%s)",
        (list(SCHEMAS), list(KEPT_TABLES)),
    ).fetchall()
    truncate = (
        f"TRUNCATE {', '.join(str(t[0]) for t in tables)}, identity.sign_in_records,"
        " identity.registrations_by_address RESTART IDENTITY CASCADE"
    )
    # The server may still be at work for an earlier test (a late Stripe webhook, say): its
    # reads can deadlock with the TRUNCATE, which PostgreSQL then aborts. Try again.
    for attempt in range(5):
        try:
            db_admin.execute(truncate)
            break
        except psycopg.errors.DeadlockDetected:
            if attempt == 4:
                raise
            time.sleep(0.2)
    return db_admin


class RunningServer:
    """A CinemaServer on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.settings = settings
        self.server: CinemaServer | None = None
        self._thread = threading.Thread(target=self._run, name="cinema-grpc-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("test server did not start")
        assert self.server is not None
        self.port = self.server.port

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            database = open_database(self.settings, run_migrations=False)
            self.server, _ = create_server(self.settings, database)
            await self.server.start()
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs a coroutine on the server's event loop (e.g. one sweep of expired holds)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def stop(self) -> None:
        assert self.server is not None
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="session")
def local_stripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    """The Stripe-compatible test server (localstripe), on a free loopback port."""
    directory = tmp_path_factory.mktemp("stripe")
    stripe = LocalStripe(directory / "localstripe-state.pickle").start(log=directory / "localstripe.log")
    yield stripe
    stripe.stop()


@pytest.fixture(scope="session")
def server_settings(database_url: str, local_stripe: LocalStripe, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # The expiry job is run by the tests themselves (RunningServer.run) so they stay deterministic.
    return Settings(
        database_url=database_url,
        grpc_port=0,
        shutdown_grace_seconds=2,
        log_format="console",
        sweep_interval_seconds=3600,
        reconcile_interval_seconds=3600,
        # The gauge query reads holds and payments; the db fixture's TRUNCATE must not meet it.
        gauge_interval_seconds=3600,
        reconcile_after_seconds=0,
        stripe_secret_key=API_KEY,
        stripe_webhook_secret=local_stripe.webhook_secret,
        stripe_api_base=local_stripe.api_base,
        webhook_port=0,
        metrics_port=0,
        token_signing_key=TEST_SIGNING_KEY,
        audit_key=TEST_AUDIT_KEY,
        # The audit checkpoint file; tests write checkpoints when they need one.
        data_dir=tmp_path_factory.mktemp("server-data"),
        audit_checkpoint_seconds=3600,
        # Every test registers its accounts from this machine's address.
        registrations_per_address=100_000,
        # Cheap password hashes: tests sign in hundreds of accounts (the hashing tests set
        # the production cost again).
        password_hash_memory_kib=8192,
        password_hash_iterations=1,
        ticket_signing_key=TEST_TICKET_SIGNING_KEY,
    )


@pytest.fixture(scope="session")
def server(server_settings: Settings, local_stripe: LocalStripe) -> Iterator[RunningServer]:
    running = RunningServer(server_settings)
    assert running.server is not None
    local_stripe.deliver_webhooks_to(running.server.webhook_url)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@dataclass
class SignedIn:
    email: str
    token: str
    signed_in_at: float  # time.monotonic()


# Access tokens live 15 minutes; a whole run may take longer on a loaded machine.
SIGN_IN_AGAIN_AFTER_SECONDS = 10 * 60


@pytest.fixture(scope="session")
def admin_account(channel: grpc.Channel, db_admin: psycopg.Connection[tuple[object, ...]]) -> SignedIn:
    """An admin (who may do what staff may) for the whole session."""
    user, pair = sign_in(channel, db_admin, "ADMIN")
    return SignedIn(user.email, pair.access_token, time.monotonic())


@pytest.fixture
def admin_token(channel: grpc.Channel, admin_account: SignedIn) -> str:
    """An access token of the session's admin, signed in again before the last one expires."""
    if time.monotonic() - admin_account.signed_in_at > SIGN_IN_AGAIN_AFTER_SECONDS:
        pair = IdentityServiceStub(channel).Login(ipb.LoginRequest(email=admin_account.email, password=PASSWORD))
        admin_account.token, admin_account.signed_in_at = pair.access_token, time.monotonic()
    return admin_account.token


@pytest.fixture
def admin_channel(channel: grpc.Channel, admin_token: str) -> grpc.Channel:
    return with_token(channel, admin_token)


@pytest.fixture
def screening(
    admin_channel: grpc.Channel, db: psycopg.Connection[tuple[object, ...]]
) -> screening_pb2_grpc.ScreeningServiceStub:
    """A screening client signed in as admin, on an emptied database."""
    return screening_pb2_grpc.ScreeningServiceStub(admin_channel)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """REDIS_URL when set; otherwise a private redis-server on a free port if one is installed;
    otherwise the test is skipped, saying why."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    private = PrivateRedis.start(tmp_path)
    yield private.url
    private.stop()
