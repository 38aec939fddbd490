"""Grid bots: FindOpenOrders (level OR price window) and a position's per-level quantities."""

from __future__ import annotations

from typing import Any

import pytest
from fixtures.oms_server import OmsHarness
from fixtures.positions import ETH, check_invariants, position, ticks
from fixtures.trading import BTC, USER, place, tick
from tradingboost.oms.v1 import order_pb2, position_pb2
from tradingboost.oms.v1 import order_service_pb2 as opb

from oms.engine import order_lifecycle

S = order_pb2


async def find(oms: OmsHarness, **fields: Any) -> list[str]:
    """The order ids FindOpenOrders returns, in its order (oldest first)."""
    values: dict[str, Any] = {"user_id": USER, "exchange": "paper", "symbol": BTC}
    values.update(fields)
    response = await oms.orders.FindOpenOrders(opb.FindOpenOrdersRequest(**values))
    assert all(o.status == S.ORDER_STATUS_OPEN for o in response.orders)
    return [o.order_id for o in response.orders]


def levels(p: position_pb2.Position) -> list[tuple[int, str, str]]:
    return [(g.grid_level, g.quantity, g.entry_price) for g in p.grid_levels]


async def limit(oms: OmsHarness, price: str, **fields: Any) -> str:
    order = await place(oms, type=S.ORDER_TYPE_LIMIT, price=price, **fields)
    assert order.status == S.ORDER_STATUS_OPEN
    return order.order_id


async def test_find_open_orders_by_level_by_price_window_or_both(oms: OmsHarness) -> None:
    await ticks(oms, {BTC: "50000", ETH: "3000"})
    l1 = await limit(oms, "49000", grid_level=1)
    l2 = await limit(oms, "48000", grid_level=2)
    l3 = await limit(oms, "47000", grid_level=3)
    sell = await limit(oms, "51000", grid_level=5, side=S.SIDE_SELL)
    upper_edge = await limit(oms, "48050")
    lower_edge = await limit(oms, "47950")
    await limit(oms, "48050.01")  # just outside 48000 +/- 50
    await limit(oms, "47949.99")
    l0 = await limit(oms, "45000", grid_level=0)
    stop = await place(oms, type=S.ORDER_TYPE_STOP_MARKET, stop_price="52000", grid_level=7)
    assert stop.status == S.ORDER_STATUS_OPEN
    # Not open, another symbol, another user: never found.
    await place(oms, grid_level=2)  # filled at once
    cancelled = await limit(oms, "46000", grid_level=2)
    await oms.orders.CancelOrder(opb.CancelOrderRequest(user_id=USER, order_id=cancelled))
    await limit(oms, "2900", grid_level=2, symbol=ETH)
    await limit(oms, "48000", grid_level=2, user_id="bob")

    assert await find(oms, grid_level=2) == [l2]
    assert await find(oms, grid_level=0) == [l0]  # level 0 is a level, not "unset"
    assert await find(oms, grid_level=7) == [stop.order_id]
    assert await find(oms, grid_level=9) == []
    # The window is inclusive at both edges.
    assert await find(oms, price="48000", price_tolerance="50") == [l2, upper_edge, lower_edge]
    assert await find(oms, price="48000", price_tolerance="0") == [l2]
    assert await find(oms, price="48000.5", price_tolerance="0") == []
    # Level OR window; an order matching both is returned once.
    assert await find(oms, grid_level=1, price="48000", price_tolerance="0") == [l1, l2]
    assert await find(oms, grid_level=2, price="48000", price_tolerance="50") == [
        l2,
        upper_edge,
        lower_edge,
    ]
    assert await find(oms, grid_level=3, price="49000", price_tolerance="0") == [l1, l3]
    # A stop order's price is its stop price.
    assert await find(oms, price="52000", price_tolerance="0") == [stop.order_id]
    # Side filter.
    assert await find(oms, price="50000", price_tolerance="1000") == [l1, sell]
    assert await find(oms, price="50000", price_tolerance="1000", side=S.SIDE_SELL) == [sell]
    assert await find(oms, price="50000", price_tolerance="1000", side=S.SIDE_BUY) == [l1]
    assert await find(oms, grid_level=5, side=S.SIDE_BUY) == []
    # The market id works as the symbol.
    assert await find(oms, symbol="BTC-USDT-SWAP", grid_level=2) == [l2]

    # Once level 2 fills it is free again.
    await tick(oms, "48000")
    assert await find(oms, grid_level=2) == []
    assert await find(oms, price="48000", price_tolerance="50") == [lower_edge]
    await check_invariants(oms)


async def test_position_grid_levels_follow_tagged_fills(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.04")  # untagged: never in grid_levels
    await limit(oms, "49000", grid_level=1, quantity="0.01")
    await limit(oms, "48000", grid_level=2, quantity="0.02")
    await limit(oms, "47000", grid_level=3, quantity="0.01")
    await tick(oms, "47000")

    p = await position(oms)
    assert (p.size, p.entry_price) == ("0.08", "49000")  # (2000 + 490 + 960 + 470) / 0.08
    assert levels(p) == [(1, "0.01", "49000"), (2, "0.02", "48000"), (3, "0.01", "47000")]

    await limit(oms, "46000", grid_level=2, quantity="0.02")
    await tick(oms, "46000")
    p = await position(oms)
    assert (p.size, p.entry_price) == ("0.1", "48400")
    assert levels(p) == [(1, "0.01", "49000"), (2, "0.04", "47000"), (3, "0.01", "47000")]

    # A reducing fill of a level-3 order: level 3 first (0.01), then ascending: level 1
    # (0.01), then level 2 (0.01 of 0.04). Emptied levels disappear; entries stay.
    await tick(oms, "49000")
    await place(oms, side=S.SIDE_SELL, reduce_only=True, quantity="0.03", grid_level=3)
    p = await position(oms)
    assert (p.size, p.realized_pnl) == ("0.07", "18")  # (49000 - 48400) x 0.03
    assert levels(p) == [(2, "0.03", "47000")]

    await place(oms, side=S.SIDE_SELL, reduce_only=True, quantity="0.03", grid_level=2)
    p = await position(oms)
    assert p.size == "0.04"  # the untagged part
    assert levels(p) == []

    await place(oms, quantity="0.01", grid_level=1)
    assert levels(await position(oms)) == [(1, "0.01", "49000")]
    await check_invariants(oms)


async def test_a_fill_carries_its_order_s_grid_level_and_strategy(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    snapshot = await oms.orders.ListOrders(opb.ListOrdersRequest(user_id=USER))
    stream = oms.orders.StreamFills(
        opb.StreamFillsRequest(user_id=USER, after_sequence=snapshot.as_of_sequence)
    )
    await limit(oms, "49000", grid_level=3, strategy="grid-btc")
    await place(oms, quantity="0.01")  # no grid, no strategy
    await tick(oms, "48000")
    listed = (await oms.orders.ListFills(opb.ListFillsRequest(user_id=USER))).fills
    streamed = []
    async for message in stream:
        if message.HasField("fill"):
            streamed.append(message.fill)
        if len(streamed) == 2:
            break
    stream.cancel()
    for fills in (sorted(listed, key=lambda f: f.sequence), streamed):
        tagged = [(f.HasField("grid_level"), f.grid_level, f.strategy) for f in fills]
        assert tagged == [(False, 0, ""), (True, 3, "grid-btc")]


async def test_find_open_orders_reads_a_real_exchange_with_no_account_active(
    oms: OmsHarness,
) -> None:
    # As ListOrders: its markets are not loaded, so it is read by the unified symbol (its
    # orders, if any, were stored under it); this user has none there.
    assert await find(oms, exchange="okx", symbol="BTC/USDT:USDT", grid_level=1) == []
    assert (
        await find(oms, exchange="binanceusdm", symbol=BTC, price="50000", price_tolerance="1")
        == []
    )


async def test_find_open_orders_says_when_more_matched_than_it_returns(
    oms: OmsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(order_lifecycle, "MAX_FOUND_ORDERS", 2)
    await tick(oms, "50000")
    oldest = [await limit(oms, "49000", grid_level=1) for _ in range(2)]
    request = opb.FindOpenOrdersRequest(user_id=USER, exchange="paper", symbol=BTC, grid_level=1)
    response = await oms.orders.FindOpenOrders(request)
    assert ([o.order_id for o in response.orders], response.truncated) == (oldest, False)
    await limit(oms, "49000", grid_level=1)
    response = await oms.orders.FindOpenOrders(request)
    assert ([o.order_id for o in response.orders], response.truncated) == (oldest, True)
