"""Page sizes and page tokens."""

from __future__ import annotations

import pytest

from cinema_grpc.domain.errors import ValidationFailed
from cinema_grpc.domain.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page, page_request


def test_page_size_defaults_and_is_capped() -> None:
    assert page_request(0, "", "ListX").size == DEFAULT_PAGE_SIZE
    assert page_request(1000, "", "ListX").size == MAX_PAGE_SIZE


def test_a_negative_page_size_is_refused() -> None:
    with pytest.raises(ValidationFailed) as caught:
        page_request(-1, "", "ListX")
    assert caught.value.violations[0].field == "page_size"


def test_a_token_leads_to_the_item_after_the_last_one_returned() -> None:
    first = page_request(2, "", "ListX", "filter")
    page = Page.of(["a", "b", "c"], first, lambda item: (item,))
    assert page.items == ["a", "b"]
    second = page_request(2, page.next_page_token(first), "ListX", "filter")
    assert second.after == ("b",)


def test_the_last_page_has_no_token() -> None:
    request = page_request(2, "", "ListX")
    assert Page.of(["a", "b"], request, lambda item: (item,)).next_page_token(request) == ""


@pytest.mark.parametrize("token", ["garbage", "eyJrIjpbXX0", "%%%", "a" * 5000, "eyJrIjpbImEiXSwiZiI6IngifQ"])
def test_bad_or_foreign_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        page_request(10, token, "ListX")
    assert caught.value.violations[0].reason == "INVALID_PAGE_TOKEN"


def test_a_token_for_other_filters_is_refused() -> None:
    request = page_request(1, "", "ListX", "cinema-1")
    token = Page.of(["a", "b"], request, lambda item: (item,)).next_page_token(request)
    with pytest.raises(ValidationFailed):
        page_request(1, token, "ListX", "cinema-2")
