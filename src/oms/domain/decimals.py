"""Exact decimal handling for money and quantities.

Wire decimals are plain strings ("0.01", "45000.5"): no sign, exponent, separators or
whitespace, at most MAX_DECIMAL_CHARS characters. Arithmetic runs in a wide context so that
products of prices, quantities, contract sizes and fee rates are exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import ROUND_HALF_EVEN, Context, Decimal

from oms.domain.errors import InvalidArgument

MAX_DECIMAL_CHARS = 32
_PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
# 4 factors of at most 32 digits each stay exact.
_EXACT = Context(prec=160)
# An exact figure (sums of products of at most 4 factors of at most 32 digits) has no digit
# below this place. A quotient that does not terminate fills the context's 160 digits, so for
# any figure of a sane size its last digit lies below it, and so does what is computed from
# it: a subtraction that cancels its leading digits leaves a residual down there.
_EXACT_PLACES = 128
ZERO = Decimal(0)
DISPLAY_PLACES = 12


def parse_positive(field: str, raw: str) -> Decimal:
    """A required finite decimal > 0."""
    value = parse_decimal(field, raw)
    if value <= 0:
        raise InvalidArgument(field, f"must be greater than zero, got {raw!r}")
    return value


def parse_decimal(field: str, raw: str) -> Decimal:
    if not raw:
        raise InvalidArgument(field, "is required")
    if len(raw) > MAX_DECIMAL_CHARS:
        raise InvalidArgument(field, f"is longer than {MAX_DECIMAL_CHARS} characters")
    if not _PLAIN_DECIMAL.fullmatch(raw):
        if raw[0] == "-" and _PLAIN_DECIMAL.fullmatch(raw[1:]):
            raise InvalidArgument(field, f"must not be negative, got {raw!r}")
        raise InvalidArgument(field, f"must be a plain decimal string such as '0.01', got {raw!r}")
    return Decimal(raw)


def mul(*factors: Decimal) -> Decimal:
    result = Decimal(1)
    for factor in factors:
        result = _EXACT.multiply(result, factor)
    return result


def add(a: Decimal, b: Decimal) -> Decimal:
    return _EXACT.add(a, b)


def total(values: Iterable[Decimal]) -> Decimal:
    result = ZERO
    for value in values:
        result = _EXACT.add(result, value)
    return result


def sub(a: Decimal, b: Decimal) -> Decimal:
    return _EXACT.subtract(a, b)


def div(a: Decimal, b: Decimal) -> Decimal:
    """Division is the one inexact operation (average prices): 160 significant digits."""
    return _EXACT.divide(a, b)


def rounded(value: Decimal, places: int) -> Decimal:
    """Half-even to at most `places` decimal places; a value with fewer stays as it is."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= -places:
        return value
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN, context=_EXACT)


def display(value: Decimal) -> Decimal:
    """A derived figure (an average, a PnL ratio) as shown: exact when it terminates within
    MAX_DECIMAL_CHARS characters, else rounded half-even to DISPLAY_PLACES decimal places, so
    that it stays short (an average over a power-of-two size terminates far down)."""
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int) or exponent < -_EXACT_PLACES:
        return rounded(value, DISPLAY_PLACES)  # does not terminate
    if exponent >= -DISPLAY_PLACES or len(fmt(value)) <= MAX_DECIMAL_CHARS:
        return value
    return rounded(value, DISPLAY_PLACES)


def floor_to(value: Decimal, step: Decimal) -> Decimal:
    """A value >= 0 floored to a multiple of `step`."""
    return _EXACT.subtract(value, _EXACT.remainder(value, step))


def is_multiple(value: Decimal, step: Decimal) -> bool:
    return _EXACT.remainder(value, step) == 0


def fmt(value: Decimal) -> str:
    """Plain notation without trailing zeros: 45000, 0.0000225, 0."""
    if value == 0:
        return "0"
    return format(value.normalize(_EXACT), "f")
