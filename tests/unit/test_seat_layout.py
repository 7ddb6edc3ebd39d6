"""Seat grids generated from layouts, and the layouts that are refused."""

from __future__ import annotations

import pytest

from cinema_grpc.domain.screening.model import MAX_SEATS_PER_HALL, RowSpec, SeatKind, SeatLayout


def reasons(layout: SeatLayout) -> dict[str, str]:
    return {v.field: v.reason for v in layout.violations().items}


def test_seats_are_numbered_from_the_left_skipping_gaps() -> None:
    layout = SeatLayout((RowSpec("A", 6, gap_columns=frozenset({3, 4})),))
    seats = layout.seats()
    assert [(s.row_label, s.number, s.column) for s in seats] == [
        ("A", 1, 1),
        ("A", 2, 2),
        ("A", 3, 5),
        ("A", 4, 6),
    ]


def test_overrides_change_the_kind_of_single_seats_and_rows_have_a_default_kind() -> None:
    layout = SeatLayout(
        (
            RowSpec("A", 4, overrides={1: SeatKind.WHEELCHAIR, 2: SeatKind.COMPANION}),
            RowSpec("B", 2, kind=SeatKind.PREMIUM),
        )
    )
    assert [s.kind for s in layout.seats()] == [
        SeatKind.WHEELCHAIR,
        SeatKind.COMPANION,
        SeatKind.STANDARD,
        SeatKind.STANDARD,
        SeatKind.PREMIUM,
        SeatKind.PREMIUM,
    ]


def test_a_valid_layout_has_no_violations() -> None:
    assert reasons(SeatLayout(tuple(RowSpec(label, 20) for label in "ABCDEFGH"))) == {}


def test_an_empty_layout_is_refused() -> None:
    assert reasons(SeatLayout(())) == {"layout.rows": "REQUIRED"}


@pytest.mark.parametrize("columns", [0, -1, 101, 10_000])
def test_row_width_must_be_between_1_and_100(columns: int) -> None:
    assert reasons(SeatLayout((RowSpec("A", columns),))) == {"layout.rows[0].columns": "OUT_OF_RANGE"}


def test_duplicate_row_labels_are_refused_case_insensitively() -> None:
    assert reasons(SeatLayout((RowSpec("A", 5), RowSpec("a", 5)))) == {"layout.rows[1].label": "DUPLICATE"}


@pytest.mark.parametrize("label", ["", "A B", "ROW-1", "ABCDEFGHI", "Ä"])
def test_row_labels_are_short_letters_or_digits(label: str) -> None:
    assert reasons(SeatLayout((RowSpec(label, 5),))) == {"layout.rows[0].label": "INVALID_FORMAT"}


def test_gaps_and_overrides_must_be_inside_the_row() -> None:
    layout = SeatLayout((RowSpec("A", 5, gap_columns=frozenset({0, 6}), overrides={9: SeatKind.PREMIUM}),))
    assert reasons(layout) == {"layout.rows[0].gap_columns": "OUT_OF_RANGE", "layout.rows[0].overrides": "OUT_OF_RANGE"}


def test_an_override_on_a_gap_is_refused() -> None:
    layout = SeatLayout((RowSpec("A", 5, gap_columns=frozenset({2}), overrides={2: SeatKind.PREMIUM}),))
    assert reasons(layout) == {"layout.rows[0].overrides": "OUT_OF_RANGE"}


def test_a_row_of_gaps_only_is_refused() -> None:
    assert reasons(SeatLayout((RowSpec("A", 2, gap_columns=frozenset({1, 2})),))) == {
        "layout.rows[0].gap_columns": "EMPTY_ROW"
    }


def test_a_hall_has_at_most_the_seat_limit() -> None:
    rows = tuple(RowSpec(f"R{i}", 100) for i in range(MAX_SEATS_PER_HALL // 100 + 1))
    assert reasons(SeatLayout(rows)) == {"layout.rows": "OUT_OF_RANGE"}


def test_at_most_100_rows() -> None:
    rows = tuple(RowSpec(f"R{i}", 1) for i in range(101))
    assert reasons(SeatLayout(rows)) == {"layout.rows": "OUT_OF_RANGE"}
