from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from dataclasses import replace
from decimal import Decimal

import pytest

from oms.domain.decimals import fmt, mul, parse_positive
from oms.domain.errors import InvalidArgument
from oms.domain.identifiers import IdGenerator
from oms.domain.orders import OrderStatus
from oms.domain.paging import decode_page_token, encode_page_token, listing_of, page_size
from oms.engine.ports import FillQuery, OrderQuery


@pytest.mark.parametrize(
    "raw", ["0", "-1", "NaN", "Infinity", "1e5", "12,5", " 1", "1.", ".5", "", "9" * 40, "+1"]
)
def test_bad_decimals_are_refused_naming_the_field(raw: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_positive("quantity", raw)
    assert error.value.field == "quantity"


@pytest.mark.parametrize(
    ("raw", "says"),
    [("-1", "must not be negative"), ("-0.5", "must not be negative"), ("0", "greater than zero")],
)
def test_the_message_says_what_is_wrong_with_the_number(raw: str, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        parse_positive("quantity", raw)


def test_fees_are_exact_products() -> None:
    assert mul(Decimal("45000.1"), Decimal("0.001"), Decimal("1"), Decimal("0.0005")) == Decimal(
        "0.02250005"
    )


@pytest.mark.parametrize(
    ("value", "text"), [("45000", "45000"), ("0.0100", "0.01"), ("0E-8", "0"), ("1.50", "1.5")]
)
def test_fmt_is_plain_and_trimmed(value: str, text: str) -> None:
    assert fmt(Decimal(value)) == text


def test_ids_are_unique_and_increasing() -> None:
    ids = IdGenerator()
    generated = [ids.new_id() for _ in range(10_000)]
    assert generated == sorted(generated)
    assert len(set(generated)) == len(generated)
    assert all(len(i) == 26 and i.isalnum() for i in generated)


def test_ids_are_ulids_that_lead_with_their_millisecond() -> None:
    crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    before_ms = time.time_ns() // 1_000_000
    new_id = IdGenerator().new_id()
    after_ms = time.time_ns() // 1_000_000
    value = 0
    for digit in new_id:
        value = value * 32 + crockford.index(digit)
    assert value < 1 << 128
    assert before_ms <= value >> 80 <= after_ms


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    listing = listing_of(OrderQuery(user_id="u1", page_size=10, symbol="BTC/USDT:USDT"))
    assert decode_page_token(encode_page_token(42, listing), listing) == 42
    assert encode_page_token(None, listing) == ""
    assert decode_page_token("", listing) is None
    forged = [b"not-a-token", b"v1:5", b"v2:-5:" + listing.encode(), b"v2: 5:" + listing.encode()]
    for token in ["not-a-token", *(base64.urlsafe_b64encode(raw).decode() for raw in forged)]:
        with pytest.raises(InvalidArgument, match=r"page_token.*not a token"):
            decode_page_token(token, listing)


def test_a_page_token_is_bound_to_its_listing() -> None:
    query = OrderQuery(user_id="u1", page_size=10, statuses=frozenset(OrderStatus))
    token = encode_page_token(7, listing_of(query))
    # The page size and the cursor may change from page to page; the filters may not.
    same = replace(query, page_size=50, cursor=7)
    assert decode_page_token(token, listing_of(same)) == 7
    others: list[OrderQuery | FillQuery] = [
        replace(query, strategy="grid"),
        replace(query, user_id="u2"),
        replace(query, statuses=frozenset({OrderStatus.OPEN})),
        FillQuery(user_id="u1", page_size=10),
    ]
    for other in others:
        with pytest.raises(InvalidArgument, match=r"page_token.*another listing"):
            decode_page_token(token, listing_of(other))


def test_a_listing_tag_does_not_depend_on_set_order_or_the_process() -> None:
    # Enum hashes are per-process (PYTHONHASHSEED): sets are sorted before hashing.
    query = OrderQuery(user_id="u1", page_size=10, statuses=frozenset(OrderStatus))
    code = (
        "from oms.domain.orders import OrderStatus; from oms.domain.paging import listing_of;"
        "from oms.engine.ports import OrderQuery;"
        "print(listing_of(OrderQuery(user_id='u1', page_size=10, statuses=frozenset(OrderStatus))))"
    )
    for seed in ("1", "2"):
        tag = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert tag == listing_of(query)


def test_page_size_defaults_caps_and_refuses_negative() -> None:
    assert page_size(0) == 100
    assert page_size(5000) == 1000
    with pytest.raises(InvalidArgument, match="page_size"):
        page_size(-1)
