"""Access control: the policy each RPC declares in its proto, the bearer token, the caller."""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence

import structlog
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
    access_pb2.AUDIENCE_SCANNER: Audience.SCANNER,
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


log = structlog.get_logger("cinema_grpc.access")

# Metadata by which the gateway that serve starts proves it is that gateway (a per-process key).
PROXY_KEY_HEADER = "x-cinema-proxy-key"
_MAX_ADDRESS = 64
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    # Some proxies forward "host:port" ("192.0.2.1:5123", "[2001:db8::1]:443"): the port is
    # the client's, not part of who it is.
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket is the IPv4 client.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _client(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """What a client is throttled as: its IPv4 address, or the /64 of its IPv6 address. One
    subscriber or host is handed a whole /64 and may use any address in it, so counting single
    IPv6 addresses would give each client 2^64 allowances."""
    if isinstance(address, ipaddress.IPv4Address) or address.is_loopback:
        return str(address)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class ClientAddresses:
    """The address a call comes from, for throttling.

    The peer's address, unless the peer is a trusted proxy (in ``trusted`` networks, or the
    gateway started by ``serve``, which sends ``proxy_key``): then the nearest X-Forwarded-For
    entry that is not itself a trusted proxy. Anybody else's X-Forwarded-For is ignored, so a
    client cannot choose the address it is throttled by. IPv6 clients are counted by /64.
    """

    # Private peers whose X-Forwarded-For was ignored, each warned about once (at most this many).
    WARN_AT_MOST = 1000

    def __init__(self, trusted: Sequence[IPNetwork] = (), proxy_key: str | None = None) -> None:
        self._trusted = tuple(trusted)
        self._proxy_key = proxy_key
        self._warned: set[str] = set()

    def _ignored_forwarding(self, peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> None:
        """A balancer on the private network that is not listed makes every client behind it
        one address: one registration window and one sign-in allowance for all. Say so once."""
        if peer is None or not peer.is_private or peer.is_loopback or len(self._warned) >= self.WARN_AT_MOST:
            return
        if str(peer) not in self._warned:
            self._warned.add(str(peer))
            log.warning(
                "X-Forwarded-For from a peer that is not a trusted proxy is ignored: every client behind it is "
                "throttled as this one address; if it is your balancer or gateway, add it to CINEMA_TRUSTED_PROXIES",
                peer=str(peer),
            )

    def _trusted_address(self, text: str) -> bool:
        address = _ip(text)
        return address is not None and any(address in network for network in self._trusted)

    def of(self, context: Context) -> str:
        peer = context.peer() or "unknown"
        # "ipv4:1.2.3.4:5678", "ipv6:[::1]:5678", "unix:/path"
        kind, _, rest = peer.partition(":")
        host = rest.rsplit(":", 1)[0].strip("[]") if kind in ("ipv4", "ipv6") else peer
        address = _ip(host)
        metadata = context.invocation_metadata() or ()
        key = next((v for k, v in metadata if k == PROXY_KEY_HEADER and isinstance(v, str)), None)
        from_gateway = self._proxy_key is not None and key is not None and hmac.compare_digest(key, self._proxy_key)
        if not from_gateway and not self._trusted_address(host):
            if any(k == "x-forwarded-for" for k, _ in metadata):
                self._ignored_forwarding(address)
            return _client(address) if address is not None else host[:_MAX_ADDRESS]
        forwarded = [
            entry.strip()
            for key_, value in metadata
            if key_ == "x-forwarded-for" and isinstance(value, str)
            for entry in value.split(",")
            if entry.strip()
        ]
        # Walk back from the nearest hop: each trusted proxy vouches for the entry before it.
        for entry in reversed(forwarded):
            if not self._trusted_address(entry):
                forwarded_address = _ip(entry)
                return _client(forwarded_address) if forwarded_address is not None else entry[:_MAX_ADDRESS]
        if forwarded:
            first = _ip(forwarded[0])
            return _client(first) if first is not None else forwarded[0][:_MAX_ADDRESS]
        return _client(address) if address is not None else host[:_MAX_ADDRESS]


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
