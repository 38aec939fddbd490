"""PlaceOrder is idempotent on (user_id, client_order_id)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fixtures.oms_server import OmsHarness
from fixtures.trading import USER, fills_of, order_request, place, tick
from tradingboost.oms.v1 import order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb


async def test_same_place_order_twice_gives_one_order_and_one_fill(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    first = await place(oms, client_order_id="dca-1")
    again = await place(oms, client_order_id="dca-1")
    assert again.order_id == first.order_id
    assert again == first
    assert len(await fills_of(oms, first.order_id)) == 1
    listing = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    assert len(listing.orders) == 1


async def test_equivalent_spellings_are_the_same_parameters(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    first = await place(oms, client_order_id="c1", type=order_pb2.ORDER_TYPE_LIMIT, price="49000.0")
    again = await place(
        oms,
        client_order_id="c1",
        symbol="BTC-USDT-SWAP",
        type=order_pb2.ORDER_TYPE_LIMIT,
        price="49000",
        quantity="0.010",
    )
    assert again.order_id == first.order_id


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        ({"quantity": "0.02"}, "quantity 0.01 there, 0.02 here"),
        (
            {"side": order_pb2.SIDE_SELL},
            "side BUY there, SELL here; position_side LONG there, SHORT here",
        ),
        (
            {"type": order_pb2.ORDER_TYPE_LIMIT, "price": "49000"},
            "type MARKET there, LIMIT here; price none there, 49000 here",
        ),
        ({"strategy": "other"}, 'strategy "" there, other here'),
        ({"metadata": {"k": "v"}}, "metadata {} there, {k=v} here"),
    ],
)
async def test_same_client_order_id_with_changed_parameters_is_already_exists(
    oms: OmsHarness, changed: dict[str, object], named: str
) -> None:
    await tick(oms, "50000")
    first = await place(oms, client_order_id="c1")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await place(oms, client_order_id="c1", **changed)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.value.details() == (
        f"client_order_id 'c1' already names order {first.order_id} "
        f"with different parameters: {named}"
    )
    assert len(await fills_of(oms, first.order_id)) == 1


async def test_twenty_concurrent_identical_place_orders_give_one_order_and_one_event(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    request = order_request(client_order_id="burst", type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
    responses = await asyncio.gather(*(oms.orders.PlaceOrder(request) for _ in range(20)))
    assert len({r.order.order_id for r in responses}) == 1
    listing = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    assert [o.order_id for o in listing.orders] == [responses[0].order.order_id]
    # The user's sequence counts every event: exactly one (ACCEPTED) was written.
    assert listing.as_of_sequence == 1


async def test_without_a_client_order_id_the_oms_makes_one(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    first = await place(oms)
    second = await place(oms)
    assert first.client_order_id == first.order_id
    assert second.order_id != first.order_id


async def test_retry_of_an_order_that_closed_its_side_returns_that_order(oms: OmsHarness) -> None:
    # The retry is refused by the state it created (nothing left to reduce), yet it must get
    # the order it placed, as after a lost reply; changed parameters are still ALREADY_EXISTS.
    await tick(oms, "50000")
    await place(oms, quantity="0.01")
    long = {"side": order_pb2.SIDE_SELL, "position_side": order_pb2.POSITION_SIDE_LONG}
    close = await place(oms, client_order_id="x1", quantity="0.01", **long)
    assert close.status == order_pb2.ORDER_STATUS_FILLED
    again = await place(oms, client_order_id="x1", quantity="0.01", **long)
    assert again == close
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await place(oms, client_order_id="x1", quantity="0.02", **long)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # A new order with that side flat is still refused.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await place(oms, client_order_id="x2", quantity="0.01", **long)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(await fills_of(oms, close.order_id)) == 1
