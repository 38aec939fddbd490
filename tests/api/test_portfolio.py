"""GetPortfolioSummary over a scripted session of wins and losses."""

from __future__ import annotations

from fixtures.oms_server import OmsHarness
from fixtures.positions import (
    ETH,
    SHORT,
    SOL,
    check_invariants,
    close_position,
    expect_invalid,
    ticks,
)
from fixtures.trading import BTC, USER, place, tick
from tradingboost.oms.v1 import order_pb2, position_pb2
from tradingboost.oms.v1 import position_service_pb2 as ppb

S = order_pb2
P = position_pb2


async def summary(oms: OmsHarness, user_id: str = USER, exchange: str = "") -> P.PortfolioSummary:
    response = await oms.positions.GetPortfolioSummary(
        ppb.GetPortfolioSummaryRequest(user_id=user_id, exchange=exchange)
    )
    return response.portfolio_summary


def assert_empty(s: P.PortfolioSummary) -> None:
    assert (s.total_positions, s.open_positions, s.closed_positions) == (0, 0, 0)
    assert (s.total_notional, s.total_unrealized_pnl) == ("0", "0")
    assert (s.total_realized_pnl, s.total_fees) == ("0", "0")
    for absent in ("win_rate", "profit_factor", "largest_position_pct"):
        assert not s.HasField(absent), absent


async def test_a_user_without_positions_gets_zero_totals(oms: OmsHarness) -> None:
    empty = await summary(oms, "nobody")
    assert empty.user_id == "nobody"
    assert empty.exchange == ""
    assert_empty(empty)
    assert_empty(await summary(oms, "nobody", "paper"))


async def test_summary_over_wins_losses_and_open_positions(oms: OmsHarness) -> None:
    await ticks(oms, {BTC: "50000", ETH: "3000", SOL: "100"})
    await place(oms, quantity="0.01")  # A: BTC long at 50000, fee 0.25
    await place(oms, symbol=ETH, side=S.SIDE_SELL, quantity="1")  # B: ETH short at 3000, 1.5
    await place(oms, symbol=SOL, quantity="10")  # D: SOL long at 100, fee 0.5

    await tick(oms, "52000")
    await close_position(oms)  # A closed: +20, fee 0.26
    await place(oms, quantity="0.01")  # C: BTC long at 52000, fee 0.26
    await tick(oms, "2900", symbol=ETH)
    await close_position(oms, symbol=ETH, position_side=SHORT)  # B closed: +100, fee 1.45

    midway = await summary(oms)
    assert (midway.total_positions, midway.open_positions, midway.closed_positions) == (4, 2, 2)
    assert midway.win_rate == "100"
    assert not midway.HasField("profit_factor")  # no loss yet
    assert midway.total_realized_pnl == "120"

    await tick(oms, "51000")
    await close_position(oms)  # C closed: -10, fee 0.255
    await place(oms, side=S.SIDE_SELL, quantity="0.01")  # E: BTC short at 51000, fee 0.255
    await tick(oms, "110", symbol=SOL)  # D: unrealized +100, notional 1100

    s = await summary(oms)
    assert s.user_id == USER
    assert (s.total_positions, s.open_positions, s.closed_positions) == (5, 2, 3)
    assert s.total_notional == "1610"  # SOL 10 x 110 + BTC 0.01 x 51000
    assert s.total_unrealized_pnl == "100"
    assert s.total_realized_pnl == "110"  # 20 + 100 - 10
    assert s.total_fees == "4.73"  # 0.51 + 2.95 + 0.515 + 0.5 + 0.255
    assert s.win_rate == "66.666666666667"  # 2 of 3, rounded half-even to 12 places
    assert s.profit_factor == "12"  # 120 / 10
    assert s.largest_position_pct == "68.32298136646"  # 1100 / 1610 x 100, rounded

    on_paper = await summary(oms, exchange="paper")
    assert on_paper.exchange == "paper"
    on_paper.exchange = ""
    assert on_paper == s
    assert_empty(await summary(oms, "bob"))

    # Everything closed: no open notional, so no largest position.
    await close_position(oms, symbol=SOL)  # +100
    await close_position(oms, position_side=SHORT)  # 0
    done = await summary(oms)
    assert (done.open_positions, done.closed_positions) == (0, 5)
    assert (done.total_notional, done.total_unrealized_pnl) == ("0", "0")
    assert done.total_realized_pnl == "210"
    assert done.win_rate == "60"  # A, B, D won; C lost; E broke even
    assert done.profit_factor == "22"  # 220 / 10
    assert not done.HasField("largest_position_pct")
    await check_invariants(oms)


async def test_bad_summary_requests_name_the_field(oms: OmsHarness) -> None:
    for user_id in ("", "bad user!", "u" * 65):
        await expect_invalid(
            oms.positions.GetPortfolioSummary(ppb.GetPortfolioSummaryRequest(user_id=user_id)),
            "user_id",
        )
    await expect_invalid(
        oms.positions.GetPortfolioSummary(
            ppb.GetPortfolioSummaryRequest(user_id=USER, exchange="nosuchexchange")
        ),
        "exchange",
    )
