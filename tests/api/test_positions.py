"""Positions from the OMS's own fills (CONTRACT section 4), through the real server.

Paper fees: taker 0.0005, maker 0.0002 of notional; contract size 1. Every test ends with
`check_invariants`: each record agrees with the fills it was built from.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import grpc
import pytest
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.positions import (
    ETH,
    LONG,
    SHORT,
    SOL,
    check_invariants,
    close_position,
    close_request,
    expect_code,
    list_positions,
    order_count,
    position,
    position_by_id,
    redis_snapshot,
    ticks,
)
from fixtures.trading import BTC, USER, fills_of, get, order_request, place, tick
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_pb2, position_pb2
from tradingboost.oms.v1 import position_service_pb2 as ppb

from oms.config import MarketSettings, PaperSettings

S = order_pb2
P = position_pb2


# --- size, entry, realized PnL, fees ---------------------------------------------------------


async def test_long_two_buys_then_partial_sells(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.01")  # taker at 50000: fee 0.25
    await place(oms, type=S.ORDER_TYPE_LIMIT, price="48000", quantity="0.03")
    await tick(oms, "47000")  # the limit fills at 48000 as maker: fee 0.288

    opened = await position(oms)
    assert opened.status == P.POSITION_STATUS_OPEN
    assert opened.position_side == LONG
    assert (opened.user_id, opened.exchange, opened.symbol) == (USER, "paper", BTC)
    assert opened.size == "0.04"
    assert opened.entry_price == "48500"  # (500 + 1440) / 0.04
    assert opened.realized_pnl == "0"
    assert opened.fees == "0.538"
    assert opened.mark_price == "47000"
    assert opened.unrealized_pnl == "-60"  # (47000 - 48500) x 0.04
    assert opened.notional == "1880"

    await tick(oms, "49000")
    sell = await place(oms, side=S.SIDE_SELL, reduce_only=True, quantity="0.02")
    assert sell.position_side == LONG
    assert sell.status == S.ORDER_STATUS_FILLED
    reduced = await position(oms)
    assert reduced.position_id == opened.position_id
    assert reduced.size == "0.02"
    assert reduced.entry_price == "48500"  # reductions leave the entry unchanged
    assert reduced.realized_pnl == "10"  # (49000 - 48500) x 0.02
    assert reduced.fees == "1.028"  # + 49000 x 0.02 x 0.0005
    assert reduced.unrealized_pnl == "10"
    assert reduced.notional == "980"

    # A non-reduce-only SELL on the LONG side, within the size, reduces at a loss.
    await tick(oms, "48000")
    await place(oms, side=S.SIDE_SELL, position_side=LONG, quantity="0.005")
    after = await position(oms)
    assert after.position_id == opened.position_id
    assert after.size == "0.015"
    assert after.realized_pnl == "7.5"  # 10 + (48000 - 48500) x 0.005
    assert after.fees == "1.148"  # + 48000 x 0.005 x 0.0005
    assert after.unrealized_pnl == "-7.5"
    assert after.notional == "720"
    assert after.status == P.POSITION_STATUS_OPEN
    await check_invariants(oms)


async def test_short_two_sells_then_partial_buys(oms: OmsHarness) -> None:
    await tick(oms, "3000", symbol=ETH)
    first = await place(oms, symbol=ETH, side=S.SIDE_SELL, quantity="1")  # fee 1.5
    assert first.position_side == SHORT
    await place(
        oms, symbol=ETH, side=S.SIDE_SELL, type=S.ORDER_TYPE_LIMIT, price="3100", quantity="3"
    )
    await tick(oms, "3150", symbol=ETH)  # maker at 3100: fee 1.86

    opened = await position(oms, SHORT, ETH)
    assert opened.position_side == SHORT
    assert opened.size == "4"
    assert opened.entry_price == "3075"  # (3000 + 9300) / 4
    assert opened.fees == "3.36"
    assert opened.mark_price == "3150"
    assert opened.unrealized_pnl == "-300"  # (3075 - 3150) x 4
    assert opened.notional == "12600"

    await tick(oms, "2900", symbol=ETH)
    buy = await place(oms, symbol=ETH, side=S.SIDE_BUY, reduce_only=True, quantity="1.5")
    assert buy.position_side == SHORT
    reduced = await position(oms, SHORT, ETH)
    assert reduced.position_id == opened.position_id
    assert reduced.size == "2.5"
    assert reduced.entry_price == "3075"
    assert reduced.realized_pnl == "262.5"  # (3075 - 2900) x 1.5
    assert reduced.fees == "5.535"  # + 2900 x 1.5 x 0.0005
    assert reduced.unrealized_pnl == "437.5"
    assert reduced.notional == "7250"

    await tick(oms, "3200", symbol=ETH)
    await place(oms, symbol=ETH, side=S.SIDE_BUY, position_side=SHORT, quantity="0.5")
    after = await position(oms, SHORT, ETH)
    assert after.size == "2"
    assert after.realized_pnl == "200"  # 262.5 + (3075 - 3200) x 0.5
    assert after.fees == "6.335"
    assert after.unrealized_pnl == "-250"
    assert after.notional == "6400"
    # Nothing on the LONG side of ETH.
    await expect_code(
        oms.positions.GetPosition(
            ppb.GetPositionRequest(user_id=USER, exchange="paper", symbol=ETH, position_side=LONG)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await check_invariants(oms)


async def test_an_add_after_a_reduction_averages_the_remaining_size_with_the_new_fill(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.01")
    await tick(oms, "52000")
    await place(oms, side=S.SIDE_SELL, reduce_only=True, quantity="0.005")
    assert (await position(oms)).entry_price == "50000"
    await tick(oms, "53000")
    await place(oms, quantity="0.01")
    p = await position(oms)
    assert p.size == "0.015"
    assert p.entry_price == "52000"  # (50000 x 0.005 + 53000 x 0.01) / 0.015
    assert p.realized_pnl == "10"  # (52000 - 50000) x 0.005, at the entry of that time
    await close_position(oms)  # at 53000: 10 + (53000 - 52000) x 0.015
    closed = await position(oms)
    assert closed.realized_pnl == "25"  # 260 + 795 received - 500 - 530 paid
    await check_invariants(oms)


async def test_going_flat_closes_the_record_and_the_next_fill_starts_a_new_one(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.01")
    first = await position(oms)
    await tick(oms, "51000")
    await place(oms, side=S.SIDE_SELL, reduce_only=True, quantity="0.01")

    closed = await position(oms)
    assert closed.position_id == first.position_id
    assert closed.status == P.POSITION_STATUS_CLOSED
    assert closed.HasField("closed_at")
    assert closed.size == "0"
    assert closed.entry_price == "50000"
    assert closed.realized_pnl == "10"
    assert closed.fees == "0.505"  # 0.25 + 0.255
    assert (closed.unrealized_pnl, closed.notional) == ("0", "0")
    assert closed.opened_at == first.opened_at
    assert await list_positions(oms.positions) == []
    assert await list_positions(oms.positions, include_closed=True) == [closed]

    await tick(oms, "52000")  # a CLOSED record never changes again
    assert await position_by_id(oms, closed.position_id) == closed

    await place(oms, quantity="0.02")
    second = await position(oms)
    assert second.position_id != closed.position_id
    assert second.status == P.POSITION_STATUS_OPEN
    assert (second.size, second.entry_price) == ("0.02", "52000")
    assert (second.realized_pnl, second.fees) == ("0", "0.52")
    assert not second.HasField("closed_at")
    assert await position_by_id(oms, closed.position_id) == closed
    history = await list_positions(oms.positions, include_closed=True)
    assert [p.position_id for p in history] == [second.position_id, closed.position_id]
    await check_invariants(oms)


async def test_long_and_short_on_one_symbol_are_separate_hedge_positions(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.01")
    await place(oms, side=S.SIDE_SELL, quantity="0.02")
    long, short = await position(oms, LONG), await position(oms, SHORT)
    assert long.position_id != short.position_id
    assert (long.size, short.size) == ("0.01", "0.02")
    await tick(oms, "50100")
    long, short = await position(oms, LONG), await position(oms, SHORT)
    assert (long.unrealized_pnl, short.unrealized_pnl) == ("1", "-2")
    # The market id works as the symbol; responses carry the unified symbol.
    by_id = await oms.positions.GetPosition(
        ppb.GetPositionRequest(
            user_id=USER, exchange="paper", symbol="BTC-USDT-SWAP", position_side=LONG
        )
    )
    assert by_id.position == long
    assert by_id.position.symbol == BTC
    await check_invariants(oms)


async def test_unknown_positions_and_other_users_positions_are_not_found(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.01")
    mine = await position(oms)
    for request in (
        ppb.GetPositionRequest(user_id=USER, exchange="paper", symbol=BTC, position_side=SHORT),
        ppb.GetPositionRequest(user_id=USER, exchange="paper", symbol=SOL, position_side=LONG),
        ppb.GetPositionRequest(user_id="mallory", exchange="paper", symbol=BTC, position_side=LONG),
        ppb.GetPositionRequest(user_id="mallory", position_id=mine.position_id),
        ppb.GetPositionRequest(user_id=USER, position_id="01J00000000000000000000000"),
    ):
        await expect_code(oms.positions.GetPosition(request), grpc.StatusCode.NOT_FOUND)
    assert await list_positions(oms.positions, "mallory", include_closed=True) == []
    await check_invariants(oms)


# --- mark price, unrealized PnL, leverage, liquidation ----------------------------------------


@pytest.mark.parametrize(
    ("side", "leverage", "good", "bad", "liquidation"),
    [
        # BTC long 0.1 at 50000, marks 51000 / 49000; margin 5000 / leverage.
        (LONG, 1, ("100", "5100", "2"), ("-100", "4900", "-2"), "250"),
        (LONG, 10, ("100", "5100", "20"), ("-100", "4900", "-20"), "45250"),
        # ETH short 2 at 2000, marks 1900 / 2100; margin 4000 / leverage.
        (SHORT, 1, ("200", "3800", "5"), ("-200", "4200", "-5"), "3990"),
        (SHORT, 10, ("200", "3800", "50"), ("-200", "4200", "-50"), "2190"),
    ],
    ids=["long-1x", "long-10x", "short-1x", "short-10x"],
)
async def test_unrealized_pnl_notional_percentage_and_liquidation_follow_the_mark(
    oms: OmsHarness,
    side: int,
    leverage: int,
    good: tuple[str, str, str],
    bad: tuple[str, str, str],
    liquidation: str,
) -> None:
    if side == LONG:
        symbol, entry, quantity, marks = BTC, "50000", "0.1", ("51000", "49000")
        order_side = S.SIDE_BUY
    else:
        symbol, entry, quantity, marks = ETH, "2000", "2", ("1900", "2100")
        order_side = S.SIDE_SELL
    await tick(oms, entry, symbol=symbol)
    await place(oms, symbol=symbol, side=order_side, quantity=quantity, leverage=leverage)
    opened = await position(oms, side, symbol)
    assert opened.leverage == leverage
    assert opened.mark_price == entry  # set by the opening fill
    assert (opened.unrealized_pnl, opened.pnl_percentage) == ("0", "0")
    # LONG entry x (1 - 1/lev + 0.005); SHORT entry x (1 + 1/lev - 0.005).
    assert opened.liquidation_price == liquidation

    for mark, (unrealized, notional, percentage) in zip(marks, (good, bad), strict=True):
        await tick(oms, mark, symbol=symbol)
        p = await position(oms, side, symbol)
        assert p.mark_price == mark
        assert p.unrealized_pnl == unrealized
        assert p.notional == notional
        assert p.pnl_percentage == percentage
        assert p.liquidation_price == liquidation
        assert p.realized_pnl == "0"
        assert p.updated_at.ToNanoseconds() >= opened.updated_at.ToNanoseconds()
    await check_invariants(oms)


async def test_leverage_is_the_latest_opening_orders_and_percentage_defaults_to_1x(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.01")  # no leverage: percent of the full notional
    await tick(oms, "51000")
    assert (await position(oms)).pnl_percentage == "2"

    await place(oms, quantity="0.01", leverage=10)  # entry now (500 + 510) / 0.02 = 50500
    p = await position(oms)
    assert p.leverage == 10
    assert p.entry_price == "50500"
    assert p.liquidation_price == "45702.5"  # 50500 x 0.905
    assert p.pnl_percentage == "9.90099009901"  # 10 / (50500 x 0.02 / 10) x 100, rounded

    await place(oms, quantity="0.02")  # an opening order without leverage keeps 10
    assert (await position(oms)).leverage == 10
    await place(oms, quantity="0.04", leverage=5)
    p = await position(oms)
    assert p.leverage == 5
    assert p.entry_price == "50875"  # (500 + 510 + 1020 + 2040) / 0.08
    assert p.liquidation_price == "40954.375"  # 50875 x (1 - 0.2 + 0.005)

    # A reducing order's leverage does not change the position's.
    await place(oms, side=S.SIDE_SELL, reduce_only=True, quantity="0.01", leverage=20)
    assert (await position(oms)).leverage == 5

    # Closed and reopened without leverage: the exchange would still be at 5x, so is the
    # new record.
    await place(oms, side=S.SIDE_SELL, reduce_only=True, quantity="0.07")
    closed = await position(oms)
    assert closed.status == P.POSITION_STATUS_CLOSED
    await place(oms, quantity="0.01")
    reopened = await position(oms)
    assert reopened.position_id != closed.position_id
    assert reopened.leverage == 5
    await check_invariants(oms)


async def test_a_paper_market_refuses_a_leverage_that_would_open_liquidatable(
    redis_url: str,
) -> None:
    # At 100x on a 1% maintenance margin the initial margin is the maintenance margin: the
    # liquidation price is the entry. The highest such a market takes is 99x.
    doge = MarketSettings(
        symbol="DOGE/USDT:USDT", market_id="DOGE-USDT-SWAP", maintenance_margin_rate=Decimal("0.01")
    )
    oms = await make_oms(redis_url, paper=PaperSettings(markets=(doge,)))
    try:
        market = (
            await oms.market.GetMarket(md.GetMarketRequest(exchange="paper", symbol=doge.symbol))
        ).market
        btc = (await oms.market.GetMarket(md.GetMarketRequest(exchange="paper", symbol=BTC))).market
        assert (market.max_leverage, btc.max_leverage) == (99, 125)
        await tick(oms, "0.2", symbol=doge.symbol)

        too_high = order_request(symbol=doge.symbol, quantity="1", leverage=100)
        message = await expect_code(
            oms.orders.PlaceOrder(too_high), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert message == "leverage: 100 is above the maximum 99 for DOGE/USDT:USDT"
        assert await order_count(oms) == 0

        await place(oms, symbol=doge.symbol, quantity="1", leverage=99)
        held = await position(oms, symbol=doge.symbol)
        assert held.leverage == 99
        assert Decimal(held.liquidation_price) < Decimal(held.entry_price)
    finally:
        await oms.close()


# --- reduce-only capping and hedge-mode flips -------------------------------------------------


async def test_reduce_only_order_is_capped_at_the_size_and_rejected_when_flat(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.02")
    await tick(oms, "51000")
    capped = await place(oms, side=S.SIDE_SELL, reduce_only=True, quantity="0.05")
    assert capped.status == S.ORDER_STATUS_CANCELED
    assert capped.filled_quantity == "0.02"
    assert capped.remaining_quantity == "0"
    assert "reduce-only" in capped.cancel_reason
    [fill] = await fills_of(oms, capped.order_id)
    assert (fill.quantity, fill.price) == ("0.02", "51000")
    closed = await position(oms)
    assert closed.status == P.POSITION_STATUS_CLOSED
    assert closed.realized_pnl == "20"

    # Flat now: refused at placement, as Binance refuses it, a limit as well as a market.
    for limit in ({}, {"type": S.ORDER_TYPE_LIMIT, "price": "52000"}):
        flat = await place(oms, side=S.SIDE_SELL, reduce_only=True, quantity="0.01", **limit)
        assert flat.status == S.ORDER_STATUS_REJECTED
        assert flat.reject_reason == "reduce-only: no LONG position to reduce"
        assert await fills_of(oms, flat.order_id) == []
    assert await position(oms) == closed

    # Never had a SHORT: a reduce-only BUY has nothing to reduce.
    nothing = await place(oms, side=S.SIDE_BUY, reduce_only=True, quantity="0.01")
    assert nothing.position_side == SHORT
    assert nothing.status == S.ORDER_STATUS_REJECTED
    assert nothing.filled_quantity == "0"
    await expect_code(
        oms.positions.GetPosition(
            ppb.GetPositionRequest(user_id=USER, exchange="paper", symbol=BTC, position_side=SHORT)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await check_invariants(oms)


@pytest.mark.parametrize(
    "order_type", [{"type": S.ORDER_TYPE_MARKET}, {"type": S.ORDER_TYPE_LIMIT, "price": "49000"}]
)
async def test_fok_reduce_only_order_larger_than_the_position_expires_unfilled(
    oms: OmsHarness, order_type: dict[str, object]
) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.01")
    held = await position(oms)

    async def fok(quantity: str) -> S.Order:
        return await place(
            oms,
            side=S.SIDE_SELL,
            reduce_only=True,
            quantity=quantity,
            time_in_force=S.TIME_IN_FORCE_FOK,
            **order_type,
        )

    expired = await fok("0.02")
    assert expired.status == S.ORDER_STATUS_EXPIRED
    assert expired.filled_quantity == "0"
    assert "FOK" in expired.cancel_reason
    assert await fills_of(oms, expired.order_id) == []
    assert await position(oms) == held
    fits = await fok("0.01")  # within the size it fills completely
    assert fits.status == S.ORDER_STATUS_FILLED
    await check_invariants(oms)


async def reduce_only_sell(oms: OmsHarness, price: str, quantity: str) -> S.Order:
    """A resting reduce-only SELL limit on the LONG side."""
    return await place(
        oms,
        side=S.SIDE_SELL,
        type=S.ORDER_TYPE_LIMIT,
        price=price,
        reduce_only=True,
        quantity=quantity,
    )


async def test_resting_reduce_only_order_is_capped_at_the_size_at_fill_time(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.02")
    grows = await reduce_only_sell(oms, "51000", "0.03")
    assert grows.status == S.ORDER_STATUS_OPEN  # not capped at placement
    await place(oms, quantity="0.02")  # the position grows to 0.04 before the fill
    await tick(oms, "51000")
    filled = await get(oms, grows.order_id)
    assert filled.status == S.ORDER_STATUS_FILLED
    assert filled.filled_quantity == "0.03"
    p = await position(oms)
    assert (p.size, p.realized_pnl) == ("0.01", "30")

    shrinks = await reduce_only_sell(oms, "52000", "0.03")
    await tick(oms, "52000")
    capped = await get(oms, shrinks.order_id)
    assert capped.status == S.ORDER_STATUS_CANCELED
    assert capped.filled_quantity == "0.01"
    assert capped.average_fill_price == "52000"
    assert "reduce-only" in capped.cancel_reason
    assert (await position(oms)).status == P.POSITION_STATUS_CLOSED

    # A resting reduce-only limit whose position goes flat another way ends then, as Binance
    # expires it: left working, it would take from the side's next position.
    await place(oms, quantity="0.01")
    late = await reduce_only_sell(oms, "53000", "0.01")
    stop = await place(
        oms,
        side=S.SIDE_SELL,
        type=S.ORDER_TYPE_STOP_MARKET,
        stop_price="45000",
        reduce_only=True,
        quantity="0.01",
    )
    await place(oms, side=S.SIDE_SELL, reduce_only=True, quantity="0.01")
    unfilled = await get(oms, late.order_id)
    assert (unfilled.status, unfilled.cancel_reason) == (
        S.ORDER_STATUS_CANCELED,
        "reduce-only: the position is flat",
    )
    # A reduce-only stop stays until it triggers, as on Binance.
    assert (await get(oms, stop.order_id)).status == S.ORDER_STATUS_OPEN
    await place(oms, quantity="0.01")
    await tick(oms, "53000")
    assert await fills_of(oms, late.order_id) == []
    assert (await position(oms)).size == "0.01"
    await check_invariants(oms)


@pytest.mark.parametrize("triggered_first", [True, False])
async def test_a_reduce_only_stop_limit_ends_once_triggered_on_a_flat_side(
    oms: OmsHarness, triggered_first: bool
) -> None:
    # Triggered first, it rests as a sell limit at 49500 until the side goes flat; triggered
    # on the flat side, it ends at once, as a stop-market would.
    await tick(oms, "50000")
    await place(oms, quantity="0.01")
    stop_limit = await place(
        oms,
        side=S.SIDE_SELL,
        type=S.ORDER_TYPE_STOP_LIMIT,
        stop_price="49000",
        price="49500",
        reduce_only=True,
        quantity="0.01",
    )
    if triggered_first:
        await tick(oms, "49000")
        assert (await get(oms, stop_limit.order_id)).status == S.ORDER_STATUS_OPEN
    await close_position(oms)
    if not triggered_first:
        await tick(oms, "49000")
    ended = await get(oms, stop_limit.order_id)
    assert (ended.status, ended.cancel_reason) == (
        S.ORDER_STATUS_CANCELED,
        "reduce-only: the position is flat",
    )
    await place(oms, quantity="0.01")  # the next trade
    await tick(oms, "49500")
    assert await fills_of(oms, stop_limit.order_id) == []
    assert (await position(oms)).size == "0.01"
    await check_invariants(oms)


@pytest.mark.parametrize(
    "order_type", [{"type": S.ORDER_TYPE_MARKET}, {"type": S.ORDER_TYPE_LIMIT, "price": "49000"}]
)
async def test_a_non_reduce_only_order_that_would_flip_the_side_is_refused(
    oms: OmsHarness, redis_url: str, order_type: dict[str, object]
) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.01")
    before, held = await redis_snapshot(redis_url), await position(oms)

    await expect_code(
        oms.orders.PlaceOrder(
            order_request(side=S.SIDE_SELL, position_side=LONG, quantity="0.02", **order_type)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    # Never had a SHORT: a BUY on the SHORT side would flip it too.
    await expect_code(
        oms.orders.PlaceOrder(
            order_request(side=S.SIDE_BUY, position_side=SHORT, quantity="0.01", **order_type)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert await redis_snapshot(redis_url) == before
    assert await position(oms) == held

    # Exactly the size is allowed: it closes the position.
    exact = await place(oms, side=S.SIDE_SELL, position_side=LONG, quantity="0.01")
    assert exact.status == S.ORDER_STATUS_FILLED
    assert (await position(oms)).status == P.POSITION_STATUS_CLOSED
    await check_invariants(oms)


# --- ClosePosition ---------------------------------------------------------------------------


async def test_close_position_partially_then_fully(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.03")  # fee 0.75
    await tick(oms, "51000")
    partial = await close_position(oms, quantity="0.01", client_order_id="close-1")
    assert partial.type == S.ORDER_TYPE_MARKET
    assert partial.side == S.SIDE_SELL
    assert partial.position_side == LONG
    assert partial.reduce_only
    assert partial.quantity == "0.01"
    assert partial.client_order_id == "close-1"
    assert partial.status == S.ORDER_STATUS_FILLED
    assert partial.average_fill_price == "51000"
    p = await position(oms)
    assert (p.status, p.size, p.realized_pnl) == (P.POSITION_STATUS_OPEN, "0.02", "10")

    # Idempotent on client_order_id: the retry returns the same order and closes nothing more.
    again = await close_position(oms, quantity="0.01", client_order_id="close-1")
    assert again.order_id == partial.order_id
    assert (await position(oms)).size == "0.02"
    for other in (close_request(quantity="0.02"), close_request()):  # the whole of it, now
        other.client_order_id = "close-1"
        await expect_code(oms.positions.ClosePosition(other), grpc.StatusCode.ALREADY_EXISTS)

    await tick(oms, "49000")
    full = await close_position(oms, client_order_id="close-2")
    assert full.quantity == "0.02"
    # A whole close's retry gets it back, the position flat now.
    assert (await close_position(oms, client_order_id="close-2")).order_id == full.order_id
    assert full.status == S.ORDER_STATUS_FILLED
    assert full.reduce_only
    closed = await position(oms)
    assert closed.status == P.POSITION_STATUS_CLOSED
    assert closed.realized_pnl == "-10"  # 10 + (49000 - 50000) x 0.02
    assert closed.fees == "1.495"  # 0.75 + 0.255 + 0.49
    await check_invariants(oms)


async def test_a_close_retried_while_the_first_is_in_flight_gets_the_same_order(
    oms: OmsHarness,
) -> None:
    # The retry's lookup can run before the first attempt's order lands; it must not then be
    # refused on the flat position that order left.
    await tick(oms, "50000")
    for attempt in range(5):
        await place(oms, quantity="0.01")
        request = close_request(client_order_id=f"close-{attempt}")
        first, again = await asyncio.gather(
            oms.positions.ClosePosition(request), oms.positions.ClosePosition(request)
        )
        assert again.order.order_id == first.order.order_id
        assert first.order.status == S.ORDER_STATUS_FILLED
        assert (await position(oms)).status == P.POSITION_STATUS_CLOSED
    assert await order_count(oms) == 10  # five opening orders, five closes
    await check_invariants(oms)


async def test_close_position_short_buys_it_back(oms: OmsHarness) -> None:
    await tick(oms, "3000", symbol=ETH)
    await place(oms, symbol=ETH, side=S.SIDE_SELL, quantity="2")
    await tick(oms, "2950", symbol=ETH)
    order = await close_position(oms, symbol="ETH-USDT-SWAP", position_side=SHORT)
    assert (order.side, order.position_side, order.symbol) == (S.SIDE_BUY, SHORT, ETH)
    assert order.quantity == "2"
    assert order.status == S.ORDER_STATUS_FILLED
    closed = await position(oms, SHORT, ETH)
    assert closed.status == P.POSITION_STATUS_CLOSED
    assert closed.realized_pnl == "100"  # (3000 - 2950) x 2
    await check_invariants(oms)


async def test_close_position_refusals(oms: OmsHarness, redis_url: str) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.02")
    held = await position(oms)
    before = await redis_snapshot(redis_url)

    details = await expect_code(
        oms.positions.ClosePosition(close_request(quantity="0.03")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "quantity" in details
    await expect_code(
        oms.positions.ClosePosition(close_request(position_side=SHORT)),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_code(
        oms.positions.ClosePosition(close_request(symbol=SOL)), grpc.StatusCode.NOT_FOUND
    )
    await expect_code(
        oms.positions.ClosePosition(close_request(user_id="mallory")), grpc.StatusCode.NOT_FOUND
    )
    assert await redis_snapshot(redis_url) == before
    assert await position(oms) == held

    await close_position(oms)
    closed = await position(oms)
    count = await order_count(oms)
    await expect_code(
        oms.positions.ClosePosition(close_request()), grpc.StatusCode.FAILED_PRECONDITION
    )
    await expect_code(
        oms.positions.ClosePosition(close_request(quantity="0.01")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert await order_count(oms) == count
    assert await position(oms) == closed
    await check_invariants(oms)


# --- ListPositions -------------------------------------------------------------------------


async def test_list_positions_filters_pages_newest_record_first(oms: OmsHarness) -> None:
    await ticks(oms, {BTC: "50000", ETH: "3000", SOL: "100"})
    await place(oms, quantity="0.01")  # BTC long
    await place(oms, side=S.SIDE_SELL, quantity="0.01")  # BTC short
    await place(oms, symbol=ETH, quantity="1")  # ETH long
    await place(oms, symbol=SOL, quantity="1")
    await close_position(oms, symbol=SOL)  # SOL long: CLOSED

    listing = await oms.positions.ListPositions(ppb.ListPositionsRequest(user_id=USER))
    assert [(p.symbol, p.position_side) for p in listing.positions] == [
        (ETH, LONG),
        (BTC, SHORT),
        (BTC, LONG),
    ]
    assert listing.as_of_sequence > 0
    assert not listing.next_page_token

    first = await oms.positions.ListPositions(ppb.ListPositionsRequest(user_id=USER, page_size=2))
    assert len(first.positions) == 2
    assert first.next_page_token
    second = await oms.positions.ListPositions(
        ppb.ListPositionsRequest(user_id=USER, page_size=2, page_token=first.next_page_token)
    )
    assert [*first.positions, *second.positions] == list(listing.positions)
    assert not second.next_page_token

    btc = await list_positions(oms.positions, exchange="paper", symbol="BTC-USDT-SWAP")
    assert {p.position_side for p in btc} == {LONG, SHORT}
    shorts = await list_positions(oms.positions, position_side=SHORT)
    assert [(p.symbol, p.position_side) for p in shorts] == [(BTC, SHORT)]
    everything = await list_positions(oms.positions, include_closed=True)
    assert (everything[0].symbol, everything[0].status) == (SOL, P.POSITION_STATUS_CLOSED)
    assert len(everything) == 4
    assert await list_positions(oms.positions, "bob", include_closed=True) == []

    await tick(oms, "50100")  # a mark move changes the BTC records but not the order
    moved = await list_positions(oms.positions)
    assert [p.position_id for p in moved] == [p.position_id for p in listing.positions]
    await check_invariants(oms)
