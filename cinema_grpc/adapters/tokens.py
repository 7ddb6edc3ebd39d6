"""JWT access and refresh tokens (HS256) for the domain's TokenCodec port."""

from __future__ import annotations

import secrets
import uuid
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

ISSUER = AUDIENCE = "cinema-grpc"
ALGORITHM = "HS256"
LEEWAY_SECONDS = 30
_REQUIRED = ["exp", "iat", "nbf", "sub", "sid", "typ", "jti", "iss", "aud"]


def signing_key(configured: str | None, data_dir: Path) -> str:
    """The configured key, or a development key generated once and kept in the data dir."""
    if configured:
        return configured
    path = data_dir / "jwt-signing-key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


class JwtTokenCodec:
    def __init__(self, key: str) -> None:
        if len(key) < 32:
            raise ValueError("the token signing key must be at least 32 characters")
        self._key = key

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
            raise TokenExpired("the token has expired") from exc
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
        claims = self._decode(token, "access")
        return AccessClaims(uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"]))

    def decode_refresh(self, token: str) -> RefreshClaims:
        claims = self._decode(token, "refresh")
        return RefreshClaims(uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"]), str(claims["jti"]))
