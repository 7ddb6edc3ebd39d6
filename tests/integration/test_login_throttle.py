"""The sign-in and registration throttles over a real channel, and password hashing kept apart
from Stripe calls.

Most tests use a second server on the session's database that trusts loopback as a proxy, so a
test can speak for many client addresses with x-forwarded-for; the session's own server trusts
nobody, as a default installation does.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import psycopg
import pytest

from cinema.identity.v1 import identity_pb2 as ipb
from cinema.identity.v1.identity_pb2_grpc import IdentityServiceStub
from cinema.payment.v1 import payment_pb2 as ppb
from cinema.payment.v1.payment_pb2_grpc import PaymentServiceStub
from cinema_grpc.settings import Settings
from tests.auth_client import PASSWORD, register
from tests.booking_data import Customer, Sale, hold
from tests.conftest import RunningServer
from tests.rpc_errors import RpcFailure, call_fails, failure

Db = psycopg.Connection[tuple[object, ...]]
WRONG = "not the password at all"


@pytest.fixture(scope="module")
def proxied(server_settings: Settings, server: RunningServer) -> Iterator[str]:
    """Address of a server behind a trusted proxy on loopback, with small limits: three
    registrations per address, eight failures per address over all accounts, and one thread
    for password hashes of the production cost, with room for three at once."""
    settings = server_settings.model_copy(
        update={
            "trusted_proxies": "127.0.0.1/32, ::1",
            "registrations_per_address": 3,
            "login_address_free_failures": 8,
            "password_hash_threads": 1,
            "password_hash_max_pending": 3,
            "password_hash_memory_kib": Settings.model_fields["password_hash_memory_kib"].default,
            "password_hash_iterations": Settings.model_fields["password_hash_iterations"].default,
        }
    )
    running = RunningServer(settings)
    yield f"127.0.0.1:{running.port}"
    running.stop()


def from_address(address: str) -> tuple[tuple[str, str]]:
    return (("x-forwarded-for", address),)


def login(stub: IdentityServiceStub, email: str, password: str, client: str | None = None) -> str:
    """The reason of the answer, or "signed in"."""
    try:
        stub.Login(
            ipb.LoginRequest(email=email, password=password),
            metadata=from_address(client) if client else None,
            timeout=30,
        )
    except grpc.RpcError as error:
        return failure(error).reason
    return "signed in"


def refused(stub: IdentityServiceStub, email: str, password: str, client: str | None = None) -> RpcFailure:
    metadata = from_address(client) if client else None
    return call_fails(stub.Login, ipb.LoginRequest(email=email, password=password), metadata=metadata)


def test_sixty_concurrent_right_sign_ins_from_one_address_all_succeed(
    address: str, channel: grpc.Channel, db: Db
) -> None:
    people = [register(channel) for _ in range(4)]
    stub = IdentityServiceStub(channel)
    # earlier failures of the address and of each account do not hold back a right password
    assert {login(stub, person.email, WRONG) for person in people} == {"INVALID_CREDENTIALS"}
    barrier = threading.Barrier(60)

    def sign_in(i: int) -> str:
        with grpc.insecure_channel(address) as own:
            mine = IdentityServiceStub(own)
            barrier.wait()
            return login(mine, people[i % 4].email, PASSWORD)

    with ThreadPoolExecutor(60) as pool:
        outcomes = list(pool.map(sign_in, range(60)))
    assert outcomes == ["signed in"] * 60, sorted(set(outcomes))
    failures = db.execute("SELECT sum(failures) FROM identity.sign_in_records WHERE account <> ''").fetchone()
    assert failures == (0,)


def test_a_guesser_at_one_address_cannot_keep_the_owner_out_from_another(proxied: str, channel: grpc.Channel) -> None:
    owner = register(channel)
    with grpc.insecure_channel(proxied) as behind_proxy:
        stub = IdentityServiceStub(behind_proxy)
        assert login(stub, owner.email, PASSWORD, "203.0.113.10") == "signed in"
        guesses = [login(stub, owner.email, f"{WRONG} {i}", "198.51.100.66") for i in range(5)]
        assert guesses == ["INVALID_CREDENTIALS"] * 5
        throttled = refused(stub, owner.email, PASSWORD, "198.51.100.66")
        assert (throttled.code, throttled.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_THROTTLED")
        assert throttled.retry_delay_seconds is not None and 25 < throttled.retry_delay_seconds <= 30
        assert login(stub, owner.email, PASSWORD, "203.0.113.10") == "signed in"


def test_the_wait_grows_with_each_failure_past_the_allowance(proxied: str, channel: grpc.Channel, db: Db) -> None:
    owner = register(channel)
    with grpc.insecure_channel(proxied) as behind_proxy:
        stub = IdentityServiceStub(behind_proxy)
        for i in range(5):
            login(stub, owner.email, f"{WRONG} {i}", "198.51.100.67")
        # the 30 s have passed since the fifth failure: one more guess is heard, and fails
        db.execute(
            "UPDATE identity.sign_in_records SET last_failure_at = now() - interval '31 seconds' WHERE account = %s",
            (owner.email,),
        )
        assert login(stub, owner.email, WRONG, "198.51.100.67") == "INVALID_CREDENTIALS"
        after_six = refused(stub, owner.email, PASSWORD, "198.51.100.67")
        assert after_six.retry_delay_seconds is not None and 55 < after_six.retry_delay_seconds <= 60
        db.execute("UPDATE identity.sign_in_records SET failures = 20 WHERE account = %s", (owner.email,))
        capped = refused(stub, owner.email, PASSWORD, "198.51.100.67")
        assert capped.retry_delay_seconds is not None and 850 < capped.retry_delay_seconds <= 900


def test_guessing_many_accounts_from_one_address_holds_back_only_accounts_new_to_it(
    proxied: str, channel: grpc.Channel
) -> None:
    regular, newcomer = register(channel), register(channel)
    with grpc.insecure_channel(proxied) as behind_proxy:
        stub = IdentityServiceStub(behind_proxy)
        assert login(stub, regular.email, PASSWORD, "192.0.2.99") == "signed in"
        sprayed = [login(stub, f"victim-{i}-{uuid.uuid4().hex[:6]}@example.com", WRONG, "192.0.2.99") for i in range(8)]
        assert sprayed == ["INVALID_CREDENTIALS"] * 8
        assert refused(stub, newcomer.email, PASSWORD, "192.0.2.99").reason == "LOGIN_THROTTLED"
        assert login(stub, regular.email, PASSWORD, "192.0.2.99") == "signed in"
        assert login(stub, newcomer.email, PASSWORD, "192.0.2.100") == "signed in"


def test_a_loopback_client_cannot_dodge_the_throttle_by_rotating_x_forwarded_for(channel: grpc.Channel, db: Db) -> None:
    user = register(channel)
    stub = IdentityServiceStub(channel)
    for i in range(5):
        assert login(stub, user.email, WRONG, f"203.0.113.{i + 1}") == "INVALID_CREDENTIALS"
    assert refused(stub, user.email, PASSWORD, "203.0.113.200").reason == "LOGIN_THROTTLED"
    addresses = {row[0] for row in db.execute("SELECT DISTINCT address FROM identity.sign_in_records")}
    assert addresses == {"127.0.0.1"}


def test_registrations_are_limited_per_address(proxied: str, db: Db) -> None:
    with grpc.insecure_channel(proxied) as behind_proxy:
        stub = IdentityServiceStub(behind_proxy)

        def request() -> ipb.RegisterRequest:
            return ipb.RegisterRequest(
                email=f"{uuid.uuid4().hex[:12]}@example.com", password=PASSWORD, display_name="R"
            )

        for _ in range(3):
            stub.Register(request(), metadata=from_address("198.51.100.20"))
        too_many = call_fails(stub.Register, request(), metadata=from_address("198.51.100.20"))
        assert (too_many.code, too_many.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "REGISTRATION_THROTTLED")
        assert too_many.retry_delay_seconds is not None and 3500 < too_many.retry_delay_seconds <= 3600
        assert stub.Register(request(), metadata=from_address("198.51.100.21")).email


def test_a_registration_flood_neither_queues_without_end_nor_delays_stripe_calls(
    proxied: str, channel: grpc.Channel, sale: Sale, ana: Customer
) -> None:
    held = hold(ana, sale, "A1")
    stripe_answered: list[float] = []
    flood_started = threading.Event()

    def sign_up(i: int) -> str:
        request = ipb.RegisterRequest(
            email=f"flood-{i}-{uuid.uuid4().hex[:8]}@example.com", password=PASSWORD, display_name="F"
        )
        with grpc.insecure_channel(proxied) as own:
            flood_started.set()
            try:
                IdentityServiceStub(own).Register(request, metadata=from_address(f"198.18.0.{i}"), timeout=60)
            except grpc.RpcError as error:
                refusal = failure(error)
                assert refusal.reason != "PASSWORD_HASHING_BUSY" or refusal.retry_delay_seconds == 1.0
                return refusal.reason
            return "registered"

    def pay() -> None:
        flood_started.wait(10)
        with grpc.insecure_channel(proxied) as own:
            payments = PaymentServiceStub(own)
            metadata = (("authorization", f"Bearer {ana.token}"),)
            started = time.monotonic()
            payments.CreatePayment(ppb.CreatePaymentRequest(hold_id=held.id), metadata=metadata, timeout=30)
            stripe_answered.append(time.monotonic() - started)

    with ThreadPoolExecutor(49) as pool:
        payment = pool.submit(pay)
        outcomes = list(pool.map(sign_up, range(48)))
        payment.result()
    assert set(outcomes) == {"registered", "PASSWORD_HASHING_BUSY"}
    assert outcomes.count("PASSWORD_HASHING_BUSY") >= 30
    assert stripe_answered[0] < 3.0, f"CreatePayment took {stripe_answered[0]:.1f} s during the flood"


def test_old_sign_in_records_and_ended_registration_windows_are_pruned(server: RunningServer, db: Db) -> None:
    db.execute(
        "INSERT INTO identity.sign_in_records (account, address, failures, last_success_at, touched_at) VALUES"
        " ('old@example.com', '192.0.2.1', 0, now() - interval '40 days', now() - interval '40 days'),"
        " ('recent@example.com', '192.0.2.1', 0, now() - interval '2 days', now() - interval '2 days')"
    )
    db.execute(
        "INSERT INTO identity.registrations_by_address (address, window_start, registrations) VALUES"
        " ('192.0.2.1', now() - interval '2 hours', 5), ('192.0.2.2', now() - interval '10 minutes', 5)"
    )
    assert server.run(server.server.prune_sign_in_records()) == 2
    assert db.execute("SELECT account FROM identity.sign_in_records").fetchall() == [("recent@example.com",)]
    assert db.execute("SELECT address FROM identity.registrations_by_address").fetchall() == [("192.0.2.2",)]
