"""The local Stripe test server accepts any key and any test card, so only this machine may reach
it, and its state is a file of this instance's own that only this user can read."""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import stat
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from cinema_grpc.adapters.local_stripe import API_KEY, LocalStripe

SHARED_STATE = Path("/tmp/localstripe.pickle")  # where localstripe itself keeps it, for every instance


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, words))
    return found


def _stripe_post(stripe: LocalStripe, path: str, fields: dict[str, str]) -> dict[str, object]:
    request = urllib.request.Request(
        f"{stripe.api_base}{path}",
        data=urllib.parse.urlencode(fields).encode(),
        headers={"Authorization": "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        result: dict[str, object] = json.loads(answer.read())
        return result


def _stripe_get(stripe: LocalStripe, path: str) -> dict[str, object]:
    request = urllib.request.Request(
        f"{stripe.api_base}{path}",
        headers={"Authorization": "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        result: dict[str, object] = json.loads(answer.read())
        return result


def test_the_local_stripe_server_listens_on_loopback_only(local_stripe: LocalStripe) -> None:
    assert _listening_addresses(local_stripe.port) == {"127.0.0.1"}


def test_its_state_is_a_file_of_its_own_that_only_this_user_can_read(tmp_path: Path) -> None:
    shared_before = SHARED_STATE.stat() if SHARED_STATE.exists() else None
    state = tmp_path / "data" / "localstripe-state.pickle"
    stripe = LocalStripe(state).start()
    try:
        customer = _stripe_post(stripe, "/v1/customers", {"email": "ana@example.com"})
    finally:
        stripe.stop()
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    shared_after = SHARED_STATE.stat() if SHARED_STATE.exists() else None
    assert (shared_after and shared_after.st_mtime_ns) == (shared_before and shared_before.st_mtime_ns)
    # The next start of the same instance finds its payments again.
    again = LocalStripe(state).start()
    try:
        assert _stripe_get(again, f"/v1/customers/{customer['id']}")["email"] == "ana@example.com"
    finally:
        again.stop()


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                found.add(fields[9])
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def test_its_port_is_bound_before_its_process_starts_so_no_other_server_can_answer_for_it(tmp_path: Path) -> None:
    """The port is bound by the starting process and handed to the child: an address picked
    first and bound later could be taken in between, by a server that then answered for it."""
    stripe = LocalStripe(tmp_path / "localstripe-state.pickle").start()
    try:
        assert stripe.port != 0 and stripe.pid is not None
        listening = _listening_inodes(stripe.port)
        assert listening and listening <= _socket_inodes(stripe.pid)  # its own child listens
        assert _stripe_post(stripe, "/v1/customers", {"email": "ana@example.com"})["email"] == "ana@example.com"
    finally:
        stripe.stop()


def test_a_port_another_server_holds_is_refused_not_taken_for_its_own(tmp_path: Path) -> None:
    class Refuses(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Refuses) as other:
        threading.Thread(target=other.serve_forever, daemon=True).start()
        try:
            taken = int(other.server_address[1])
            stripe = LocalStripe(tmp_path / "localstripe-state.pickle", port=taken)
            with pytest.raises(RuntimeError, match="cannot listen"):
                stripe.start()
            assert stripe.pid is None
        finally:
            other.shutdown()
