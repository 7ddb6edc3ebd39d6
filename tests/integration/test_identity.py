"""Identity over a real channel: registration, sign-in, rotation, sign-out, roles, throttling,
and every way a request is refused for who sent it."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import jwt
import psycopg
import pytest
from google.protobuf import field_mask_pb2

from cinema.identity.v1 import identity_pb2 as ipb
from cinema.identity.v1.identity_pb2_grpc import IdentityServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from tests.auth_client import PASSWORD, register, sign_in, with_token
from tests.integration.test_cinemas_and_movies import count
from tests.rpc_errors import call_fails, failure

Db = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def identity(channel: grpc.Channel, db: Db) -> IdentityServiceStub:
    return IdentityServiceStub(channel)


def signed_in(channel: grpc.Channel, token: str) -> IdentityServiceStub:
    return IdentityServiceStub(with_token(channel, token))


def test_registration_normalises_the_email_and_never_returns_the_password(
    identity: IdentityServiceStub, db: Db
) -> None:
    email = f"Ana.{uuid.uuid4().hex[:8]}@Example.COM"
    user = identity.Register(ipb.RegisterRequest(email=f"  {email} ", password=PASSWORD, display_name=" Ana "))
    assert user.email == email.lower()
    assert (user.display_name, list(user.roles)) == ("Ana", [ipb.ROLE_CUSTOMER])
    assert PASSWORD not in str(user)
    stored = db.execute("SELECT password_hash FROM identity.users WHERE id = %s", (user.id,)).fetchone()
    assert stored is not None and str(stored[0]).startswith("$argon2id$")
    again = call_fails(identity.Register, ipb.RegisterRequest(email=email.upper(), password=PASSWORD, display_name="B"))
    assert (again.code, again.reason) == (grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN")


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({"email": "not-an-email", "password": PASSWORD, "display_name": "A"}, {"email": "INVALID_FORMAT"}),
        ({"email": "a@example.com", "password": "short", "display_name": "A"}, {"password": "WEAK_PASSWORD"}),
        ({"email": "a@example.com", "password": "a" * 12, "display_name": "A"}, {"password": "WEAK_PASSWORD"}),
        (
            {"email": "abcdefghij@x.io", "password": "abcdefghij@x.io", "display_name": "A"},
            {"password": "WEAK_PASSWORD"},
        ),
        (
            {"email": "a@example.com", "password": PASSWORD, "display_name": "x" * 1_000_000},
            {"display_name": "TOO_LONG"},
        ),
        (
            {"email": "a@example.com", "password": PASSWORD, "display_name": "A", "phone": "'; DROP TABLE users; --"},
            {"phone": "INVALID_FORMAT"},
        ),
        (
            {"email": "' OR 1=1 --@x", "password": "p" * 200, "display_name": ""},
            {"email": "INVALID_FORMAT", "password": "WEAK_PASSWORD", "display_name": "REQUIRED"},
        ),
    ],
)
def test_bad_registrations_are_refused_field_by_field_and_write_nothing(
    identity: IdentityServiceStub, db: Db, request_fields: dict[str, str], expected: dict[str, str]
) -> None:
    before = count(db, "identity.users")
    failed = call_fails(identity.Register, ipb.RegisterRequest(**request_fields))
    assert failed.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failed.fields == expected
    assert count(db, "identity.users") == before


def test_twenty_concurrent_registrations_of_one_email_make_one_account(address: str, db: Db) -> None:
    email = f"race-{uuid.uuid4().hex[:8]}@example.com"
    barrier = threading.Barrier(20)

    def attempt(_: int) -> str:
        with grpc.insecure_channel(address) as channel:
            stub = IdentityServiceStub(channel)
            barrier.wait()
            try:
                stub.Register(ipb.RegisterRequest(email=email, password=PASSWORD, display_name="Racer"), timeout=30)
                return "created"
            except grpc.RpcError as error:
                return failure(error).reason

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(attempt, range(20)))
    assert sorted(set(outcomes)) == ["EMAIL_TAKEN", "created"]
    assert outcomes.count("created") == 1
    assert count(db, f"identity.users WHERE email = '{email}'") == 1


def test_login_returns_tokens_that_open_getme(channel: grpc.Channel, identity: IdentityServiceStub) -> None:
    user = register(channel)
    pair = identity.Login(ipb.LoginRequest(email=user.email.upper(), password=PASSWORD))
    assert pair.user.id == user.id
    assert pair.access_expire_time.seconds < pair.refresh_expire_time.seconds
    assert signed_in(channel, pair.access_token).GetMe(ipb.GetMeRequest()).id == user.id


def test_a_wrong_password_and_an_unknown_email_fail_alike(channel: grpc.Channel, identity: IdentityServiceStub) -> None:
    user = register(channel)
    wrong = call_fails(identity.Login, ipb.LoginRequest(email=user.email, password="wrong password!"))
    unknown = call_fails(identity.Login, ipb.LoginRequest(email="nobody@example.com", password=PASSWORD))
    assert (wrong.code, wrong.reason, wrong.message) == (unknown.code, unknown.reason, unknown.message)
    assert wrong.code is grpc.StatusCode.UNAUTHENTICATED and wrong.reason == "INVALID_CREDENTIALS"


def test_repeated_failures_throttle_the_account_even_with_the_right_password(
    channel: grpc.Channel, identity: IdentityServiceStub
) -> None:
    user = register(channel)
    for _ in range(5):
        call_fails(identity.Login, ipb.LoginRequest(email=user.email, password="wrong password!"))
    throttled = call_fails(identity.Login, ipb.LoginRequest(email=user.email, password=PASSWORD))
    assert (throttled.code, throttled.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_THROTTLED")
    assert throttled.retry_delay_seconds is not None and 0 < throttled.retry_delay_seconds <= 15 * 60
    other = register(channel)
    assert identity.Login(ipb.LoginRequest(email=other.email, password=PASSWORD)).user.id == other.id


def test_a_refresh_token_works_once_and_its_reuse_signs_the_session_out(
    channel: grpc.Channel, identity: IdentityServiceStub
) -> None:
    user = register(channel)
    first = identity.Login(ipb.LoginRequest(email=user.email, password=PASSWORD))
    second = identity.RefreshToken(ipb.RefreshTokenRequest(refresh_token=first.refresh_token))
    assert second.refresh_token != first.refresh_token
    reused = call_fails(identity.RefreshToken, ipb.RefreshTokenRequest(refresh_token=first.refresh_token))
    assert (reused.code, reused.reason) == (grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")
    after = call_fails(identity.RefreshToken, ipb.RefreshTokenRequest(refresh_token=second.refresh_token))
    assert after.reason == "TOKEN_REVOKED"
    signed_out = call_fails(signed_in(channel, second.access_token).GetMe, ipb.GetMeRequest())
    assert signed_out.reason == "TOKEN_REVOKED"


def test_tokens_cannot_stand_in_for_each_other(channel: grpc.Channel, identity: IdentityServiceStub) -> None:
    user = register(channel)
    pair = identity.Login(ipb.LoginRequest(email=user.email, password=PASSWORD))
    as_access = call_fails(signed_in(channel, pair.refresh_token).GetMe, ipb.GetMeRequest())
    assert (as_access.code, as_access.reason) == (grpc.StatusCode.UNAUTHENTICATED, "WRONG_TOKEN_TYPE")
    as_refresh = call_fails(identity.RefreshToken, ipb.RefreshTokenRequest(refresh_token=pair.access_token))
    assert as_refresh.reason == "WRONG_TOKEN_TYPE"


def test_logout_revokes_the_access_and_refresh_tokens_of_the_session(
    channel: grpc.Channel, identity: IdentityServiceStub
) -> None:
    user = register(channel)
    pair = identity.Login(ipb.LoginRequest(email=user.email, password=PASSWORD))
    other = identity.Login(ipb.LoginRequest(email=user.email, password=PASSWORD))
    signed_in(channel, pair.access_token).Logout(ipb.LogoutRequest())
    assert call_fails(signed_in(channel, pair.access_token).GetMe, ipb.GetMeRequest()).reason == "TOKEN_REVOKED"
    assert (
        call_fails(identity.RefreshToken, ipb.RefreshTokenRequest(refresh_token=pair.refresh_token)).reason
        == "TOKEN_REVOKED"
    )
    assert signed_in(channel, other.access_token).GetMe(ipb.GetMeRequest()).id == user.id


def test_changing_the_password_signs_out_the_other_sessions(
    channel: grpc.Channel, identity: IdentityServiceStub
) -> None:
    user = register(channel)
    current = identity.Login(ipb.LoginRequest(email=user.email, password=PASSWORD))
    other = identity.Login(ipb.LoginRequest(email=user.email, password=PASSWORD))
    me = signed_in(channel, current.access_token)
    wrong = call_fails(
        me.ChangePassword, ipb.ChangePasswordRequest(current_password="nope nope nope", new_password="another good one")
    )
    assert wrong.reason == "INVALID_CREDENTIALS"
    weak = call_fails(me.ChangePassword, ipb.ChangePasswordRequest(current_password=PASSWORD, new_password="short"))
    assert weak.fields == {"new_password": "WEAK_PASSWORD"}
    me.ChangePassword(ipb.ChangePasswordRequest(current_password=PASSWORD, new_password="another good one"))
    assert me.GetMe(ipb.GetMeRequest()).id == user.id
    assert call_fails(signed_in(channel, other.access_token).GetMe, ipb.GetMeRequest()).reason == "TOKEN_REVOKED"
    assert (
        call_fails(identity.Login, ipb.LoginRequest(email=user.email, password=PASSWORD)).reason
        == "INVALID_CREDENTIALS"
    )
    assert identity.Login(ipb.LoginRequest(email=user.email, password="another good one")).user.id == user.id


def test_update_me_changes_only_the_masked_contact_fields(channel: grpc.Channel, identity: IdentityServiceStub) -> None:
    user = register(channel)
    me = signed_in(channel, identity.Login(ipb.LoginRequest(email=user.email, password=PASSWORD)).access_token)
    updated = me.UpdateMe(
        ipb.UpdateMeRequest(
            user=ipb.User(display_name="Ana B", phone="+49 30 1234567", email="hijack@example.com"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name", "phone"]),
        )
    )
    assert (updated.display_name, updated.phone, updated.email) == ("Ana B", "+49 30 1234567", user.email)
    refused = call_fails(
        me.UpdateMe,
        ipb.UpdateMeRequest(user=ipb.User(email="x@y.z"), update_mask=field_mask_pb2.FieldMask(paths=["email"])),
    )
    assert refused.fields == {"update_mask": "UNKNOWN_FIELD"}


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Bearer not.a.jwt", "TOKEN_INVALID"),
        ("Basic dXNlcjpwYXNz", "TOKEN_INVALID"),
        ("Bearer", "TOKEN_INVALID"),
        ("Bearer " + "x" * 5000, "TOKEN_INVALID"),
    ],
)
def test_malformed_authorization_headers_are_unauthenticated(
    channel: grpc.Channel, db: Db, header: str, reason: str
) -> None:
    stub = IdentityServiceStub(channel)
    failed = call_fails(stub.GetMe, ipb.GetMeRequest(), metadata=(("authorization", header),))
    assert (failed.code, failed.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)


def test_a_token_signed_with_another_key_is_unauthenticated(channel: grpc.Channel, db: Db) -> None:
    user = register(channel)
    forged = jwt.encode(
        {
            "sub": user.id,
            "sid": str(uuid.uuid4()),
            "typ": "access",
            "jti": "x",
            "iss": "cinema-grpc",
            "aud": "cinema-grpc",
            "iat": 1,
            "nbf": 1,
            "exp": 4_000_000_000,
        },
        "attacker key that is long enough!!",
    )
    failed = call_fails(signed_in(channel, forged).GetMe, ipb.GetMeRequest())
    assert (failed.code, failed.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


def test_screening_writes_need_staff(channel: grpc.Channel, db: Db) -> None:
    request = spb.CreateMovieRequest(movie=spb.Movie(title="Heat", duration_minutes=170, active=True))
    anonymous = call_fails(ScreeningServiceStub(channel).CreateMovie, request)
    assert (anonymous.code, anonymous.reason) == (grpc.StatusCode.UNAUTHENTICATED, "AUTHENTICATION_REQUIRED")
    _, customer = sign_in(channel, db)
    denied = call_fails(ScreeningServiceStub(with_token(channel, customer.access_token)).CreateMovie, request)
    assert (denied.code, denied.reason, denied.metadata) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        {"required_role": "STAFF"},
    )
    assert count(db, "screening.movies") == 0
    _, staff = sign_in(channel, db, "STAFF")
    assert ScreeningServiceStub(with_token(channel, staff.access_token)).CreateMovie(request).title == "Heat"
    assert ScreeningServiceStub(channel).ListMovies(spb.ListMoviesRequest()).movies[0].title == "Heat"
    cinema = spb.CreateCinemaRequest(cinema=spb.Cinema(name="Staff-made", time_zone="UTC", currency_code="EUR"))
    not_admin = call_fails(ScreeningServiceStub(with_token(channel, staff.access_token)).CreateCinema, cinema)
    assert not_admin.metadata == {"required_role": "ADMIN"}


def test_admins_grant_and_revoke_roles_with_effect_on_the_next_call(channel: grpc.Channel, db: Db) -> None:
    admin_user, admin = sign_in(channel, db, "ADMIN")
    user, pair = sign_in(channel, db)
    admin_stub = signed_in(channel, admin.access_token)
    movies = ScreeningServiceStub(with_token(channel, pair.access_token))
    request = spb.CreateMovieRequest(movie=spb.Movie(title="Ran", duration_minutes=162, active=True))
    assert call_fails(movies.CreateMovie, request).code is grpc.StatusCode.PERMISSION_DENIED
    granted = admin_stub.GrantRole(ipb.GrantRoleRequest(user_id=user.id, role=ipb.ROLE_STAFF))
    assert set(granted.roles) == {ipb.ROLE_CUSTOMER, ipb.ROLE_STAFF}
    assert movies.CreateMovie(request).title == "Ran"
    admin_stub.RevokeRole(ipb.RevokeRoleRequest(user_id=user.id, role=ipb.ROLE_STAFF))
    assert call_fails(movies.CreateMovie, request).code is grpc.StatusCode.PERMISSION_DENIED
    customer_role = call_fails(admin_stub.RevokeRole, ipb.RevokeRoleRequest(user_id=user.id, role=ipb.ROLE_CUSTOMER))
    assert customer_role.reason == "ROLE_CHANGE_REFUSED"
    own_admin = call_fails(admin_stub.RevokeRole, ipb.RevokeRoleRequest(user_id=admin_user.id, role=ipb.ROLE_ADMIN))
    assert own_admin.reason == "ROLE_CHANGE_REFUSED"
    assert admin_stub.GetUser(ipb.GetUserRequest(user_id=user.id)).email == user.email
    missing = call_fails(admin_stub.GetUser, ipb.GetUserRequest(user_id=str(uuid.uuid4())))
    assert missing.reason == "USER_NOT_FOUND"


def test_only_admins_manage_roles(channel: grpc.Channel, db: Db) -> None:
    user, staff = sign_in(channel, db, "STAFF")
    failed = call_fails(
        signed_in(channel, staff.access_token).GrantRole, ipb.GrantRoleRequest(user_id=user.id, role=ipb.ROLE_ADMIN)
    )
    assert failed.code is grpc.StatusCode.PERMISSION_DENIED
    assert count(db, f"identity.user_roles WHERE user_id = '{user.id}' AND role = 'ADMIN'") == 0


def test_parallel_guesses_are_counted_together_by_the_throttle(address: str, channel: grpc.Channel, db: Db) -> None:
    user = register(channel)
    barrier = threading.Barrier(12)

    def guess(i: int) -> str:
        with grpc.insecure_channel(address) as own:
            stub = IdentityServiceStub(own)
            barrier.wait()
            try:
                stub.Login(ipb.LoginRequest(email=user.email, password=f"wrong guess {i:04d}"), timeout=30)
                return "signed in"
            except grpc.RpcError as error:
                return failure(error).reason

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(guess, range(12)))
    assert outcomes.count("INVALID_CREDENTIALS") == 5
    assert outcomes.count("LOGIN_THROTTLED") == 7
