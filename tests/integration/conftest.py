"""Fixtures shared by the integration tests: a showtime on sale and signed-in people."""

from __future__ import annotations

import grpc
import psycopg
import pytest

from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from tests.booking_data import Customer, Sale, customer, open_sale

Db = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def sale(screening: ScreeningServiceStub) -> Sale:
    """A scheduled showtime about 30 hours ahead, in a 6-row hall (see tests/booking_data.py)."""
    return open_sale(screening)


@pytest.fixture
def ana(channel: grpc.Channel, db: Db) -> Customer:
    return customer(channel, db)


@pytest.fixture
def ben(channel: grpc.Channel, db: Db) -> Customer:
    return customer(channel, db)


@pytest.fixture
def clerk(channel: grpc.Channel, db: Db) -> Customer:
    """A box-office staff member."""
    return customer(channel, db, "STAFF")
