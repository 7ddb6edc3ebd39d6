"""`serve --workers` picks the ports left at 0 once, for every worker: they must all differ."""

from __future__ import annotations

import socket

import pytest

from cinema_grpc.workers import _free_ports


def test_ports_picked_together_all_differ_and_are_free_afterwards() -> None:
    # Picked one after the other, each socket closed before the next bind(0), a few hundred
    # ports hold repeats (the kernel may hand a port straight out again).
    ports = _free_ports(*["127.0.0.1"] * 300)
    assert len(set(ports)) == 300
    for port in ports[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_an_ipv6_host_may_be_written_in_brackets() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    [bracketed, plain] = _free_ports("[::1]", "::1")
    assert bracketed != plain
