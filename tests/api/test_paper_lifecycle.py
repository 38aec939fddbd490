"""The order lifecycle on the paper exchange (CONTRACT section 7), through the real server."""

from __future__ import annotations

from decimal import Decimal

import grpc
import pytest
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.trading import BTC, USER, fills_of, get, place, tick
from tradingboost.oms.v1 import order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.config import PaperSettings

S = order_pb2


async def test_resting_limit_fills_at_its_limit_price_as_maker_on_the_crossing_tick(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    order = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000", quantity="0.01")
    assert order.status == S.ORDER_STATUS_OPEN
    assert order.remaining_quantity == "0.01"

    await tick(oms, "49000.01")
    assert (await get(oms, order.order_id)).status == S.ORDER_STATUS_OPEN

    await tick(oms, "48900")
    filled = await get(oms, order.order_id)
    assert filled.status == S.ORDER_STATUS_FILLED
    assert filled.filled_quantity == "0.01"
    assert filled.remaining_quantity == "0"
    assert filled.average_fill_price == "49000"
    assert filled.fees == "0.098"  # 49000 x 0.01 x 0.0002 maker
    assert filled.fee_currency == "USDT"
    [fill] = await fills_of(oms, order.order_id)
    assert (fill.price, fill.quantity, fill.fee) == ("49000", "0.01", "0.098")
    assert fill.liquidity == S.LIQUIDITY_MAKER
    assert fill.sequence > 0


async def test_resting_sell_limit_fills_when_the_price_rises_to_it(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(
        oms, side=S.SIDE_SELL, type=S.ORDER_TYPE_LIMIT, price="50500", quantity="0.002"
    )
    await tick(oms, "50499.99")
    assert (await get(oms, order.order_id)).status == S.ORDER_STATUS_OPEN
    await tick(oms, "50500")
    filled = await get(oms, order.order_id)
    assert filled.status == S.ORDER_STATUS_FILLED
    assert filled.average_fill_price == "50500"
    assert filled.position_side == S.POSITION_SIDE_SHORT


async def test_market_order_fills_at_once_at_the_last_price_as_taker(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(oms, quantity="0.002")
    assert order.status == S.ORDER_STATUS_FILLED
    assert order.average_fill_price == "50000"
    assert order.fees == "0.05"  # 50000 x 0.002 x 0.0005 taker
    [fill] = await fills_of(oms, order.order_id)
    assert fill.liquidity == S.LIQUIDITY_TAKER
    assert fill.fee == "0.05"


async def test_market_order_without_a_price_is_rejected(oms: OmsHarness) -> None:
    order = await place(oms)
    assert order.status == S.ORDER_STATUS_REJECTED
    assert order.reject_reason == "no price"
    assert await fills_of(oms, order.order_id) == []


async def test_crossing_limit_fills_at_once_at_the_last_price_as_taker(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(oms, type=S.ORDER_TYPE_LIMIT, price="51000", quantity="0.01")
    assert order.status == S.ORDER_STATUS_FILLED
    assert order.average_fill_price == "50000"
    assert order.fees == "0.25"  # 50000 x 0.01 x 0.0005
    [fill] = await fills_of(oms, order.order_id)
    assert fill.liquidity == S.LIQUIDITY_TAKER


async def test_post_only_that_would_cross_is_rejected(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(
        oms,
        type=S.ORDER_TYPE_LIMIT,
        price="50000",
        time_in_force=S.TIME_IN_FORCE_POST_ONLY,
    )
    assert order.status == S.ORDER_STATUS_REJECTED
    assert "post-only" in order.reject_reason


async def test_post_only_that_rests_fills_as_maker(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(
        oms, type=S.ORDER_TYPE_LIMIT, price="49999.99", time_in_force=S.TIME_IN_FORCE_POST_ONLY
    )
    assert order.status == S.ORDER_STATUS_OPEN
    await tick(oms, "49999")
    assert (await get(oms, order.order_id)).status == S.ORDER_STATUS_FILLED


@pytest.mark.parametrize("tif", [S.TIME_IN_FORCE_IOC, S.TIME_IN_FORCE_FOK])
async def test_ioc_and_fok_that_cannot_fill_at_once_expire(oms: OmsHarness, tif: int) -> None:
    await tick(oms, "50000")
    order = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000", time_in_force=tif)
    assert order.status == S.ORDER_STATUS_EXPIRED
    assert order.filled_quantity == "0"


@pytest.mark.parametrize("tif", [S.TIME_IN_FORCE_IOC, S.TIME_IN_FORCE_FOK])
async def test_ioc_and_fok_that_cross_fill_completely(oms: OmsHarness, tif: int) -> None:
    await tick(oms, "50000")
    order = await place(oms, type=S.ORDER_TYPE_LIMIT, price="50100", time_in_force=tif)
    assert order.status == S.ORDER_STATUS_FILLED


async def test_stop_market_buy_triggers_at_or_through_its_stop_and_fills_at_that_tick(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    order = await place(oms, type=S.ORDER_TYPE_STOP_MARKET, stop_price="51000")
    assert order.status == S.ORDER_STATUS_OPEN
    await tick(oms, "50999.99")
    assert (await get(oms, order.order_id)).status == S.ORDER_STATUS_OPEN
    await tick(oms, "51200")
    filled = await get(oms, order.order_id)
    assert filled.status == S.ORDER_STATUS_FILLED
    assert filled.average_fill_price == "51200"
    [fill] = await fills_of(oms, order.order_id)
    assert fill.liquidity == S.LIQUIDITY_TAKER


async def test_stop_market_sell_triggers_on_a_fall(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(oms, side=S.SIDE_SELL, type=S.ORDER_TYPE_STOP_MARKET, stop_price="49000")
    await tick(oms, "49000")
    filled = await get(oms, order.order_id)
    assert filled.status == S.ORDER_STATUS_FILLED
    assert filled.average_fill_price == "49000"


async def test_stop_already_reached_at_placement_is_rejected(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(oms, type=S.ORDER_TYPE_STOP_MARKET, stop_price="49000")
    assert order.status == S.ORDER_STATUS_REJECTED
    assert "trigger immediately" in order.reject_reason


async def test_take_profit_market_sell_fills_when_the_price_rises_to_it(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    await place(oms)  # the long position it takes profit on
    order = await place(
        oms,
        side=S.SIDE_SELL,
        type=S.ORDER_TYPE_TAKE_PROFIT_MARKET,
        stop_price="52000",
        reduce_only=True,
    )
    assert order.position_side == S.POSITION_SIDE_LONG
    await tick(oms, "52000.5")
    filled = await get(oms, order.order_id)
    assert filled.status == S.ORDER_STATUS_FILLED
    assert filled.average_fill_price == "52000.5"


async def test_stop_limit_rests_as_a_limit_after_its_trigger(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(oms, type=S.ORDER_TYPE_STOP_LIMIT, stop_price="51000", price="50900")
    await tick(oms, "51000")  # triggers; a buy limit at 50900 does not cross 51000
    assert (await get(oms, order.order_id)).status == S.ORDER_STATUS_OPEN
    await tick(oms, "50900")
    filled = await get(oms, order.order_id)
    assert filled.status == S.ORDER_STATUS_FILLED
    assert filled.average_fill_price == "50900"


async def test_cancel_a_resting_order_then_cancel_again_is_failed_precondition(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    order = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000", client_order_id="grid-7")
    canceled = await oms.orders.CancelOrder(
        pb.CancelOrderRequest(user_id=USER, client_order_id="grid-7")
    )
    assert canceled.order.status == S.ORDER_STATUS_CANCELED
    assert canceled.order.remaining_quantity == "0"
    await tick(oms, "48000")  # a canceled order never fills
    assert (await get(oms, order.order_id)).status == S.ORDER_STATUS_CANCELED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await oms.orders.CancelOrder(pb.CancelOrderRequest(user_id=USER, order_id=order.order_id))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CANCELED" in (error.value.details() or "")


async def test_cancel_a_filled_order_is_failed_precondition(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(oms)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await oms.orders.CancelOrder(pb.CancelOrderRequest(user_id=USER, order_id=order.order_id))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "FILLED" in (error.value.details() or "")


async def test_another_users_order_is_not_found(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await oms.orders.GetOrder(pb.GetOrderRequest(user_id="mallory", order_id=order.order_id))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await oms.orders.CancelOrder(
            pb.CancelOrderRequest(user_id="mallory", order_id=order.order_id)
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await get(oms, order.order_id)).status == S.ORDER_STATUS_OPEN


async def test_cancel_all_cancels_only_the_open_orders_it_is_asked_for(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    await tick(oms, "3000", symbol="ETH/USDT:USDT")
    btc = [await place(oms, type=S.ORDER_TYPE_LIMIT, price=p) for p in ("49000", "48000")]
    eth = await place(oms, symbol="ETH-USDT-SWAP", type=S.ORDER_TYPE_LIMIT, price="2900")
    done = await place(oms)  # filled: nothing to cancel
    response = await oms.orders.CancelAllOrders(
        pb.CancelAllOrdersRequest(user_id=USER, exchange="paper", symbol="BTC-USDT-SWAP")
    )
    assert sorted(o.order_id for o in response.orders) == sorted(o.order_id for o in btc)
    assert all(o.status == S.ORDER_STATUS_CANCELED for o in response.orders)
    assert (await get(oms, eth.order_id)).status == S.ORDER_STATUS_OPEN
    assert eth.symbol == "ETH/USDT:USDT"
    assert (await get(oms, done.order_id)).status == S.ORDER_STATUS_FILLED
    rest = await oms.orders.CancelAllOrders(pb.CancelAllOrdersRequest(user_id=USER))
    assert [o.order_id for o in rest.orders] == [eth.order_id]


async def test_cancel_all_of_one_strategy_leaves_the_others_orders(oms: OmsHarness) -> None:
    # A grid bot and a trend bot trading one symbol for one user stop apart.
    await tick(oms, "50000")
    grid = [
        await place(oms, type=S.ORDER_TYPE_LIMIT, price=p, strategy="grid", grid_level=level)
        for level, p in enumerate(("49000", "48000"))
    ]
    trend = await place(oms, type=S.ORDER_TYPE_LIMIT, price="47000", strategy="trend")
    untagged = await place(oms, type=S.ORDER_TYPE_LIMIT, price="46000")
    response = await oms.orders.CancelAllOrders(
        pb.CancelAllOrdersRequest(user_id=USER, exchange="paper", strategy="grid")
    )
    assert sorted(o.order_id for o in response.orders) == sorted(o.order_id for o in grid)
    for order in (trend, untagged):
        assert (await get(oms, order.order_id)).status == S.ORDER_STATUS_OPEN


async def test_get_order_by_client_order_id_and_unknown_ids(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(
        oms, client_order_id="dca-1", strategy="rsi", grid_level=3, metadata={"note": "first"}
    )
    by_cid = await oms.orders.GetOrder(pb.GetOrderRequest(user_id=USER, client_order_id="dca-1"))
    assert by_cid.order.order_id == order.order_id
    assert by_cid.order.strategy == "rsi"
    assert by_cid.order.grid_level == 3
    assert dict(by_cid.order.metadata) == {"note": "first"}
    assert by_cid.order.created_at.seconds > 0
    for request in (
        pb.GetOrderRequest(user_id=USER, order_id="NOPE"),
        pb.GetOrderRequest(user_id=USER, client_order_id="nope"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await oms.orders.GetOrder(request)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_orders_filters_pages_newest_first(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    placed = []
    for level in range(5):
        placed.append(
            await place(
                oms,
                type=S.ORDER_TYPE_LIMIT,
                price=f"4{level}000",
                grid_level=level,
                strategy="grid",
            )
        )
    await place(oms, strategy="trend")  # filled market order
    first = await oms.orders.ListOrders(
        pb.ListOrdersRequest(user_id=USER, strategy="grid", page_size=2)
    )
    assert [o.grid_level for o in first.orders] == [4, 3]
    assert first.next_page_token
    assert first.as_of_sequence > 0
    second = await oms.orders.ListOrders(
        pb.ListOrdersRequest(
            user_id=USER, strategy="grid", page_size=2, page_token=first.next_page_token
        )
    )
    third = await oms.orders.ListOrders(
        pb.ListOrdersRequest(
            user_id=USER, strategy="grid", page_size=2, page_token=second.next_page_token
        )
    )
    assert [o.grid_level for o in [*second.orders, *third.orders]] == [2, 1, 0]
    assert not third.next_page_token

    level_0 = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER, grid_level=0))
    assert [o.order_id for o in level_0.orders] == [placed[0].order_id]
    open_only = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER, open_only=True))
    assert len(open_only.orders) == 5
    filled = await oms.orders.ListOrders(
        pb.ListOrdersRequest(user_id=USER, statuses=[S.ORDER_STATUS_FILLED])
    )
    assert [o.strategy for o in filled.orders] == ["trend"]
    by_symbol = await oms.orders.ListOrders(
        pb.ListOrdersRequest(user_id=USER, exchange="paper", symbol="ETH/USDT:USDT")
    )
    assert list(by_symbol.orders) == []
    other_user = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id="bob"))
    assert list(other_user.orders) == []
    assert placed[0].symbol == BTC


@pytest.mark.parametrize(
    ("limit", "fills"), [("0.0045", ["0.004", "0.004", "0.002"]), ("0.0001", ["0.001"] * 10)]
)
async def test_thin_liquidity_fills_in_whole_amount_steps(
    redis_url: str, limit: str, fills: list[str]
) -> None:
    # BTC's amount step is 0.001: a limit between steps is floored, one under a step is one.
    oms = await make_oms(redis_url, paper=PaperSettings(maker_fill_limit=Decimal(limit)))
    try:
        await tick(oms, "50000")
        order = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000", quantity="0.01")
        for _ in fills:
            await tick(oms, "48900")
        listed = await fills_of(oms, order.order_id)  # newest first
        assert [fill.quantity for fill in reversed(listed)] == fills
        assert (await get(oms, order.order_id)).status == S.ORDER_STATUS_FILLED
    finally:
        await oms.close()
