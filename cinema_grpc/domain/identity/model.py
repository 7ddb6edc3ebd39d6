"""Users, sessions and the password rule."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from email_validator import EmailNotValidError, validate_email

from cinema_grpc.domain.access import Caller, Role
from cinema_grpc.domain.errors import Violations

ACCESS_TOKEN_TTL = timedelta(minutes=15)
REFRESH_TOKEN_TTL = timedelta(days=30)
PASSWORD_MIN, PASSWORD_MAX = 10, 128


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    display_name: str
    phone: str
    roles: frozenset[Role]
    password_hash: str
    created_at: datetime
    updated_at: datetime

    def as_caller(self, session_id: uuid.UUID | None = None) -> Caller:
        return Caller(self.id, self.roles, session_id)


@dataclass(frozen=True)
class Session:
    """One sign-in. Its refresh token rotates; ``refresh_token_id`` is the only one that works."""

    id: uuid.UUID
    user_id: uuid.UUID
    refresh_token_id: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID


@dataclass(frozen=True)
class RefreshClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    token_id: str


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime
    user: User


def normalize_email(violations: Violations, field: str, value: str) -> str:
    """Lower-cased address, so uniqueness and sign-in ignore case; records a violation if malformed."""
    text = value.strip()
    if not text:
        violations.add(field, "REQUIRED", "must not be empty")
        return ""
    if len(text) > 254:
        violations.add(field, "TOO_LONG", "must be at most 254 characters")
        return ""
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        violations.add(field, "INVALID_FORMAT", "must be an email address such as ana@example.com")
        return ""
    return checked.normalized.lower()


def password_violations(violations: Violations, field: str, password: str, email: str) -> None:
    """The password rule: 10 to 128 characters, not the email address, not one repeated character."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        violations.add(field, "WEAK_PASSWORD", f"must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    elif len(set(password)) == 1 or password.strip().lower() == email.lower():
        violations.add(field, "WEAK_PASSWORD", "must not be one repeated character or the email address")
