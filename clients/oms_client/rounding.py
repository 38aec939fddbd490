"""Rounding to a market's amount step and price tick, for the strings the OMS accepts.

The OMS refuses a quantity off the amount step or a price off the tick (INVALID_ARGUMENT)
rather than round it, because which way to round is the strategy's decision. These helpers
make that decision explicit.

Exact: the arithmetic is on integers scaled to a common exponent, so no decimal context
precision (28 digits by default) can round anything, and floats are refused. Negative values
are refused too: quantities and prices are positive in the contract, and "down" would be
ambiguous for them (toward zero, or toward minus infinity?).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Literal

__all__ = ["PriceRounding", "round_price", "round_quantity"]

PriceRounding = Literal["down", "up", "nearest"]
"""`nearest` rounds a value exactly halfway between two ticks up."""


def round_quantity(value: Decimal | str, step: Decimal | str) -> str:
    """`value` rounded down to a multiple of `step`, as a decimal string without exponent.

    Down, so that an order never exceeds what was sized. A value below one step gives "0",
    which the OMS refuses as it refuses any quantity below the market's minimum: check it.

    >>> round_quantity("0.0129", "0.001")
    '0.012'
    """
    return _round_to_multiple(_decimal(value, "value"), _increment(step, "step"), "down")


def round_price(value: Decimal | str, tick: Decimal | str, *, mode: PriceRounding) -> str:
    """`value` rounded to a multiple of `tick`, as a decimal string without exponent.

    There is no default `mode` because the right one depends on intent: a buy limit that must
    not pay more rounds "down", a sell limit that must not sell for less rounds "up".

    >>> round_price("45000.505", "0.01", mode="nearest")
    '45000.51'
    """
    if mode not in ("down", "up", "nearest"):
        raise ValueError(f"mode must be 'down', 'up' or 'nearest', not {mode!r}")
    return _round_to_multiple(_decimal(value, "value"), _increment(tick, "tick"), mode)


def _decimal(value: Decimal | str, name: str) -> Decimal:
    if not isinstance(value, Decimal | str):
        # A float has already lost the decimal the caller meant (0.1 is 0.1000000000000000055).
        raise TypeError(f"{name} must be a Decimal or a decimal string, not {type(value).__name__}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{name} {value!r} is not a decimal") from None
    if not number.is_finite():
        raise ValueError(f"{name} must be finite, not {value!r}")
    if number < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return number


def _increment(value: Decimal | str, name: str) -> Decimal:
    number = _decimal(value, name)
    if number == 0:
        raise ValueError(f"{name} must be greater than 0")
    return number


def _round_to_multiple(value: Decimal, increment: Decimal, mode: PriceRounding) -> str:
    exponent = min(_exponent(value), _exponent(increment))
    scaled_value, scaled_increment = _scaled(value, exponent), _scaled(increment, exponent)
    multiples, remainder = divmod(scaled_value, scaled_increment)
    if remainder and (mode == "up" or (mode == "nearest" and 2 * remainder >= scaled_increment)):
        multiples += 1
    return _plain(multiples * scaled_increment, exponent)


def _exponent(number: Decimal) -> int:
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # finite, checked by _decimal
    return exponent


def _scaled(number: Decimal, exponent: int) -> int:
    """`number` as a whole count of 10**exponent; exact since exponent <= number's own."""
    digits = "".join(map(str, number.as_tuple().digits))
    return int(digits + "0" * (_exponent(number) - exponent))


def _plain(coefficient: int, exponent: int) -> str:
    """coefficient x 10**exponent written out in full, trailing fractional zeros dropped."""
    text = f"{Decimal(f'{coefficient}E{exponent}'):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
