"""Hostile input for every RPC: requests built from the proto descriptors with huge, empty,
SQL-ish and out-of-range values, unknown enum numbers and random ids, and bytes that are not
a request at all. Whatever arrives, the answer is a defined status - never UNKNOWN or
INTERNAL -, a refused request leaves no row behind, and the server stays healthy."""

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
from tests.rpc_errors import failure

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


# Written by refused requests on purpose: failed sign-ins and registrations are counted
# (throttling) and a reused refresh token signs its session out.
WRITTEN_WHEN_REFUSED = ("identity.sign_in_records", "identity.registrations_by_address", "identity.sessions")


def _row_census(db: Db) -> tuple[int, list[tuple[object, ...]]]:
    """The next transaction id, and each table's row count, to tell later whether a refused
    request wrote anything (rows it inserted or updated carry a newer xmin; xmin is the 32-bit
    part of the id, so this holds until the id wraps around)."""
    mark = db.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()
    assert mark is not None
    return int(str(mark[0])), _rows_since(db, int(str(mark[0])))


def _rows_since(db: Db, mark: int) -> list[tuple[object, ...]]:
    tables = [
        str(row[0])
        for row in db.execute(
            "SELECT format('%%I.%%I', schemaname, tablename) FROM pg_tables WHERE schemaname = ANY(%s) ORDER BY 1",
            (["screening", "booking", "api", "payment", "identity", "admission"],),
        )
        if row[0] not in WRITTEN_WHEN_REFUSED
    ]
    query = " UNION ALL ".join(
        f"SELECT '{table}', count(*), count(*) FILTER (WHERE xmin::text::bigint >= {mark % 2**32}) FROM {table}"
        for table in tables
    )
    return db.execute(query).fetchall()


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
        mark, before = _row_census(db)
        try:
            if streaming:
                responses = call(request, metadata=metadata, timeout=2)
                next(iter(responses), None)
                responses.cancel()
            else:
                call(request, metadata=metadata, timeout=15)
        except grpc.RpcError as error:
            assert error.code() in DEFINED, f"{path}: {error.code()} {error.details()} for {request}"  # type: ignore[attr-defined]  # noqa: PT017
            if error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                # Refused: not one row added, changed or removed.
                after = _rows_since(db, mark)
                changed = [
                    (old[0], old[1], new[1], new[2]) for old, new in zip(before, after, strict=True) if old != new
                ]
                assert not changed, f"{path} refused but wrote (table, rows before, after, touched): {changed}"

    attempt()
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


# Not a request of any type: bad wire format, a truncated field, invalid UTF-8 in a string,
# a varint where a length-delimited field is expected, and nesting deeper than any parser allows.
NOT_REQUESTS = [
    b"\xff\xff\xff\xff\xff",
    b"\x0a\x05ab",
    b"\x0a\x02\xc3\x28",
    b"\x08\x96\x01",
    b"\x0a\xff\xff\xff\xff\x0f",
    # Groups of an unknown field (1000) nested 50 deep (parses, the field is skipped) and 500
    # deep (past the parser's recursion limit).
    b"\xc3\x3e" * 50 + b"\xc4\x3e" * 50,
    b"\xc3\x3e" * 500 + b"\xc4\x3e" * 500,
]


@pytest.mark.parametrize(("path", "method"), METHODS, ids=[path.rsplit(".", 1)[-1] for path, _ in METHODS])
def test_every_rpc_refuses_bytes_that_are_not_its_request(
    path: str, method: MethodDescriptor, channel: grpc.Channel, db: Db
) -> None:
    # An admin of its own: some of these bytes parse as a valid (e.g. Logout) request.
    metadata = (("authorization", f"Bearer {sign_in(channel, db, 'ADMIN')[1].access_token}"),)
    call = (channel.unary_stream if method.server_streaming else channel.unary_unary)(path)
    _, before = _row_census(db)

    # The first one is malformed for every message type: refused as such, by reason.
    def first_answer(raw: bytes) -> None:
        result = call(raw, metadata=metadata, timeout=5)
        if method.server_streaming:
            next(iter(result))

    with pytest.raises(grpc.RpcError) as raised:
        first_answer(NOT_REQUESTS[0])
    refused = failure(raised.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_MESSAGE")
    assert [row[:2] for row in _row_census(db)[1]] == [row[:2] for row in before]
    for raw in NOT_REQUESTS[1:]:
        try:
            result = call(raw, metadata=metadata, timeout=5)
            if method.server_streaming:
                next(iter(result), None)
                result.cancel()
        except grpc.RpcError as error:
            assert error.code() in DEFINED, f"{path}: {error.code()} {error.details()} for {raw!r}"  # type: ignore[attr-defined]  # noqa: PT017
