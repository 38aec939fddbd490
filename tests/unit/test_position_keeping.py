"""Position keeping: average cost, realized PnL, grid levels and the portfolio figures."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from fixtures.domain import MARKET, new_order
from hypothesis import given
from hypothesis import strategies as st

from oms.domain.decimals import add, display, div, mul, sub
from oms.domain.fills import Fill, Liquidity
from oms.domain.orders import PositionSide, Side
from oms.domain.positions import (
    GridLevel,
    Position,
    PositionStatus,
    apply_fill,
    open_record,
    summarize,
    take_fill,
)


def fill(side: Side, quantity: str, price: str, fee: str = "0") -> Fill:
    return Fill(
        fill_id="f",
        order_id="o",
        client_order_id="c",
        user_id="u",
        exchange="paper",
        symbol=MARKET.symbol,
        side=side,
        position_side=PositionSide.LONG,
        price=Decimal(price),
        quantity=Decimal(quantity),
        fee=Decimal(fee),
        fee_currency="USDT",
        liquidity=Liquidity.TAKER,
        time_ns=1,
        exchange_trade_id="t",
    )


def long(*fills: tuple[Fill, int | None]) -> Position:
    position = open_record("p", "u", MARKET, PositionSide.LONG, 0)
    for one, level in fills:
        position = apply_fill(position, one, level, None)
    return position


def test_an_opening_fill_on_a_flat_side_starts_a_new_record_at_the_orders_leverage() -> None:
    order = replace(new_order(), leverage=5)
    ids = iter(["p1", "p2"])
    first = take_fill(None, order, fill(Side.BUY, "0.01", "50000"), MARKET, lambda: next(ids))
    closed = take_fill(
        first,
        replace(order, side=Side.SELL),
        fill(Side.SELL, "0.01", "51000"),
        MARKET,
        lambda: "unused",
    )
    assert (first.position_id, first.size, first.leverage) == ("p1", Decimal("0.01"), 5)
    assert closed.status is PositionStatus.CLOSED and closed.position_id == "p1"
    second = take_fill(closed, order, fill(Side.BUY, "0.02", "52000"), MARKET, lambda: next(ids))
    assert (second.position_id, second.size, second.entry_price) == (
        "p2",
        Decimal("0.02"),
        Decimal("52000"),
    )
    assert second.realized_pnl == 0
    assert second.leverage == 5


def test_a_side_reopened_by_an_order_without_leverage_keeps_its_last_records() -> None:
    # The exchange keeps the account's leverage: a DCA bot that opened at 10x and closed
    # reopens at 10x, not at 1x, when its next entry names none.
    ids = iter(["p1", "p2", "p3"])
    entry = replace(new_order(), leverage=10)
    first = take_fill(None, entry, fill(Side.BUY, "0.01", "50000"), MARKET, lambda: next(ids))
    closing = replace(new_order(), side=Side.SELL, leverage=20)  # a reduction's is ignored
    closed = take_fill(first, closing, fill(Side.SELL, "0.01", "51000"), MARKET, lambda: "-")
    again = fill(Side.BUY, "0.01", "52000")
    second = take_fill(closed, new_order(), again, MARKET, lambda: next(ids))
    assert (second.position_id, second.leverage) == ("p2", 10)
    fresh = take_fill(None, new_order(), again, MARKET, lambda: next(ids))
    assert (fresh.position_id, fresh.leverage) == ("p3", 1)
    # Within what the market takes now (its max_leverage lowered since).
    lowered = take_fill(closed, new_order(), again, replace(MARKET, max_leverage=5), lambda: "p4")
    assert lowered.leverage == 5


def test_a_fill_that_would_reduce_a_flat_side_or_below_zero_is_refused() -> None:
    selling = replace(new_order(), side=Side.SELL)
    with pytest.raises(ValueError, match="flat"):
        take_fill(None, selling, fill(Side.SELL, "0.01", "50000"), MARKET, lambda: "p")
    held = long((fill(Side.BUY, "0.01", "50000"), None))
    with pytest.raises(ValueError, match="exceeds"):
        take_fill(held, selling, fill(Side.SELL, "0.02", "50000"), MARKET, lambda: "p")


def test_a_reduction_keeps_the_average_cost_and_realizes_at_the_fill_price() -> None:
    position = long(
        (fill(Side.BUY, "0.01", "50000", "0.25"), None),
        (fill(Side.SELL, "0.005", "52000", "0.13"), None),
        (fill(Side.BUY, "0.01", "53000", "0.265"), None),
    )
    assert position.size == Decimal("0.015")
    assert position.entry_price == Decimal("52000")
    assert position.realized_pnl == Decimal("10")
    assert position.fees == Decimal("0.645")


def test_closing_the_whole_size_closes_the_record() -> None:
    position = long((fill(Side.BUY, "0.01", "50000"), 1), (fill(Side.SELL, "0.01", "49000"), 1))
    assert position.status is PositionStatus.CLOSED
    assert position.realized_pnl == Decimal("-10")
    assert position.grid_levels == ()
    assert position.unrealized_pnl == position.notional == 0


def test_a_record_holds_its_own_trade_while_open() -> None:
    opened = long((fill(Side.BUY, "0.01", "50000"), None))
    assert opened.holds("p") and opened.holds("")  # "": an exit whose trade is not known
    assert not opened.holds("another")
    closed = apply_fill(opened, fill(Side.SELL, "0.01", "51000"), None, None)
    assert not closed.holds("p") and not closed.holds("")


def test_grid_levels_reduce_their_own_level_first_then_in_level_order() -> None:
    position = long(
        (fill(Side.BUY, "0.01", "50000"), 3),
        (fill(Side.BUY, "0.01", "49000"), 2),
        (fill(Side.BUY, "0.01", "48000"), 3),
        (fill(Side.BUY, "0.005", "47000"), None),
        (fill(Side.SELL, "0.025", "51000"), 3),
    )
    # Level 3 (0.02 @ 49000) goes first, then 0.005 of level 2.
    assert position.grid_levels == (GridLevel(2, Decimal("0.005"), Decimal("49000")),)
    assert position.size == Decimal("0.01")


def test_non_terminating_figures_are_displayed_to_12_places() -> None:
    position = long((fill(Side.BUY, "0.01", "100"), None), (fill(Side.BUY, "0.02", "101"), None))
    assert display(position.entry_price) == Decimal("100.666666666667")
    assert display(Decimal("52000")) == Decimal("52000")


def test_terminating_figures_are_displayed_exactly_however_many_places() -> None:
    # A sub-cent market's price at leverage 1 (maintenance margin 0.005).
    position = long((fill(Side.BUY, "1000", "0.0000123457"), None))
    assert position.liquidation_price == Decimal("0.0000000617285")
    assert display(position.liquidation_price) == Decimal("0.0000000617285")
    # A quotient that does not terminate stays rounded when a subtraction cancels its
    # leading digits.
    cancelled = sub(div(Decimal(1), Decimal(3)), Decimal("0.3333333333"))
    assert display(cancelled) == Decimal("0.000000000033")


def test_terminating_figures_too_long_for_the_wire_are_rounded_to_12_places() -> None:
    # An average over a power-of-two size terminates 30 places down: 35 characters exact.
    cost = add(Decimal("0.00001"), mul(Decimal("33554431"), Decimal("0.00002")))
    average = div(cost, Decimal(2**25))
    assert average == Decimal("0.000019999999701976776123046875")  # 32: shown exactly
    assert display(average) == average
    liquidation = mul(average, Decimal("0.885"))  # 1 - 1/8 + 0.01: leverage 8, mmr 0.01
    assert liquidation == Decimal("0.000017699999736249446868896484375")
    assert display(liquidation) == Decimal("0.000017700000")


def test_a_pnl_that_is_exactly_zero_through_an_entry_that_does_not_terminate_shows_zero() -> None:
    # Entry 302/3; exits 1 at 101 and 2 at 100.5 realize (101 - 302/3) + 2 x (100.5 - 302/3) = 0,
    # which the 160-digit entry leaves as a residual of -1E-157.
    breakeven = long(
        (fill(Side.BUY, "1", "100"), None),
        (fill(Side.BUY, "2", "101"), None),
        (fill(Side.SELL, "1", "101"), None),
        (fill(Side.SELL, "2", "100.5"), None),
    )
    assert not breakeven.is_open and breakeven.realized_pnl != 0
    assert display(breakeven.realized_pnl) == 0
    summary = summarize([breakeven])
    assert display(summary.total_realized_pnl) == 0
    assert summary.win_rate == 0  # no win
    assert summary.profit_factor is None  # and no loss


def test_summary_of_wins_and_losses() -> None:
    win = long((fill(Side.BUY, "1", "100", "1"), None), (fill(Side.SELL, "1", "130", "1"), None))
    loss = long((fill(Side.BUY, "1", "100", "1"), None), (fill(Side.SELL, "1", "90", "1"), None))
    opened = long((fill(Side.BUY, "2", "100", "1"), None)).mark(Decimal("110"), 2)
    summary = summarize([win, win, loss, opened])
    assert (summary.total_positions, summary.open_positions, summary.closed_positions) == (4, 1, 3)
    assert summary.total_realized_pnl == Decimal("50")
    assert summary.total_unrealized_pnl == Decimal("20")
    assert summary.total_fees == Decimal("7")
    assert display(summary.win_rate or Decimal(0)) == Decimal("66.666666666667")
    assert summary.profit_factor == Decimal("6")
    assert summary.largest_position_pct == Decimal("100")
    assert summarize([]).win_rate is None


prices = st.integers(min_value=1, max_value=10**6).map(lambda cents: Decimal(cents) / 100)
quantities = st.integers(min_value=1, max_value=10_000).map(lambda n: Decimal(n) / 1000)


@given(st.lists(st.tuples(st.booleans(), quantities, prices), min_size=1, max_size=30), prices)
def test_realized_plus_unrealized_is_the_total_pnl(
    trades: list[tuple[bool, Decimal, Decimal]], mark: Decimal
) -> None:
    position = open_record("p", "u", MARKET, PositionSide.LONG, 0)
    cash = Decimal(0)
    for buy, quantity, price in trades:
        if not buy:
            quantity = min(quantity, position.size)
            if not quantity:
                continue
        position = apply_fill(
            position, fill(Side.BUY if buy else Side.SELL, str(quantity), str(price)), None, None
        )
        cash += -quantity * price if buy else quantity * price
        if not position.is_open:
            position = open_record("p2", "u", MARKET, PositionSide.LONG, 0)
            cash = Decimal(0)
    total = cash + position.size * mark
    marked = position.mark(mark, 1)
    # Only the averaging division is inexact (160 significant digits).
    assert abs(marked.realized_pnl + marked.unrealized_pnl - total) < Decimal("1e-100")


def test_a_reduction_without_a_grid_level_takes_what_was_opened_without_one_first() -> None:
    # A manual partial close leaves the grid bot's levels alone while it can.
    position = long(
        (fill(Side.BUY, "0.01", "50000"), 1),
        (fill(Side.BUY, "0.01", "49000"), None),
        (fill(Side.SELL, "0.005", "51000"), None),
    )
    assert position.grid_levels == (GridLevel(1, Decimal("0.01"), Decimal("50000")),)
    position = apply_fill(position, fill(Side.SELL, "0.01", "51000"), None, None)
    # 0.005 was left without a level; the other 0.005 comes from level 1.
    assert position.grid_levels == (GridLevel(1, Decimal("0.005"), Decimal("50000")),)
    assert position.size == Decimal("0.005")
