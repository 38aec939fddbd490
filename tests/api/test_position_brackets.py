"""OpenPosition: an entry with a take-profit and a stop-loss linked one-cancels-other.

PublishPrices returns only after everything its tick causes is committed, so the exit that
fills and the other exit's cancel are both visible as soon as the tick returns.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, cast

import grpc
import pytest
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.positions import (
    ETH,
    LONG,
    SHORT,
    all_fills,
    check_invariants,
    close_position,
    expect_code,
    open_position,
    open_request,
    order_count,
    position,
)
from fixtures.trading import BTC, USER, get, place, tick
from tradingboost.oms.v1 import order_pb2, position_pb2
from tradingboost.oms.v1 import order_service_pb2 as opb
from tradingboost.oms.v1 import position_service_pb2 as ppb

from oms.config import PaperSettings

S = order_pb2
P = position_pb2


async def exits(
    oms: OmsHarness, opened: ppb.OpenPositionResponse
) -> tuple[order_pb2.Order, order_pb2.Order]:
    return (
        await get(oms, opened.take_profit_order_id),
        await get(oms, opened.stop_loss_order_id),
    )


async def expect_no_order(oms: OmsHarness, order_id: str) -> None:
    assert order_id
    await expect_code(
        oms.orders.GetOrder(opb.GetOrderRequest(user_id=USER, order_id=order_id)),
        grpc.StatusCode.NOT_FOUND,
    )


def assert_linked_exits(
    entry: order_pb2.Order,
    tp: order_pb2.Order,
    sl: order_pb2.Order,
    *,
    side: int,
    position_side: int,
    take_profit: str,
    stop_loss: str,
    quantity: str,
) -> None:
    for exit_order in (tp, sl):
        assert exit_order.status == S.ORDER_STATUS_OPEN
        assert exit_order.reduce_only
        assert exit_order.side == side
        assert exit_order.position_side == position_side
        assert exit_order.quantity == quantity
        assert exit_order.price == ""
        assert (exit_order.exchange, exit_order.symbol) == (entry.exchange, entry.symbol)
        assert exit_order.parent_order_id == entry.order_id
        assert exit_order.strategy == entry.strategy
        assert exit_order.HasField("grid_level") == entry.HasField("grid_level")
        assert exit_order.grid_level == entry.grid_level
    assert (tp.type, tp.stop_price) == (S.ORDER_TYPE_TAKE_PROFIT_MARKET, take_profit)
    assert (sl.type, sl.stop_price) == (S.ORDER_TYPE_STOP_MARKET, stop_loss)
    assert tp.linked_order_id == sl.order_id
    assert sl.linked_order_id == tp.order_id
    ids = {entry.client_order_id, tp.client_order_id, sl.client_order_id}
    assert len(ids) == 3  # derived from the entry's, distinct


async def test_long_market_entry_take_profit_fills_and_cancels_the_stop_loss(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    opened = await open_position(
        oms,
        quantity="0.02",
        stop_loss_price="49000",
        take_profit_price="52000",
        leverage=5,
        client_order_id="op-1",
        strategy="breakout",
        grid_level=4,
    )
    entry = opened.entry_order
    assert entry.type == S.ORDER_TYPE_MARKET
    assert (entry.side, entry.position_side, entry.reduce_only) == (S.SIDE_BUY, LONG, False)
    assert entry.status == S.ORDER_STATUS_FILLED
    assert entry.average_fill_price == "50000"  # taker fee 0.5
    assert entry.client_order_id == "op-1"
    assert (entry.leverage, entry.strategy, entry.grid_level) == (5, "breakout", 4)
    assert opened.take_profit_order_id and opened.stop_loss_order_id
    assert opened.trailing_stop_id == ""
    assert len({entry.order_id, opened.take_profit_order_id, opened.stop_loss_order_id}) == 3

    tp, sl = await exits(oms, opened)
    assert_linked_exits(
        entry,
        tp,
        sl,
        side=S.SIDE_SELL,
        position_side=LONG,
        take_profit="52000",
        stop_loss="49000",
        quantity="0.02",
    )
    for exit_order in (tp, sl):  # stable client order ids: GetOrder finds them by theirs
        found = await oms.orders.GetOrder(
            opb.GetOrderRequest(user_id=USER, client_order_id=exit_order.client_order_id)
        )
        assert found.order.order_id == exit_order.order_id

    held = await position(oms)
    assert (held.size, held.entry_price, held.leverage) == ("0.02", "50000", 5)
    assert tp.position_id == sl.position_id == held.position_id  # the trade they protect
    assert [(g.grid_level, g.quantity, g.entry_price) for g in held.grid_levels] == [
        (4, "0.02", "50000")
    ]

    await tick(oms, "51999.99")
    tp, sl = await exits(oms, opened)
    assert (tp.status, sl.status) == (S.ORDER_STATUS_OPEN, S.ORDER_STATUS_OPEN)

    await tick(oms, "52000")
    tp, sl = await exits(oms, opened)
    assert tp.status == S.ORDER_STATUS_FILLED
    assert (tp.filled_quantity, tp.average_fill_price) == ("0.02", "52000")
    assert sl.status == S.ORDER_STATUS_CANCELED
    assert sl.filled_quantity == "0"
    assert tp.order_id in sl.cancel_reason
    closed = await position(oms)
    assert closed.position_id == held.position_id
    assert closed.status == P.POSITION_STATUS_CLOSED
    assert closed.realized_pnl == "40"  # (52000 - 50000) x 0.02
    assert closed.fees == "1.02"  # 0.5 + 52000 x 0.02 x 0.0005

    fills = len(await all_fills(oms.orders))
    await tick(oms, "48000")  # the cancelled stop-loss never fires
    assert (await get(oms, sl.order_id)).status == S.ORDER_STATUS_CANCELED
    assert len(await all_fills(oms.orders)) == fills
    assert await position(oms) == closed
    await check_invariants(oms)


async def test_long_limit_entry_stop_loss_fills_and_cancels_the_take_profit(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    opened = await open_position(
        oms,
        type=S.ORDER_TYPE_LIMIT,
        price="49500",
        quantity="0.01",
        stop_loss_price="48000",
        take_profit_price="51000",
    )
    assert opened.entry_order.status == S.ORDER_STATUS_OPEN
    assert opened.entry_order.price == "49500"
    # Reserved, but not created before the entry fills.
    await expect_no_order(oms, opened.take_profit_order_id)
    await expect_no_order(oms, opened.stop_loss_order_id)
    await tick(oms, "49500.01")
    await expect_no_order(oms, opened.take_profit_order_id)
    await expect_code(
        oms.positions.GetPosition(
            ppb.GetPositionRequest(user_id=USER, exchange="paper", symbol=BTC, position_side=LONG)
        ),
        grpc.StatusCode.NOT_FOUND,
    )

    await tick(oms, "49500")  # the entry fills as maker: fee 0.099
    entry = await get(oms, opened.entry_order.order_id)
    assert entry.status == S.ORDER_STATUS_FILLED
    tp, sl = await exits(oms, opened)
    assert_linked_exits(
        entry,
        tp,
        sl,
        side=S.SIDE_SELL,
        position_side=LONG,
        take_profit="51000",
        stop_loss="48000",
        quantity="0.01",
    )

    await tick(oms, "47900")  # through the stop: fills at this tick's price as taker
    tp, sl = await exits(oms, opened)
    assert sl.status == S.ORDER_STATUS_FILLED
    assert sl.average_fill_price == "47900"
    assert tp.status == S.ORDER_STATUS_CANCELED
    assert sl.order_id in tp.cancel_reason
    closed = await position(oms)
    assert closed.status == P.POSITION_STATUS_CLOSED
    assert closed.realized_pnl == "-16"  # (47900 - 49500) x 0.01
    assert closed.fees == "0.3385"  # 0.099 + 47900 x 0.01 x 0.0005
    await check_invariants(oms)


async def test_an_entry_filled_through_its_stop_loss_exits_at_once(oms: OmsHarness) -> None:
    # A resting entry fills at its limit on a tick that gaps through the stop too: the stop
    # is triggered at that tick's price rather than refused, which would leave no stop.
    await tick(oms, "50000")
    opened = await open_position(
        oms,
        type=S.ORDER_TYPE_LIMIT,
        price="49000",
        quantity="0.01",
        stop_loss_price="48500",
        take_profit_price="52000",
    )
    await tick(oms, "48000")
    entry = await get(oms, opened.entry_order.order_id)
    assert (entry.status, entry.average_fill_price) == (S.ORDER_STATUS_FILLED, "49000")
    tp, sl = await exits(oms, opened)
    assert (sl.status, sl.average_fill_price) == (S.ORDER_STATUS_FILLED, "48000")
    assert tp.status == S.ORDER_STATUS_CANCELED
    closed = await position(oms)
    assert closed.status == P.POSITION_STATUS_CLOSED
    assert closed.realized_pnl == "-10"  # (48000 - 49000) x 0.01
    await check_invariants(oms)


async def test_short_entry_take_profit_buys_back_below_and_cancels_the_stop_loss(
    oms: OmsHarness,
) -> None:
    await tick(oms, "3000", symbol=ETH)
    opened = await open_position(
        oms,
        symbol="ETH-USDT-SWAP",
        position_side=SHORT,
        quantity="2",
        take_profit_price="2800",
        stop_loss_price="3100",
        leverage=5,
    )
    entry = opened.entry_order
    assert (entry.side, entry.position_side, entry.symbol) == (S.SIDE_SELL, SHORT, ETH)
    assert entry.status == S.ORDER_STATUS_FILLED  # at 3000, fee 3
    tp, sl = await exits(oms, opened)
    assert_linked_exits(
        entry,
        tp,
        sl,
        side=S.SIDE_BUY,
        position_side=SHORT,
        take_profit="2800",
        stop_loss="3100",
        quantity="2",
    )
    held = await position(oms, SHORT, ETH)
    assert held.liquidation_price == "3585"  # 3000 x (1 + 1/5 - 0.005)

    await tick(oms, "2900", symbol=ETH)
    held = await position(oms, SHORT, ETH)
    assert held.unrealized_pnl == "200"
    assert held.pnl_percentage == "16.666666666667"  # 200 / (6000 / 5) x 100, rounded
    tp, sl = await exits(oms, opened)
    assert (tp.status, sl.status) == (S.ORDER_STATUS_OPEN, S.ORDER_STATUS_OPEN)

    await tick(oms, "2790", symbol=ETH)
    tp, sl = await exits(oms, opened)
    assert tp.status == S.ORDER_STATUS_FILLED
    assert tp.average_fill_price == "2790"
    assert sl.status == S.ORDER_STATUS_CANCELED
    closed = await position(oms, SHORT, ETH)
    assert closed.status == P.POSITION_STATUS_CLOSED
    assert closed.realized_pnl == "420"  # (3000 - 2790) x 2
    assert closed.fees == "5.79"  # 3 + 2790 x 2 x 0.0005
    await check_invariants(oms)


async def test_exits_are_sized_to_the_entry_fill_not_to_the_whole_position(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.01")  # already long 0.01
    opened = await open_position(
        oms, quantity="0.02", take_profit_price="51000", stop_loss_price="49000"
    )
    tp, sl = await exits(oms, opened)
    assert (tp.quantity, sl.quantity) == ("0.02", "0.02")
    assert (await position(oms)).size == "0.03"

    await tick(oms, "51000")
    tp, sl = await exits(oms, opened)
    assert tp.status == S.ORDER_STATUS_FILLED
    assert sl.status == S.ORDER_STATUS_CANCELED
    p = await position(oms)
    assert (p.status, p.size, p.realized_pnl) == (P.POSITION_STATUS_OPEN, "0.01", "20")
    await check_invariants(oms)


async def test_only_the_exits_asked_for_are_placed(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    tp_only = await open_position(oms, take_profit_price="51000")
    assert tp_only.take_profit_order_id
    assert tp_only.stop_loss_order_id == ""
    tp = await get(oms, tp_only.take_profit_order_id)
    assert (tp.type, tp.status, tp.linked_order_id) == (
        S.ORDER_TYPE_TAKE_PROFIT_MARKET,
        S.ORDER_STATUS_OPEN,
        "",
    )
    bare = await open_position(oms, position_side=SHORT)
    assert (bare.take_profit_order_id, bare.stop_loss_order_id) == ("", "")
    assert bare.entry_order.status == S.ORDER_STATUS_FILLED
    assert await order_count(oms) == 3
    await tick(oms, "51000")
    assert (await get(oms, tp.order_id)).status == S.ORDER_STATUS_FILLED
    await check_invariants(oms)


async def test_an_entry_cancelled_unfilled_never_creates_its_exits(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    opened = await open_position(
        oms,
        type=S.ORDER_TYPE_LIMIT,
        price="49000",
        take_profit_price="51000",
        stop_loss_price="48000",
    )
    cancel = await oms.orders.CancelOrder(
        opb.CancelOrderRequest(user_id=USER, order_id=opened.entry_order.order_id)
    )
    assert cancel.order.status == S.ORDER_STATUS_CANCELED
    await tick(oms, "47000")
    await tick(oms, "52000")
    await expect_no_order(oms, opened.take_profit_order_id)
    await expect_no_order(oms, opened.stop_loss_order_id)
    assert await order_count(oms) == 1
    await check_invariants(oms)
    assert await all_fills(oms.orders) == []


async def test_close_position_cancels_the_take_profit_and_stop_loss(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    opened = await open_position(
        oms, quantity="0.02", take_profit_price="52000", stop_loss_price="48000"
    )
    await tick(oms, "50500")
    close = await close_position(oms)
    assert close.status == S.ORDER_STATUS_FILLED
    assert close.quantity == "0.02"
    tp, sl = await exits(oms, opened)
    assert (tp.status, sl.status) == (S.ORDER_STATUS_CANCELED, S.ORDER_STATUS_CANCELED)
    assert (tp.filled_quantity, sl.filled_quantity) == ("0", "0")
    assert "position closed" in tp.cancel_reason
    assert "position closed" in sl.cancel_reason
    closed = await position(oms)
    assert (closed.status, closed.realized_pnl) == (P.POSITION_STATUS_CLOSED, "10")

    fills = len(await all_fills(oms.orders))
    await tick(oms, "52000")
    await tick(oms, "47000")
    assert len(await all_fills(oms.orders)) == fills
    await check_invariants(oms)


async def test_after_a_partial_close_the_take_profit_closes_what_is_left_and_is_filled(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    opened = await open_position(
        oms, quantity="0.03", take_profit_price="52000", stop_loss_price="48000"
    )
    await tick(oms, "51000")
    await close_position(oms, quantity="0.01")
    tp, sl = await exits(oms, opened)
    assert (tp.status, sl.status) == (S.ORDER_STATUS_OPEN, S.ORDER_STATUS_OPEN)

    await tick(oms, "52000")
    tp, sl = await exits(oms, opened)
    # It closed the position: FILLED, its quantity brought down to what it filled, so a bot
    # that looks for the FILLED exit finds the one that fired.
    assert (tp.status, tp.quantity, tp.filled_quantity) == (S.ORDER_STATUS_FILLED, "0.02", "0.02")
    assert sl.status == S.ORDER_STATUS_CANCELED
    assert sl.cancel_reason == f"one-cancels-other: {tp.order_id} filled"
    assert sl.filled_quantity == "0"
    closed = await position(oms)
    assert closed.status == P.POSITION_STATUS_CLOSED
    assert closed.realized_pnl == "50"  # (51000 - 50000) x 0.01 + (52000 - 50000) x 0.02
    await check_invariants(oms)


async def test_open_position_is_idempotent_on_client_order_id(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    request = open_request(
        client_order_id="op-7", take_profit_price="51000", stop_loss_price="49000"
    )
    first = await oms.positions.OpenPosition(request)
    again = await oms.positions.OpenPosition(request)
    assert again.entry_order.order_id == first.entry_order.order_id
    assert again.take_profit_order_id == first.take_profit_order_id
    assert again.stop_loss_order_id == first.stop_loss_order_id
    assert await order_count(oms) == 3  # one entry, one take-profit, one stop-loss
    assert (await position(oms)).size == "0.01"

    changed = open_request(
        client_order_id="op-7", quantity="0.02", take_profit_price="51000", stop_loss_price="49000"
    )
    await expect_code(oms.positions.OpenPosition(changed), grpc.StatusCode.ALREADY_EXISTS)
    assert await order_count(oms) == 3
    # After the price crossed an exit (the take-profit filled), the retry is still answered
    # by the entry it placed, not judged against the new price.
    await tick(oms, "51000")
    late = await oms.positions.OpenPosition(request)
    assert late.entry_order.order_id == first.entry_order.order_id
    assert await order_count(oms) == 3
    await check_invariants(oms)


async def test_an_open_retried_while_the_first_is_in_flight_gets_the_same_entry(
    oms: OmsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first call has judged its stop-loss against 50000 and looked its client order id
    # up; its lookup answers late, and meanwhile the price falls below the stop-loss. The
    # retry must be answered with the first call's entry, not judged against the new price.
    lookup = oms.app.store.get_order_by_client_id
    looked = asyncio.Event()

    async def slow_lookup(user_id: str, client_order_id: str) -> Any:
        found = await lookup(user_id, client_order_id)
        looked.set()
        await asyncio.sleep(0.2)
        return found

    monkeypatch.setattr(oms.app.store, "get_order_by_client_id", slow_lookup)
    await tick(oms, "50000")
    request = open_request(client_order_id="op-1", stop_loss_price="49990")
    first = asyncio.ensure_future(oms.positions.OpenPosition(request))
    await looked.wait()
    await tick(oms, "49980")
    again = await oms.positions.OpenPosition(request)
    assert again.entry_order.order_id == (await first).entry_order.order_id
    assert again.stop_loss_order_id == (await first).stop_loss_order_id
    assert await order_count(oms) == 2  # one entry, one stop-loss
    await check_invariants(oms)


@pytest.mark.parametrize("fired", ["take_profit", "stop_loss"])
async def test_an_exit_that_fills_cancels_the_rest_of_its_entry(
    thin_oms: OmsHarness, fired: str
) -> None:
    oms = thin_oms
    await tick(oms, "50000")
    opened = await open_position(
        oms,
        type=S.ORDER_TYPE_LIMIT,
        price="49000",
        take_profit_price="52000",
        stop_loss_price="48000",
    )
    await tick(oms, "49000")
    assert (await get(oms, opened.entry_order.order_id)).filled_quantity == "0.004"

    await tick(oms, "52000" if fired == "take_profit" else "48000")

    tp, sl = await exits(oms, opened)
    leg, twin = (tp, sl) if fired == "take_profit" else (sl, tp)
    entry = await get(oms, opened.entry_order.order_id)
    assert leg.status == S.ORDER_STATUS_FILLED
    assert twin.status == S.ORDER_STATUS_CANCELED
    assert (entry.status, entry.cancel_reason) == (
        S.ORDER_STATUS_CANCELED,
        f"exit {leg.order_id} filled",
    )
    assert entry.filled_quantity == leg.filled_quantity
    assert (await position(oms)).status == P.POSITION_STATUS_CLOSED
    # The entry's price again: nothing is left to reopen the position unprotected.
    await tick(oms, "49000")
    assert (await position(oms)).status == P.POSITION_STATUS_CLOSED
    await check_invariants(oms)


async def test_a_close_to_flat_cancels_the_rest_of_a_partly_filled_entry(
    thin_oms: OmsHarness,
) -> None:
    oms = thin_oms
    await tick(oms, "50000")
    begun = await open_position(
        oms, type=S.ORDER_TYPE_LIMIT, price="49000", stop_loss_price="47000"
    )
    await tick(oms, "49000")
    # A DCA entry below, nothing filled yet: it would open a new trade with exits of its own.
    waiting = await open_position(
        oms, type=S.ORDER_TYPE_LIMIT, price="48500", stop_loss_price="47000"
    )
    await tick(oms, "49500")
    assert (await get(oms, begun.entry_order.order_id)).filled_quantity == "0.004"

    await close_position(oms)

    entry = await get(oms, begun.entry_order.order_id)
    assert (entry.status, entry.cancel_reason, entry.filled_quantity) == (
        S.ORDER_STATUS_CANCELED,
        "position closed",
        "0.004",
    )
    assert (await get(oms, begun.stop_loss_order_id)).status == S.ORDER_STATUS_CANCELED
    assert (await get(oms, waiting.entry_order.order_id)).status == S.ORDER_STATUS_OPEN
    # The begun entry's price again fills nothing of it; the waiting one fills at its own.
    await tick(oms, "49000")
    assert (await position(oms)).status == P.POSITION_STATUS_CLOSED
    await tick(oms, "48500")
    assert (await position(oms)).size == "0.004"
    assert (await get(oms, waiting.stop_loss_order_id)).status == S.ORDER_STATUS_OPEN
    await check_invariants(oms)


async def test_a_stop_loss_grown_by_its_entrys_fill_triggers_on_that_same_tick(
    thin_oms: OmsHarness,
) -> None:
    oms = thin_oms
    await tick(oms, "50000")
    opened = await open_position(
        oms, type=S.ORDER_TYPE_LIMIT, price="49000", stop_loss_price="48000"
    )
    await tick(oms, "49000")
    # This tick fills more of the entry, which grows the stop-loss, and reaches the stop.
    await tick(oms, "48000")
    sl = await get(oms, opened.stop_loss_order_id)
    assert (sl.status, sl.quantity, sl.average_fill_price) == (
        S.ORDER_STATUS_FILLED,
        "0.008",
        "48000",
    )
    assert (await position(oms)).status == P.POSITION_STATUS_CLOSED
    await check_invariants(oms)


async def test_a_partial_entry_fill_sizes_the_exits_and_later_fills_grow_them(
    redis_url: str,
) -> None:
    # Thin paper liquidity: a resting order fills at most 0.004 per tick.
    oms = await make_oms(redis_url, paper=PaperSettings(maker_fill_limit=Decimal("0.004")))
    try:
        await tick(oms, "50000")
        opened = await open_position(
            oms,
            type=S.ORDER_TYPE_LIMIT,
            price="49000",
            take_profit_price="52000",
            stop_loss_price="48000",
        )
        stream = oms.orders.StreamOrderUpdates(
            opb.StreamOrderUpdatesRequest(user_id=USER, after_sequence=1)
        )
        expected = []
        for price, filled in (("49000", "0.004"), ("48999", "0.008"), ("49000", "0.01")):
            await tick(oms, price)
            entry = await get(oms, opened.entry_order.order_id)
            assert entry.filled_quantity == filled
            tp, sl = await exits(oms, opened)
            assert (tp.quantity, sl.quantity) == (filled, filled)
            assert tp.status == sl.status == S.ORDER_STATUS_OPEN
            expected.append(filled)
        assert entry.status == S.ORDER_STATUS_FILLED
        assert (await position(oms)).size == "0.01"
        # The exits were placed at the first fill and amended at each later one.
        amended: list[tuple[str, str]] = []
        while len(amended) < 4:
            message = cast(opb.StreamOrderUpdatesResponse, await asyncio.wait_for(stream.read(), 5))
            update = message.order_update
            if update.event_type == S.ORDER_EVENT_TYPE_AMENDED:
                amended.append((update.order.order_id, update.order.quantity))
        stream.cancel()
        assert sorted(amended) == sorted(
            (leg, quantity)
            for leg in (opened.take_profit_order_id, opened.stop_loss_order_id)
            for quantity in expected[1:]
        )

        await tick(oms, "52000")
        tp, sl = await exits(oms, opened)
        assert tp.status == S.ORDER_STATUS_FILLED and tp.filled_quantity == "0.01"
        assert sl.status == S.ORDER_STATUS_CANCELED
        closed = await position(oms)
        assert closed.status == P.POSITION_STATUS_CLOSED
        assert closed.realized_pnl == "30"  # (52000 - 49000) x 0.01
        await check_invariants(oms)
    finally:
        await oms.close()
