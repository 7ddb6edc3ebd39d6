"""Rules for human-entered text fields: trimmed, bounded, printable."""

from __future__ import annotations

import unicodedata

from cinema_grpc.domain.errors import Violations


def clean_text(violations: Violations, field: str, value: str, *, max_length: int, required: bool = True) -> str:
    """Returns the trimmed value; records a violation when it is empty, too long or unprintable."""
    text = value.strip()
    if required and not text:
        violations.add(field, "REQUIRED", "must not be empty")
    elif len(text) > max_length:
        violations.add(field, "TOO_LONG", f"must be at most {max_length} characters")
    elif any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"} for ch in text):
        violations.add(field, "INVALID_CHARACTERS", "must not contain control characters")
    return text
