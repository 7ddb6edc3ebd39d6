"""The console's only way to the backend: the generated gRPC stubs over one channel, called
with the signed-in staff member's token, and gRPC failures turned into what a form can show."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from cinema.booking.v1.booking_pb2_grpc import BookingServiceStub
from cinema.identity.v1.identity_pb2_grpc import IdentityServiceStub
from cinema.payment.v1.payment_pb2_grpc import PaymentServiceStub
from cinema.reports.v1.reports_pb2_grpc import ReportsServiceStub
from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub

Response = TypeVar("Response")

DETAILS_KEY = "grpc-status-details-bin"
CALL_TIMEOUT_SECONDS = 15.0

_FRIENDLY_CODES = {
    grpc.StatusCode.PERMISSION_DENIED: "Your role may not do this.",
    grpc.StatusCode.UNAVAILABLE: "The cinema server cannot be reached right now; try again in a moment.",
    grpc.StatusCode.DEADLINE_EXCEEDED: "The cinema server took too long to answer; nothing was changed if it says so.",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "The cinema server is busy; try again in a moment.",
}


class Backend:
    """The stubs of every service, on one channel (a loopback one next to an in-process server)."""

    def __init__(self, channel: grpc.aio.Channel, proxy_key: str | None = None) -> None:
        """``proxy_key``: the in-process server's key for its own proxies; with it, the server
        takes the browser's address from X-Forwarded-For (sign-in throttle, stream budget)."""
        self.channel = channel
        self.proxy_key = proxy_key
        self.screening = ScreeningServiceStub(channel)
        self.booking = BookingServiceStub(channel)
        self.payment = PaymentServiceStub(channel)
        self.reports = ReportsServiceStub(channel)
        self.identity = IdentityServiceStub(channel)


@dataclass
class CallFailed(Exception):
    """A refused call, as a page shows it: one message, per-field messages, and the details that
    some screens act on (the blocking showtime and free halls of a SHOWTIME_OVERLAP)."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    violations: list[tuple[str, str]] = field(default_factory=list)  # (field path, description)
    preconditions: list[str] = field(default_factory=list)
    conflict: spb.ShowtimeConflict | None = None

    def __str__(self) -> str:
        return self.summary

    @property
    def summary(self) -> str:
        text = _FRIENDLY_CODES.get(self.code) or self.message or self.code.name.replace("_", " ").capitalize()
        extra = [p for p in self.preconditions if p not in text]
        if extra:
            text = f"{text} ({'; '.join(extra)})"
        return f"{text} [{self.reason}]" if self.reason else text


def failure_of(error: grpc.aio.AioRpcError) -> CallFailed:
    """Reads the google.rpc.Status details (AIP-193) the server's interceptor attaches."""
    failure = CallFailed(error.code(), error.details() or "")
    trailers = error.trailing_metadata() or ()
    for key, value in trailers:
        if key != DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        failure.message = status.message or failure.message
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            pre = error_details_pb2.PreconditionFailure()
            conflict = spb.ShowtimeConflict()
            if detail.Unpack(info):
                failure.reason = info.reason
            elif detail.Unpack(bad):
                failure.violations.extend((v.field, v.description) for v in bad.field_violations)
            elif detail.Unpack(pre):
                failure.preconditions.extend(v.description for v in pre.violations if v.description)
            elif detail.Unpack(conflict):
                failure.conflict = conflict
    return failure


Metadata = tuple[tuple[str, str], ...]


async def call(
    method: Callable[..., Awaitable[Response]], request: Message, token: str | None = None, extra: Metadata = ()
) -> Response:
    """One unary call; a refusal comes back as CallFailed, never as a raw RpcError."""
    metadata = ((("authorization", f"Bearer {token}"),) if token else ()) + extra
    try:
        return await method(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as error:
        raise failure_of(error) from None


_INDEX = re.compile(r"\[(\d+)\]")


def readable_path(path: str) -> str:
    """``layout.rows[1].gap_columns`` -> ``row 2, gap columns`` (positions counted from 1)."""
    words = []
    for part in path.split("."):
        match = _INDEX.search(part)
        name = _INDEX.sub("", part).replace("_", " ")
        if match:
            singular = name[:-1] if name.endswith("s") else name
            words.append(f"{singular} {int(match.group(1)) + 1}")
        elif name:
            words.append(name)
    return ", ".join(words)


@dataclass
class FormErrors:
    """What a form shows after a refusal: messages per form field, and the rest on top."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.fields or self.general)

    def add(self, name: str, message: str) -> None:
        self.fields.setdefault(name, []).append(message)

    @classmethod
    def of(cls, failure: CallFailed, fields: dict[str, str]) -> FormErrors:
        """Puts each field violation on the form field named for the longest matching proto path
        prefix in ``fields`` (proto path -> form field); a violation of a nested path keeps its
        position in the message ("row 2, gap columns: ...")."""
        errors = cls()
        for path, description in failure.violations:
            matches = [p for p in fields if path == p or path.startswith((p + ".", p + "["))]
            if not matches:
                errors.general.append(f"{readable_path(path)}: {description}" if path else description)
                continue
            prefix = max(matches, key=len)
            rest = path[len(prefix) :].lstrip(".")
            errors.add(fields[prefix], f"{readable_path(rest)}: {description}" if rest else description)
        if not failure.violations or not errors.fields:
            errors.general.insert(0, failure.summary)
        return errors
