"""JWT access and refresh tokens (HS256) for the domain's TokenCodec port."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt

from cinema_grpc.domain.errors import TokenExpired, TokenInvalid, TokenNotYetValid, WrongTokenType
from cinema_grpc.domain.identity.model import (
    ACCESS_TOKEN_TTL,
    AccessClaims,
    IssuedTokens,
    RefreshClaims,
    Session,
    User,
)
from cinema_grpc.settings import ConfigurationError

ISSUER = AUDIENCE = "cinema-grpc"
ALGORITHM = "HS256"
LEEWAY_SECONDS = 30
_REQUIRED = ["exp", "iat", "nbf", "sub", "sid", "typ", "jti", "iss", "aud"]
# Access tokens verified recently, kept so that a client's next calls skip the signature check.
VERIFIED_TOKENS = 20_000


def signing_key(configured: str | None, data_dir: Path) -> str:
    """The configured key, or a development key generated once and kept in the data dir.

    Like ssh with a private key, a key file that someone else owns, or that group or others
    may read or write, is refused: whoever can read it can sign tokens for any account, and
    whoever can write it can plant a key they know.
    """
    if configured:
        return configured
    key = private_key_file(data_dir / "jwt-signing-key", "the token signing key", lambda: secrets.token_urlsafe(48))
    if len(key) < 32:
        raise ConfigurationError(
            f"the token signing key in {data_dir / 'jwt-signing-key'} is shorter than 32 characters: "
            "delete the file to have a new one generated"
        )
    return key


def private_key_file(path: Path, what: str, make: Callable[[], str]) -> str:
    """The key kept in ``path``, made by ``make`` and written there first if there is none.

    The file appears whole and once: the key is written to a 0600 temporary file that is then
    linked into place, so processes starting together (``serve --workers``, ``audit verify``
    next to ``serve``) agree on one key, and none reads a file half written or, after a crash,
    empty. The file is then checked as ``check_private_file`` says.
    """
    if not os.path.lexists(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(make())
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    check_private_file(path, what)
    return path.read_text().strip()


def check_private_file(path: Path, what: str) -> None:
    """Raises ConfigurationError unless ``path`` is a regular file of this user that no one else
    may read or write (mode 0600 or stricter)."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigurationError(f"{what} file {path} cannot be read: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigurationError(f"{what} file {path} is not a regular file (a symbolic link?): replace it with one")
    if info.st_uid != os.geteuid():
        raise ConfigurationError(
            f"{what} file {path} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()}): "
            f"it may have been planted; delete it to have a new one generated, or chown it to this user"
        )
    if info.st_mode & 0o077:
        raise ConfigurationError(
            f"{what} file {path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others may read or "
            f"write it; run 'chmod 600 {path}' if its content is trusted, or delete it to have a new one generated"
        )


class JwtTokenCodec:
    """Issues and checks tokens. An access token is verified once: its claims are then kept,
    keyed by the whole token, until it expires (as the signature check would judge it, leeway
    included), for at most ``cache_size`` tokens, the oldest dropped first. Only the token's own
    validity is cached: whether its session is still signed in is checked per call elsewhere."""

    def __init__(self, key: str, *, cache_size: int = VERIFIED_TOKENS, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 32:
            raise ValueError("the token signing key must be at least 32 characters")
        self._key = key
        self._cache_size = cache_size
        self._clock = clock
        self._verified: dict[str, tuple[AccessClaims, float]] = {}  # token -> (claims, usable until)

    def _encode(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def issue(self, user: User, session: Session, now: datetime) -> IssuedTokens:
        common = {"sub": str(user.id), "sid": str(session.id), "iat": now, "nbf": now, "iss": ISSUER, "aud": AUDIENCE}
        access_expires = min(now + ACCESS_TOKEN_TTL, session.expires_at)
        access = self._encode({**common, "typ": "access", "exp": access_expires, "jti": uuid.uuid4().hex})
        refresh = self._encode({**common, "typ": "refresh", "exp": session.expires_at, "jti": session.refresh_token_id})
        return IssuedTokens(access, access_expires, refresh, session.expires_at, user)

    def _decode(self, token: str, expected_type: str) -> dict[str, Any]:
        if not token or len(token) > 4096:
            raise TokenInvalid("the token is malformed")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],  # never "none", never a key-confusion algorithm
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": _REQUIRED},
                # Replicas' clocks differ a little; a token issued a moment ago elsewhere is fine.
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError as exc:
            if expected_type == "access":
                raise TokenExpired(
                    "the access token has expired: trade the refresh token for a new pair with "
                    "cinema.identity.v1.IdentityService/RefreshToken (POST /v1/sessions:refresh)"
                ) from exc
            raise TokenExpired("the refresh token has expired: sign in again with Login") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenNotYetValid("the token is not valid yet") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid("the token is malformed, forged or not for this service") from exc
        if claims.get("typ") != expected_type:
            raise WrongTokenType(f"expected a token of type {expected_type!r}")
        try:
            uuid.UUID(str(claims["sub"]))
            uuid.UUID(str(claims["sid"]))
        except ValueError as exc:
            raise TokenInvalid("the token names no valid user or session") from exc
        return claims

    def decode_access(self, token: str) -> AccessClaims:
        known = self._verified.get(token)
        if known is not None:
            if self._clock() <= known[1]:
                return known[0]
            del self._verified[token]
            raise TokenExpired("the token has expired")
        claims = self._decode(token, "access")
        access = AccessClaims(uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"]))
        if self._cache_size > 0:
            while len(self._verified) >= self._cache_size:
                del self._verified[next(iter(self._verified))]  # the oldest (dicts keep insertion order)
            self._verified[token] = (access, float(claims["exp"]) + LEEWAY_SECONDS)
        return access

    def decode_refresh(self, token: str) -> RefreshClaims:
        claims = self._decode(token, "refresh")
        return RefreshClaims(uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"]), str(claims["jti"]))
