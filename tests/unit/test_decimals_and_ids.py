from __future__ import annotations

import time
from decimal import Decimal

import pytest

from oms.domain.decimals import fmt, mul, parse_positive
from oms.domain.errors import InvalidArgument
from oms.domain.identifiers import IdGenerator
from oms.domain.paging import decode_page_token, encode_page_token, page_size


@pytest.mark.parametrize(
    "raw", ["0", "-1", "NaN", "Infinity", "1e5", "12,5", " 1", "1.", ".5", "", "9" * 40, "+1"]
)
def test_bad_decimals_are_refused_naming_the_field(raw: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_positive("quantity", raw)
    assert error.value.field == "quantity"


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
    assert decode_page_token(encode_page_token(42)) == 42
    assert encode_page_token(None) == ""
    with pytest.raises(InvalidArgument, match="page_token"):
        decode_page_token("not-a-token")


def test_page_size_defaults_caps_and_refuses_negative() -> None:
    assert page_size(0) == 100
    assert page_size(5000) == 1000
    with pytest.raises(InvalidArgument, match="page_size"):
        page_size(-1)
