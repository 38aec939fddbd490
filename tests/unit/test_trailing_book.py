"""The trailing book's ordered queries agree with a scan of every stop, boundaries included;
callback parameters are exactly one of rate and spread."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import pytest
from fixtures.domain import MARKET
from hypothesis import given, settings
from hypothesis import strategies as st

from oms.domain.errors import InvalidArgument
from oms.domain.orders import PositionSide
from oms.domain.trailing_stops import (
    TrailingStop,
    TrailingStopSpec,
    TrailingStopStatus,
    parse_callback,
)
from oms.engine.trailing_book import TrailingBook

CENTS = st.integers(min_value=9_500, max_value=10_500)


def _price(cents: int) -> Decimal:
    return Decimal(cents) / 100


@st.composite
def stops(draw: st.DrawFn) -> TrailingStop:
    side = draw(st.sampled_from(PositionSide))
    spec = TrailingStopSpec(
        user_id=draw(st.sampled_from(["u1", "u2"])),
        market=MARKET,
        position_side=side,
        callback_rate=Decimal("0.01"),
        callback_spread=None,
        activation_price=draw(st.none() | CENTS.map(_price)),
        quantity=None,
        client_id="",
    )
    stop_id = f"S{draw(st.integers(0, 10**9)):010d}"
    last = _price(draw(CENTS))
    # Only the book's own ordering is under test: an activation on the wrong side of `last`
    # is fine here (the engine refuses it before a stop reaches the book).
    return spec.new_stop(stop_id, "P1", last, 1, refuse_reached=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(stops(), max_size=40, unique_by=lambda s: s.trailing_stop_id), CENTS)
def test_queries_match_a_scan_of_every_stop(working: list[TrailingStop], cents: int) -> None:
    price = _price(cents)
    book = TrailingBook()
    for stop in working:
        book.put(stop)

    pending = [s for s in working if s.status is TrailingStopStatus.PENDING_ACTIVATION]
    active = [s for s in working if s.status is TrailingStopStatus.ACTIVE]
    assert _ids(book.activated_by(price)) == _ids(s for s in pending if s.reaches_activation(price))
    assert _ids(book.improved_by(price)) == _ids(s for s in active if s.improves(price))
    assert _ids(book.crossed_by(price)) == _ids(s for s in active if s.crossed_by(price))

    for stop in working[::2]:
        book.remove(stop)
    assert _ids(book.stops()) == _ids(working[1::2])
    assert _ids(book.crossed_by(price)) == _ids(
        s for s in working[1::2] if s.status is TrailingStopStatus.ACTIVE and s.crossed_by(price)
    )


def _ids(stops: Iterable[TrailingStop]) -> set[str]:
    return {stop.trailing_stop_id for stop in stops}


@pytest.mark.parametrize(
    ("rate", "spread", "field"),
    [
        ("0.02", "25", "callback_rate"),  # both: the proto oneof cannot carry this on the wire
        (None, None, "callback_rate"),
        ("0.0009", None, "callback_rate"),
        ("0.11", None, "callback_rate"),
        (None, "0", "callback_spread"),
    ],
)
def test_a_callback_is_exactly_one_of_rate_and_spread_within_bounds(
    rate: str | None, spread: str | None, field: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_callback(rate, spread)
    assert error.value.field == field


def test_callback_bounds_are_inclusive() -> None:
    assert parse_callback("0.001", None) == (Decimal("0.001"), None)
    assert parse_callback("0.1", None) == (Decimal("0.1"), None)
    assert parse_callback(None, "0.01") == (None, Decimal("0.01"))


@pytest.mark.parametrize(
    ("side", "watermark", "stop"),
    [
        (PositionSide.LONG, "100", "99.99"),
        (PositionSide.LONG, "100.015", "100.01"),  # a live feed's price need not be on the tick
        (PositionSide.SHORT, "100", "100.01"),
        (PositionSide.SHORT, "100.015", "100.02"),
    ],
)
def test_a_callback_under_a_tick_keeps_the_stop_a_tick_from_the_watermark(
    side: PositionSide, watermark: str, stop: str
) -> None:
    spec = TrailingStopSpec(
        user_id="u1",
        market=MARKET,
        position_side=side,
        callback_rate=None,
        callback_spread=Decimal("0.001"),
        activation_price=None,
        quantity=None,
        client_id="",
    )
    started = spec.new_stop("S1", "P1", Decimal(watermark), 1)
    assert started.stop_price == Decimal(stop)
