"""The per-call cost of the project's own RPC machinery, without gRPC's transport or a database:
the server interceptor (request id, access control, budgets, time limit, metrics, the JSON log
line) around a servicer method that does nothing, called directly with a stand-in context.

    python bench/interceptor_bench.py [--calls N] [--rounds N]

Prints microseconds of this process's CPU per call for each case (the best of the rounds, the
least disturbed by other work on the machine), and the same for the bare servicer method as the
floor. Single process, one call at a time: what the server's thread pays per call for the
interceptor, which bench/booking_bench.py's rows show only inside the whole call.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from cinema.screening.v1 import screening_pb2 as spb
from cinema_grpc import log_config
from cinema_grpc.adapters.tokens import JwtTokenCodec
from cinema_grpc.domain.access import Caller
from cinema_grpc.domain.identity.model import Role, Session, User
from cinema_grpc.domain.identity.use_cases import Authenticator
from cinema_grpc.server import SERVICES
from cinema_grpc.services.access import AccessControl, declared_policies
from cinema_grpc.services.call_budget import Budgets, CallBudget
from cinema_grpc.services.interceptors import RpcInterceptor

KEY = "k" * 48
PUBLIC = "/cinema.screening.v1.ScreeningService/GetShowtime"
AUTHENTICATED = "/cinema.booking.v1.BookingService/GetHold"
HEALTH = "/grpc.health.v1.Health/Check"


class Context:
    """What the interceptor uses of a grpc.aio servicer context."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = metadata

    def cancelled(self) -> bool:
        return False

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> None:
        raise RuntimeError(details)


class Details:
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


def a_token(codec: JwtTokenCodec) -> tuple[str, uuid.UUID, Caller]:
    now = datetime.now(UTC)
    user_id, session_id = uuid.uuid4(), uuid.uuid4()
    user = User(
        id=user_id,
        email="bench@example.com",
        display_name="bench",
        phone="",
        roles=frozenset({Role.CUSTOMER}),
        password_hash="x",
        created_at=now,
        updated_at=now,
    )
    session = Session(
        id=session_id,
        user_id=user_id,
        refresh_token_id=uuid.uuid4().hex,
        created_at=now,
        expires_at=now + timedelta(days=1),
    )
    token = codec.issue(user, session, now).access_token
    return token, session_id, Caller(user_id, frozenset({Role.CUSTOMER}), session_id)


async def measure(calls: int, rounds: int) -> list[tuple[str, float]]:
    codec = JwtTokenCodec(KEY)
    authenticator = Authenticator(codec, clock=None, ttl_seconds=3600)  # type: ignore[arg-type]
    token, session_id, caller = a_token(codec)
    # The session check is cached for the benchmark's whole run, as it is between a client's calls.
    authenticator._cache[session_id] = (time.monotonic(), caller)
    access = AccessControl(declared_policies(SERVICES), authenticator, lambda: None)  # type: ignore[arg-type,return-value]
    budgets = Budgets(unary_calls=10_000, streams=100, streams_per_address=10, streams_per_caller=10)
    interceptor = RpcInterceptor(access, CallBudget(budgets), 60.0)
    response = spb.Showtime()

    async def behavior(request: Any, context: Any) -> Any:
        return response

    def continuation_for(method: str) -> Callable[[Any], Awaitable[Any]]:
        handler = grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=spb.GetShowtimeRequest.FromString,
            response_serializer=spb.Showtime.SerializeToString,
        )

        async def continuation(details: Any) -> Any:
            return handler

        return continuation

    request = spb.GetShowtimeRequest(showtime_id=str(uuid.uuid4()))
    anonymous: tuple[tuple[str, str], ...] = (("user-agent", "grpc-python/1.85"),)
    signed_in = (*anonymous, ("authorization", f"Bearer {token}"))

    async def bare(metadata: tuple[tuple[str, str], ...], method: str) -> None:
        context = Context(metadata)
        for _ in range(calls):
            await behavior(request, context)
            await asyncio.sleep(0)  # a turn of the event loop per call, as a server has at least

    async def intercepted(metadata: tuple[tuple[str, str], ...], method: str) -> None:
        continuation = continuation_for(method)
        context = Context(metadata)
        for _ in range(calls):
            details = Details(method, metadata)
            handler = await interceptor.intercept_service(continuation, details)  # type: ignore[arg-type]
            await handler.unary_unary(request, context)
            await asyncio.sleep(0)

    cases: list[tuple[str, Callable[..., Awaitable[None]], tuple[tuple[str, str], ...], str]] = [
        ("servicer method and a loop turn alone (floor)", bare, anonymous, PUBLIC),
        ("Health/Check, passed through", intercepted, anonymous, HEALTH),
        ("public unary call, anonymous", intercepted, anonymous, PUBLIC),
        ("unary call, signed in (cached token and session)", intercepted, signed_in, AUTHENTICATED),
    ]
    results = []
    for name, run, metadata, method in cases:
        await run(metadata, method)  # warm-up
        best = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            await run(metadata, method)
            best = min(best, (time.process_time() - started) / calls * 1e6)
        results.append((name, best))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # INFO JSON lines, as in production, written to /dev/null.
    log_config.configure_logging("INFO", "json")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - for the life of the process
    results = asyncio.run(measure(args.calls, args.rounds))
    print(f"interceptor micro-benchmark: {args.calls:,} calls x {args.rounds} rounds, best round, CPU us per call")
    print(f"load average (1 min): {os.getloadavg()[0]:.2f}")
    for name, us in results:
        print(f"  {name:<52} {us:8.1f} us")


if __name__ == "__main__":
    main()
