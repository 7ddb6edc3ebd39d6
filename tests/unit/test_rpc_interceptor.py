"""The server interceptor's own bookkeeping, without a server: handlers wrapped once per method,
the server's time limit (one timer for all calls), request ids and the per-RPC metrics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from cinema.screening.v1 import screening_pb2 as spb
from cinema_grpc.domain.access import ANONYMOUS, Audience, Caller
from cinema_grpc.services.access import AccessControl
from cinema_grpc.services.call_budget import Budgets, CallBudget
from cinema_grpc.services.interceptors import REQUEST_ID_HEADER, RpcInterceptor, TimeLimit
from cinema_grpc.services.metrics import REGISTRY

PUBLIC = "/cinema.screening.v1.ScreeningService/GetShowtime"
HEALTH = "/grpc.health.v1.Health/Check"


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: Any) -> None:
        super().__init__(details)
        self.code = code
        self.trailing = dict(trailing)


class Context:
    """What the interceptor uses of a grpc.aio servicer context."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._metadata = metadata
        self.trailing: dict[str, Any] = {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = dict(metadata)

    def cancelled(self) -> bool:
        return False

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise Aborted(code, details, trailing_metadata)


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class Everyone(AccessControl):
    def __init__(self) -> None:
        super().__init__({PUBLIC: Audience.PUBLIC}, None, None)  # type: ignore[arg-type]

    async def admit(self, method: str, context: Any) -> Caller:
        return ANONYMOUS


def interceptor(timeout: float = 60.0) -> RpcInterceptor:
    budgets = Budgets(unary_calls=100, streams=10, streams_per_address=10, streams_per_caller=10)
    return RpcInterceptor(Everyone(), CallBudget(budgets), timeout)


def serving(behavior: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    handler = grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=spb.GetShowtimeRequest.FromString,
        response_serializer=spb.Showtime.SerializeToString,
    )

    async def continuation(details: Any) -> Any:
        return handler

    return continuation


def count(code: str, reason: str = "") -> float:
    value = REGISTRY.get_sample_value("cinema_rpc_requests_total", {"method": PUBLIC, "code": code, "reason": reason})
    return value or 0.0


async def call(rpc: RpcInterceptor, continuation: Any, context: Context | None = None, method: str = PUBLIC) -> Any:
    handler = await rpc.intercept_service(continuation, Details(method))  # type: ignore[arg-type]
    return await handler.unary_unary(spb.GetShowtimeRequest(showtime_id=str(uuid.uuid4())), context or Context())


def test_a_methods_handler_is_wrapped_once_and_health_is_left_alone() -> None:
    async def behavior(request: Any, context: Any) -> Any:
        return spb.Showtime()

    async def run() -> None:
        rpc = interceptor()
        continuation = serving(behavior)
        first = await rpc.intercept_service(continuation, Details(PUBLIC))  # type: ignore[arg-type]
        again = await rpc.intercept_service(continuation, Details(PUBLIC))  # type: ignore[arg-type]
        assert first is again and first is not None and first.unary_unary is not behavior
        health = await rpc.intercept_service(continuation, Details(HEALTH))  # type: ignore[arg-type]
        assert health is not None and health.unary_unary is behavior
        # Another handler for the same method (a server built anew) is wrapped anew.
        other = await rpc.intercept_service(serving(behavior), Details(PUBLIC))  # type: ignore[arg-type]
        assert other is not first

    asyncio.run(run())


def test_every_call_has_a_request_id_in_its_trailers_and_is_counted() -> None:
    async def behavior(request: Any, context: Any) -> Any:
        return spb.Showtime(id="s")

    async def run() -> None:
        rpc, continuation = interceptor(), serving(behavior)
        before = count("OK")
        mine, theirs, given = Context(), Context(), Context(((REQUEST_ID_HEADER, "req-42"),))
        assert (await call(rpc, continuation, mine)).id == "s"
        await call(rpc, continuation, theirs)
        await call(rpc, continuation, given)
        ids = [mine.trailing[REQUEST_ID_HEADER], theirs.trailing[REQUEST_ID_HEADER]]
        assert ids[0] != ids[1] and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
        assert given.trailing[REQUEST_ID_HEADER] == "req-42"
        assert count("OK") == before + 3

    asyncio.run(run())


def test_a_call_past_the_servers_limit_is_stopped_and_the_others_are_not() -> None:
    async def behavior(request: Any, context: Any) -> Any:
        await asyncio.sleep(float(request.showtime_id))
        return spb.Showtime(id=request.showtime_id)

    async def one(rpc: RpcInterceptor, seconds: str) -> Any:
        handler = await rpc.intercept_service(serving(behavior), Details(PUBLIC))  # type: ignore[arg-type]
        try:
            return await handler.unary_unary(spb.GetShowtimeRequest(showtime_id=seconds), Context())
        except Aborted as aborted:
            return aborted

    async def run() -> None:
        # Far above the quick calls, so that a stalled loop does not stop one of them.
        rpc = interceptor(timeout=1.0)
        before = count("DEADLINE_EXCEEDED", "SERVER_TIMEOUT")
        started = asyncio.get_running_loop().time()
        # Started one after another: the slow ones in the middle, quick ones around them.
        results = await asyncio.gather(
            one(rpc, "0"), one(rpc, "5"), one(rpc, "0.05"), one(rpc, "5"), one(rpc, "0.1"), one(rpc, "0")
        )
        took = asyncio.get_running_loop().time() - started
        quick = [r for r in results if not isinstance(r, Aborted)]
        stopped = [r for r in results if isinstance(r, Aborted)]
        assert [r.id for r in quick] == ["0", "0.05", "0.1", "0"]
        assert [s.code for s in stopped] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
        assert all("limit of 1 s" in str(s) for s in stopped)
        assert 0.99 < took < 4
        assert count("DEADLINE_EXCEEDED", "SERVER_TIMEOUT") == before + 2
        # Nothing is left waiting: the limit holds no call that ended.
        assert rpc._limit._running == {}
        # Later calls are limited as well (the timer is armed again).
        late = await one(rpc, "5")
        assert isinstance(late, Aborted) and late.code is grpc.StatusCode.DEADLINE_EXCEEDED

    asyncio.run(run())


def test_a_call_cancelled_from_outside_stays_cancelled() -> None:
    """The client going away cancels the call's task: not a server timeout, even when the limit
    has also passed."""

    async def behavior(request: Any, context: Any) -> Any:
        await asyncio.sleep(5)
        return spb.Showtime()

    async def run() -> None:
        rpc = interceptor(timeout=30)
        task = asyncio.create_task(call(rpc, serving(behavior)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rpc._limit._running == {}

    asyncio.run(run())


class Running:
    """What the time limit uses of a call."""

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task: asyncio.Task[Any] | None = task
        self.deadline = deadline
        self.expired = False


def test_the_limits_one_timer_serves_calls_in_the_order_they_started() -> None:
    async def run() -> None:
        limit = TimeLimit(0.2)
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(asyncio.sleep(5)) for _ in range(3)]
        calls = [Running(task, loop.time() + 0.2) for task in tasks]
        for running in calls:
            limit._running[running] = None  # type: ignore[index]
        limit.stop(calls[0])  # type: ignore[arg-type]  # the first ended in time
        limit._expire(loop)
        assert not any(running.expired for running in calls) and limit._timer is not None
        await asyncio.sleep(0.3)
        assert [running.expired for running in calls] == [False, True, True]
        assert [task.cancelled() for task in tasks] == [False, True, True]
        assert limit._running == {} and limit._timer is None
        tasks[0].cancel()

    asyncio.run(run())
