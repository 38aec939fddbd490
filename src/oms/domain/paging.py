"""AIP-158 paging: page sizes and opaque page tokens."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import fields
from typing import TYPE_CHECKING

from oms.domain.errors import InvalidArgument

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(raw: int) -> int:
    """0 means the default; larger than the maximum is capped; negative is refused."""
    if raw < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(raw or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def listing_of(query: DataclassInstance) -> str:
    """What a page token is bound to: the kind of listing and its filters, all but the page
    size and the cursor (AIP-158: a token is valid only with the request that produced it).
    Sets are sorted so that the tag is the same in every process."""
    filters = []
    for f in fields(query):
        if f.name not in ("page_size", "cursor"):
            value = getattr(query, f.name)
            filters.append((f.name, sorted(value) if isinstance(value, frozenset) else value))
    canonical = repr((type(query).__name__, filters)).encode()
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()


def encode_page_token(cursor: int | None, listing: str) -> str:
    if cursor is None:
        return ""
    return base64.urlsafe_b64encode(f"v2:{cursor}:{listing}".encode()).decode()


def decode_page_token(token: str, listing: str) -> int | None:
    """The cursor in `token`, which a page of the same `listing` must have produced."""
    if not token:
        return None
    try:
        version, cursor, bound = base64.urlsafe_b64decode(token.encode()).decode().split(":")
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise InvalidArgument("page_token", "is not a token from a previous page") from error
    if version != "v2" or not cursor.isascii() or not cursor.isdigit():
        raise InvalidArgument("page_token", "is not a token from a previous page")
    if bound != listing:
        raise InvalidArgument(
            "page_token", "comes from another listing: keep the filters of the first page"
        )
    return int(cursor)


def encode_key_token(key: str | None, listing: str) -> str:
    """A token for listings ordered by a string key (the last key of the page)."""
    if key is None:
        return ""
    return base64.urlsafe_b64encode(f"k2:{listing}:{key}".encode()).decode()


def decode_key_token(token: str, listing: str) -> str:
    """The key in `token`, which a page of the same `listing` must have produced. Not proof
    that it did (a token is not signed): a listing must keep its key within its filters."""
    if not token:
        return ""
    try:
        version, bound, key = base64.urlsafe_b64decode(token.encode()).decode().split(":", 2)
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise InvalidArgument("page_token", "is not a token from a previous page") from error
    if version != "k2" or not key:
        raise InvalidArgument("page_token", "is not a token from a previous page")
    if bound != listing:
        raise InvalidArgument(
            "page_token", "comes from another listing: keep the filters of the first page"
        )
    return key
