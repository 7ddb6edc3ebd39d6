"""Access and refresh tokens: what is accepted, and every way a token is refused."""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest

from cinema_grpc.adapters.audit_checkpoints import audit_key
from cinema_grpc.adapters.tokens import JwtTokenCodec, signing_key
from cinema_grpc.domain.access import Role
from cinema_grpc.domain.errors import TokenExpired, TokenInvalid, TokenNotYetValid, TokenRejected, WrongTokenType
from cinema_grpc.domain.identity.model import ACCESS_TOKEN_TTL, Session, User
from cinema_grpc.settings import ConfigurationError

KEY = "k" * 40


def now() -> datetime:
    """Read at each use: tokens are checked against the real clock, however long the suite runs."""
    return datetime.now(UTC).replace(microsecond=0)


def user() -> User:
    return User(uuid.uuid4(), "ana@example.com", "Ana", "", frozenset({Role.CUSTOMER}), "hash", now(), now())


def session(owner: User, *, created: datetime | None = None) -> Session:
    created = created or now()
    return Session(uuid.uuid4(), owner.id, "refresh-1", created, created + timedelta(days=30))


def pair(created: datetime | None = None) -> tuple[User, Session, str, str]:
    created = created or now()
    owner = user()
    sess = session(owner, created=created)
    issued = JwtTokenCodec(KEY).issue(owner, sess, created)
    return owner, sess, issued.access_token, issued.refresh_token


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_issued_tokens_decode_to_their_user_and_session() -> None:
    owner, sess, access, refresh = pair()
    codec = JwtTokenCodec(KEY)
    claims = codec.decode_access(access)
    assert (claims.user_id, claims.session_id) == (owner.id, sess.id)
    refreshed = codec.decode_refresh(refresh)
    assert (refreshed.user_id, refreshed.session_id, refreshed.token_id) == (owner.id, sess.id, "refresh-1")


def test_access_tokens_live_fifteen_minutes() -> None:
    issued_at = now()
    issued = JwtTokenCodec(KEY).issue(user(), session(user()), issued_at)
    assert issued.access_expires_at - issued_at == ACCESS_TOKEN_TTL == timedelta(minutes=15)


def test_a_token_signed_with_another_key_is_refused() -> None:
    _, _, access, _ = pair()
    with pytest.raises(TokenInvalid):
        JwtTokenCodec("x" * 40).decode_access(access)


def test_a_forged_signature_is_refused() -> None:
    _, _, access, _ = pair()
    header, payload, signature = access.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = str(uuid.uuid4())
    with pytest.raises(TokenInvalid):
        JwtTokenCodec(KEY).decode_access(f"{header}.{b64(claims)}.{signature}")


def test_alg_none_is_refused() -> None:
    _, _, access, _ = pair()
    payload = access.split(".")[1]
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    with pytest.raises(TokenInvalid):
        JwtTokenCodec(KEY).decode_access(unsigned)


def test_an_expired_token_is_refused_as_expired() -> None:
    _, _, access, _ = pair(created=now() - timedelta(hours=1))
    with pytest.raises(TokenExpired):
        JwtTokenCodec(KEY).decode_access(access)


def test_an_expired_access_token_says_to_use_refresh_token_and_an_expired_refresh_token_to_sign_in() -> None:
    _, _, access, refresh = pair(created=now() - timedelta(days=31))
    with pytest.raises(TokenExpired, match="IdentityService/RefreshToken"):
        JwtTokenCodec(KEY).decode_access(access)
    with pytest.raises(TokenExpired, match="sign in again with Login"):
        JwtTokenCodec(KEY).decode_refresh(refresh)


def test_a_token_from_the_future_is_refused_as_not_yet_valid() -> None:
    _, _, access, _ = pair(created=now() + timedelta(hours=1))
    with pytest.raises(TokenNotYetValid):
        JwtTokenCodec(KEY).decode_access(access)


def test_refresh_and_access_tokens_cannot_stand_in_for_each_other() -> None:
    _, _, access, refresh = pair()
    codec = JwtTokenCodec(KEY)
    with pytest.raises(WrongTokenType):
        codec.decode_access(refresh)
    with pytest.raises(WrongTokenType):
        codec.decode_refresh(access)


def test_a_token_for_another_audience_or_without_required_claims_is_refused() -> None:
    at = now()
    base = {"sub": str(uuid.uuid4()), "sid": str(uuid.uuid4()), "typ": "access", "jti": "j", "iat": at, "nbf": at}
    codec = JwtTokenCodec(KEY)
    other_audience = jwt.encode({**base, "exp": at + timedelta(minutes=5), "iss": "cinema-grpc", "aud": "x"}, KEY)
    no_expiry = jwt.encode({**base, "iss": "cinema-grpc", "aud": "cinema-grpc"}, KEY)
    for token in (other_audience, no_expiry):
        with pytest.raises(TokenInvalid):
            codec.decode_access(token)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 5000, "' OR 1=1 --"])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(TokenRejected):
        JwtTokenCodec(KEY).decode_access(token)


def test_a_short_signing_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32"):
        JwtTokenCodec("short")


def test_a_token_issued_a_moment_ahead_on_another_replica_is_accepted() -> None:
    _, _, access, _ = pair(created=now() + timedelta(seconds=10))
    assert JwtTokenCodec(KEY).decode_access(access).user_id


def test_a_development_key_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    first = signing_key(None, tmp_path)
    assert signing_key(None, tmp_path) == first
    assert stat.S_IMODE((tmp_path / "jwt-signing-key").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o666, 0o644, 0o640, 0o620, 0o604, 0o602])
def test_a_key_file_others_may_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    planted = tmp_path / "jwt-signing-key"
    planted.write_text("planted-key-known-to-an-attacker-0123456789")
    planted.chmod(mode)
    with pytest.raises(ConfigurationError) as refused:
        signing_key(None, tmp_path)
    assert str(planted) in str(refused.value)
    assert f"{mode:04o}" in str(refused.value)
    assert f"chmod 600 {planted}" in str(refused.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_key_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "jwt-signing-key"
    planted.write_text("planted-key-known-to-an-attacker-0123456789")
    planted.chmod(0o600)
    os.chown(planted, 65534, 65534)
    with pytest.raises(ConfigurationError, match="owned by uid 65534, not by this user"):
        signing_key(None, tmp_path)


def test_a_key_file_that_is_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("planted-key-known-to-an-attacker-0123456789")
    elsewhere.chmod(0o600)
    (tmp_path / "jwt-signing-key").symlink_to(elsewhere)
    with pytest.raises(ConfigurationError, match="not a regular file"):
        signing_key(None, tmp_path)


def test_a_configured_key_needs_no_file(tmp_path: Path) -> None:
    assert signing_key(KEY, tmp_path / "absent") == KEY
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize(
    "make_key",
    [lambda data_dir: signing_key(None, data_dir), lambda data_dir: audit_key(None, data_dir)],
    ids=["token key", "audit key"],
)
def test_a_generated_key_file_appears_only_once_it_is_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_key: Callable[[Path], object]
) -> None:
    # Another process starting now (serve --workers, audit verify next to serve) must find no
    # file or the finished one, never an empty file it would then read as the key.
    seen_while_writing: list[list[str]] = []
    real = secrets.token_urlsafe

    def watched(length: int) -> str:
        seen_while_writing.append(sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")))
        return real(length)

    monkeypatch.setattr("cinema_grpc.adapters.tokens.secrets.token_urlsafe", watched)
    make_key(tmp_path)
    assert seen_while_writing == [[]]
    assert [p.name for p in tmp_path.iterdir()] in (["jwt-signing-key"], ["audit-chain-key"])


def test_an_empty_key_file_left_by_a_crash_is_a_configuration_error_naming_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "jwt-signing-key"
    path.touch(mode=0o600)
    with pytest.raises(ConfigurationError, match="shorter than 32 characters: delete the file"):
        signing_key(None, tmp_path)
