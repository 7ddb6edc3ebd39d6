"""Turns domain errors into gRPC statuses with google.rpc details (AIP-193)."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cinema_grpc.domain.errors import DomainError, ErrorKind

ERROR_DOMAIN = "cinema"

STATUS_CODES: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.ABORTED: grpc.StatusCode.ABORTED,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

# Area-specific details (e.g. the free halls of a SHOWTIME_OVERLAP), registered by the
# servicer modules that know the message types.
ExtraDetails = Callable[[DomainError], list[Message]]
_extra_details: list[ExtraDetails] = []


def register_details(build: ExtraDetails) -> None:
    _extra_details.append(build)


def _packed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _status(code: grpc.StatusCode, message: str, details: list[Message]) -> grpc.Status:
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name),
        message=message,
        details=[_packed(d) for d in details],
    )
    return cast(grpc.Status, rpc_status.to_status(status))


def domain_error_status(error: DomainError) -> grpc.Status:
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    ]
    if error.field_violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description, reason=v.reason
                    )
                    for v in error.field_violations
                ]
            )
        )
    if error.precondition_violations:
        details.append(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=v.type, subject=v.subject, description=v.description
                    )
                    for v in error.precondition_violations
                ]
            )
        )
    if error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    for build in _extra_details:
        details.extend(build(error))
    return _status(STATUS_CODES[error.kind], error.message, details)


def internal_error_status(correlation_id: str) -> grpc.Status:
    """What a caller sees of a bug: a correlation id to quote, never a traceback."""
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"correlation_id": correlation_id}
    )
    return _status(
        grpc.StatusCode.INTERNAL,
        f"internal error; quote correlation id {correlation_id} to support",
        [info],
    )
