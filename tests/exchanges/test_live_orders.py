"""Orders on Binance USD-M and OKX through real ccxt against the local fake exchange
(CONTRACT sections 3 and 9): every test ends by checking, against the exchange's own records,
one exchange order per OMS order and filled_quantity = sum of fills = what the exchange filled.
"""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal

import grpc
import pytest
import redis.asyncio as redis
from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import API_KEY, BTC, CANCEL_ROUTE, USER, LiveTrading, live_trading
from tradingboost.oms.v1 import market_data_pb2
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as pb
from tradingboost.oms.v1 import position_service_pb2 as pos

from oms.adapters.redis_store import keys

VENUES = ["binanceusdm", "okx"]
BACKOFF_S = 0.3
LIVE_POLICY = {"rate_limit_backoff_s": BACKOFF_S}


def settled(order: S.Order) -> bool:
    return order.status not in (S.ORDER_STATUS_PENDING_NEW, S.ORDER_STATUS_PENDING_CANCEL)


async def test_a_limit_order_rests_at_the_exchange_under_the_oms_client_id(
    live: LiveTrading,
) -> None:
    order = await live.place(price="49000")
    assert order.status == S.ORDER_STATUS_OPEN
    [at_exchange] = live.exchange.orders(API_KEY)
    assert at_exchange.client_id == f"oms{order.order_id}"
    assert order.exchange_order_id == at_exchange.exchange_order_id
    assert (at_exchange.price, at_exchange.quantity) == (Decimal("49000"), Decimal("0.02"))
    assert at_exchange.position_side == "LONG"


async def test_a_resting_order_fills_when_the_exchange_fills_it(live: LiveTrading) -> None:
    order = await live.place(price="49000")
    live.exchange.set_price(BTC, Decimal("48900"))
    filled = await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert (filled.filled_quantity, filled.average_fill_price) == ("0.02", "49000")
    [fill] = await live.fills(order.order_id)
    [trade] = live.exchange.trades(API_KEY)
    assert fill.exchange_trade_id == trade.trade_id
    assert Decimal(fill.fee) == trade.fee
    assert fill.liquidity == S.LIQUIDITY_MAKER
    positions = await live.oms.positions.ListPositions(pos.ListPositionsRequest(user_id=USER))
    [position] = positions.positions
    assert (position.exchange, position.size, position.entry_price) == (
        live.venue,
        "0.02",
        "49000",
    )


async def test_fills_of_two_symbols_with_the_same_trade_id_are_both_applied(
    live: LiveTrading,
) -> None:
    # Binance and OKX number trades per symbol: the fill of ETH's trade 5001 is not the
    # fill of BTC's trade 5001, already applied (the ETH order stayed OPEN, unfilled).
    eth = "ETH/USDT:USDT"
    live.exchange.set_price(eth, Decimal("3000"))
    live.exchange.engine.number_trades_from(5001)
    btc_order = await live.place(price="49000", quantity="0.01")
    live.exchange.set_price(BTC, Decimal("48000"))
    await live.until(btc_order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    live.exchange.engine.number_trades_from(5001)
    eth_order = await live.place(symbol=eth, price="2900", quantity="0.1")
    live.exchange.set_price(eth, Decimal("2800"))
    filled = await live.until(eth_order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert (filled.filled_quantity, filled.average_fill_price) == ("0.1", "2900")
    [btc_fill] = await live.fills(btc_order.order_id)
    [eth_fill] = await live.fills(eth_order.order_id)
    assert btc_fill.exchange_trade_id == eth_fill.exchange_trade_id == "5001"


async def test_a_fill_applied_under_the_former_trade_field_still_counts_as_applied(
    live: LiveTrading, redis_url: str
) -> None:
    # Fills applied before trade ids were kept per symbol are listed again by a
    # reconciliation's lookback: they must not be applied twice.
    order = await live.place(price="49000", quantity="0.01")
    live.exchange.set_price(BTC, Decimal("48000"))
    await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    [fill] = await live.fills(order.order_id)
    trade_id = fill.exchange_trade_id
    client = redis.Redis.from_url(redis_url)
    try:
        field = keys.trade_field(live.venue, BTC, trade_id)
        fill_id = await client.hget(keys.trade_ids(USER), field)
        await client.hdel(keys.trade_ids(USER), field)
        await client.hset(
            keys.trade_ids(USER), keys.legacy_trade_field(live.venue, trade_id), fill_id
        )
    finally:
        await client.aclose()
    store = live.oms.app.store
    assert await store.applied_trade_ids(USER, live.venue, BTC, [trade_id, "1"]) == {trade_id}


async def test_partial_fills_are_applied_one_by_one(live: LiveTrading) -> None:
    order = await live.place(price="49000")
    live.exchange.set_price(BTC, Decimal("49000"), max_fill=Decimal("0.01"))
    partly = await live.until(order.order_id, lambda o: o.filled_quantity == "0.01")
    assert partly.status == S.ORDER_STATUS_PARTIALLY_FILLED
    live.exchange.set_price(BTC, Decimal("48000"), max_fill=Decimal("0.01"))
    filled = await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert len(await live.fills(order.order_id)) == 2
    assert filled.filled_quantity == "0.02"


async def test_a_market_order_comes_back_filled(live: LiveTrading) -> None:
    order = await live.place(type=S.ORDER_TYPE_MARKET, price="")
    assert order.status == S.ORDER_STATUS_FILLED
    assert order.average_fill_price == "50000"
    [fill] = await live.fills(order.order_id)
    assert fill.liquidity == S.LIQUIDITY_TAKER


async def test_cancel_cancels_at_the_exchange(live: LiveTrading) -> None:
    order = await live.place(price="49000")
    canceled = await live.cancel(order.order_id)
    assert canceled.status == S.ORDER_STATUS_CANCELED
    assert canceled.cancel_reason == "canceled by user"
    [at_exchange] = live.exchange.orders(API_KEY)
    assert at_exchange.status == "canceled"


async def test_a_fill_that_beats_the_cancel_is_applied(live: LiveTrading) -> None:
    order = await live.place(price="49000")
    live.exchange.faults.fill_on_cancel(Decimal("0.01"))
    canceled = await live.until(
        (await live.cancel(order.order_id)).order_id, lambda o: o.filled_quantity == "0.01"
    )
    assert canceled.status == S.ORDER_STATUS_CANCELED
    assert len(await live.fills(order.order_id)) == 1


async def test_a_cancel_that_finds_the_order_filled_reports_it_filled(live: LiveTrading) -> None:
    order = await live.place(price="49000")
    live.exchange.faults.fill_on_cancel()
    after = await live.until((await live.cancel(order.order_id)).order_id, settled)
    assert after.status == S.ORDER_STATUS_FILLED
    assert after.cancel_reason == ""


async def test_the_same_client_order_id_sends_once(live: LiveTrading) -> None:
    first = await live.place(price="49000", client_order_id="grid-7")
    again = await live.place(price="49000", client_order_id="grid-7")
    assert again.order_id == first.order_id
    assert len(live.exchange.orders(API_KEY)) == 1
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await live.place(price="48000", client_order_id="grid-7")
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_a_refused_order_ends_rejected_with_the_exchange_reason(live: LiveTrading) -> None:
    order = await live.place(price="49000", quantity="1000")  # far beyond the margin
    assert order.status == S.ORDER_STATUS_REJECTED
    assert "nsufficient" in order.reject_reason or "argin" in order.reject_reason
    assert (
        live.exchange.orders(API_KEY) == [] or live.exchange.orders(API_KEY)[0].status == "rejected"
    )


# -- ambiguous outcomes (CONTRACT section 9) ------------------------------------------------


async def test_an_accepted_submit_that_times_out_is_found_and_settled(live: LiveTrading) -> None:
    live.exchange.faults.accept_then_timeout(hang_s=2.0)
    order = await live.place(price="49000")
    assert order.status == S.ORDER_STATUS_PENDING_NEW
    found = await live.until(order.order_id, settled)
    assert found.status == S.ORDER_STATUS_OPEN
    assert found.exchange_order_id == live.exchange.orders(API_KEY)[0].exchange_order_id


async def test_a_timed_out_market_order_is_found_filled(live: LiveTrading) -> None:
    live.exchange.faults.accept_then_timeout(hang_s=2.0)
    order = await live.place(type=S.ORDER_TYPE_MARKET, price="")
    assert order.status == S.ORDER_STATUS_PENDING_NEW
    found = await live.until(order.order_id, settled)
    assert (found.status, found.filled_quantity) == (S.ORDER_STATUS_FILLED, "0.02")


@pytest.mark.parametrize("kind", ["http_503", "disconnect", "venue_timeout_code"])
async def test_a_submit_that_never_landed_is_rejected_after_the_grace_period(
    live: LiveTrading, kind: str
) -> None:
    if kind == "venue_timeout_code":
        kind = "binance_1007" if live.venue == "binanceusdm" else "okx_50004"
    live.exchange.faults.fail_before_accept(kind=kind)
    order = await live.place(price="49000")
    assert order.status == S.ORDER_STATUS_PENDING_NEW
    rejected = await live.until(order.order_id, settled)
    assert rejected.status == S.ORDER_STATUS_REJECTED
    assert "has no order" in rejected.reject_reason
    assert live.exchange.orders(API_KEY) == []


@pytest.mark.parametrize("kind", ["http_503", "venue_timeout_code"])
async def test_a_submit_that_landed_despite_an_error_is_found(live: LiveTrading, kind: str) -> None:
    if kind == "venue_timeout_code":
        kind = "binance_1007" if live.venue == "binanceusdm" else "okx_50004"
    live.exchange.faults.ambiguous_accept(kind=kind)
    order = await live.place(price="49000")
    assert order.status == S.ORDER_STATUS_PENDING_NEW
    assert (await live.until(order.order_id, settled)).status == S.ORDER_STATUS_OPEN


async def test_a_duplicate_client_id_error_means_the_order_exists(live: LiveTrading) -> None:
    live.exchange.faults.duplicate_on_submit()
    order = await live.place(price="49000")
    found = await live.until(order.order_id, settled)
    assert found.status == S.ORDER_STATUS_OPEN
    assert len(live.exchange.orders(API_KEY)) == 1


async def test_a_rate_limited_submit_is_rejected_and_the_oms_backs_off(live: LiveTrading) -> None:
    live.exchange.faults.rate_limit(count_429=1)
    # Refused by the exchange, as for funds: REJECTED with its reason, and the call succeeds,
    # so a client's retry under the same id does not expect it to be sent after all.
    first = await live.place(price="49000", client_order_id="first")
    assert first.status == S.ORDER_STATUS_REJECTED
    assert "new orders are refused for" in first.reject_reason
    # Within the back-off nothing is stored or sent, so the same client order id is free.
    with pytest.raises(grpc.aio.AioRpcError) as backing_off:
        await live.place(price="49000", client_order_id="second")
    assert backing_off.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "nothing was sent" in (backing_off.value.details() or "")
    refused = await live.oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    assert [(o.client_order_id, o.status) for o in refused.orders] == [
        ("first", S.ORDER_STATUS_REJECTED)
    ]
    assert "not sent" in refused.orders[0].reject_reason
    assert live.exchange.orders(API_KEY) == []
    await asyncio.sleep(BACKOFF_S)
    placed = await live.place(price="49000", client_order_id="second")
    assert placed.status == S.ORDER_STATUS_OPEN


async def test_after_a_ban_new_orders_answer_unavailable_until_it_has_passed(
    binance_exchange: FakeExchange, redis_url: str
) -> None:
    # Binance alone bans with 418; OKX answers 429 only.
    exchange = binance_exchange
    exchange.set_price(BTC, Decimal("50000"))
    live = await live_trading(redis_url, exchange, ban_backoff_s=BACKOFF_S)
    try:
        resting = await live.place(price="48000", client_order_id="grid-a")
        exchange.faults.rate_limit(count_429=0, count_418=1)
        banned = await live.place(price="49000")
        assert banned.status == S.ORDER_STATUS_REJECTED
        with pytest.raises(grpc.aio.AioRpcError) as still:
            await live.place(price="49000")
        assert still.value.code() == grpc.StatusCode.UNAVAILABLE
        # The retry of an order placed before the ban gets it, not "nothing was sent".
        retried = await live.place(price="48000", client_order_id="grid-a")
        assert (retried.order_id, retried.status) == (resting.order_id, S.ORDER_STATUS_OPEN)
        await asyncio.sleep(BACKOFF_S)
        assert (await live.place(price="49000")).status == S.ORDER_STATUS_OPEN
        await live.assert_invariants()
    finally:
        await live.oms.close()


# -- cancels get the same care ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http_503", "disconnect"])
async def test_a_cancel_that_never_arrived_is_sent_again_until_the_order_is_canceled(
    live: LiveTrading, kind: str
) -> None:
    order = await live.place(price="49000")
    live.exchange.faults.fail_cancel(kind=kind)
    pending = await live.cancel(order.order_id)
    assert pending.status in (S.ORDER_STATUS_PENDING_CANCEL, S.ORDER_STATUS_CANCELED)
    canceled = await live.until(order.order_id, settled)
    assert canceled.status == S.ORDER_STATUS_CANCELED
    assert canceled.cancel_reason == "canceled by user"
    [at_exchange] = live.exchange.orders(API_KEY)
    assert at_exchange.status == "canceled"


@pytest.mark.parametrize("kind", ["http_503", "disconnect"])
async def test_a_cancel_that_landed_despite_an_error_is_read_back(
    live: LiveTrading, kind: str
) -> None:
    order = await live.place(price="49000")
    live.exchange.faults.ambiguous_cancel(kind=kind)
    await live.cancel(order.order_id)
    canceled = await live.until(order.order_id, settled)
    assert canceled.status == S.ORDER_STATUS_CANCELED
    assert live.exchange.orders(API_KEY)[0].status == "canceled"


async def test_cancelling_a_filled_order_is_a_failed_precondition(live: LiveTrading) -> None:
    order = await live.place(type=S.ORDER_TYPE_MARKET, price="")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await live.cancel(order.order_id)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "FILLED" in (error.value.details() or "")


async def test_a_cancel_retried_while_the_first_is_in_flight_answers_the_same_cancel(
    live: LiveTrading,
) -> None:
    # The exchange is slow to answer the cancel: the retry finds the order PENDING_CANCEL
    # (the first attempt's), which is not terminal, and answers it.
    order = await live.place(price="49000")
    live.exchange.delay_requests(*CANCEL_ROUTE[live.venue], 0.5)
    first, again = await asyncio.gather(live.cancel(order.order_id), live.cancel(order.order_id))
    assert {first.order_id, again.order_id} == {order.order_id}
    answered = {first.status, again.status}
    assert answered <= {S.ORDER_STATUS_PENDING_CANCEL, S.ORDER_STATUS_CANCELED}, answered
    assert (await live.until(order.order_id, settled)).status == S.ORDER_STATUS_CANCELED

    # CancelAllOrders twice at once: each lists the orders it found open.
    orders = [await live.place(price=price) for price in ("48000", "47000")]
    request = pb.CancelAllOrdersRequest(user_id=USER, exchange=live.venue)
    responses = await asyncio.gather(
        live.oms.orders.CancelAllOrders(request), live.oms.orders.CancelAllOrders(request)
    )
    for response in responses:
        assert {o.order_id for o in response.orders} == {o.order_id for o in orders}


async def test_cancel_all_cancels_every_open_order_at_the_exchange(live: LiveTrading) -> None:
    orders = [await live.place(price=price) for price in ("49000", "48000", "47000")]
    response = await live.oms.orders.CancelAllOrders(
        pb.CancelAllOrdersRequest(user_id=USER, exchange=live.venue)
    )
    assert {o.order_id for o in response.orders} == {o.order_id for o in orders}
    for order in orders:
        assert (await live.until(order.order_id, settled)).status == S.ORDER_STATUS_CANCELED
    assert {o.status for o in live.exchange.orders(API_KEY)} == {"canceled"}


# -- mark prices -------------------------------------------------------------------------------


async def test_a_held_symbol_is_marked_from_the_exchange(live: LiveTrading) -> None:
    await live.place(type=S.ORDER_TYPE_MARKET, price="")  # long 0.02 at 50000
    prices = live.oms.market.StreamPrices(
        md.StreamPricesRequest(
            instruments=[market_data_pb2.Instrument(exchange=live.venue, symbol=BTC)]
        )
    )

    # The stream is live only, and may not be subscribed yet when a first mark comes: the
    # mark moves until the stream delivers one.
    async def first_message() -> md.StreamPricesResponse:
        message: md.StreamPricesResponse = await anext(aiter(prices))
        return message

    first = asyncio.create_task(first_message())
    async with asyncio.timeout(5):
        for mark in itertools.cycle(("51010", "51020")):
            live.exchange.set_price(BTC, Decimal(mark))
            done, _ = await asyncio.wait([first], timeout=0.3)
            if done:
                break
    message = first.result()
    assert message.price.exchange == live.venue
    assert message.price.price in ("51010", "51020")
    prices.cancel()
    live.exchange.set_price(BTC, Decimal("51000"))
    await live.until_mark("51000")
    got = await live.oms.market.GetPrice(md.GetPriceRequest(exchange=live.venue, symbol=BTC))
    assert got.price.price == "51000"
    contract = Decimal("1") if live.venue == "binanceusdm" else Decimal("0.01")
    async with asyncio.timeout(5):
        while True:
            [position] = (
                await live.oms.positions.ListPositions(pos.ListPositionsRequest(user_id=USER))
            ).positions
            if position.mark_price == "51000":
                break
            await asyncio.sleep(0.02)
    assert Decimal(position.unrealized_pnl) == Decimal("1000") * Decimal("0.02") * contract


async def test_prices_of_a_real_exchange_cannot_be_published(live: LiveTrading) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await live.oms.market.PublishPrices(
            md.PublishPricesRequest(
                prices=[market_data_pb2.PriceTick(exchange=live.venue, symbol=BTC, price="1")]
            )
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_marks_follow_the_ticker_feed_between_rest_reads(
    exchange: FakeExchange, redis_url: str
) -> None:
    # REST marks once a minute: only the websocket ticker can bring the move in time.
    live = await live_trading(redis_url, exchange, mark_interval_s=60)
    try:
        await live.place(type=S.ORDER_TYPE_MARKET, price="")
        for price in ("50500", "49800"):
            exchange.set_price(BTC, Decimal(price))
            async with asyncio.timeout(5):
                while True:
                    [position] = (
                        await live.oms.positions.ListPositions(
                            pos.ListPositionsRequest(user_id=USER)
                        )
                    ).positions
                    if position.mark_price == price:
                        break
                    await asyncio.sleep(0.02)
    finally:
        await live.oms.close()


async def test_a_mark_rewrites_a_position_at_most_every_position_mark_interval_s(
    exchange: FakeExchange, redis_url: str
) -> None:
    live = await live_trading(redis_url, exchange, {"position_mark_interval_s": 3600})
    try:
        await live.place(type=S.ORDER_TYPE_MARKET, price="")
        listed = pos.ListPositionsRequest(user_id=USER)
        [opened] = (await live.oms.positions.ListPositions(listed)).positions
        exchange.set_price(BTC, Decimal("51000"))
        await live.until_mark("51000")
        await asyncio.sleep(0.3)  # for the mark to reach the position, were it to
        [now] = (await live.oms.positions.ListPositions(listed)).positions
        assert now == opened
    finally:
        await live.oms.close()


async def test_get_market_gives_the_exchange_s_own_rules(live: LiveTrading) -> None:
    # Quantities are in contracts as ccxt counts them: OKX's BTC swap contract is 0.01 BTC.
    expected = {
        "binanceusdm": ("BTCUSDT", "1", "0.001", "0.001", "0.1"),
        "okx": ("BTC-USDT-SWAP", "0.01", "0.01", "0.01", "0.1"),
    }[live.venue]
    for symbol in (BTC, expected[0]):
        got = await live.oms.market.GetMarket(
            md.GetMarketRequest(exchange=live.venue, symbol=symbol)
        )
        market = got.market
        assert (market.symbol, market.settle, market.max_leverage) == (BTC, "USDT", 125)
        assert (
            market.market_id,
            market.contract_size,
            market.amount_step,
            market.min_amount,
            market.price_tick,
        ) == expected
