"""Conversions shared by all servicers: ids, timestamps, money, request fingerprints."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any, TypeAlias

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from grpc.aio import ServicerContext

from cinema.common.v1 import money_pb2
from cinema_grpc.domain.errors import Violations
from cinema_grpc.domain.idempotency import RequestKey, request_key
from cinema_grpc.domain.money import MAX_AMOUNT_MINOR, Money, is_currency_code

Context: TypeAlias = ServicerContext[Any, Any]


def parse_id(violations: Violations, field: str, value: str, *, required: bool = True) -> uuid.UUID | None:
    if not value:
        if required:
            violations.add(field, "REQUIRED", "must be set")
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        violations.add(field, "INVALID_FORMAT", "must be a UUID")
        return None


def require_id(field: str, value: str) -> uuid.UUID:
    """The id of the one resource a request is about; a bad or missing id fails the request."""
    violations = Violations()
    parsed = parse_id(violations, field, value)
    violations.raise_if_any()
    assert parsed is not None
    return parsed


def parse_time(violations: Violations, field: str, parent: Message, name: str) -> datetime | None:
    if not parent.HasField(name):
        violations.add(field, "REQUIRED", "must be set")
        return None
    ts: timestamp_pb2.Timestamp = getattr(parent, name)
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        violations.add(field, "OUT_OF_RANGE", "is not a valid point in time")
        return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """As Timestamp.FromDatetime (a naive datetime is UTC), without its time tuple and
    calendar.timegm: a few of these are in every answer."""
    since = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return timestamp_pb2.Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1_000)


def parse_money(violations: Violations, field: str, parent: Message, name: str) -> Money | None:
    if not parent.HasField(name):
        violations.add(field, "REQUIRED", "must be set")
        return None
    money: money_pb2.Money = getattr(parent, name)
    if not is_currency_code(money.currency_code):
        violations.add(f"{field}.currency_code", "INVALID_FORMAT", "must be an ISO 4217 code such as EUR")
        return None
    if abs(money.amount_minor) > MAX_AMOUNT_MINOR:
        violations.add(f"{field}.amount_minor", "OUT_OF_RANGE", "is implausibly large")
        return None
    return Money(money.amount_minor, money.currency_code)


def money(value: Money) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=value.amount_minor, currency_code=value.currency)


def fingerprint(request: Message) -> str:
    """Identifies a request's content, so a reused request_id with other content is caught."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


def request_key_of(violations: Violations, request: Message, owner: str) -> RequestKey | None:
    """The idempotency key of a request with a ``request_id`` field (its fingerprint is only
    computed when the request carries one)."""
    request_id: str = getattr(request, "request_id")  # noqa: B009 - every caller's message has it
    return request_key(violations, request_id, fingerprint(request) if request_id else "", owner)


def refuse_nul_characters(message: Message, prefix: str = "") -> None:
    """PostgreSQL text cannot hold U+0000: a request carrying one is refused by field, up front."""
    violations = Violations()
    _find_nul(message, prefix, violations)
    violations.raise_if_any()


def _find_nul(message: Message, prefix: str, violations: Violations) -> None:
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.type == field.TYPE_STRING:
            values = value if field.is_repeated else [value]
            for i, text in enumerate(values):
                if "\x00" in text:
                    where = f"{path}[{i}]" if field.is_repeated else path
                    violations.add(where, "INVALID_CHARACTERS", "must not contain NUL characters")
        elif field.type == field.TYPE_MESSAGE:
            children = value if field.is_repeated else [value]
            for i, child in enumerate(children):
                if not isinstance(child, Message):  # map entries of scalar values
                    continue
                where = f"{path}[{i}]." if field.is_repeated else f"{path}."
                _find_nul(child, where, violations)
