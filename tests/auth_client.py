"""Client side of sign-in for tests: accounts with a role, and channels that send a token."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import psycopg

from cinema.identity.v1 import identity_pb2 as ipb
from cinema.identity.v1.identity_pb2_grpc import IdentityServiceStub

PASSWORD = "correct horse battery"


class _BearerInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self._token}")]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)


def with_token(channel: grpc.Channel, token: str) -> grpc.Channel:
    return grpc.intercept_channel(channel, _BearerInterceptor(token))


def register(channel: grpc.Channel, email: str | None = None, password: str = PASSWORD) -> ipb.User:
    stub = IdentityServiceStub(channel)
    return stub.Register(
        ipb.RegisterRequest(
            email=email or f"{uuid.uuid4().hex[:12]}@example.com", password=password, display_name="Test"
        )
    )


def sign_in(
    channel: grpc.Channel, db: psycopg.Connection[tuple[object, ...]], *roles: str
) -> tuple[ipb.User, ipb.TokenPair]:
    """A new account with the given extra roles (STAFF, ADMIN), signed in."""
    user = register(channel)
    for role in roles:
        db.execute("INSERT INTO identity.user_roles (user_id, role) VALUES (%s, %s)", (user.id, role))
    pair = IdentityServiceStub(channel).Login(ipb.LoginRequest(email=user.email, password=PASSWORD))
    return user, pair
