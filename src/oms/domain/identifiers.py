"""Identifiers: validation of caller ids and generation of OMS ids."""

from __future__ import annotations

import os
import re
import time

from oms.domain.errors import InvalidArgument

_USER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CLIENT_ORDER_ID = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two digits per 10 bits: 13 lookups for an id (base64.b32encode is pure Python on 3.11,
# and 2.5x slower here).
_DIGIT_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
_PAIR_SHIFTS = range(120, -1, -10)


def check_user_id(raw: str, field: str = "user_id") -> str:
    return _well_formed(_USER_ID, raw, field, "1 to 64 characters of [A-Za-z0-9_.-]")


def check_id(raw: str, field: str) -> str:
    """An id the OMS made (order, rule, trailing stop, position) as a request names it: only
    its form is checked here; one that names nothing is NOT_FOUND later."""
    return _well_formed(
        _CLIENT_ORDER_ID, raw, field, "an id of 1 to 64 characters of [A-Za-z0-9_.:/-]"
    )


def check_client_order_id(raw: str, field: str = "client_order_id") -> str:
    return _well_formed(_CLIENT_ORDER_ID, raw, field, "1 to 64 characters of [A-Za-z0-9_.:/-]")


def _well_formed(form: re.Pattern[str], raw: str, field: str, described: str) -> str:
    if not form.fullmatch(raw):
        # An empty field is one the caller left out, more often than not.
        raise InvalidArgument(field, f"must be {described}" if raw else "is required")
    return raw


def check_one_ref(id_field: str, oms_id: str, key_field: str, key: str) -> None:
    """A lookup by exactly one of the OMS's id and the caller's key, each well formed."""
    if bool(oms_id) == bool(key):
        raise InvalidArgument(id_field, f"give exactly one of {id_field} and {key_field}")
    if oms_id:
        check_id(oms_id, id_field)
    else:
        check_client_order_id(key, key_field)


def derived_client_order_id(kind: str, oms_id: str) -> str:
    """The client order id of an order the OMS places itself, derived from what it places
    it for (a trailing stop's close: "ts", an OpenPosition's exits: "tp" and "sl", the close
    of an entry's fill that came after its trade ended: "fl"), so that the store's
    uniqueness guard lets it be placed once only."""
    return f"{kind}-{oms_id}"


_DERIVED_CLIENT_ORDER_ID = re.compile(r"(ts|tp|sl|fl)-[0-9A-HJKMNP-TV-Z]{26}")


def check_new_client_order_id(raw: str, field: str = "client_order_id") -> str:
    """A client order id a caller gives a new order. Not one of the form of the OMS's own:
    taken by a caller, it would keep the OMS from placing that exit when it is due."""
    check_client_order_id(raw, field)
    if _DERIVED_CLIENT_ORDER_ID.fullmatch(raw):
        raise InvalidArgument(
            field,
            "ts-, tp-, sl- or fl- followed by an OMS id is the form of the ids the OMS gives "
            "the orders it places itself (a trailing stop's close, an OpenPosition's exits, "
            "the close of an entry's late fill)",
        )
    return raw


EXCHANGE_CLIENT_ID_PREFIX = "oms"


def exchange_client_id(order_id: str) -> str:
    """The client order id the OMS sends for an order: derived from the OMS id alone, so a
    lookup after an ambiguous submit names the same order. 29 alphanumerics fit Binance
    (36 of [.A-Za-z0-9:/_-]) and OKX (32 alphanumerics)."""
    return EXCHANGE_CLIENT_ID_PREFIX + order_id


class IdGenerator:
    """Time-ordered 26-character ULIDs (Crockford base32), monotonic within one process.

    26 alphanumerics fit every exchange's client-id rules (OKX: 32 alphanumerics).
    """

    def __init__(self) -> None:
        self._last_ms = 0
        self._last_random = 0

    def new_id(self) -> str:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= self._last_ms:
            # Same millisecond (or a clock step back): keep ids strictly increasing.
            now_ms = self._last_ms
            self._last_random += 1
        else:
            self._last_random = int.from_bytes(os.urandom(10), "big") >> 1
        self._last_ms = now_ms
        value = (now_ms << 80) | (self._last_random & ((1 << 80) - 1))
        # 26 digits of 5 bits are 130 bits: the 128 of the value under two zero bits.
        return "".join([_DIGIT_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])
