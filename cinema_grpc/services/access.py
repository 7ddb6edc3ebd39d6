"""Access control: the policy each RPC declares in its proto, the bearer token, the caller."""

from __future__ import annotations

import contextvars
import ipaddress
from collections.abc import Callable, Iterable, Mapping

from google.protobuf.descriptor import ServiceDescriptor

from cinema.access.v1 import access_pb2
from cinema_grpc.domain.access import ANONYMOUS, Audience, Caller, PolicyMissing, authorize
from cinema_grpc.domain.errors import TokenInvalid
from cinema_grpc.domain.identity.use_cases import Authenticator
from cinema_grpc.domain.ports import UnitOfWork
from cinema_grpc.services.convert import Context

_AUDIENCES = {
    access_pb2.AUDIENCE_PUBLIC: Audience.PUBLIC,
    access_pb2.AUDIENCE_AUTHENTICATED: Audience.AUTHENTICATED,
    access_pb2.AUDIENCE_STAFF: Audience.STAFF,
    access_pb2.AUDIENCE_ADMIN: Audience.ADMIN,
}
_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=ANONYMOUS)


def current_caller() -> Caller:
    """The caller of the RPC being served (set by the interceptor before the servicer runs)."""
    return _caller.get()


def declared_policies(services: Iterable[ServiceDescriptor]) -> dict[str, Audience]:
    """Method path -> audience, from the ``(cinema.access.v1.policy)`` option of each RPC.

    RPCs without the option are left out, and calls to them are refused.
    """
    policies: dict[str, Audience] = {}
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if options.HasExtension(access_pb2.policy):
                audience = _AUDIENCES.get(options.Extensions[access_pb2.policy].audience)
                if audience is not None:
                    policies[f"/{service.full_name}/{method.name}"] = audience
    return policies


def _bearer(context: Context) -> str | None:
    values = [value for key, value in context.invocation_metadata() or () if key == "authorization"]
    if not values:
        return None
    header = values[0]
    if len(values) > 1 or not isinstance(header, str):
        raise TokenInvalid("send exactly one 'authorization: Bearer <token>' header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenInvalid("the authorization header must be 'Bearer <access token>'")
    return token.strip()


def client_address(context: Context) -> str:
    """The caller's address for throttling: the peer, or the first X-Forwarded-For entry when the
    peer is a proxy on this machine (the gateway)."""
    peer = context.peer() or "unknown"
    host = peer.split(":", 1)[1].rsplit(":", 1)[0].strip("[]") if ":" in peer else peer
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if local:
        for key, value in context.invocation_metadata() or ():
            if key == "x-forwarded-for" and isinstance(value, str) and value.strip():
                return value.split(",")[0].strip()[:64]
    return host


class AccessControl:
    """Admits or refuses one call: looks up the RPC's policy, authenticates, authorises."""

    def __init__(
        self,
        policies: Mapping[str, Audience],
        authenticator: Authenticator,
        unit_of_work: Callable[[], UnitOfWork],
    ) -> None:
        self.policies = policies
        self.authenticator = authenticator
        self._uow = unit_of_work

    async def admit(self, method: str, context: Context) -> Caller:
        audience = self.policies.get(method)
        if audience is None:
            raise PolicyMissing(f"{method} declares no access policy and is closed")
        token = _bearer(context)
        caller = ANONYMOUS if token is None else await self.authenticator.caller(self._uow(), token)
        authorize(audience, caller)
        _caller.set(caller)
        return caller
