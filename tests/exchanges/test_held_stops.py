"""Stop and take-profit orders on real exchanges: held by the OMS and sent as market orders
once the exchange's mark price reaches them (CONTRACT section 3 statuses; the same trigger
rules as the paper exchange's section 7)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from fixtures.client_streams import until
from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import (
    API_KEY,
    BTC,
    ORDER_ROUTE,
    USER,
    LiveTrading,
    live_trading,
    placements,
)
from tradingboost.oms.v1 import account_service_pb2 as acc
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as opb
from tradingboost.oms.v1 import position_pb2
from tradingboost.oms.v1 import position_service_pb2 as pos

from oms.engine.followed_accounts import FollowedAccount


async def long_position(live: LiveTrading) -> None:
    entry = await live.place(type=S.ORDER_TYPE_MARKET, price="")
    assert entry.status == S.ORDER_STATUS_FILLED


async def held_stop(
    live: LiveTrading, side: S.Side.ValueType, stop_price: str, **fields: Any
) -> S.Order:
    """A STOP_MARKET order of 0.02, which the OMS holds until the mark reaches it."""
    return await live.place(
        side=side, type=S.ORDER_TYPE_STOP_MARKET, price="", stop_price=stop_price, **fields
    )


def sent(exchange: FakeExchange) -> int:
    return len(exchange.orders(API_KEY))


async def test_a_stop_loss_is_held_until_the_mark_reaches_it_then_sent_as_market(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    await long_position(live)
    stop = await held_stop(live, S.SIDE_SELL, "49000", reduce_only=True)
    assert (stop.status, stop.exchange_order_id) == (S.ORDER_STATUS_OPEN, "")
    assert sent(exchange) == 1  # the entry only
    exchange.set_price(BTC, Decimal("49500"))
    await live.until_mark("49500")
    assert (await live.get(stop.order_id)).status == S.ORDER_STATUS_OPEN
    assert sent(exchange) == 1

    exchange.set_price(BTC, Decimal("48900"))
    done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert done.average_fill_price == "48900"
    [at_exchange] = [o for o in exchange.orders(API_KEY) if o.client_id == f"oms{stop.order_id}"]
    assert (at_exchange.type, at_exchange.side) == ("market", "sell")
    assert done.exchange_order_id == at_exchange.exchange_order_id
    [position] = (
        await live.oms.positions.ListPositions(
            pos.ListPositionsRequest(user_id=USER, include_closed=True)
        )
    ).positions
    assert (position.status, position.size) == (position_pb2.POSITION_STATUS_CLOSED, "0")


async def test_a_take_profit_fires_on_the_way_up(live: LiveTrading, exchange: FakeExchange) -> None:
    await long_position(live)
    take = await live.place(
        side=S.SIDE_SELL,
        type=S.ORDER_TYPE_TAKE_PROFIT_MARKET,
        price="",
        stop_price="51000",
        reduce_only=True,
    )
    exchange.set_price(BTC, Decimal("50900"))
    await live.until_mark("50900")
    assert (await live.get(take.order_id)).status == S.ORDER_STATUS_OPEN
    exchange.set_price(BTC, Decimal("51200"))
    done = await live.until(take.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert done.average_fill_price == "51200"


async def test_a_stop_the_mark_has_reached_already_is_rejected(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    await long_position(live)
    await live.until_mark("50000")
    stop = await held_stop(live, S.SIDE_SELL, "50500")
    assert stop.status == S.ORDER_STATUS_REJECTED
    assert "would trigger immediately" in stop.reject_reason
    assert sent(exchange) == 1


async def test_cancelling_a_held_stop_sends_nothing(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    stop = await held_stop(live, S.SIDE_BUY, "52000")
    # A second stop, far away, keeps the symbol's mark being read.
    await held_stop(live, S.SIDE_SELL, "40000")
    canceled = await live.cancel(stop.order_id)
    assert canceled.status == S.ORDER_STATUS_CANCELED
    exchange.set_price(BTC, Decimal("53000"))
    await live.until_mark("53000")
    assert (await live.get(stop.order_id)).status == S.ORDER_STATUS_CANCELED
    assert sent(exchange) == 0
    assert not any(method != "GET" and "order" in path for method, path, _ in exchange.requests)


async def test_a_triggered_stop_the_exchange_refuses_ends_expired(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    # Far beyond the account's margin once sent.
    stop = await held_stop(live, S.SIDE_BUY, "51000", quantity="1000")
    exchange.set_price(BTC, Decimal("51000"))
    expired = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_EXPIRED)
    assert "triggered, but not taken" in expired.cancel_reason
    assert sent(exchange) == 0


async def test_a_held_stop_survives_a_restart(
    live: LiveTrading, exchange: FakeExchange, redis_url: str
) -> None:
    await long_position(live)
    stop = await held_stop(live, S.SIDE_SELL, "49000", reduce_only=True)
    await live.oms.close()
    await live.start_again(redis_url)
    exchange.set_price(BTC, Decimal("48000"))
    done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert done.average_fill_price == "48000"


async def test_a_triggered_stop_met_by_a_rate_limit_is_sent_again_after_the_back_off(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    await long_position(live)
    stop = await held_stop(live, S.SIDE_SELL, "49000", reduce_only=True)
    # The send and its first resend are refused; the lookup's grace (short here) must not
    # expire it meanwhile: a 429 means the exchange did not take it.
    exchange.faults.rate_limit(count_429=2)
    exchange.set_price(BTC, Decimal("48900"))
    done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert done.filled_quantity == "0.02"
    assert sent(exchange) == 2  # the entry and the stop, once


async def test_a_triggered_stop_met_by_a_ban_is_sent_again_once_it_is_over(
    binance_exchange: FakeExchange, redis_url: str
) -> None:
    # Binance alone bans (418), for minutes: the stop-loss must still go out after it.
    exchange = binance_exchange
    exchange.set_price(BTC, Decimal("50000"))
    live = await live_trading(redis_url, exchange, ban_backoff_s=1.0, lookup_grace_s=0.5)
    try:
        await long_position(live)
        stop = await held_stop(live, S.SIDE_SELL, "49000", reduce_only=True)
        exchange.faults.rate_limit(count_429=0, count_418=1)
        exchange.set_price(BTC, Decimal("48900"))
        done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
        assert done.filled_quantity == "0.02"
        assert sent(exchange) == 2  # the entry and the stop, once
        await live.assert_invariants()
    finally:
        await live.oms.close()


async def test_a_stop_cancelled_while_it_waits_out_a_rate_limit_is_never_sent(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    stop = await held_stop(live, S.SIDE_BUY, "51000")
    exchange.faults.rate_limit(count_429=1)
    exchange.set_price(BTC, Decimal("51000"))
    await until(lambda: placements(exchange) == 1)  # triggered, sent, refused
    pending = await live.cancel(stop.order_id)
    assert pending.status in (S.ORDER_STATUS_PENDING_CANCEL, S.ORDER_STATUS_CANCELED)
    canceled = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
    assert canceled.cancel_reason == "canceled by user"
    await asyncio.sleep(1.5)  # past the back-off: nothing goes out
    assert sent(exchange) == 0


async def test_a_rate_limited_stop_is_sent_again_even_when_its_lookup_runs_already(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    # A slow send: the poll (every 0.05 s here) starts the order's lookup meanwhile.
    exchange.delay_requests(*ORDER_ROUTE[exchange.venue], 0.4)
    exchange.delay_requests("POST", "/api/v5/trade/batch-orders", 0.4)
    stop = await held_stop(live, S.SIDE_BUY, "51000")
    exchange.faults.rate_limit(count_429=1)
    exchange.set_price(BTC, Decimal("51000"))
    done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert done.filled_quantity == "0.02"


async def test_a_stop_cancelled_while_its_placement_commits_is_canceled(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    # The account's lock held a moment (another commit of the account, in production) keeps
    # the stop stored but not yet in the held book while the cancel comes.
    # A second stop, far away, keeps the symbol's mark being read.
    await held_stop(live, S.SIDE_SELL, "40000")
    followed = live.oms.app.exchanges._accounts[(USER, live.venue)]
    async with followed.lock:
        placing = asyncio.create_task(
            held_stop(live, S.SIDE_BUY, "51000", client_order_id="stop-1")
        )
        stored = await live.until_found("stop-1")
        canceling = asyncio.create_task(live.cancel(stored.order_id))
        await asyncio.sleep(0.2)
    placed, canceled = await placing, await canceling
    # Placed (OPEN) then cancelled, or cancelled before its placement committed: either way
    # CANCELED, never PENDING_CANCEL for a stop that was never sent.
    assert placed.status in (S.ORDER_STATUS_OPEN, S.ORDER_STATUS_CANCELED)
    assert canceled.status == S.ORDER_STATUS_CANCELED
    exchange.set_price(BTC, Decimal("51000"))
    await live.until_mark("51000")
    assert (await live.get(placed.order_id)).status == S.ORDER_STATUS_CANCELED
    assert sent(exchange) == 0


async def test_a_rate_limited_stop_is_sent_when_its_account_is_followed_again(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    # Deactivated during the back-off, activated again later: the stop is looked up, found
    # never taken, and sent then, as a held stop the price passed meanwhile would be.
    stop = await held_stop(live, S.SIDE_BUY, "51000")
    exchange.faults.rate_limit(count_429=1)
    exchange.set_price(BTC, Decimal("51000"))
    await until(lambda: placements(exchange) == 1)
    account = {"user_id": USER, "exchange": live.venue}
    await live.accounts.DeactivateAccount(acc.DeactivateAccountRequest(**account))
    exchange.set_price(BTC, Decimal("45000"))
    await asyncio.sleep(1.5)  # past the back-off
    await live.accounts.ActivateAccount(acc.ActivateAccountRequest(**account))
    done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert done.average_fill_price == "45000"
    assert sent(exchange) == 1


async def test_a_resend_of_unknown_outcome_gets_its_own_lookup_grace(
    exchange: FakeExchange, redis_url: str
) -> None:
    # The back-off outlasts the grace; the resend's reply is lost and the exchange's order
    # view lags a moment: counted from the trigger, the grace would be long gone and the
    # stop EXPIRED while the exchange took it.
    live = await live_trading(redis_url, exchange, rate_limit_backoff_s=3.5, lookup_grace_s=3.0)
    try:
        await exchange.wait_for_private_feed(API_KEY)
        stop = await held_stop(live, S.SIDE_BUY, "51000")
        exchange.lag_order_lookups()
        exchange.faults.mute_private_feeds()
        exchange.faults.rate_limit(count_429=1)
        exchange.faults.accept_then_timeout(hang_s=1.5)  # the resend: taken, reply lost
        exchange.set_price(BTC, Decimal("51000"))
        await until(lambda: placements(exchange) == 2, timeout_s=15)  # the resend arrived
        await asyncio.sleep(1.2)  # its reply timed out (1 s) and a lookup missed it
        exchange.lag_order_lookups(False)
        exchange.faults.unmute_private_feeds()
        done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
        assert done.filled_quantity == "0.02"
    finally:
        await live.oms.close()


async def test_a_triggered_stop_the_exchange_never_took_is_sent_again(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    # A 503 the exchange did not act on: past the lookup grace it positively has no such
    # order, and a stop-loss that fired is still owed (a new order would be REJECTED).
    await long_position(live)
    stop = await held_stop(live, S.SIDE_SELL, "49000", reduce_only=True)
    before = await live.oms.orders.ListOrders(opb.ListOrdersRequest(user_id=USER))
    exchange.faults.fail_before_accept("http_503")
    exchange.set_price(BTC, Decimal("48900"))
    done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert done.filled_quantity == "0.02"
    assert placements(exchange) == 3  # the entry, then the stop twice: refused, taken
    assert sent(exchange) == 2
    # Its stream tells the strategy what happened, in order.
    updates = live.oms.orders.StreamOrderUpdates(
        opb.StreamOrderUpdatesRequest(user_id=USER, after_sequence=before.as_of_sequence)
    )
    kinds = []
    async with asyncio.timeout(5):
        async for message in updates:
            kinds.append(message.order_update.event_type)
            if kinds[-1] == S.ORDER_EVENT_TYPE_FILLED:
                break
    updates.cancel()
    assert kinds == [
        S.ORDER_EVENT_TYPE_TRIGGERED,
        S.ORDER_EVENT_TYPE_SENT_AGAIN,
        S.ORDER_EVENT_TYPE_ACCEPTED,
        S.ORDER_EVENT_TYPE_FILLED,
    ]


async def test_a_triggered_stop_a_crash_kept_from_the_exchange_is_sent_at_the_next_start(
    live: LiveTrading, exchange: FakeExchange, redis_url: str
) -> None:
    # Triggered and committed, then the process died before the exchange took it (here: a
    # 429, whose resend lived only in memory).
    await long_position(live)
    stop = await held_stop(live, S.SIDE_SELL, "49000", reduce_only=True)
    exchange.faults.rate_limit(count_429=1)
    exchange.set_price(BTC, Decimal("48900"))
    await until(lambda: placements(exchange) == 2)
    await live.oms.close()
    await live.start_again(redis_url)
    done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert done.filled_quantity == "0.02"
    assert sent(exchange) == 2


async def test_a_stop_sent_again_goes_for_what_the_position_holds_then(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    await long_position(live)
    stop = await held_stop(live, S.SIDE_SELL, "49000", reduce_only=True)
    exchange.faults.fail_before_accept("http_503")
    exchange.set_price(BTC, Decimal("48900"))
    await until(lambda: placements(exchange) == 2)
    # Before its lookup gives up on the first send, half the position is closed another way.
    part = await live.place(
        side=S.SIDE_SELL,
        type=S.ORDER_TYPE_MARKET,
        price="",
        quantity="0.01",
        reduce_only=True,
        position_side=S.POSITION_SIDE_LONG,
    )
    assert part.status == S.ORDER_STATUS_FILLED
    done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert (done.quantity, done.filled_quantity) == ("0.01", "0.01")


async def filled_by_one_order(
    live: LiveTrading, exchange: FakeExchange, stop: S.Order, placed: int
) -> None:
    """The stop FILLED by a single exchange order, out of `placed` placement requests, and
    still so once a second send would have arrived."""
    done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert done.filled_quantity == "0.02"
    await asyncio.sleep(1.0)
    assert (placements(exchange), sent(exchange)) == (placed, 1)


def slow_placements(exchange: FakeExchange, delay_s: float) -> None:
    exchange.delay_requests(*ORDER_ROUTE[exchange.venue], delay_s)
    exchange.delay_requests("POST", "/api/v5/trade/batch-orders", delay_s)


async def test_a_send_slower_than_the_lookup_grace_is_not_sent_twice(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    # The exchange takes 0.8 s to act (within the 1 s request timeout), the lookup grace is
    # 0.5 s, and the poll looks the triggered stop up meanwhile: it must wait for the send.
    stop = await held_stop(live, S.SIDE_BUY, "51000")
    slow_placements(exchange, 0.8)
    exchange.set_price(BTC, Decimal("51000"))
    await filled_by_one_order(live, exchange, stop, placed=1)


async def test_a_stop_sent_again_is_not_sent_once_more_by_the_account_followed_anew(
    exchange: FakeExchange, redis_url: str
) -> None:
    # Its first send met a 503 the exchange did not act on; its second is on its way (the
    # exchange takes 0.8 s, the grace is 1.5 s) when the account is deactivated and, a
    # moment later, activated again (or the OMS restarts): the new follower counts the grace
    # from that second send, committed before it went, and finds it.
    live = await live_trading(redis_url, exchange, lookup_grace_s=1.5)
    try:
        stop = await held_stop(live, S.SIDE_BUY, "51000")
        exchange.faults.fail_before_accept("http_503")
        exchange.set_price(BTC, Decimal("51000"))
        await until(lambda: placements(exchange) == 1)
        slow_placements(exchange, 0.8)
        await until(lambda: placements(exchange) == 2, timeout_s=5)  # the second, held 0.8 s
        account = {"user_id": USER, "exchange": live.venue}
        await live.accounts.DeactivateAccount(acc.DeactivateAccountRequest(**account))
        await asyncio.sleep(0.3)
        await live.accounts.ActivateAccount(acc.ActivateAccountRequest(**account))
        await filled_by_one_order(live, exchange, stop, placed=2)
    finally:
        await live.oms.close()


async def test_a_stop_stays_held_through_a_key_rotation(
    exchange: FakeExchange, redis_url: str
) -> None:
    # New keys for a followed account: the new connection holds the stop before the old one
    # goes (no poll to pick it up again here).
    live = await live_trading(redis_url, exchange, poll_interval_s=30.0)
    try:
        await long_position(live)
        stop = await held_stop(live, S.SIDE_SELL, "49000", reduce_only=True)
        await live.register_keys_again()
        exchange.set_price(BTC, Decimal("48900"))
        done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
        assert done.average_fill_price == "48900"
    finally:
        await live.oms.close()


OPEN_ORDERS = {
    "binanceusdm": ("GET", "/fapi/v1/openOrders"),
    "okx": ("GET", "/api/v5/trade/orders-pending"),
}


async def test_a_stop_two_followers_would_send_again_is_sent_again_once(
    exchange: FakeExchange, redis_url: str
) -> None:
    # The account's keys are registered again while its stop waits out a 429: until the new
    # follower has reconciled (slow here), the old one still follows, and both look the
    # stop up. Whichever sends it again first, the other finds it changed.
    live = await live_trading(redis_url, exchange, rate_limit_backoff_s=2.0, timeout_ms=4000)
    try:
        stop = await held_stop(live, S.SIDE_BUY, "51000")
        exchange.faults.rate_limit(count_429=1)
        exchange.set_price(BTC, Decimal("51000"))
        await until(lambda: placements(exchange) == 1)
        await asyncio.sleep(0.7)  # past the lookup grace, within the back-off
        exchange.delay_requests(*OPEN_ORDERS[exchange.venue], 2.5)
        await live.register_keys_again()
        exchange.delay_requests(*OPEN_ORDERS[exchange.venue], 0)
        await filled_by_one_order(live, exchange, stop, placed=2)
    finally:
        await live.oms.close()


async def test_a_stale_held_copy_of_a_triggered_stop_sends_nothing(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    stop = await held_stop(live, S.SIDE_BUY, "51000")
    before = await live.oms.app.store.get_order(USER, stop.order_id)
    assert before is not None
    exchange.faults.rate_limit(count_429=1)
    exchange.set_price(BTC, Decimal("51000"))
    await until(lambda: placements(exchange) == 1)  # triggered, refused: waits the back-off
    slow_placements(exchange, 0.8)
    await until(lambda: placements(exchange) == 2)  # sent again, on its way
    # A copy read before the trigger committed (a sync's read that raced it) is held again;
    # the mark reaches it: the trigger finds the order triggered already, and sends nothing.
    live.oms.app.exchanges._held.hold(before)
    exchange.set_price(BTC, Decimal("51010"))
    await filled_by_one_order(live, exchange, stop, placed=2)


async def test_a_stop_reached_while_the_old_connection_closes_fires(
    exchange: FakeExchange, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = await live_trading(redis_url, exchange, poll_interval_s=30.0)
    try:
        await long_position(live)
        stop = await held_stop(live, S.SIDE_SELL, "49000", reduce_only=True)
        close = FollowedAccount.stop

        async def slow_close(account: FollowedAccount) -> None:
            exchange.set_price(BTC, Decimal("48900"))  # the mark crosses as it closes
            await asyncio.sleep(0.5)
            await close(account)

        monkeypatch.setattr(FollowedAccount, "stop", slow_close)
        await live.register_keys_again()
        monkeypatch.undo()
        done = await live.until(stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
        assert done.average_fill_price == "48900"
    finally:
        await live.oms.close()
