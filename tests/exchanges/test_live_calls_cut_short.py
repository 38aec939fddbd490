"""A call on a real exchange whose client gives up (its deadline passes) while the call's
commit waits on a stalled Redis: grpc cancels the handler, yet the call runs to its end, so
what the store says is what the OMS does. Before, each of these stopped at its commit: an
order stored and never sent, a cancel recorded and never asked, a stop or rule stored and
never watched, an account stored inactive and still traded on.

The account poll, the safety net that would settle some of these in the end, runs once a
minute here: what a call leaves must not wait for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from functools import partial

import grpc
import pytest
from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import API_KEY, BTC, USER, LiveTrading, live_trading
from fixtures.redis_proxy import RedisFaultProxy
from tradingboost.oms.v1 import account_service_pb2 as acc
from tradingboost.oms.v1 import conditional_rule_pb2 as R
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as pb
from tradingboost.oms.v1 import trailing_stop_pb2 as T
from tradingboost.oms.v1 import trailing_stop_service_pb2 as ts

LIVE_POLICY = {"poll_interval_s": 60.0}
DEADLINE_S = 0.3


@pytest.fixture
def live(live_via_proxy: LiveTrading) -> LiveTrading:
    """Every test here has its Redis behind the fault proxy."""
    return live_via_proxy


async def cut_short(
    proxy: RedisFaultProxy, marker: bytes, call: Callable[[], Awaitable[object]]
) -> None:
    """`call()` (made with a deadline of DEADLINE_S) ends DEADLINE_EXCEEDED while the
    request with `marker` is held; then Redis runs that request."""
    proxy.hold_request(marker)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call()
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await proxy.release_held()


def at_exchange(live: LiveTrading, order: S.Order) -> str:
    [found] = [o for o in live.exchange.orders(API_KEY) if o.client_id == live.client_id(order)]
    return found.status


async def test_an_order_stored_as_its_call_ends_is_sent(
    live: LiveTrading, proxy: RedisFaultProxy
) -> None:
    placing = partial(live.place, price="49000", client_order_id="cut-short", timeout_s=DEADLINE_S)
    await cut_short(proxy, b"cut-short", placing)
    order = await live.until_found("cut-short")
    opened = await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_OPEN)
    assert opened.exchange_order_id
    assert at_exchange(live, order) == "open"
    # The client's retry finds that order.
    again = await live.place(price="49000", client_order_id="cut-short")
    assert again.order_id == order.order_id


async def test_a_cancel_recorded_as_its_call_ends_is_asked_of_the_exchange(
    live: LiveTrading, proxy: RedisFaultProxy
) -> None:
    order = await live.place(price="49000")
    canceling = partial(live.cancel, order.order_id, timeout_s=DEADLINE_S)
    await cut_short(proxy, b'"status":"PENDING_CANCEL"', canceling)
    canceled = await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
    assert canceled.cancel_reason == "canceled by user"
    assert at_exchange(live, order) == "canceled"


async def test_a_trailing_stop_stored_as_its_call_ends_trails_and_triggers(
    live: LiveTrading, proxy: RedisFaultProxy
) -> None:
    await live.place(type=S.ORDER_TYPE_MARKET, price="")  # long 0.02
    await live.until_mark("50000")
    request = ts.CreateTrailingStopRequest(
        user_id=USER,
        exchange=live.venue,
        symbol=BTC,
        position_side=S.POSITION_SIDE_LONG,
        callback_rate="0.01",
        client_id="cut-stop",
    )
    creating = partial(live.oms.trailing_stops.CreateTrailingStop, request, timeout=DEADLINE_S)
    await cut_short(proxy, b'"status":"ACTIVE"', creating)
    lookup = ts.GetTrailingStopRequest(user_id=USER, client_id="cut-stop")
    stop = (await live.oms.trailing_stops.GetTrailingStop(lookup)).trailing_stop
    assert (stop.status, stop.stop_price) == (T.TRAILING_STOP_STATUS_ACTIVE, "49500")
    live.exchange.set_price(BTC, Decimal("51000"))
    await live.until_stop(stop.trailing_stop_id, lambda s: s.stop_price == "50490")
    live.exchange.set_price(BTC, Decimal("50400"))
    triggered = await live.until_stop(
        stop.trailing_stop_id, lambda s: s.status == T.TRAILING_STOP_STATUS_TRIGGERED
    )
    close = await live.until(triggered.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert (close.side, close.filled_quantity) == (S.SIDE_SELL, "0.02")


async def test_a_rule_stored_as_its_call_ends_fires(
    live: LiveTrading, proxy: RedisFaultProxy
) -> None:
    a, b = [await live.place(price=p) for p in ("49000", "48000")]
    request = pb.CreateConditionalRuleRequest(
        user_id=USER,
        trigger_order_id=a.order_id,
        condition=R.RULE_CONDITION_FILLED,
        cancel_order_ids=[b.order_id],
        client_id="cut-rule",
    )
    creating = partial(live.oms.orders.CreateConditionalRule, request, timeout=DEADLINE_S)
    await cut_short(proxy, b'"status":"ACTIVE"', creating)
    live.exchange.set_price(BTC, Decimal("48900"))  # fills a, not b
    canceled = await live.until(b.order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
    lookup = pb.GetConditionalRuleRequest(user_id=USER, client_id="cut-rule")
    rule = (await live.oms.orders.GetConditionalRule(lookup)).rule
    assert canceled.cancel_reason == f"conditional rule {rule.rule_id}"
    assert at_exchange(live, b) == "canceled"


async def test_an_account_stored_inactive_as_its_call_ends_is_no_longer_traded_on(
    live: LiveTrading, proxy: RedisFaultProxy
) -> None:
    request = acc.DeactivateAccountRequest(user_id=USER, exchange=live.venue)
    deactivating = partial(live.accounts.DeactivateAccount, request, timeout=DEADLINE_S)
    await cut_short(proxy, b'"status":"INACTIVE"', deactivating)
    listed = await live.accounts.ListActiveAccounts(acc.ListActiveAccountsRequest(user_id=USER))
    assert list(listed.accounts) == []
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await live.place(price="49000")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await live.accounts.ActivateAccount(
        acc.ActivateAccountRequest(user_id=USER, exchange=live.venue)
    )


async def test_a_call_cut_short_is_finished_before_the_server_stops(
    exchange: FakeExchange, proxy: RedisFaultProxy
) -> None:
    # The server stops while an order's commit, its client gone, still waits on Redis: the
    # stop lets the call finish (the order sent) before the exchanges and the store close.
    live = await live_trading(await proxy.start(), exchange, {"shutdown_grace_s": 3.0})
    await exchange.wait_for_private_feed(API_KEY)
    placing = partial(live.place, price="49000", client_order_id="at-stop", timeout_s=DEADLINE_S)
    proxy.hold_request(b"at-stop")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await placing()
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    async def release_later() -> None:
        await asyncio.sleep(1.0)  # the server is stopping by then
        await proxy.release_held()

    releasing = asyncio.create_task(release_later())
    await live.oms.close()
    await releasing
    [order] = live.exchange.orders(API_KEY)
    assert order.status == "open"
