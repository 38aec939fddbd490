"""Rounding helpers: exact, explicit about direction, canonical strings the OMS accepts."""

from __future__ import annotations

from decimal import Decimal

import pytest
from oms_client import PriceRounding, round_price, round_quantity


@pytest.mark.parametrize(
    ("value", "step", "expected"),
    [
        ("0.0129", "0.001", "0.012"),  # down, never up to 0.013
        ("0.012", "0.001", "0.012"),  # already on the step
        ("0.0120000", "0.001", "0.012"),  # trailing zeros dropped
        ("0.0009", "0.001", "0"),  # below one step: "0", for the caller to check
        ("0", "0.001", "0"),
        ("7", "0.5", "7"),  # no ".0"
        ("7.49", "0.5", "7"),
        ("1.75", "0.25", "1.75"),  # steps that are not powers of ten
        ("1.2", "10", "0"),
        ("1234.5", "10", "1230"),
        ("1e3", "0.001", "1000"),  # exponent in, plain digits out
        ("12345678901234567890123456789.123456", "0.001", "12345678901234567890123456789.123"),
        (Decimal("2.0009"), Decimal("0.001"), "2"),
        ("0.00000001", "1E-8", "0.00000001"),  # no "1E-8" out
    ],
)
def test_round_quantity_rounds_down_to_the_step(value: str, step: str, expected: str) -> None:
    assert round_quantity(value, step) == expected


@pytest.mark.parametrize(
    ("value", "tick", "mode", "expected"),
    [
        ("45000.505", "0.01", "down", "45000.5"),
        ("45000.505", "0.01", "up", "45000.51"),
        ("45000.505", "0.01", "nearest", "45000.51"),  # exactly halfway: up
        ("45000.504", "0.01", "nearest", "45000.5"),
        ("45000.506", "0.01", "nearest", "45000.51"),
        ("45000.50", "0.01", "up", "45000.5"),  # on the tick: unchanged in every mode
        ("45000.50", "0.01", "down", "45000.5"),
        ("99.84945", "0.01", "up", "99.85"),  # contract section 5's trailing-stop example
        ("0.004", "0.01", "down", "0"),
        ("0.004", "0.01", "up", "0.01"),
        ("101.3", "0.5", "nearest", "101.5"),
        ("101.2", "0.5", "nearest", "101"),
        ("101.25", "0.5", "nearest", "101.5"),
        ("0.000012345", "0.00001", "nearest", "0.00001"),
        ("99999999999999999999999999999.995", "0.01", "up", "100000000000000000000000000000"),
    ],
)
def test_round_price_rounds_to_the_tick_in_the_mode_given(
    value: str, tick: str, mode: PriceRounding, expected: str
) -> None:
    assert round_price(value, tick, mode=mode) == expected


@pytest.mark.parametrize(
    ("value", "step", "message"),
    [
        ("-0.01", "0.001", "value must not be negative"),
        ("0.01", "0", "step must be greater than 0"),
        ("0.01", "-0.001", "step must not be negative"),
        ("NaN", "0.001", "value must be finite"),
        ("Infinity", "0.001", "value must be finite"),
        ("0.01", "inf", "step must be finite"),
        ("1,5", "0.001", "is not a decimal"),
        ("", "0.001", "is not a decimal"),
    ],
)
def test_bad_input_is_refused_not_guessed(value: str, step: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        round_quantity(value, step)


def test_floats_are_refused_because_they_are_not_the_decimal_meant() -> None:
    with pytest.raises(TypeError, match="not float"):
        round_quantity(0.1, "0.001")  # type: ignore[arg-type]


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode must be"):
        round_price("1", "0.01", mode="half-even")  # type: ignore[arg-type]
