"""Datetimes become protobuf Timestamps exactly as Timestamp.FromDatetime makes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import timestamp_pb2

from cinema_grpc.services.convert import timestamp


def test_a_timestamp_is_the_one_protobuf_makes_of_the_same_datetime() -> None:
    values = [
        datetime(2026, 12, 1, 13, 45, 7, 123456, tzinfo=UTC),
        datetime(2026, 12, 1, 13, 45, 7, 123456),  # naive: UTC
        datetime(2026, 3, 29, 2, 30, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 10, 25, 1, 0, 0, 1, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
        datetime(1970, 1, 1, tzinfo=UTC),
    ]
    for value in values:
        expected = timestamp_pb2.Timestamp()
        expected.FromDatetime(value)
        assert timestamp(value) == expected, value
