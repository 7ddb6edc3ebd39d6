"""Who is calling and what they may do: roles, audiences and the authorisation rule."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from cinema_grpc.domain.errors import DomainError, ErrorKind


class Role(enum.IntEnum):
    """Customer, staff and admin are ordered: an admin may do what staff may, staff what
    customers may. A scanner (a door device's account) is outside that order: it may check
    tickets in and nothing more of staff's."""

    CUSTOMER = 1
    STAFF = 2
    ADMIN = 3
    SCANNER = 4


RANKED_ROLES = frozenset({Role.CUSTOMER, Role.STAFF, Role.ADMIN})


class Audience(enum.IntEnum):
    """The least a caller must be to call an RPC."""

    PUBLIC = 0
    AUTHENTICATED = 1
    STAFF = 2
    ADMIN = 3
    # Door scanners, staff and admins.
    SCANNER = 4


@dataclass(frozen=True)
class Caller:
    """The authenticated user behind a request, or nobody."""

    user_id: uuid.UUID | None = None
    roles: frozenset[Role] = frozenset()
    session_id: uuid.UUID | None = None

    @property
    def authenticated(self) -> bool:
        return self.user_id is not None

    @property
    def rank(self) -> int:
        return max((int(role) for role in self.roles if role in RANKED_ROLES), default=0)

    @property
    def is_staff(self) -> bool:
        return self.rank >= Role.STAFF

    def may_see(self, owner_id: uuid.UUID) -> bool:
        """Owner-only resources: customers reach their own, staff and admins reach all."""
        return self.is_staff or owner_id == self.user_id

    def owner_key(self) -> str:
        return str(self.user_id) if self.user_id else "anonymous"


ANONYMOUS = Caller()


class AuthenticationRequired(DomainError):
    kind = ErrorKind.UNAUTHENTICATED
    reason = "AUTHENTICATION_REQUIRED"


class PermissionDenied(DomainError):
    kind = ErrorKind.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class PolicyMissing(DomainError):
    """An RPC without a declared policy: refused for everybody (fail closed)."""

    kind = ErrorKind.PERMISSION_DENIED
    reason = "POLICY_MISSING"


def authorize(audience: Audience, caller: Caller) -> None:
    if audience is Audience.PUBLIC:
        return
    if not caller.authenticated:
        raise AuthenticationRequired("sign in and send 'authorization: Bearer <access token>'")
    if audience is Audience.SCANNER:
        if Role.SCANNER in caller.roles or caller.is_staff:
            return
        raise PermissionDenied("this needs the scanner or the staff role", metadata={"required_role": "SCANNER"})
    needed = {Audience.AUTHENTICATED: Role.CUSTOMER, Audience.STAFF: Role.STAFF, Audience.ADMIN: Role.ADMIN}[audience]
    if caller.rank < needed:
        raise PermissionDenied(f"this needs the {needed.name.lower()} role", metadata={"required_role": needed.name})
