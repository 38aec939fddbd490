"""The order state machine, straight from its table."""

from __future__ import annotations

from decimal import Decimal

import pytest
from fixtures.domain import new_order

from oms.api.converters import order_to_proto
from oms.domain.errors import FailedPrecondition
from oms.domain.fills import Fill, Liquidity
from oms.domain.orders import (
    OrderAccepted,
    OrderCanceled,
    OrderFilled,
    OrderRejected,
    OrderStatus,
    PositionSide,
    Side,
    default_position_side,
)


def fill(quantity: str, price: str = "100", fill_id: str = "F1") -> OrderFilled:
    return OrderFilled(
        Fill(
            fill_id=fill_id,
            order_id="O1",
            client_order_id="c1",
            user_id="u1",
            exchange="paper",
            symbol="BTC/USDT:USDT",
            side=Side.BUY,
            position_side=PositionSide.LONG,
            price=Decimal(price),
            quantity=Decimal(quantity),
            fee=Decimal("0.01"),
            fee_currency="USDT",
            liquidity=Liquidity.MAKER,
            time_ns=2,
            exchange_trade_id=fill_id,
        )
    )


def test_partial_then_full_fill_tracks_quantity_average_and_fees() -> None:
    order = new_order("3").apply(OrderAccepted("X1"), 2)
    order = order.apply(fill("1", "100", "F1"), 3)
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert order.remaining_quantity == Decimal(2)
    order = order.apply(fill("2", "103", "F2"), 4)
    assert order.status is OrderStatus.FILLED
    assert order.filled_quantity == Decimal(3)
    assert order.average_fill_price == Decimal(102)
    assert order.fees == Decimal("0.02")
    assert order.fill_ids == ("F1", "F2")
    assert order.version == 3
    assert order.remaining_quantity == 0


def test_terminal_order_refuses_cancel_with_a_readable_message() -> None:
    order = new_order().apply(OrderAccepted("X1"), 2).apply(fill("1"), 3)
    with pytest.raises(FailedPrecondition, match="cannot cancel order O1: it is FILLED"):
        order.apply(OrderCanceled(), 4)


def test_rejected_order_never_changes_again() -> None:
    order = new_order().apply(OrderRejected("no price"), 2)
    assert order.status is OrderStatus.REJECTED
    assert order.reject_reason == "no price"
    with pytest.raises(FailedPrecondition):
        order.apply(OrderAccepted("X"), 3)


def test_fill_after_cancel_is_applied_but_keeps_the_terminal_status() -> None:
    order = new_order("2").apply(OrderAccepted("X1"), 2).apply(OrderCanceled(), 3)
    order = order.apply(fill("1"), 4)
    assert order.status is OrderStatus.CANCELED
    assert order.filled_quantity == Decimal(1)


def test_overfill_is_refused() -> None:
    order = new_order("1").apply(OrderAccepted("X1"), 2)
    with pytest.raises(FailedPrecondition, match="overfill"):
        order.apply(fill("2"), 3)


@pytest.mark.parametrize(
    ("side", "reduce_only", "expected"),
    [
        (Side.BUY, False, PositionSide.LONG),
        (Side.SELL, False, PositionSide.SHORT),
        (Side.BUY, True, PositionSide.SHORT),
        (Side.SELL, True, PositionSide.LONG),
    ],
)
def test_hedge_mode_default_position_side(
    side: Side, reduce_only: bool, expected: PositionSide
) -> None:
    assert default_position_side(side, reduce_only) is expected


def test_a_non_terminating_average_fill_price_is_shown_to_12_places() -> None:
    order = new_order("0.009").apply(OrderAccepted("X1"), 2)
    order = order.apply(fill("0.003", "100", "F1"), 3).apply(fill("0.006", "100.01", "F2"), 4)
    # Kept to 160 significant digits inside; rounded only on the way out.
    assert len(str(order.average_fill_price)) > 150
    assert order_to_proto(order).average_fill_price == "100.006666666667"
