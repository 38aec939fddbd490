"""Reconciliation when an account is followed again (CONTRACT section 9): while the OMS was
down, orders filled, part-filled and were cancelled at the exchange, and another program
placed an order; the restarted OMS finds all of it before it reports SERVING."""

from __future__ import annotations

import asyncio
import socket
from decimal import Decimal
from typing import Any

import grpc
import pytest
from fixtures.client_streams import until
from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import (
    API_KEY,
    BTC,
    MASTER_KEY,
    USER,
    LiveTrading,
    exchange_settings,
    live_trading,
    long_side,
    outside_client,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as pb
from tradingboost.oms.v1 import position_service_pb2 as pos

from oms.bootstrap import Application
from oms.config import Settings
from oms.engine import reconciliation


async def test_what_happened_while_the_oms_was_down_is_found_at_start(
    live: LiveTrading, exchange: FakeExchange, redis_url: str
) -> None:
    fills = await live.place(price="49000")
    part = await live.place(price="48000", quantity="0.04")
    gone = await live.place(price="47000")
    before = await live.oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    await live.oms.close()

    exchange.set_price(BTC, Decimal("48000"), max_fill=Decimal("0.02"))
    async with outside_client(exchange) as outside:
        await outside.cancel_order(gone.exchange_order_id, BTC)
        external = await outside.create_order(
            BTC, "limit", "buy", 0.03, 46000, {"clientOrderId": "manual1", **long_side(exchange)}
        )
    await live.start_again(redis_url)

    health = await live.oms.health.Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await live.get(fills.order_id)).status == S.ORDER_STATUS_FILLED
    partly = await live.get(part.order_id)
    assert (partly.status, partly.filled_quantity) == (S.ORDER_STATUS_PARTIALLY_FILLED, "0.02")
    canceled = await live.get(gone.order_id)
    assert (canceled.status, canceled.cancel_reason) == (
        S.ORDER_STATUS_CANCELED,
        "canceled at the exchange",
    )
    [tracked] = (
        await live.oms.orders.ListOrders(
            pb.ListOrdersRequest(user_id=USER, statuses=[S.ORDER_STATUS_OPEN])
        )
    ).orders
    assert tracked.exchange_order_id == str(external["id"])
    assert tracked.client_order_id == f"ext-{external['id']}"
    assert (tracked.metadata["origin"], tracked.metadata["exchange_client_id"]) == (
        "external",
        "manual1",
    )
    assert (tracked.side, tracked.type, tracked.quantity, tracked.price) == (
        S.SIDE_BUY,
        S.ORDER_TYPE_LIMIT,
        "0.03",
        "46000",
    )
    assert tracked.position_side == S.POSITION_SIDE_LONG

    # The stream says what the reconciliation did, after the last event seen before.
    updates = live.oms.orders.StreamOrderUpdates(
        pb.StreamOrderUpdatesRequest(user_id=USER, after_sequence=before.as_of_sequence)
    )
    expected = {
        (S.ORDER_EVENT_TYPE_FILLED, fills.order_id),
        (S.ORDER_EVENT_TYPE_PARTIALLY_FILLED, part.order_id),
        (S.ORDER_EVENT_TYPE_CANCELED, gone.order_id),
        (S.ORDER_EVENT_TYPE_RECONCILED, tracked.order_id),
    }
    seen = set()
    async with asyncio.timeout(5):
        async for message in updates:
            update = message.order_update
            seen.add((update.event_type, update.order.order_id))
            if expected <= seen:
                break
    updates.cancel()

    # Positions follow the fills found: 0.02 + 0.02 bought long.
    [position] = (
        await live.oms.positions.ListPositions(pos.ListPositionsRequest(user_id=USER))
    ).positions
    assert position.size == "0.04"

    # The external order is an order like any other: it fills, and a second start does
    # not track it twice.
    exchange.set_price(BTC, Decimal("46000"))
    await live.until(tracked.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    await live.oms.close()
    await live.start_again(redis_url)
    listed = await live.oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    assert len(listed.orders) == 4
    await live.assert_invariants()
    assert len(exchange.orders(API_KEY)) == 4


async def test_a_position_the_oms_did_not_fill_is_reported_as_drift(
    live: LiveTrading,
    exchange: FakeExchange,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await live.place(type=S.ORDER_TYPE_MARKET, price="", quantity="0.02")
    await live.oms.close()
    async with outside_client(exchange) as outside:
        # Filled at once, so never open for the OMS to track.
        await outside.create_order(
            BTC, "market", "buy", 0.01, None, {"clientOrderId": "manual2", **long_side(exchange)}
        )
    live.untracked_client_ids.add("manual2")
    caplog.clear()
    await live.start_again(redis_url)
    [drift] = [r.getMessage() for r in caplog.records if "position drift" in r.getMessage()]
    assert f"{BTC} LONG: the exchange holds 0.03, the OMS 0.02" in drift
    [position] = (
        await live.oms.positions.ListPositions(pos.ListPositionsRequest(user_id=USER))
    ).positions
    assert position.size == "0.02"  # reported, not repaired: the OMS keeps its own fills
    # That order's fill was traced to the exchange's record once; a later reconciliation (a
    # feed drop's backfill) does not ask the exchange about it again.
    lookup = {"binanceusdm": "/fapi/v1/order", "okx": "/api/v5/trade/order"}[exchange.venue]

    def lookups() -> int:
        return sum(1 for method, path, _ in exchange.requests if (method, path) == ("GET", lookup))

    before = lookups()
    backfills = len([r for r in caplog.records if "backfilling over REST" in r.getMessage()])
    exchange.faults.drop_private_feeds()
    await until(
        lambda: (
            len([r for r in caplog.records if "backfilling over REST" in r.getMessage()])
            > backfills
        )
    )
    await exchange.wait_for_private_feed(API_KEY)
    await asyncio.sleep(0.3)
    assert lookups() == before


async def test_a_fill_that_reduces_what_the_oms_holds_flat_is_recorded_not_applied(
    live: LiveTrading,
    exchange: FakeExchange,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A long opened at the exchange while the OMS was down (drift), closed through the OMS:
    # the order and its fill are the venue's truth, but the OMS never holds less than flat.
    await live.oms.close()
    async with outside_client(exchange) as outside:
        await outside.create_order(
            BTC, "market", "buy", 0.02, None, {"clientOrderId": "manual3", **long_side(exchange)}
        )
    live.untracked_client_ids.add("manual3")
    await live.start_again(redis_url)
    order = await live.place(side=S.SIDE_SELL, reduce_only=True, price="51000")
    exchange.set_price(BTC, Decimal("51100"))
    filled = await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    [fill] = await live.fills(order.order_id)
    assert (filled.filled_quantity, fill.quantity, fill.position_id) == ("0.02", "0.02", "")
    positions = await live.oms.positions.ListPositions(
        pos.ListPositionsRequest(user_id=USER, include_closed=True)
    )
    assert list(positions.positions) == []
    live.unapplied_fill_ids.add(fill.fill_id)
    assert any(
        f"fill {fill.exchange_trade_id} not applied" in record.getMessage()
        for record in caplog.records
    )


# With newer orders than fit a page of the listing it reads (made small here: a grid bot
# makes thousands a day), the cancelled order is still among those swept.
@pytest.mark.parametrize("newer_orders", [0, 7])
async def test_a_fill_listed_after_the_cancel_is_applied_at_start(
    live: LiveTrading,
    exchange: FakeExchange,
    redis_url: str,
    newer_orders: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconciliation, "_SWEEP_PAGE", 3)
    order = await live.place(price="49000")
    await live.cancel(order.order_id)
    await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
    for _ in range(newer_orders):
        newer = await live.place(price="49000", quantity="1000")  # more than the funds
        assert newer.status == S.ORDER_STATUS_REJECTED
    await live.oms.close()
    # The exchange now lists a fill that raced the cancel; no feed was there to tell.
    exchange.engine.late_fill(API_KEY, order.exchange_order_id, Decimal("0.01"))
    await live.start_again(redis_url)
    after = await live.get(order.order_id)
    assert (after.status, after.filled_quantity) == (S.ORDER_STATUS_CANCELED, "0.01")
    [fill] = await live.fills(order.order_id)
    assert fill.exchange_trade_id == exchange.trades(API_KEY)[0].trade_id
    [position] = (
        await live.oms.positions.ListPositions(pos.ListPositionsRequest(user_id=USER))
    ).positions
    assert position.size == "0.01"


async def test_a_fill_listed_late_for_a_long_resting_order_is_applied_at_start(
    exchange: FakeExchange, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Created before fill_lookback_s, cancelled within it, with more orders since than the
    # sweep's listing reaches (shrunk: a page of 3, a lookback of 2 s).
    monkeypatch.setattr(reconciliation, "_SWEEP_PAGE", 3)
    live = await live_trading(redis_url, exchange, fill_lookback_s=2.0)
    try:
        await exchange.wait_for_private_feed(API_KEY)
        resting = await live.place(price="49000")
        for _ in range(4):
            await live.place(price="49000", quantity="1000")  # refused: more than the funds
        await asyncio.sleep(2.5)
        for _ in range(4):
            await live.place(price="49000", quantity="1000")
        await live.cancel(resting.order_id)
        await live.until(resting.order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
        await live.oms.close()
        exchange.engine.late_fill(API_KEY, resting.exchange_order_id, Decimal("0.01"))
        await live.start_again(redis_url, fill_lookback_s=2.0)
        after = await live.until(resting.order_id, lambda o: o.filled_quantity == "0.01")
        assert after.status == S.ORDER_STATUS_CANCELED
    finally:
        await live.oms.close()


async def test_late_fills_beyond_one_page_of_the_exchange_s_listing_are_all_applied(
    live: LiveTrading, exchange: FakeExchange, redis_url: str
) -> None:
    # 150 executions surface late: more than one page (OKX lists its newest 100).
    order = await live.place(price="5000", quantity="1.5")
    await live.cancel(order.order_id)
    await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
    await live.oms.close()
    for _ in range(150):
        exchange.engine.late_fill(API_KEY, order.exchange_order_id, Decimal("0.01"))
        await asyncio.sleep(0.002)  # a page's worth in one millisecond is beyond any bot
    await live.start_again(redis_url)
    after = await live.get(order.order_id)
    assert (after.status, after.filled_quantity) == (S.ORDER_STATUS_CANCELED, "1.5")
    assert len(await live.fills(order.order_id)) == 150


async def test_an_order_rejected_as_never_taken_but_filled_later_does_not_stop_the_account(
    exchange: FakeExchange, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    live = await live_trading(redis_url, exchange)
    try:
        await exchange.wait_for_private_feed(API_KEY)
        # The reply is lost and the exchange's order view lags past the lookup grace: the
        # OMS settles the order REJECTED, though the exchange did take it.
        exchange.lag_order_lookups()
        exchange.faults.mute_private_feeds()
        exchange.faults.accept_then_timeout(hang_s=1.5)
        placed = await live.place(price="49000")
        await live.until(placed.order_id, lambda o: o.status == S.ORDER_STATUS_REJECTED)
        exchange.lag_order_lookups(False)
        exchange.set_price(BTC, Decimal("49000"))  # and then fills it
        await live.oms.close()
        await live.start_again(redis_url)
        # Reported, and the account is followed all the same.
        after = await live.place(price="48000")
        assert after.status == S.ORDER_STATUS_OPEN
        assert any(
            "is REJECTED in the OMS but" in r.getMessage() and r.levelname == "ERROR"
            for r in caplog.records
        )
    finally:
        await live.oms.close()


async def test_health_stays_not_serving_until_every_account_is_reconciled(
    live: LiveTrading, exchange: FakeExchange, redis_url: str
) -> None:
    await live.oms.close()
    await exchange.stop()  # the exchange is down while the OMS starts
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(
        listen=f"127.0.0.1:{port}",
        redis_url=redis_url,
        shutdown_grace_s=0.5,
        master_key=SecretStr(MASTER_KEY),
        exchanges=exchange_settings(exchange),
    )
    app = Application(settings, redis_url)
    starting = asyncio.create_task(app.start())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    health: Any = health_pb2_grpc.HealthStub(channel)
    try:
        async with asyncio.timeout(5):
            while True:
                try:
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)  # not listening yet
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not starting.done()
        await exchange.start()
        await asyncio.wait_for(starting, 10)
        answer = await health.Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close(grace=None)
        if not starting.done():
            starting.cancel()
        await app.stop()
    await live.start_again(redis_url)
