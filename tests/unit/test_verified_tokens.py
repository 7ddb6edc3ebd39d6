"""Access tokens are verified once and their claims kept until they expire, in a bounded cache
that never accepts what a fresh verification would refuse."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from cinema_grpc.adapters.tokens import LEEWAY_SECONDS, JwtTokenCodec
from cinema_grpc.domain.access import Role
from cinema_grpc.domain.errors import TokenExpired, TokenInvalid
from cinema_grpc.domain.identity.model import Session, User

KEY = "k" * 40


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def access_token(codec: JwtTokenCodec, *, lifetime: timedelta = timedelta(days=30)) -> tuple[str, datetime]:
    """A fresh access token and its expiry (the session's end caps it below 15 minutes if shorter)."""
    now = datetime.now(UTC).replace(microsecond=0)
    owner = User(uuid.uuid4(), "ana@example.com", "Ana", "", frozenset({Role.CUSTOMER}), "hash", now, now)
    issued = codec.issue(owner, Session(uuid.uuid4(), owner.id, "r", now, now + lifetime), now)
    return issued.access_token, issued.access_expires_at


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every signature check the codec makes."""
    seen: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: object, **kwargs: object) -> object:
        seen.append(token)
        return real(token, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jwt, "decode", counting)
    return seen


def test_an_access_token_is_verified_once_for_all_its_calls(verifications: list[str]) -> None:
    codec = JwtTokenCodec(KEY)
    token, _ = access_token(codec)
    first = codec.decode_access(token)
    assert all(codec.decode_access(token) == first for _ in range(5))
    assert verifications == [token]


def test_a_cached_token_is_refused_once_it_expires(verifications: list[str]) -> None:
    clock = FakeClock()
    codec = JwtTokenCodec(KEY, clock=clock)
    token, expires = access_token(codec)
    codec.decode_access(token)
    clock.now = expires.timestamp() + LEEWAY_SECONDS  # the last moment a verification accepts it
    codec.decode_access(token)
    clock.now += 1
    with pytest.raises(TokenExpired):
        codec.decode_access(token)
    assert verifications == [token]


def test_a_token_that_differs_from_a_verified_one_is_verified_and_refused() -> None:
    codec = JwtTokenCodec(KEY)
    token, _ = access_token(codec)
    codec.decode_access(token)
    header, claims, signature = token.split(".")
    forged = f"{header}.{claims}.{signature[:-2]}{'AA' if not signature.endswith('AA') else 'BB'}"
    with pytest.raises(TokenInvalid):
        codec.decode_access(forged)


def test_the_cache_keeps_at_most_its_size_and_drops_the_oldest(verifications: list[str]) -> None:
    codec = JwtTokenCodec(KEY, cache_size=3)
    issued = [access_token(codec)[0] for _ in range(4)]
    for token in issued:
        codec.decode_access(token)
    assert len(codec._verified) == 3
    codec.decode_access(issued[3])  # still known
    codec.decode_access(issued[0])  # dropped first: verified again
    assert verifications == [*issued, issued[0]]
