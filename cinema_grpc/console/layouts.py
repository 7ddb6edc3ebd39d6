"""The seat-layout editor's text form: one row per line, turned into a SeatLayout message and
into the grid the preview draws.

    A 12 premium               row A: 12 premium seats
    B 14 gap=5,10              row B: 14 grid columns, columns 5 and 10 are aisles (12 seats)
    C 10 wheelchair=1,2 companion=3

The server checks the layout again (and numbers the seats the same way: 1..n from the left,
gaps skipped); its field violations are shown per row."""

from __future__ import annotations

from dataclasses import dataclass

from cinema.screening.v1 import screening_pb2 as spb

KINDS = {
    "standard": spb.SEAT_KIND_STANDARD,
    "premium": spb.SEAT_KIND_PREMIUM,
    "wheelchair": spb.SEAT_KIND_WHEELCHAIR,
    "companion": spb.SEAT_KIND_COMPANION,
}
KIND_NAMES = {number: name for name, number in KINDS.items()}
MAX_PREVIEW_COLUMNS = 60


class LayoutSyntaxError(ValueError):
    pass


def _columns(text: str, line: int) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise LayoutSyntaxError(f"line {line}: {text!r} is not a list of column numbers like 5,10") from None


def parse_layout(text: str) -> spb.SeatLayout:
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        if len(words) < 2 or not words[1].isdigit():
            raise LayoutSyntaxError(f"line {line_number}: start with the row label and its columns, like 'A 12'")
        row = spb.SeatRow(label=words[0], columns=int(words[1]), kind=spb.SEAT_KIND_STANDARD)
        for word in words[2:]:
            name, _, value = word.partition("=")
            name = name.lower()
            if not value and name in KINDS:
                row.kind = KINDS[name]
            elif value and name in ("gap", "gaps"):
                row.gap_columns.extend(_columns(value, line_number))
            elif value and name in KINDS:
                row.overrides.extend(
                    spb.SeatKindOverride(column=c, kind=KINDS[name]) for c in _columns(value, line_number)
                )
            else:
                raise LayoutSyntaxError(
                    f"line {line_number}: {word!r} is not understood; use a kind ({', '.join(KINDS)}), "
                    "gap=COLUMNS or KIND=COLUMNS"
                )
        rows.append(row)
    if not rows:
        raise LayoutSyntaxError("write at least one row, like 'A 12'")
    return spb.SeatLayout(rows=rows)


def layout_text(layout: spb.SeatLayout) -> str:
    """The editor text of an existing layout (the inverse of parse_layout)."""
    lines = []
    for row in layout.rows:
        words = [row.label, str(row.columns)]
        if row.kind not in (spb.SEAT_KIND_UNSPECIFIED, spb.SEAT_KIND_STANDARD):
            words.append(KIND_NAMES[row.kind])
        if row.gap_columns:
            words.append("gap=" + ",".join(str(c) for c in row.gap_columns))
        by_kind: dict[str, list[int]] = {}
        for override in row.overrides:
            by_kind.setdefault(KIND_NAMES.get(override.kind, "standard"), []).append(override.column)
        words.extend(f"{kind}={','.join(str(c) for c in columns)}" for kind, columns in by_kind.items())
        lines.append(" ".join(words))
    return "\n".join(lines)


@dataclass(frozen=True)
class Cell:
    """One grid position of the preview: a seat (number and kind) or an aisle (number 0)."""

    column: int
    number: int = 0
    kind: str = ""
    in_service: bool = True

    @property
    def is_gap(self) -> bool:
        return self.number == 0


def preview_rows(layout: spb.SeatLayout) -> list[tuple[str, list[Cell]]]:
    rows = []
    for row in layout.rows:
        gaps = set(row.gap_columns)
        overrides = {o.column: o.kind for o in row.overrides}
        cells, number = [], 0
        for column in range(1, min(row.columns, MAX_PREVIEW_COLUMNS) + 1):
            if column in gaps:
                cells.append(Cell(column))
                continue
            number += 1
            kind = overrides.get(column, row.kind or spb.SEAT_KIND_STANDARD)
            cells.append(Cell(column, number, KIND_NAMES.get(kind, "standard")))
        rows.append((row.label, cells))
    return rows


def hall_rows(hall: spb.Hall) -> list[tuple[str, list[tuple[int, spb.Seat | None]]]]:
    """A stored hall's seats on its grid: per row, (column, seat or None for an aisle)."""
    by_row: dict[str, dict[int, spb.Seat]] = {}
    for seat in hall.seats:
        by_row.setdefault(seat.row_label, {})[seat.column] = seat
    return [
        (
            row.label,
            [(c, by_row.get(row.label, {}).get(c)) for c in range(1, min(row.columns, MAX_PREVIEW_COLUMNS) + 1)],
        )
        for row in hall.layout.rows
    ]
