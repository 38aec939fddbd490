"""The account's websocket order feed (ccxt.pro watch_orders) against the local fake exchange,
with the REST poll slowed to a minute so that only the feed, or the backfill after it drops,
can bring a change in time (CONTRACT section 9: no fill lost when the socket drops, each
applied once, a fill after a cancel still applied)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from fixtures.client_streams import until
from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import (
    API_KEY,
    BTC,
    TRADES_ROUTE,
    USER,
    LiveTrading,
    long_side,
    open_order_reads,
    outside_client,
)
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as pb

NO_POLL_S = 60.0
LIVE_POLICY = {"poll_interval_s": NO_POLL_S}


def filled(order: S.Order) -> bool:
    return order.status == S.ORDER_STATUS_FILLED


async def test_fills_arrive_through_the_feed(live: LiveTrading, exchange: FakeExchange) -> None:
    order = await live.place(price="49000")
    exchange.set_price(BTC, Decimal("49000"), max_fill=Decimal("0.01"))
    partly = await live.until(order.order_id, lambda o: o.filled_quantity == "0.01")
    assert partly.status == S.ORDER_STATUS_PARTIALLY_FILLED
    exchange.set_price(BTC, Decimal("48000"))
    done = await live.until(order.order_id, filled)
    assert len(await live.fills(order.order_id)) == 2
    assert done.average_fill_price == "49000"


async def test_fills_while_the_socket_was_down_are_backfilled(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    order = await live.place(price="49000")
    exchange.faults.drop_private_feeds(lose_events_until_reconnect=True)
    exchange.set_price(BTC, Decimal("48000"))  # filled while no socket hears it
    await live.until(order.order_id, filled)
    # The feed is back: the next fill arrives through it again.
    await exchange.wait_for_private_feed(API_KEY)
    second = await live.place(price="47000")
    exchange.set_price(BTC, Decimal("46000"))
    await live.until(second.order_id, filled)


async def test_a_fill_between_the_backfill_and_the_new_subscription_is_read_back(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    order = await live.place(price="49000")
    listed_before = open_order_reads(exchange)
    exchange.faults.delay_private_readiness(1.0)
    exchange.faults.drop_private_feeds(lose_events_until_reconnect=True)
    # The OMS backfills over REST at once; the fill comes after that read and before the
    # new socket gets events: neither saw it.
    await until(lambda: open_order_reads(exchange) > listed_before)
    exchange.set_price(BTC, Decimal("48000"))
    done = await live.until(order.order_id, filled, timeout_s=8)
    assert done.average_fill_price == "49000"


async def test_a_fill_the_feed_reports_before_rest_lists_it_is_read_again_soon(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    order = await live.place(price="49000")
    exchange.fail_requests(*TRADES_ROUTE[exchange.venue], count=1)
    exchange.set_price(BTC, Decimal("48000"))
    # The feed says FILLED; the trades cannot be read yet. Read again in a moment, not at
    # the next poll a minute later.
    done = await live.until(order.order_id, filled, timeout_s=5)
    assert done.average_fill_price == "49000"
    assert len(await live.fills(order.order_id)) == 1


async def test_a_fill_reported_after_the_cancel_is_still_applied(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    order = await live.place(price="49000")
    exchange.faults.delay_fill_events(0.3)
    exchange.set_price(BTC, Decimal("49000"), max_fill=Decimal("0.01"))
    async with outside_client(exchange) as outside:
        await outside.cancel_order(order.exchange_order_id, BTC)
    canceled = await live.until(
        order.order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED, timeout_s=5
    )
    assert canceled.filled_quantity == "0.01"
    assert canceled.cancel_reason == "canceled at the exchange"
    # The fill event itself comes later still, and changes nothing: applied once.
    await asyncio.sleep(0.5)
    assert len(await live.fills(order.order_id)) == 1
    assert (await live.get(order.order_id)).status == S.ORDER_STATUS_CANCELED


async def test_an_order_placed_outside_the_oms_is_tracked_as_it_appears(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    async with outside_client(exchange) as outside:
        external = await outside.create_order(
            BTC, "limit", "buy", 0.02, 45000, {"clientOrderId": "manual3", **long_side(exchange)}
        )
    client_order_id = f"ext-{external['id']}"
    tracked = await live.until_found(client_order_id)
    assert tracked.metadata["origin"] == "external"
    exchange.set_price(BTC, Decimal("45000"))
    await live.until(tracked.order_id, filled)
    listed = await live.oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    assert [o.client_order_id for o in listed.orders] == [client_order_id]
