"""Bad input: INVALID_ARGUMENT naming the field, and nothing persisted or sent."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest
from fixtures.oms_server import OmsHarness
from fixtures.positions import redis_snapshot
from fixtures.trading import USER, order_request, place, tick
from google.rpc import error_details_pb2, status_pb2
from tradingboost.oms.v1 import market_data_pb2, order_pb2
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_service_pb2 as pb

S = order_pb2
MB = "9" * (1 << 20)
LIMIT = {"type": S.ORDER_TYPE_LIMIT, "price": "49000"}

BAD_ORDERS: list[tuple[str, dict[str, Any]]] = [
    ("quantity", {"quantity": "0"}),
    ("quantity", {"quantity": "-1"}),
    ("quantity", {"quantity": "NaN"}),
    ("quantity", {"quantity": "Infinity"}),
    ("quantity", {"quantity": "1" + "0" * 39}),
    ("quantity", {"quantity": "12,5"}),
    ("quantity", {"quantity": "1e3"}),
    ("quantity", {"quantity": ""}),
    ("quantity", {"quantity": " 1"}),
    ("quantity", {"quantity": "0.0015"}),  # off the 0.001 step
    ("quantity", {"quantity": "0.0001"}),  # below the 0.001 minimum
    ("quantity", {"quantity": MB}),
    ("price", {"type": S.ORDER_TYPE_LIMIT, "price": "0"}),
    ("price", {"type": S.ORDER_TYPE_LIMIT, "price": "-49000"}),
    ("price", {"type": S.ORDER_TYPE_LIMIT, "price": "NaN"}),
    ("price", {"type": S.ORDER_TYPE_LIMIT, "price": "49000.001"}),  # off the 0.01 tick
    ("price", {"type": S.ORDER_TYPE_LIMIT}),  # missing on a limit order
    ("price", {"type": S.ORDER_TYPE_MARKET, "price": "49000"}),  # present on a market order
    ("price", {"type": S.ORDER_TYPE_STOP_LIMIT, "stop_price": "51000"}),
    ("stop_price", {"type": S.ORDER_TYPE_STOP_MARKET}),
    ("stop_price", {**LIMIT, "stop_price": "48000"}),
    ("stop_price", {"type": S.ORDER_TYPE_STOP_MARKET, "stop_price": "Infinity"}),
    ("symbol", {"symbol": "DOGE/USDT:USDT"}),
    ("symbol", {"symbol": ""}),
    ("symbol", {"symbol": MB}),
    ("exchange", {"exchange": "nosuchexchange"}),
    ("exchange", {"exchange": ""}),
    ("user_id", {"user_id": ""}),
    ("user_id", {"user_id": "a" * 65}),
    ("user_id", {"user_id": "bad user!"}),
    ("user_id", {"user_id": MB}),
    # Malformed on a real exchange too, not "no active account".
    ("user_id", {"user_id": "bad user!", "exchange": "binanceusdm"}),
    ("quantity", {"quantity": "abc", "exchange": "binanceusdm"}),
    ("side", {"side": S.SIDE_UNSPECIFIED, "exchange": "binanceusdm"}),
    ("client_order_id", {"client_order_id": "c" * 65}),
    ("client_order_id", {"client_order_id": "bad id!"}),
    ("client_order_id", {"client_order_id": MB}),
    # The form of the ids the OMS gives its own orders: taken, it would block them.
    ("client_order_id", {"client_order_id": "ts-01KAQZ3V9Q6R8W2M4N5P7T0XYZ"}),
    ("client_order_id", {"client_order_id": "fl-01KAQZ3V9Q6R8W2M4N5P7T0XYZ"}),
    ("side", {"side": S.SIDE_UNSPECIFIED}),
    ("side", {"side": 99}),
    ("type", {"type": S.ORDER_TYPE_UNSPECIFIED}),
    ("type", {"type": 42}),
    ("time_in_force", {"time_in_force": 9}),
    ("time_in_force", {"time_in_force": S.TIME_IN_FORCE_POST_ONLY}),  # on a market order
    ("position_side", {"position_side": 7}),
    # Reduce-only on a side the order would open, not reduce.
    ("position_side", {"reduce_only": True, "position_side": S.POSITION_SIDE_LONG}),
    (
        "position_side",
        {"side": S.SIDE_SELL, "reduce_only": True, "position_side": S.POSITION_SIDE_SHORT},
    ),
    ("leverage", {"leverage": 0}),
    ("leverage", {"leverage": 126}),
    ("grid_level", {"grid_level": 21}),
    ("strategy", {"strategy": "s" * 65}),
    ("strategy", {"strategy": MB}),
    ("metadata", {"metadata": {f"k{i}": "v" for i in range(33)}}),
    ("metadata[k]", {"metadata": {"k": "v" * 257}}),
    ("metadata", {"metadata": {"k" * 65: "v"}}),
    # NUL: no store or archive downstream should have to take it.
    ("strategy", {"strategy": "dca\x00"}),
    ("metadata", {"metadata": {"k\x00": "v"}}),
    ("metadata[k]", {"metadata": {"k": "\x00"}}),
]


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    trailers: dict[str, Any] = dict(cast(Any, error.trailing_metadata() or ()))
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(request)
    return [violation.field for violation in request.field_violations]


async def expect_invalid(call: Any, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith(f"{field}:")
    assert field_violations(error.value) == [field]


@pytest.mark.parametrize(("field", "change"), BAD_ORDERS, ids=[f for f, _ in BAD_ORDERS])
async def test_bad_place_order_is_invalid_argument_and_leaves_no_state(
    oms: OmsHarness, redis_url: str, field: str, change: dict[str, Any]
) -> None:
    await tick(oms, "50000")
    before = await redis_snapshot(redis_url)
    await expect_invalid(oms.orders.PlaceOrder(order_request(**change)), field)
    assert await redis_snapshot(redis_url) == before


async def test_an_id_left_out_is_required_and_a_malformed_one_says_its_form(
    oms: OmsHarness,
) -> None:
    for request, said in [
        (order_request(user_id=""), "user_id: is required"),
        (order_request(user_id="bad user!"), "user_id: must be 1 to 64 characters of"),
        (order_request(client_order_id="bad id!"), "client_order_id: must be 1 to 64"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await oms.orders.PlaceOrder(request)
        assert (error.value.details() or "").startswith(said)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await oms.orders.GetOrder(pb.GetOrderRequest(user_id=USER, order_id="bad id!"))
    assert (error.value.details() or "").startswith("order_id: must be an id of 1 to 64")


@pytest.mark.parametrize(
    ("field", "request_"),
    [
        ("order_id", pb.CancelOrderRequest(user_id=USER)),
        ("order_id", pb.CancelOrderRequest(user_id=USER, order_id="A", client_order_id="b")),
        ("user_id", pb.CancelOrderRequest(user_id="", order_id="A")),
        ("client_order_id", pb.CancelOrderRequest(user_id=USER, client_order_id="bad id")),
    ],
)
async def test_bad_cancel_order(
    oms: OmsHarness, field: str, request_: pb.CancelOrderRequest
) -> None:
    await expect_invalid(oms.orders.CancelOrder(request_), field)


@pytest.mark.parametrize(
    ("field", "request_"),
    [
        ("user_id", pb.CancelAllOrdersRequest()),
        ("user_id", pb.CancelAllOrdersRequest(user_id="x" * 65)),
        ("exchange", pb.CancelAllOrdersRequest(user_id=USER, symbol="BTC/USDT:USDT")),
        ("exchange", pb.CancelAllOrdersRequest(user_id=USER, exchange="nosuch")),
        ("symbol", pb.CancelAllOrdersRequest(user_id=USER, exchange="paper", symbol="NOPE")),
        ("strategy", pb.CancelAllOrdersRequest(user_id=USER, strategy="s" * 65)),
    ],
)
async def test_bad_cancel_all_orders_cancels_nothing(
    oms: OmsHarness, field: str, request_: pb.CancelAllOrdersRequest
) -> None:
    await tick(oms, "50000")
    resting = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000")
    await expect_invalid(oms.orders.CancelAllOrders(request_), field)
    still = await oms.orders.GetOrder(pb.GetOrderRequest(user_id=USER, order_id=resting.order_id))
    assert still.order.status == S.ORDER_STATUS_OPEN


@pytest.mark.parametrize(
    ("field", "request_"),
    [
        ("page_size", pb.ListOrdersRequest(user_id=USER, page_size=-1)),
        ("page_token", pb.ListOrdersRequest(user_id=USER, page_token="garbage")),
        ("statuses[0]", pb.ListOrdersRequest(user_id=USER, statuses=cast(Any, [0]))),
        ("statuses[1]", pb.ListOrdersRequest(user_id=USER, statuses=cast(Any, [2, 99]))),
        ("exchange", pb.ListOrdersRequest(user_id=USER, symbol="BTC/USDT:USDT")),
        ("symbol", pb.ListOrdersRequest(user_id=USER, exchange="paper", symbol="NOPE")),
        ("user_id", pb.ListOrdersRequest(user_id="x" * 65)),
        ("grid_level", pb.ListOrdersRequest(user_id=USER, grid_level=21)),
        ("strategy", pb.ListOrdersRequest(user_id=USER, strategy="s" * 65)),
        # A real exchange whose markets are not loaded: a market id cannot be unified.
        ("symbol", pb.ListOrdersRequest(user_id=USER, exchange="okx", symbol="BTC-USDT-SWAP")),
    ],
)
async def test_bad_list_orders(oms: OmsHarness, field: str, request_: pb.ListOrdersRequest) -> None:
    await expect_invalid(oms.orders.ListOrders(request_), field)


async def test_a_page_token_only_continues_its_own_listing(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    for n in range(3):
        await oms.orders.PlaceOrder(order_request(client_order_id=f"p{n}", strategy="dca"))
    first = await oms.orders.ListOrders(
        pb.ListOrdersRequest(user_id=USER, strategy="dca", page_size=1)
    )
    token = first.next_page_token
    # The same filters with another page size continue where the first page ended.
    rest = await oms.orders.ListOrders(
        pb.ListOrdersRequest(user_id=USER, strategy="dca", page_size=10, page_token=token)
    )
    assert [o.client_order_id for o in (*first.orders, *rest.orders)] == ["p2", "p1", "p0"]
    for other in [
        oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER, page_token=token)),
        oms.orders.ListOrders(pb.ListOrdersRequest(user_id="u2", strategy="dca", page_token=token)),
        oms.orders.ListFills(pb.ListFillsRequest(user_id=USER, page_token=token)),
    ]:
        await expect_invalid(other, "page_token")


async def test_bad_list_fills_and_streams(oms: OmsHarness) -> None:
    await expect_invalid(oms.orders.ListFills(pb.ListFillsRequest(user_id="")), "user_id")
    await expect_invalid(
        oms.orders.ListFills(pb.ListFillsRequest(user_id=USER, order_id="o" * 65)), "order_id"
    )
    stream = oms.orders.StreamFills(pb.StreamFillsRequest(user_id="bad user"))
    await expect_invalid(stream.read(), "user_id")
    stream2 = oms.orders.StreamOrderUpdates(
        pb.StreamOrderUpdatesRequest(user_id=USER, exchange="nope")
    )
    await expect_invalid(stream2.read(), "exchange")


@pytest.mark.parametrize(
    ("field", "ticks"),
    [
        ("prices", []),
        ("prices[0].price", [("paper", "BTC/USDT:USDT", "-1")]),
        ("prices[0].price", [("paper", "BTC/USDT:USDT", "50000.001")]),
        ("prices[1].symbol", [("paper", "BTC/USDT:USDT", "50000"), ("paper", "X", "1")]),
    ],
)
async def test_bad_publish_prices_applies_no_tick(
    oms: OmsHarness, redis_url: str, field: str, ticks: list[tuple[str, str, str]]
) -> None:
    before = await redis_snapshot(redis_url)
    request = md.PublishPricesRequest(
        prices=[market_data_pb2.PriceTick(exchange=e, symbol=s, price=p) for e, s, p in ticks]
    )
    await expect_invalid(oms.market.PublishPrices(request), field)
    assert await redis_snapshot(redis_url) == before


async def test_publish_prices_for_a_real_exchange_is_failed_precondition(
    oms: OmsHarness, redis_url: str
) -> None:
    # Its prices come from its own feed, whether or not an account there loaded its markets.
    before = await redis_snapshot(redis_url)
    request = md.PublishPricesRequest(
        prices=[
            market_data_pb2.PriceTick(exchange="paper", symbol="BTC/USDT:USDT", price="50000"),
            market_data_pb2.PriceTick(exchange="okx", symbol="BTC/USDT:USDT", price="50000"),
        ]
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await oms.market.PublishPrices(request)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (error.value.details() or "").startswith("prices[1]: prices for okx")
    assert await redis_snapshot(redis_url) == before


async def test_get_price_before_any_tick_is_not_found(oms: OmsHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await oms.market.GetPrice(md.GetPriceRequest(exchange="paper", symbol="SOL/USDT:USDT"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    await expect_invalid(
        oms.market.GetPrice(md.GetPriceRequest(exchange="paper", symbol="NOPE")), "symbol"
    )


async def test_bytes_that_are_no_request_are_invalid_argument(oms: OmsHarness) -> None:
    garbage = b"\xff\xff\xff\xff"
    place = oms.channel.unary_unary(
        "/tradingboost.oms.v1.OrderService/PlaceOrder",
        request_serializer=bytes,
        response_deserializer=bytes,
    )
    stream = oms.channel.unary_stream(
        "/tradingboost.oms.v1.OrderService/StreamFills",
        request_serializer=bytes,
        response_deserializer=bytes,
    )
    for call in (place(garbage), stream(garbage).read()):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
