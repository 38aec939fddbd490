"""AIP-158 paging: page sizes and opaque page tokens."""

from __future__ import annotations

import base64
import binascii

from oms.domain.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(raw: int) -> int:
    """0 means the default; larger than the maximum is capped; negative is refused."""
    if raw < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(raw or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(cursor: int | None) -> str:
    if cursor is None:
        return ""
    return base64.urlsafe_b64encode(f"v1:{cursor}".encode()).decode()


def decode_page_token(token: str) -> int | None:
    if not token:
        return None
    try:
        version, cursor = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        if version != "v1":
            raise ValueError(version)
        return int(cursor)
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise InvalidArgument("page_token", "is not a token from a previous page") from error


def encode_key_token(key: str | None) -> str:
    """A token for listings ordered by a string key (the last key of the page)."""
    if key is None:
        return ""
    return base64.urlsafe_b64encode(f"k1:{key}".encode()).decode()


def decode_key_token(token: str) -> str:
    if not token:
        return ""
    try:
        version, key = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise InvalidArgument("page_token", "is not a token from a previous page") from error
    if version != "k1" or not key:
        raise InvalidArgument("page_token", "is not a token from a previous page")
    return key
