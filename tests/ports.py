"""Free ports for the processes tests start."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _outside_ephemeral() -> list[int]:
    """The ports a ``bind(0)`` is never handed: a few thousand below the kernel's ephemeral range,
    and those above it."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return [*range(max(1024, low - 12000), low), *range(high + 1, 65536)]


_CANDIDATES = _outside_ephemeral()
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port for a process a test starts, chosen outside the kernel's ephemeral range.

    A port from ``bind(0)`` is free only until the test uses it: any process a test starts (the
    server, PostgreSQL's clients, the gateway) may be handed the same port by its own
    ``bind(0)`` or outgoing connection in between. Ports outside that range never are. On a
    machine whose range leaves no room, it falls back to ``bind(0)``.
    """
    rng = random.SystemRandom()
    for _ in range(1000 if _CANDIDATES else 0):
        port = rng.choice(_CANDIDATES)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
