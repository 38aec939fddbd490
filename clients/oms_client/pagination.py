"""Following `next_page_token` (AIP-158) until the last page."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

__all__ = ["paginate"]

T = TypeVar("T")


async def paginate(
    fetch_page: Callable[[str], Awaitable[tuple[Iterable[T], str]]], page_token: str = ""
) -> AsyncIterator[T]:
    """Every item of every page. `fetch_page(token)` returns a page's items and its
    `next_page_token`; an empty token is the only end signal (a page may be short)."""
    while True:
        items, page_token = await fetch_page(page_token)
        for item in items:
            yield item
        if not page_token:
            return
