"""Hostile input for every RPC: requests built from the proto descriptors with huge, empty,
SQL-ish and out-of-range values, unknown enum numbers and random ids. Whatever arrives, the
answer is a defined status - never UNKNOWN or INTERNAL - and the server stays healthy."""

from __future__ import annotations

import os
import uuid
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cinema_grpc.server import SERVICES
from tests.auth_client import sign_in

Db = psycopg.Connection[tuple[object, ...]]
# Examples per RPC; the CI gate runs a short round, raise it for a longer hunt.
EXAMPLES = int(os.environ.get("CINEMA_FUZZ_EXAMPLES", "40"))

TEXT = st.one_of(
    st.just(""),
    st.text(max_size=20),
    st.just("x" * 100_000),
    st.just("'; DROP TABLE screening.cinemas; --"),
    st.just("\x00\u202e\ud7ff"),
    st.builds(lambda: str(uuid.uuid4())),
    st.just("00000000-0000-0000-0000-000000000000"),
)
INTS = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, 1, 10_000, 2**31 - 1, -(2**31)]))
LONGS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 2**63 - 1]))


def fill(message_type: Descriptor, draw: Any, depth: int = 0) -> Any:
    """A message of this type with a random subset of its fields set to hostile values."""
    message = message_factory.GetMessageClass(message_type)()
    for field in message_type.fields:
        if not draw(st.booleans()):
            continue
        repeated = field.is_repeated
        count = draw(st.integers(0, 3)) if repeated else 1
        for _ in range(count):
            value = value_for(field, draw, depth)
            if value is None:
                continue
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                target = getattr(message, field.name).add() if repeated else getattr(message, field.name)
                target.CopyFrom(value)
            elif repeated:
                getattr(message, field.name).append(value)
            else:
                setattr(message, field.name, value)
    return message


def value_for(field: FieldDescriptor, draw: Any, depth: int) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return draw(TEXT)
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return draw(INTS)
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return draw(LONGS)
    if kind == FieldDescriptor.TYPE_BOOL:
        return draw(st.booleans())
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return draw(st.floats(allow_nan=True))
    if kind == FieldDescriptor.TYPE_ENUM:
        return draw(st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 999)))
    if kind == FieldDescriptor.TYPE_MESSAGE:
        if depth > 3:
            return None
        if field.message_type.full_name == "google.protobuf.Timestamp":
            ts = message_factory.GetMessageClass(field.message_type)()
            ts.seconds = draw(st.integers(-62135596800, 253402300799))
            ts.nanos = draw(st.integers(0, 999_999_999))
            return ts
        return fill(field.message_type, draw, depth + 1)
    return None


METHODS: list[tuple[str, MethodDescriptor]] = [
    (f"/{service.full_name}/{method.name}", method) for service in SERVICES for method in service.methods
]
DEFINED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a stream that stays open until our deadline is fine
}


@pytest.mark.parametrize(("path", "method"), METHODS, ids=[path.rsplit(".", 1)[-1] for path, _ in METHODS])
def test_every_rpc_answers_hostile_requests_with_a_defined_status(
    path: str, method: MethodDescriptor, channel: grpc.Channel, db: Db
) -> None:
    # An admin of its own: the fuzzer may sign it out, change its password or its roles.
    admin_token = sign_in(channel, db, "ADMIN")[1].access_token
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    streaming = method.server_streaming
    call = (channel.unary_stream if streaming else channel.unary_unary)(
        path, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString
    )

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.data())
    def attempt(data: st.DataObject) -> None:
        request = fill(method.input_type, data.draw)
        authorization = data.draw(st.sampled_from([f"Bearer {admin_token}", "", "Bearer nonsense"]))
        metadata = (("authorization", authorization),) if authorization else ()
        try:
            if streaming:
                responses = call(request, metadata=metadata, timeout=2)
                next(iter(responses), None)
                responses.cancel()
            else:
                call(request, metadata=metadata, timeout=15)
        except grpc.RpcError as error:
            assert error.code() in DEFINED, f"{path}: {error.code()} {error.details()} for {request}"  # type: ignore[attr-defined]  # noqa: PT017

    attempt()
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
