"""Concurrent calls on one symbol share commits; one refused decision never sinks the others."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal

import pytest
from fixtures.client_streams import until
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.positions import position_stream
from fixtures.redis_proxy import RedisFaultProxy
from fixtures.trading import BTC, USER, fills_of, order_request, place, tick
from tradingboost.oms.v1 import order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.domain.errors import FailedPrecondition
from oms.domain.orders import Order


async def all_orders(oms: OmsHarness) -> pb.ListOrdersResponse:
    return await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER, page_size=1000))


async def test_a_retried_client_order_id_among_new_orders_keeps_both_outcomes(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    resting = {"type": order_pb2.ORDER_TYPE_LIMIT, "price": "49000"}
    first = await place(oms, client_order_id="retry-me", **resting)
    new_ids = [f"new-{n}" for n in range(10)]
    requests = [order_request(client_order_id="retry-me", **resting)] + [
        order_request(client_order_id=coid, **resting) for coid in new_ids
    ]
    # Issued together, they are decided in one batch; the retry's taken client order id
    # fails the batch's guard, and the rest must be committed again without it.
    responses = await asyncio.gather(*(oms.orders.PlaceOrder(r) for r in requests))

    assert responses[0].order == first
    assert [r.order.client_order_id for r in responses[1:]] == new_ids
    assert all(r.order.status == order_pb2.ORDER_STATUS_OPEN for r in responses[1:])
    listing = await all_orders(oms)
    assert len(listing.orders) == 11
    # One ACCEPTED event per order, nothing for the retry.
    assert listing.as_of_sequence == 11


async def test_orders_racing_a_tick_each_fill_exactly_once(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    requests = [
        order_request(client_order_id=f"grid-{n}", type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
        for n in range(30)
    ]
    await asyncio.gather(*(oms.orders.PlaceOrder(r) for r in requests[:15]), tick(oms, "48000"))
    await asyncio.gather(*(oms.orders.PlaceOrder(r) for r in requests[15:]))

    resting_fill = ("49000", "0.01", order_pb2.LIQUIDITY_MAKER)
    crossing_fill = ("48000", "0.01", order_pb2.LIQUIDITY_TAKER)
    listing = await all_orders(oms)
    assert len(listing.orders) == 30
    assert {o.status for o in listing.orders} == {order_pb2.ORDER_STATUS_FILLED}
    for order in listing.orders:
        fills = [(f.price, f.quantity, f.liquidity) for f in await fills_of(oms, order.order_id)]
        # Decided before the tick: rested, then filled by it as maker. After: crossed at once.
        racing = int(order.client_order_id.removeprefix("grid-")) < 15
        assert fills in ([resting_fill], [crossing_fill]) if racing else fills == [crossing_fill]


async def test_cancel_all_cancels_every_resting_order_in_shared_commits(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    for n in range(25):
        await place(
            oms, client_order_id=f"rest-{n}", type=order_pb2.ORDER_TYPE_LIMIT, price="49000"
        )
    response = await oms.orders.CancelAllOrders(pb.CancelAllOrdersRequest(user_id=USER))
    assert len(response.orders) == 25
    assert {o.status for o in response.orders} == {order_pb2.ORDER_STATUS_CANCELED}
    await tick(oms, "48000")
    listing = await all_orders(oms)
    assert {o.status for o in listing.orders} == {order_pb2.ORDER_STATUS_CANCELED}


async def test_a_burst_of_calls_is_queued_and_answered_never_cancelled(oms: OmsHarness) -> None:
    # More calls at once than gRPC's core queues by default (1,000; 3,000 at most), as when a
    # fleet of bots reconnects and places its grids: past its limits it answers CANCELLED.
    await tick(oms, "50000")
    requests = [
        order_request(client_order_id=f"burst-{n}", type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
        for n in range(3500)
    ]
    responses = await asyncio.gather(*(oms.orders.PlaceOrder(r) for r in requests))
    assert {r.order.status for r in responses} == {order_pb2.ORDER_STATUS_OPEN}
    assert len({r.order.order_id for r in responses}) == len(requests)


async def test_a_cancel_decided_after_a_tick_that_filled_its_order_sees_the_fill(
    redis_url: str, proxy: RedisFaultProxy
) -> None:
    # The tick and the cancel share a batch: the tick takes the order off the book, so the
    # cancel is refused and reports the order as the store has it. It must be told only once
    # the tick's commit landed, or it finds the order still open there (ABORTED, once).
    oms = await make_oms(await proxy.start())
    try:
        await tick(oms, "50000")
        placed = await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
        order = oms.app.paper.resting_order(USER, placed.order_id, "")
        assert order is not None
        proxy.hold_request(placed.order_id.encode())  # the tick's commit, with the fill
        ticking = asyncio.ensure_future(oms.app.paper.on_price(BTC, Decimal("48000")))
        canceling = asyncio.ensure_future(oms.app.paper.cancel(order, "by its user"))
        await until(lambda: proxy.held == 1)
        await asyncio.sleep(0.1)  # time enough to read the store, were it told already
        assert not canceling.done()
        await proxy.release_held()
        await ticking
        with pytest.raises(FailedPrecondition, match="FILLED"):
            await canceling
    finally:
        await oms.close()


async def test_orders_filling_on_one_position_in_one_commit_publish_an_update_each(
    redis_url: str, proxy: RedisFaultProxy
) -> None:
    # CONTRACT section 4: an update on every change, coalesced only within a price tick.
    # Orders queued behind a held commit are decided in one batch.
    oms = await make_oms(await proxy.start())
    try:
        await tick(oms, "50000")
        stream = position_stream(oms)
        await stream.until_live()
        proxy.hold_request(b"first")
        first = asyncio.ensure_future(place(oms, quantity="0.001", client_order_id="first"))
        await until(lambda: proxy.held == 1)
        queued = [
            asyncio.ensure_future(place(oms, quantity="0.001", client_order_id=f"more-{n}"))
            for n in range(4)
        ]
        await asyncio.sleep(0.2)  # all four wait in the desk's queue by now
        await proxy.release_held()
        await asyncio.gather(first, *queued)
        updates = await stream.events(5)
        stream.cancel()
    finally:
        await oms.close()
    assert [u.position.size for u in updates] == ["0.001", "0.002", "0.003", "0.004", "0.005"]
    assert len({u.sequence for u in updates}) == 5


async def test_a_refused_op_in_a_batch_that_conflicts_is_decided_again_and_answered(
    oms: OmsHarness,
) -> None:
    # The repeat of a filled order fails the batch's client order id guard; the cancel the
    # same batch refused must still get its answer after the batch is decided again.
    await tick(oms, "50000")
    filled = await place(oms, client_order_id="m1")
    order = await oms.app.store.get_order(USER, filled.order_id)
    assert order is not None
    # The same order placed anew (a new order id, nothing filled): as a retry decides it.
    given = {
        f.name: getattr(order, f.name)
        for f in dataclasses.fields(Order)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    repeat = Order(**(given | {"order_id": "01KAQZ3V9Q6R8W2M4N5P7T0XYZ"}))
    async with asyncio.timeout(5):
        again, canceled = await asyncio.gather(
            oms.app.paper.place(repeat),
            oms.app.paper.cancel(order, "by its user"),
            return_exceptions=True,
        )
    assert again == (order, False)
    assert isinstance(canceled, FailedPrecondition) and "FILLED" in str(canceled)
