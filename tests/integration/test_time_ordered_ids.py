"""Records written by the thousand get time-ordered ids (UUID version 7), whichever path writes
them: the plain hold's statement in the database, the seat inventory in the application.
Accounts keep random ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg

from tests.booking_data import Customer, Sale, hold
from tests.conftest import RunningServer
from tests.integration.test_plain_hold import place, plain

Db = psycopg.Connection[tuple[object, ...]]


def test_the_databases_ids_carry_the_time_they_are_given_and_random_bits(db: Db) -> None:
    at = datetime(2026, 3, 29, 0, 59, 59, 123_456, tzinfo=UTC)
    rows = db.execute("SELECT booking.uuid_v7(%s) FROM generate_series(1, 100)", (at,)).fetchall()
    made = [uuid.UUID(str(row[0])) for row in rows]
    assert {i.version for i in made} == {7} and {i.variant for i in made} == {uuid.RFC_4122}
    assert {i.int >> 80 for i in made} == {int(at.timestamp() * 1000)}
    assert len({i.int & ((1 << 74) - 1) for i in made}) == 100


def test_holds_and_claims_get_time_ordered_ids_on_either_path(
    server: RunningServer, ana: Customer, sale: Sale, db: Db
) -> None:
    placed = place(server, server.settings, plain(ana, sale, "C1", "C2"))  # the statement
    assert placed is not None, "the plain hold's statement wrote nothing"
    wheelchair = hold(ana, sale, "A1")  # the seat inventory, with the companion seat
    assert [f"{s.row_label}{s.number}" for s in wheelchair.seats] == ["A1", "A2"]
    rows = db.execute(
        "SELECT claim.id FROM booking.seat_claims AS claim WHERE claim.hold_id = ANY(%s)",
        ([placed.id, uuid.UUID(wheelchair.id)],),
    ).fetchall()
    assert len(rows) == 4
    claims = [uuid.UUID(str(row[0])) for row in rows]
    assert {claim.version for claim in claims} == {7}
    assert uuid.UUID(wheelchair.id).version == 7
    # Accounts keep random ids: an account's id does not tell when it was opened.
    assert uuid.UUID(ana.user.id).version == 4
