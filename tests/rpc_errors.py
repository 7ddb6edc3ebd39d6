"""Reads the google.rpc details of a failed call, so tests assert on reasons and fields."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from cinema.screening.v1 import screening_pb2


@dataclass
class RpcFailure:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)  # field path -> violation reason
    preconditions: list[tuple[str, str]] = field(default_factory=list)  # (type, subject)
    conflict: screening_pb2.ShowtimeConflict | None = None
    retry_delay_seconds: float | None = None


def failure(error: grpc.RpcError) -> RpcFailure:
    """Works for errors of sync (grpc.Call) and asyncio (AioRpcError) stubs alike."""
    result = RpcFailure(error.code(), error.details() or "")  # type: ignore[attr-defined]
    trailing = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    raw = next((value for key, value in trailing if key == "grpc-status-details-bin"), None)
    if raw is None:
        return result
    status = status_pb2.Status.FromString(raw)
    for detail in status.details:
        for message_type in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.RetryInfo,
            screening_pb2.ShowtimeConflict,
        ):
            if detail.Is(message_type.DESCRIPTOR):
                message: Message = message_type()
                detail.Unpack(message)
                _absorb(result, message)
    return result


def _absorb(result: RpcFailure, message: Message) -> None:
    if isinstance(message, error_details_pb2.ErrorInfo):
        assert message.domain == "cinema"
        result.reason = message.reason
        result.metadata = dict(message.metadata)
    elif isinstance(message, error_details_pb2.BadRequest):
        result.fields = {v.field: v.reason for v in message.field_violations}
    elif isinstance(message, error_details_pb2.PreconditionFailure):
        result.preconditions = [(v.type, v.subject) for v in message.violations]
    elif isinstance(message, error_details_pb2.RetryInfo):
        result.retry_delay_seconds = message.retry_delay.ToTimedelta().total_seconds()
    elif isinstance(message, screening_pb2.ShowtimeConflict):
        result.conflict = message


def call_fails(call: object, request: object, **kwargs: object) -> RpcFailure:
    """Calls a stub method expecting failure and returns what the failure says."""
    try:
        call(request, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as error:
        return failure(error)
    raise AssertionError("the call succeeded")
