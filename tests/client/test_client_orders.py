"""OmsClient's unary calls and pages against the real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import cast

import grpc
import pytest
from fixtures.oms_server import OmsHarness
from fixtures.positions import expect_invalid
from oms_client import OmsClient, round_price, round_quantity
from tradingboost.oms.v1 import market_data_pb2, order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb

S = order_pb2
BTC = "BTC/USDT:USDT"
USER = "alice"


@pytest.fixture
async def client(oms: OmsHarness) -> AsyncIterator[OmsClient]:
    async with OmsClient.connect(oms.address) as client:
        yield client


async def test_place_get_cancel_and_list_round_trip(client: OmsClient) -> None:
    await client.publish_prices(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol="BTC-USDT-SWAP", price="50000")]
    )
    assert (await client.get_price(exchange="paper", symbol=BTC)).price == "50000"
    rules = await client.get_market(exchange="paper", symbol=BTC)
    # The market's rules feed the rounding helpers: no step or tick hard-coded.
    assert round_quantity("0.0123", rules.amount_step) == "0.012"
    assert round_price("49000.567", rules.price_tick, mode="down") == "49000.56"

    resting = await client.place_order(
        user_id=USER,
        exchange="paper",
        symbol=BTC,
        side=S.SIDE_BUY,
        type=S.ORDER_TYPE_LIMIT,
        quantity="0.01",
        price="49000",
        metadata={"why": "dip"},
    )
    assert resting.status == S.ORDER_STATUS_OPEN
    assert resting.client_order_id.startswith("c-")  # made by the client, see the retry tests
    assert resting.metadata["why"] == "dip"
    by_client_id = await client.get_order(user_id=USER, client_order_id=resting.client_order_id)
    assert by_client_id == resting

    market = await client.place_order(
        pb.PlaceOrderRequest(
            user_id=USER,
            exchange="paper",
            symbol=BTC,
            side=S.SIDE_SELL,
            type=S.ORDER_TYPE_MARKET,
            quantity="0.02",
            client_order_id="mine-1",
        )
    )
    assert (market.client_order_id, market.status) == ("mine-1", S.ORDER_STATUS_FILLED)

    canceled = await client.cancel_order(user_id=USER, order_id=resting.order_id)
    assert canceled.status == S.ORDER_STATUS_CANCELED
    assert (await client.get_order(user_id=USER, order_id=resting.order_id)) == canceled

    listed = [order async for order in client.list_orders(user_id=USER)]
    assert [o.order_id for o in listed] == [market.order_id, resting.order_id]  # newest first
    fills = [fill async for fill in client.list_fills(user_id=USER)]
    assert [(f.order_id, f.quantity, f.price) for f in fills] == [
        (market.order_id, "0.02", "50000")
    ]


async def test_cancel_all_returns_the_orders_it_cancelled(client: OmsClient) -> None:
    await client.publish_prices(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="50000")]
    )
    placed = [
        await client.place_order(
            user_id=USER,
            exchange="paper",
            symbol=BTC,
            side=S.SIDE_BUY,
            type=S.ORDER_TYPE_LIMIT,
            quantity="0.01",
            price=price,
        )
        for price in ("49000", "48000")
    ]
    canceled = await client.cancel_all_orders(user_id=USER, exchange="paper")
    assert {o.order_id for o in canceled} == {o.order_id for o in placed}
    assert {o.status for o in canceled} == {S.ORDER_STATUS_CANCELED}
    assert await client.cancel_all_orders(user_id=USER) == []


async def test_list_orders_follows_every_page_and_yields_each_order_once(
    client: OmsClient,
) -> None:
    await client.publish_prices(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="50000")]
    )
    placed = [
        await client.place_order(
            user_id=USER,
            exchange="paper",
            symbol=BTC,
            side=S.SIDE_BUY,
            type=S.ORDER_TYPE_LIMIT,
            quantity="0.01",
            price=f"{40000 + level}",
            grid_level=level,
        )
        for level in range(7)
    ]
    first_page = await client.list_orders_page(user_id=USER, page_size=3)
    assert len(first_page.orders) == 3 and first_page.next_page_token
    assert first_page.as_of_sequence > 0

    listed = [order async for order in client.list_orders(user_id=USER, page_size=3)]
    assert [o.order_id for o in listed] == [o.order_id for o in reversed(placed)]
    fills = [fill async for fill in client.list_fills(user_id=USER, page_size=2)]
    assert fills == []
    # Filters travel with every page.
    gridded = [o async for o in client.list_orders(user_id=USER, grid_level=4, page_size=1)]
    assert [o.order_id for o in gridded] == [placed[4].order_id]


async def test_a_request_message_and_keyword_fields_do_not_mix(client: OmsClient) -> None:
    with pytest.raises(TypeError, match="not both"):
        await client.get_order(pb.GetOrderRequest(user_id=USER, order_id="x"), user_id="bob")


async def test_the_caller_request_is_not_changed_by_the_generated_client_order_id(
    client: OmsClient,
) -> None:
    await client.publish_prices(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="50000")]
    )
    request = pb.PlaceOrderRequest(
        user_id=USER,
        exchange="paper",
        symbol=BTC,
        side=S.SIDE_BUY,
        type=S.ORDER_TYPE_MARKET,
        quantity="0.01",
    )
    first = await client.place_order(request)
    second = await client.place_order(request)
    assert request.client_order_id == ""
    assert first.order_id != second.order_id  # a new call is a new order: a new id


async def test_a_token_is_sent_as_bearer_metadata(oms: OmsHarness) -> None:
    seen: list[tuple[str, str]] = []

    class Capture(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
        async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
            seen.extend(details.metadata or ())
            return await continuation(details, request)

    channel = grpc.aio.insecure_channel(
        oms.address, interceptors=[cast("grpc.aio.ClientInterceptor", Capture())]
    )
    client = OmsClient(channel, token="s3cret")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.get_price(exchange="paper", symbol=BTC, rpc_metadata={"x-trace": "t1"})
    assert error.value.code() == grpc.StatusCode.NOT_FOUND  # no price yet; the call went out
    await client.close()
    assert channel.get_state() != grpc.ChannelConnectivity.SHUTDOWN  # not ours to close
    await channel.close(grace=None)
    assert ("authorization", "Bearer s3cret") in seen
    assert ("x-trace", "t1") in seen


async def test_decimal_fields_take_a_decimal_and_refuse_a_float(client: OmsClient) -> None:
    await client.publish_prices(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="50000")]
    )
    order = await client.place_order(
        user_id=USER,
        exchange="paper",
        symbol=BTC,
        side=S.SIDE_BUY,
        type=S.ORDER_TYPE_LIMIT,
        quantity=Decimal("1E-2"),  # written out in full: "0.01"
        price=Decimal("49000.00"),
    )
    assert (order.quantity, order.price) == ("0.01", "49000")
    with pytest.raises(TypeError, match="quantity must be a Decimal or a decimal string"):
        await client.place_order(
            user_id=USER,
            exchange="paper",
            symbol=BTC,
            side=S.SIDE_BUY,
            type=S.ORDER_TYPE_MARKET,
            quantity=cast(str, 0.01),  # a float has lost the decimal already
        )


async def test_an_optional_field_given_as_none_is_left_unset(client: OmsClient) -> None:
    # Typed as a strategy would hold them: mypy --strict checks these calls (this file).
    no_price: Decimal | None = None
    no_level: int | None = None
    await client.publish_prices(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="50000")]
    )
    limit = client.place_order(
        user_id=USER,
        exchange="paper",
        symbol=BTC,
        side=S.SIDE_BUY,
        type=S.ORDER_TYPE_LIMIT,
        quantity="0.01",
        price=no_price,
    )
    await expect_invalid(limit, "price")

    order = await client.place_order(
        user_id=USER,
        exchange="paper",
        symbol=BTC,
        side=S.SIDE_BUY,
        type=S.ORDER_TYPE_MARKET,
        quantity="0.01",
        price=no_price,
        stop_price=None,
        leverage=None,
        grid_level=no_level,
    )
    assert order.status == S.ORDER_STATUS_FILLED
    assert not order.HasField("grid_level")
    assert not order.HasField("leverage")
    assert [o.order_id async for o in client.list_orders(user_id=USER, grid_level=no_level)] == [
        order.order_id
    ]
