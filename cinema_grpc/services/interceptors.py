"""The one server interceptor: request ids, access control, structured RPC logs, error mapping."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
import structlog
from grpc.aio import AbortError

from cinema_grpc.domain.errors import DomainError, MalformedMessage, ServerTimeout
from cinema_grpc.log_config import write_json_line
from cinema_grpc.services.access import AccessControl, ClientAddresses
from cinema_grpc.services.call_budget import CallBudget
from cinema_grpc.services.convert import Context, refuse_nul_characters
from cinema_grpc.services.metrics import RPC_DURATION, RPC_REQUESTS
from cinema_grpc.services.status import domain_error_status, internal_error_status

log = structlog.get_logger("cinema_grpc.rpc")
REQUEST_ID_HEADER = "x-request-id"

UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]
# Answered whatever the load: balancers and orchestrators must always learn how the replica is.
UNLIMITED = frozenset({"/grpc.health.v1.Health/Check"})


def _request_id(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
            return value
    return os.urandom(16).hex()  # 32 hex digits, as uuid4().hex, in a sixth of its time


def _structlog_variables(*keys: str) -> tuple[contextvars.ContextVar[Any], ...]:
    """The context variables behind structlog's bound keys (``bind_contextvars``), found once,
    so each call sets them directly."""
    tokens = contextvars.Context().run(structlog.contextvars.bind_contextvars, **dict.fromkeys(keys))
    return tuple(tokens[key].var for key in keys)


_REQUEST_ID, _RPC = _structlog_variables("request_id", "rpc")


class _MethodMetrics:
    """The labelled metrics of one method, looked up once instead of on every call."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.duration = RPC_DURATION.labels(method)
        self._requests: dict[tuple[str, str], Any] = {}

    def count(self, code: str, reason: str) -> None:
        counter = self._requests.get((code, reason))
        if counter is None:
            counter = self._requests[code, reason] = RPC_REQUESTS.labels(self.method, code, reason)
        counter.inc()


class _Call:
    """Bookkeeping of one RPC: its id, timing and the status it ended with."""

    __slots__ = (
        "code",
        "context",
        "deadline",
        "expired",
        "metrics",
        "reason",
        "request_id",
        "started",
        "task",
        "user_id",
    )

    def __init__(self, metrics: _MethodMetrics, context: Context) -> None:
        self.metrics = metrics
        self.context = context
        self.request_id = _request_id(context)
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.reason = ""
        self.user_id: uuid.UUID | None = None
        # The server's time limit (TimeLimit): the task to cancel, when, and whether it was.
        self.task: asyncio.Task[Any] | None = None
        self.deadline = 0.0
        self.expired = False
        _REQUEST_ID.set(self.request_id)
        _RPC.set(metrics.method)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, self.request_id),))

    async def fail(self, exc: Exception) -> None:
        """Aborts the RPC with the status that ``exc`` stands for; always raises."""
        if isinstance(exc, DomainError):
            status = domain_error_status(exc)
            self.reason = exc.reason
        else:
            log.error("unexpected error", exc_info=exc, correlation_id=self.request_id)
            status = internal_error_status(self.request_id)
            self.reason = "INTERNAL"
        self.code = status.code
        await self.context.abort(
            status.code, status.details, (*status.trailing_metadata, (REQUEST_ID_HEADER, self.request_id))
        )

    def finish(self) -> None:
        if self.context.cancelled() and self.code is grpc.StatusCode.OK:
            self.code = grpc.StatusCode.CANCELLED
        elapsed = time.perf_counter() - self.started
        code = self.code.name
        self.metrics.count(code, self.reason)
        self.metrics.duration.observe(elapsed)
        fields = {
            "user_id": str(self.user_id) if self.user_id else None,
            "code": code,
            "reason": self.reason or None,
            "duration_ms": round(elapsed * 1000, 2),
        }
        if not write_json_line("cinema_grpc.rpc", "rpc", fields):
            log.info("rpc", **fields)
        _REQUEST_ID.set(...)  # unbound, as structlog's unbind_contextvars leaves them
        _RPC.set(...)


class TimeLimit:
    """The server's time limit of unary calls: a call running longer is cancelled, and answers
    DEADLINE_EXCEEDED / SERVER_TIMEOUT. Every call has the same limit, so deadlines come in the
    order calls started: one timer, at the deadline of the oldest call still running, serves
    them all (``asyncio.timeout`` around each call put a timer per call into the loop's heap)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._running: dict[_Call, None] = {}  # in the order the calls started
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's

    def start(self, call: _Call) -> None:
        loop = asyncio.get_running_loop()
        call.task = asyncio.current_task()
        call.deadline = loop.time() + self.seconds
        self._running[call] = None
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_at(call.deadline, self._expire, loop)

    def stop(self, call: _Call) -> bool:
        """Ends the limit of ``call`` (again: no harm); True if it ran past it and was cancelled."""
        self._running.pop(call, None)
        return call.expired

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        while self._running:
            call = next(iter(self._running))
            if call.deadline > now:
                self._timer = loop.call_at(call.deadline, self._expire, loop)
                return
            del self._running[call]
            call.expired = True
            if call.task is not None:
                call.task.cancel()


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the RPC can refuse it properly."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """gRPC answers UNKNOWN when a request does not parse; this turns that into a value the
    handler refuses with INVALID_ARGUMENT / MALFORMED_MESSAGE."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's
            return _Malformed(exc)

    return deserialize


def _check(request: Any) -> None:
    if isinstance(request, _Malformed):
        raise MalformedMessage(f"the request is not a valid message of this method's type: {request.error}")
    refuse_nul_characters(request)


def _unary(
    method: str, behavior: UnaryBehavior, access: AccessControl, limit: TimeLimit, budget: CallBudget
) -> UnaryBehavior:
    metrics = _MethodMetrics(method)

    async def handle(request: Any, context: Context) -> Any:
        call = _Call(metrics, context)
        entered = False
        try:
            budget.enter_unary()
            entered = True
            call.user_id = (await access.admit(method, context)).user_id
            _check(request)
            # Whatever deadline the client set (or none), no request runs longer than this.
            limit.start(call)
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                # The limit's cancellation, unless the task was also cancelled otherwise (the
                # client went away): then it stays cancelled, as with asyncio.timeout.
                if limit.stop(call) and call.task is not None and call.task.uncancel() == 0:
                    raise ServerTimeout(
                        f"the request ran longer than the server's limit of {limit.seconds:g} s"
                    ) from None
                raise
            finally:
                limit.stop(call)
        except AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is turned into a status
            await call.fail(exc)
        finally:
            if entered:
                budget.leave_unary()
            call.finish()

    return handle


def _stream(
    method: str, behavior: StreamBehavior, access: AccessControl, budget: CallBudget, addresses: ClientAddresses
) -> StreamBehavior:
    metrics = _MethodMetrics(method)

    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        call = _Call(metrics, context)
        slot = None
        try:
            slot = budget.open_stream(addresses.of(context))
            caller = await access.admit(method, context)
            call.user_id = caller.user_id
            if caller.user_id is not None:
                slot.claim_for_caller(caller.user_id)
            _check(request)
            async for response in behavior(request, context):
                yield response
        except AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is turned into a status
            await call.fail(exc)
        finally:
            if slot is not None:
                slot.release()
            call.finish()

    return handle


def _budgeted_stream(
    behavior: Callable[[Any, Context], Any], budget: CallBudget, addresses: ClientAddresses
) -> StreamBehavior:
    """A stream of a service of grpc's own (health Watch, reflection) under the stream budget."""

    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            slot = budget.open_stream(addresses.of(context))
        except DomainError as exc:
            status = domain_error_status(exc)
            await context.abort(status.code, status.details, status.trailing_metadata)
        try:
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
            else:  # a handler that writes with context.write
                await result
        finally:
            slot.release()

    return handle


def _passing_bytes(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A stream's serializer that writes a message serialized beforehand as it is: a seat event
    sent to a thousand watchers is serialized once, not a thousand times."""
    if serializer is None:
        return None

    def serialize(message: Any) -> bytes:
        return message if isinstance(message, bytes) else serializer(message)

    return serialize


class RpcInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        access: AccessControl,
        budget: CallBudget,
        rpc_timeout_seconds: float = 60.0,
        addresses: ClientAddresses | None = None,
    ) -> None:
        self._access = access
        self._budget = budget
        self._limit = TimeLimit(rpc_timeout_seconds)
        # Who a stream is counted against (per-address budget): the same address the throttles see.
        self._addresses = addresses or ClientAddresses()
        # Method -> (the servicer's handler, the handler wrapping it): wrapped once, not per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in UNLIMITED:
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is not None and wrapped[0] is handler:
            return wrapped[1]
        if len(self._wrapped) > 10_000:  # only registered methods get here; a bound all the same
            self._wrapped.clear()
        self._wrapped[method] = (handler, self._wrap(method, handler))
        return self._wrapped[method][1]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        if not method.startswith("/cinema."):
            # Health and reflection keep their own semantics; their streams count as streams.
            return self._budgeted(handler)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(method, cast(UnaryBehavior, handler.unary_unary), self._access, self._limit, self._budget),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _stream(
                    method, cast(StreamBehavior, handler.unary_stream), self._access, self._budget, self._addresses
                ),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=_passing_bytes(handler.response_serializer),
            )
        return handler

    def _budgeted(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _budgeted_stream(
                    cast(Callable[[Any, Context], Any], handler.unary_stream), self._budget, self._addresses
                ),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _budgeted_stream(
                    cast(Callable[[Any, Context], Any], handler.stream_stream), self._budget, self._addresses
                ),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
