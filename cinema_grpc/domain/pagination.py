"""Page size rules and opaque page tokens for keyset pagination (AIP-158).

A token carries the sort key of the last item returned and a fingerprint of the filters it
was issued for, so a token cannot be replayed against a different query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from cinema_grpc.domain.errors import ValidationFailed, invalid

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class PageRequest:
    size: int
    # Sort key of the last item of the previous page; None for the first page.
    after: tuple[str, ...] | None
    fingerprint: str


def filter_fingerprint(*filters: object) -> str:
    return hashlib.sha256(repr(filters).encode()).hexdigest()[:16]


def page_request(page_size: int, page_token: str, *filters: object) -> PageRequest:
    if page_size < 0:
        raise invalid("page_size", "OUT_OF_RANGE", "must not be negative")
    size = DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
    fingerprint = filter_fingerprint(*filters)
    if not page_token:
        return PageRequest(size, None, fingerprint)
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        key = payload["k"]
        if (
            not isinstance(key, list)
            or not key
            or not all(isinstance(part, str) for part in key)
            or payload.get("f") != fingerprint
        ):
            raise ValueError("token does not fit this query")
    except (ValueError, KeyError, TypeError, UnicodeEncodeError, binascii.Error) as exc:
        raise bad_page_token() from exc
    return PageRequest(size, tuple(key), fingerprint)


def bad_page_token() -> ValidationFailed:
    return invalid("page_token", "INVALID_PAGE_TOKEN", "is not a token issued for this query")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of results and where the next one starts (None on the last page)."""

    items: list[T]
    next_after: tuple[str, ...] | None

    @classmethod
    def of(cls, fetched: Sequence[T], request: PageRequest, key: Callable[[T], tuple[str, ...]]) -> Page[T]:
        """Builds a page from ``request.size + 1`` fetched items: the extra one proves a next page."""
        items = list(fetched[: request.size])
        more = len(fetched) > request.size
        return cls(items, key(items[-1]) if more and items else None)

    def next_page_token(self, request: PageRequest) -> str:
        if self.next_after is None:
            return ""
        raw = json.dumps({"k": list(self.next_after), "f": request.fingerprint}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode("ascii").rstrip("=")
