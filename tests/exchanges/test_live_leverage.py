"""An order's leverage reaches the exchange before the order does (Binance USD-M per symbol,
OKX per instrument in cross margin), through real ccxt against the local fake exchange.
The fake starts every account at 10x and takes up to 75x, with 10,000 USDT of margin."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import grpc
import pytest
from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import API_KEY, BTC, ORDER_ROUTE, USER, LiveTrading, placements
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as opb
from tradingboost.oms.v1 import position_service_pb2 as pos

SET_LEVERAGE = {
    "binanceusdm": ("POST", "/fapi/v1/leverage"),
    "okx": ("POST", "/api/v5/account/set-leverage"),
}


def btc(live: LiveTrading, amount: str) -> str:
    """`amount` BTC in the venue's order unit (OKX: contracts of 0.01 BTC)."""
    return str(Decimal(amount) * 100) if live.venue == "okx" else amount


def settled(order: S.Order) -> bool:
    return order.status not in (S.ORDER_STATUS_OPEN, S.ORDER_STATUS_PENDING_NEW)


def leverage_requests(exchange: FakeExchange) -> int:
    route = SET_LEVERAGE[exchange.venue]
    return sum(1 for method, path, _ in exchange.requests if (method, path) == route)


def leverage_at(exchange: FakeExchange) -> Decimal:
    return exchange.engine.accounts[API_KEY].leverage_of(BTC)


async def test_an_order_goes_at_its_leverage(live: LiveTrading) -> None:
    # 2.5 BTC at 49,000 needs 12,250 of margin at 10x, more than the 10,000 the account
    # holds, and 6,125 at 20x: the exchange takes it only if 20x was set first.
    order = await live.place(price="49000", quantity=btc(live, "2.5"), leverage=20)
    assert order.status == S.ORDER_STATUS_OPEN, order.reject_reason
    assert leverage_at(live.exchange) == 20
    live.exchange.set_price(BTC, Decimal("48900"))
    await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    position = await live.oms.positions.GetPosition(
        pos.GetPositionRequest(
            user_id=USER, exchange=live.venue, symbol=BTC, position_side=S.POSITION_SIDE_LONG
        )
    )
    assert position.position.leverage == 20


async def test_leverage_is_set_once_per_symbol_and_again_when_an_order_changes_it(
    live: LiveTrading,
) -> None:
    await live.place(price="49000", leverage=20)
    await live.place(price="48000", leverage=20)
    await live.place(price="47000")  # no leverage: the account's applies
    assert leverage_requests(live.exchange) == 1
    await live.place(price="46000", leverage=5)
    assert leverage_requests(live.exchange) == 2
    assert leverage_at(live.exchange) == 5
    assert placements(live.exchange) == 4


async def test_an_order_that_reduces_leaves_the_leverage_alone(live: LiveTrading) -> None:
    entry = await live.place(type=S.ORDER_TYPE_MARKET, price="", leverage=20)
    await live.until(entry.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    exit_order = await live.place(
        side=S.SIDE_SELL, type=S.ORDER_TYPE_MARKET, price="", reduce_only=True, leverage=3
    )
    await live.until(exit_order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert leverage_requests(live.exchange) == 1
    assert leverage_at(live.exchange) == 20


async def test_a_leverage_the_exchange_refuses_rejects_the_order_unsent(
    live: LiveTrading,
) -> None:
    order = await live.place(price="49000", leverage=100)  # above the fake's 75x
    assert order.status == S.ORDER_STATUS_REJECTED
    assert order.reject_reason.startswith("leverage 100 not set: ")
    assert placements(live.exchange) == 0
    assert leverage_at(live.exchange) == 10


async def test_an_unanswered_leverage_call_leaves_the_order_unsent_until_it_is_set(
    live: LiveTrading,
) -> None:
    # A 503: the order did not leave; it goes once the leverage is set, within its grace.
    live.exchange.fail_requests(*SET_LEVERAGE[live.venue], status=503)
    order = await live.place(price="49000", quantity=btc(live, "2.5"), leverage=20)
    assert order.status == S.ORDER_STATUS_PENDING_NEW
    placed = await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_OPEN)
    assert leverage_at(live.exchange) == 20
    assert (leverage_requests(live.exchange), placements(live.exchange)) == (2, 1)
    assert placed.exchange_order_id


async def test_a_leverage_call_that_timed_out_is_set_again_by_the_next_order(
    live: LiveTrading,
) -> None:
    # The exchange carries out a change the OMS gave up waiting for (1 s): what the OMS set
    # before is no longer known, so the next order at it sets it again.
    await live.place(price="49000", leverage=20)
    live.exchange.delay_requests(*SET_LEVERAGE[live.venue], 1.5)
    late = await live.place(price="49000", leverage=5)
    await asyncio.sleep(1.0)
    live.exchange.delay_requests(*SET_LEVERAGE[live.venue], 0)
    assert leverage_at(live.exchange) == 5
    await live.until(late.order_id, settled)
    big = await live.place(price="49000", quantity=btc(live, "2.5"), leverage=20)
    assert big.status == S.ORDER_STATUS_OPEN, big.reject_reason
    assert leverage_at(live.exchange) == 20


async def test_orders_that_waited_for_a_leverage_call_that_timed_out_fail_with_it(
    live: LiveTrading,
) -> None:
    # Each would otherwise make a call of its own after it, and wait out its timeout too.
    live.exchange.delay_requests(*SET_LEVERAGE[live.venue], 1.5)
    placed = await asyncio.gather(
        *(live.place(price=price, leverage=20) for price in ("49000", "48900", "48800"))
    )
    assert [o.status for o in placed] == [S.ORDER_STATUS_PENDING_NEW] * 3
    assert leverage_requests(live.exchange) == 1
    live.exchange.delay_requests(*SET_LEVERAGE[live.venue], 0)
    # The call took the whole of their 1 s grace: each is rejected, with its reason.
    for order in placed:
        ended = await live.until(order.order_id, settled)
        assert ended.reject_reason.startswith("not sent within 1 s: leverage 20 not confirmed")
    assert placements(live.exchange) == 0


async def test_orders_that_waited_for_a_rate_limited_leverage_call_fail_with_it(
    live: LiveTrading,
) -> None:
    # Each calling again would only add to what the exchange already refused (Binance bans
    # an address that keeps at it); they are refused as orders that come during the back-off.
    slow_placements(live, 0.4)
    first = asyncio.ensure_future(live.place(price="49000", leverage=5))
    await asyncio.sleep(0.15)
    live.exchange.fail_requests(*SET_LEVERAGE[live.venue], count=3, status=429)
    waiting = [
        asyncio.ensure_future(live.place(price=price, leverage=leverage))
        for price, leverage in (("48000", 20), ("47900", 20), ("47800", 15))
    ]
    await first
    for order in await asyncio.gather(*waiting):
        assert order.status == S.ORDER_STATUS_REJECTED
        assert order.reject_reason.startswith("not sent: "), order.reject_reason
    assert leverage_requests(live.exchange) == 2
    assert placements(live.exchange) == 1


async def test_orders_at_another_leverage_wait_for_those_in_flight(live: LiveTrading) -> None:
    # The first is slow to place: the second's 5x must not be set under it.
    slow_placements(live, 0.4)
    first = asyncio.ensure_future(live.place(price="49000", leverage=20))
    await asyncio.sleep(0.15)
    second = asyncio.ensure_future(live.place(price="48000", leverage=5))
    placed = await asyncio.gather(first, second)
    assert [o.status for o in placed] == [S.ORDER_STATUS_OPEN] * 2
    at_exchange = {o.client_id: o.leverage for o in live.exchange.orders(API_KEY)}
    assert [at_exchange[live.client_id(o)] for o in placed] == [20, 5]


def slow_placements(live: LiveTrading, delay_s: float) -> None:
    live.exchange.delay_requests(*ORDER_ROUTE[live.venue], delay_s)
    live.exchange.delay_requests("POST", "/api/v5/trade/batch-orders", delay_s)  # OKX's own


def leverages_placed(live: LiveTrading) -> list[tuple[str, Decimal]]:
    """(client id, leverage) of the orders at the exchange, in the order it took them."""
    return [(o.client_id, o.leverage) for o in live.exchange.orders(API_KEY)]


async def test_a_change_is_not_overtaken_by_orders_at_the_old_leverage(
    live: LiveTrading,
) -> None:
    # 5x waits for the 20x order in flight; a 20x order that comes after it waits for it.
    slow_placements(live, 0.4)
    first = asyncio.ensure_future(live.place(price="49000", leverage=20))
    await asyncio.sleep(0.15)
    change = asyncio.ensure_future(live.place(price="48000", leverage=5))
    await asyncio.sleep(0.05)
    again = asyncio.ensure_future(live.place(price="47000", leverage=20))
    placed = await asyncio.gather(first, change, again)
    assert leverages_placed(live) == [
        (live.client_id(o), lev) for o, lev in zip(placed, map(Decimal, (20, 5, 20)), strict=True)
    ]


async def test_an_order_whose_call_gave_up_at_the_leverage_still_goes(live: LiveTrading) -> None:
    # Stored, then its caller's deadline passes while it waits for the 20x order in flight:
    # it is sent all the same, not left PENDING_NEW to be rejected as never found.
    slow_placements(live, 0.7)  # under the OMS's 1 s timeout
    first = asyncio.ensure_future(live.place(price="49000", leverage=20))
    await asyncio.sleep(0.2)
    request = opb.PlaceOrderRequest(
        user_id=USER, exchange=live.venue, symbol=BTC, side=S.SIDE_BUY,
        type=S.ORDER_TYPE_LIMIT, price="48000", quantity="0.02", leverage=5,
        client_order_id="impatient",
    )  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await live.oms.orders.PlaceOrder(request, timeout=0.3)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await first
    late = await live.until_found("impatient")
    placed = await live.until(late.order_id, lambda o: o.status == S.ORDER_STATUS_OPEN)
    assert leverages_placed(live)[-1] == (live.client_id(placed), Decimal(5))


async def test_a_fired_stop_whose_leverage_call_fails_once_is_sent_again(
    live: LiveTrading,
) -> None:
    stop = await live.place(
        type=S.ORDER_TYPE_STOP_MARKET, price="", stop_price="50500", leverage=20
    )
    await live.until_mark("50000")
    live.exchange.fail_requests(*SET_LEVERAGE[live.venue], status=503)
    live.exchange.set_price(BTC, Decimal("50600"))
    fired = await live.until(stop.order_id, settled)
    assert fired.status == S.ORDER_STATUS_FILLED, fired.cancel_reason
    assert leverage_at(live.exchange) == 20
