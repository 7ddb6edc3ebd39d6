"""The staff console for tests: served on a free loopback port next to the test server (on its
event loop, calling it over a loopback gRPC channel as `serve --console` does)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import httpx
import psycopg

from cinema.identity.v1 import identity_pb2 as ipb
from cinema_grpc.console.runner import ConsoleConfig, ConsoleServer
from tests.auth_client import PASSWORD, sign_in
from tests.conftest import RunningServer

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@contextmanager
def running_console(server: RunningServer) -> Iterator[ConsoleServer]:
    console = ConsoleServer(f"127.0.0.1:{server.port}", ConsoleConfig("127.0.0.1", 0))
    server.run(console.start())
    try:
        yield console
    finally:
        server.run(console.stop())


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def account(channel: grpc.Channel, db: psycopg.Connection[tuple[object, ...]], *roles: str) -> tuple[ipb.User, str]:
    """A new account with the given roles (none: a customer) and its password."""
    user, _ = sign_in(channel, db, *roles)
    return user, PASSWORD


def signed_in_client(base_url: str, email: str, password: str = PASSWORD) -> httpx.Client:
    client = httpx.Client(base_url=base_url, timeout=30)
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", data={"email": email, "password": password, "csrf_token": token})
    assert response.status_code == 303, response.text
    return client
