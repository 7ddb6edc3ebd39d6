"""Free ports for the processes tests start."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_ports() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


_EPHEMERAL = _ephemeral_ports()
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port for a process a test starts, chosen outside the kernel's ephemeral range.

    A port from ``bind(0)`` is free only until the test uses it: any process a test starts (the
    server's local Stripe server, PostgreSQL's connections, the gateway) may be handed the same
    port by its own ``bind(0)`` in between. Ports below that range are never handed out that way.
    """
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(20000, 32768)
        if port in _EPHEMERAL or port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port between 20000 and 32767")
