"""Which address a call is throttled by: the peer's, unless the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from structlog.testing import capture_logs

from cinema_grpc.services.access import PROXY_KEY_HEADER, ClientAddresses


class FakeContext:
    def __init__(self, peer: str, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._peer = peer
        self._metadata = tuple(metadata)

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


PROXIES = ClientAddresses([ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("127.0.0.1/32")], "gw-key")
NOBODY = ClientAddresses()


def of(addresses: ClientAddresses, peer: str, *metadata: tuple[str, str]) -> str:
    return addresses.of(FakeContext(peer, metadata))  # type: ignore[arg-type]


def test_a_loopback_peer_that_is_not_trusted_cannot_choose_its_address() -> None:
    assert of(NOBODY, "ipv4:127.0.0.1:40000", ("x-forwarded-for", "203.0.113.9")) == "127.0.0.1"
    assert of(NOBODY, "ipv6:[::1]:40000", ("x-forwarded-for", "203.0.113.9")) == "::1"


def test_a_trusted_proxy_names_the_client() -> None:
    assert of(PROXIES, "ipv4:10.1.2.3:5000", ("x-forwarded-for", "198.51.100.4")) == "198.51.100.4"


def test_the_nearest_untrusted_hop_is_the_client_so_a_forged_first_entry_is_ignored() -> None:
    forwarded = ("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.1.9.9")
    assert of(PROXIES, "ipv4:10.1.2.3:5000", forwarded) == "198.51.100.4"


def test_an_untrusted_peer_keeps_its_own_address_whatever_it_forwards() -> None:
    assert of(PROXIES, "ipv4:192.0.2.50:5000", ("x-forwarded-for", "198.51.100.4")) == "192.0.2.50"


def test_the_gateway_started_by_serve_is_believed_by_its_key_from_anywhere() -> None:
    gateway = ClientAddresses([], "gw-key")
    believed = of(gateway, "ipv4:127.0.0.1:4000", (PROXY_KEY_HEADER, "gw-key"), ("x-forwarded-for", "198.51.100.7"))
    assert believed == "198.51.100.7"
    forged = of(gateway, "ipv4:127.0.0.1:4000", (PROXY_KEY_HEADER, "guess"), ("x-forwarded-for", "198.51.100.7"))
    assert forged == "127.0.0.1"


def test_an_ipv4_client_on_an_ipv6_socket_is_the_ipv4_client() -> None:
    assert of(NOBODY, "ipv6:[::ffff:192.0.2.8]:5000") == "192.0.2.8"


def test_a_trusted_proxy_without_a_forwarded_address_is_the_client() -> None:
    assert of(PROXIES, "ipv4:10.1.2.3:5000") == "10.1.2.3"


def test_ipv6_clients_are_counted_by_their_64_so_rotating_addresses_in_it_changes_nothing() -> None:
    first = of(NOBODY, "ipv6:[2001:db8:5:6::1]:5000")
    assert first == "2001:db8:5:6::/64"
    assert of(NOBODY, "ipv6:[2001:db8:5:6:ffff:1234:abcd:9]:5001") == first
    assert of(NOBODY, "ipv6:[2001:db8:5:7::1]:5000") == "2001:db8:5:7::/64"
    assert of(PROXIES, "ipv4:10.1.2.3:5000", ("x-forwarded-for", "2001:db8:5:6::abcd")) == first


def test_a_port_a_proxy_forwards_with_the_address_is_not_part_of_the_client() -> None:
    assert of(PROXIES, "ipv4:10.1.2.3:5000", ("x-forwarded-for", "198.51.100.4:61234")) == "198.51.100.4"
    assert of(PROXIES, "ipv4:10.1.2.3:5000", ("x-forwarded-for", "[2001:db8:5:6::1]:443")) == "2001:db8:5:6::/64"
    behind_two = ("x-forwarded-for", "198.51.100.4:61234, 10.1.9.9:80")
    assert of(PROXIES, "ipv4:10.1.2.3:5000", behind_two) == "198.51.100.4"


def test_an_unlisted_balancer_on_the_private_network_is_named_once_in_a_warning() -> None:
    addresses = ClientAddresses([ipaddress.ip_network("10.1.0.0/16")])
    with capture_logs() as logs:
        for client in ("198.51.100.4", "198.51.100.5"):
            assert of(addresses, "ipv4:10.9.0.7:5000", ("x-forwarded-for", client)) == "10.9.0.7"
        of(addresses, "ipv4:10.9.0.7:5000")  # no forwarding: nothing to say
        of(addresses, "ipv4:81.2.69.160:5000", ("x-forwarded-for", "198.51.100.4"))  # a client on the internet
        of(addresses, "ipv4:127.0.0.1:5000", ("x-forwarded-for", "198.51.100.4"))  # a local client
        of(addresses, "ipv4:10.1.2.3:5000", ("x-forwarded-for", "198.51.100.4"))  # a listed proxy
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["peer"] for entry in warnings] == ["10.9.0.7"]
    assert "CINEMA_TRUSTED_PROXIES" in warnings[0]["event"]
