"""Faults between the OMS and a real exchange that must neither lose an order's outcome nor
stop the OMS following an account (CONTRACT sections 2, 3 and 9): a cancel that meets an
order still being sent, a read that fails after the exchange took an order, an account
deactivated while marks are read. Every test ends by checking the OMS against the exchange's
own records."""

from __future__ import annotations

import asyncio
import contextlib
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
    ORDER_ROUTE,
    PASSWORD,
    SECRET,
    TRADES_ROUTE,
    USER,
    LiveTrading,
    exchange_settings,
    live_trading,
    placements,
)
from fixtures.oms_server import make_oms
from fixtures.redis_proxy import RedisFaultProxy, landed_unanswered
from tradingboost.oms.v1 import account_service_pb2 as acc
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.engine.ports import Conflict

GRACE_S = 1.0
LIVE_POLICY = {"lookup_grace_s": GRACE_S}
TICKER = {"binanceusdm": "/fapi/v1/ticker/24hr", "okx": "/api/v5/market/ticker"}


def settled(order: S.Order) -> bool:
    return order.status not in (S.ORDER_STATUS_PENDING_NEW, S.ORDER_STATUS_PENDING_CANCEL)


def at_exchange(exchange: FakeExchange, live: LiveTrading, order: S.Order) -> list[object]:
    return [o for o in exchange.orders(API_KEY) if o.client_id == live.client_id(order)]


async def test_a_stop_cancelled_while_its_triggered_send_is_in_flight_keeps_its_fill(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    stop = await live.place(
        side=S.SIDE_BUY, type=S.ORDER_TYPE_STOP_MARKET, price="", stop_price="51000"
    )
    exchange.faults.mute_private_feeds()  # the feed later than the REST reply
    exchange.faults.accept_then_timeout(hang_s=2.0)  # it lands and fills; the reply is held
    exchange.set_price(BTC, Decimal("51000"))
    await until(lambda: bool(at_exchange(exchange, live, stop)))
    # Sent, its exchange id not known yet: the cancel must find it there, filled.
    pending = await live.cancel(stop.order_id)
    assert pending.status in (S.ORDER_STATUS_PENDING_CANCEL, S.ORDER_STATUS_FILLED)
    exchange.faults.unmute_private_feeds()
    filled = await live.until(stop.order_id, settled)
    assert (filled.status, filled.filled_quantity) == (S.ORDER_STATUS_FILLED, "0.02")
    assert filled.exchange_order_id
    # The account is still followed: a new order's fill arrives.
    order = await live.place(price="50000")
    exchange.set_price(BTC, Decimal("49000"))
    await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)


@pytest.mark.parametrize("known_to_the_exchange", [False, True])
async def test_an_order_of_unknown_outcome_can_be_cancelled(
    live: LiveTrading, known_to_the_exchange: bool
) -> None:
    if known_to_the_exchange:
        live.exchange.faults.ambiguous_accept(kind="http_503")
    else:
        live.exchange.faults.fail_before_accept(kind="http_503")
    order = await live.place(price="49000")
    assert order.status == S.ORDER_STATUS_PENDING_NEW
    pending = await live.cancel(order.order_id)
    assert pending.status in (S.ORDER_STATUS_PENDING_CANCEL, S.ORDER_STATUS_CANCELED)
    canceled = await live.until(order.order_id, settled, timeout_s=GRACE_S + 10)
    assert canceled.status == S.ORDER_STATUS_CANCELED
    assert canceled.cancel_reason == "canceled by user"
    assert bool(canceled.exchange_order_id) == known_to_the_exchange


async def test_cancel_all_includes_an_order_of_unknown_outcome(live: LiveTrading) -> None:
    live.exchange.faults.fail_before_accept(kind="http_503")
    order = await live.place(price="49000")
    assert order.status == S.ORDER_STATUS_PENDING_NEW
    response = await live.oms.orders.CancelAllOrders(
        pb.CancelAllOrdersRequest(user_id=USER, exchange=live.venue)
    )
    assert [o.order_id for o in response.orders] == [order.order_id]
    canceled = await live.until(order.order_id, settled, timeout_s=GRACE_S + 10)
    assert canceled.status == S.ORDER_STATUS_CANCELED


async def test_a_taken_order_whose_fills_cannot_be_read_is_answered_and_settled_later(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    exchange.faults.mute_private_feeds()  # only the submit path and the poll settle it
    exchange.fail_requests(*TRADES_ROUTE[exchange.venue], count=1)
    order = await live.place(type=S.ORDER_TYPE_MARKET, price="")
    # Not UNKNOWN: the exchange has it, and says so.
    assert order.status in (S.ORDER_STATUS_OPEN, S.ORDER_STATUS_FILLED)
    assert order.exchange_order_id
    filled = await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert filled.filled_quantity == "0.02"
    exchange.faults.unmute_private_feeds()


async def test_okx_an_order_taken_but_not_read_back_is_open_not_rejected(
    okx_exchange: FakeExchange, redis_url: str
) -> None:
    # OKX acknowledges a placement sparsely; the OMS reads the order back, here into a 429.
    exchange = okx_exchange
    exchange.set_price(BTC, Decimal("50000"))
    live = await live_trading(redis_url, exchange)
    try:
        await exchange.wait_for_private_feed(API_KEY)
        exchange.faults.mute_private_feeds()
        exchange.fail_requests("GET", "/api/v5/trade/order", count=1, status=429)
        order = await live.place(price="49000")
        assert order.status == S.ORDER_STATUS_OPEN
        assert order.exchange_order_id
        exchange.faults.unmute_private_feeds()
        exchange.set_price(BTC, Decimal("48000"))
        filled = await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
        assert (filled.status, filled.filled_quantity) == (S.ORDER_STATUS_FILLED, "0.02")
        await live.assert_invariants()
    finally:
        await live.oms.close()


async def test_marks_go_on_for_the_others_when_an_account_leaves_during_a_read(
    exchange: FakeExchange, redis_url: str
) -> None:
    exchange.add_account(API_KEY, SECRET, PASSWORD)
    exchange.add_account("alice-key", "alice-secret", "alice-pass")
    oms = await make_oms(
        redis_url,
        master_key=MASTER_KEY,
        exchanges=exchange_settings(exchange, mark_interval_s=0.05),
    )
    try:
        for user, key, secret, password in (
            (USER, API_KEY, SECRET, PASSWORD),
            ("alice", "alice-key", "alice-secret", "alice-pass"),
        ):
            await oms.accounts.RegisterCredentials(
                acc.RegisterCredentialsRequest(
                    user_id=user,
                    exchange=exchange.venue,
                    api_key=key,
                    secret=secret,
                    password=password,
                )
            )
            await oms.accounts.ActivateAccount(
                acc.ActivateAccountRequest(user_id=user, exchange=exchange.venue)
            )

        async def place(user_id: str, **fields: object) -> S.Order:
            request = pb.PlaceOrderRequest(
                user_id=user_id,
                exchange=exchange.venue,
                symbol=BTC,
                side=S.SIDE_BUY,
                type=S.ORDER_TYPE_MARKET,
                quantity="0.02",
            )
            request.MergeFrom(pb.PlaceOrderRequest(**fields))  # type: ignore[arg-type]
            return (await oms.orders.PlaceOrder(request)).order

        assert (await place(USER)).status == S.ORDER_STATUS_FILLED
        assert (await place("alice")).status == S.ORDER_STATUS_FILLED
        stop = await place(
            "alice",
            side=S.SIDE_SELL,
            type=S.ORDER_TYPE_STOP_MARKET,
            stop_price="48000",
            reduce_only=True,
        )
        assert stop.status == S.ORDER_STATUS_OPEN
        # Marks over REST only, each read slow enough for bob to leave while one is out.
        exchange.faults.mute_price_feeds()
        exchange.delay_requests("GET", TICKER[exchange.venue], 0.5)
        exchange.set_price(BTC, Decimal("50500"))
        await asyncio.sleep(0.2)
        await oms.accounts.DeactivateAccount(
            acc.DeactivateAccountRequest(user_id=USER, exchange=exchange.venue)
        )
        await asyncio.sleep(1.0)
        exchange.set_price(BTC, Decimal("47000"))  # reaches alice's stop
        async with asyncio.timeout(10):
            while True:
                got = await oms.orders.GetOrder(
                    pb.GetOrderRequest(user_id="alice", order_id=stop.order_id)
                )
                if got.order.status == S.ORDER_STATUS_FILLED:
                    break
                await asyncio.sleep(0.05)
    finally:
        await oms.close()


async def test_a_rate_limited_order_is_not_retried_into_a_second_order(
    live: LiveTrading,
) -> None:
    # The call succeeds with the order REJECTED; the same id then answers that order.
    live.exchange.faults.rate_limit(count_429=1)
    first = await live.place(price="49000", client_order_id="dca-1")
    assert first.status == S.ORDER_STATUS_REJECTED
    again = await live.place(price="49000", client_order_id="dca-1")
    assert again.order_id == first.order_id
    assert live.exchange.orders(API_KEY) == []


async def test_a_rate_limit_holds_back_its_account_or_every_account_on_the_address(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    await live.add_user("alice")
    # OKX limits each account; the fake Binance's 429 is its request weight, the IP's.
    exchange.faults.rate_limit(count_429=1)
    assert (await live.place(price="49000")).status == S.ORDER_STATUS_REJECTED
    alices = live.place(user_id="alice", price="49000", client_order_id="alice-1")
    if exchange.venue == "okx":
        assert (await alices).status == S.ORDER_STATUS_OPEN
    else:
        with pytest.raises(grpc.aio.AioRpcError) as held_back:
            await alices
        assert held_back.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as still:  # bob's own back-off holds either way
        await live.place(price="49000")
    assert still.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_rejected_cancel_of_a_terminal_order_is_still_failed_precondition(
    live: LiveTrading,
) -> None:
    order = await live.place(type=S.ORDER_TYPE_MARKET, price="")
    assert order.status == S.ORDER_STATUS_FILLED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await live.cancel(order.order_id)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_cancel_not_taken_yet_stands_through_a_partial_fill(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    order = await live.place(price="49000")
    for _ in range(3):  # the cancel and its first resends change nothing
        exchange.faults.fail_cancel("http_503")
    pending = await live.cancel(order.order_id)
    assert pending.status == S.ORDER_STATUS_PENDING_CANCEL
    exchange.set_price(BTC, Decimal("48900"), max_fill=Decimal("0.01"))
    done = await live.until(order.order_id, settled, timeout_s=10)
    assert (done.status, done.filled_quantity) == (S.ORDER_STATUS_CANCELED, "0.01")
    assert [o.status for o in exchange.orders(API_KEY)] == ["canceled"]


async def test_an_order_with_more_fills_than_a_page_of_the_listing_gets_them_all(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    # 101 fills: one more than a page of OKX's listing (and than the OMS asks Binance for).
    step = {"binanceusdm": Decimal("0.001"), "okx": Decimal("0.01")}[exchange.venue]
    order = await live.place(price="49000", quantity=str(step * 101))
    for _ in range(101):
        exchange.set_price(BTC, Decimal("48990"), max_fill=step)
    filled = await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert Decimal(filled.filled_quantity) == step * 101
    assert len(await live.fills(order.order_id)) == 101
    await live.assert_invariants()


async def test_a_fill_listed_a_moment_after_the_cancel_it_met_is_applied(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    # The cancel's answer says 0.01 filled; the trade shows in the REST listing only later.
    exchange.engine.trade_listing_lag_s = 0.5
    order = await live.place(price="49000", quantity="0.04")
    exchange.faults.fill_on_cancel(Decimal("0.01"))
    await live.cancel(order.order_id)
    done = await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
    assert done.filled_quantity == "0.01"
    await live.assert_invariants()


async def test_an_account_deactivated_while_a_submit_is_in_flight_leaves_no_work_running(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    # Slow, yet within the request's window (the timeout, 1 s here): the exchange takes it.
    exchange.delay_requests(*ORDER_ROUTE[exchange.venue], 0.7)
    exchange.delay_requests("POST", "/api/v5/trade/batch-orders", 0.7)
    placing = asyncio.create_task(live.place(price="49000", client_order_id="in-flight"))
    await asyncio.sleep(0.3)
    await live.accounts.DeactivateAccount(
        acc.DeactivateAccountRequest(user_id=USER, exchange=exchange.venue)
    )
    with contextlib.suppress(grpc.aio.AioRpcError):
        await placing
    await asyncio.sleep(0.5)
    # Nothing of the account's runs on (a lookup on its closed connection, say).
    assert [
        t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(exchange.venue)
    ] == []
    await live.accounts.ActivateAccount(
        acc.ActivateAccountRequest(user_id=USER, exchange=exchange.venue)
    )
    found = await live.until_found("in-flight")
    assert (await live.until(found.order_id, settled)).status == S.ORDER_STATUS_OPEN
    await live.assert_invariants()


async def test_a_submit_the_exchange_would_carry_out_after_the_lookup_gave_up_is_not_carried_out(
    exchange: FakeExchange, redis_url: str
) -> None:
    # The request sits in the exchange's queue past the OMS's timeout and lookup grace. The
    # OMS sends it with a window (Binance's recvWindow, OKX's expTime) of its timeout, so
    # the exchange drops it late rather than take an order the OMS has settled REJECTED.
    live = await live_trading(redis_url, exchange, timeout_ms=1000, lookup_grace_s=1.5)
    try:
        exchange.delay_requests(*ORDER_ROUTE[exchange.venue], 2.5)
        exchange.delay_requests("POST", "/api/v5/trade/batch-orders", 2.5)
        order = await live.place(price="49000")
        rejected = await live.until(order.order_id, settled)
        assert rejected.status == S.ORDER_STATUS_REJECTED
        await asyncio.sleep(1.5)  # the held request reaches the exchange meanwhile
        assert exchange.orders(API_KEY) == []
        await live.assert_invariants()
    finally:
        await live.oms.close()


async def test_an_order_that_found_the_exchange_down_is_sent_once_it_is_back_within_its_grace(
    exchange: FakeExchange, redis_url: str
) -> None:
    live = await live_trading(redis_url, exchange, lookup_grace_s=5.0)
    try:
        await exchange.stop()  # connections refused: nothing can leave
        order = await live.place(price="49000", client_order_id="while-down")
        assert order.status == S.ORDER_STATUS_PENDING_NEW
        await asyncio.sleep(1.0)
        await exchange.start()
        placed = await live.until(order.order_id, settled, timeout_s=10)
        assert placed.status == S.ORDER_STATUS_OPEN
        # Its retry answers it, and the exchange has it once.
        assert (await live.place(price="49000", client_order_id="while-down")).order_id == (
            order.order_id
        )
        assert placements(exchange) == 1
        await live.assert_invariants()
    finally:
        await live.oms.close()


async def test_an_order_that_never_left_is_rejected_once_its_grace_has_passed(
    exchange: FakeExchange, redis_url: str
) -> None:
    live = await live_trading(redis_url, exchange, lookup_grace_s=1.0)
    try:
        await exchange.stop()
        order = await live.place(price="49000")
        await asyncio.sleep(1.5)  # past its grace: late now, it is not sent
        await exchange.start()
        refused = await live.until(order.order_id, settled, timeout_s=10)
        assert refused.status == S.ORDER_STATUS_REJECTED
        assert refused.reject_reason.startswith("not sent within 1 s: ExchangeNotAvailable: ")
        assert placements(exchange) == 0
        await live.assert_invariants()
    finally:
        await live.oms.close()


async def test_an_order_that_never_left_and_was_cancelled_is_never_sent(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    await exchange.stop()
    order = await live.place(price="49000")
    await live.cancel(order.order_id)
    await exchange.start()
    canceled = await live.until(order.order_id, settled, timeout_s=10)
    assert (canceled.status, canceled.cancel_reason) == (
        S.ORDER_STATUS_CANCELED,
        "canceled by user",
    )
    assert placements(exchange) == 0


LOOKUP_ROUTE = {"binanceusdm": ("GET", "/fapi/v1/order"), "okx": ("GET", "/api/v5/trade/order")}


async def test_an_order_that_never_left_cancelled_while_its_lookup_reads_is_never_sent(
    exchange: FakeExchange, redis_url: str
) -> None:
    live = await live_trading(redis_url, exchange, lookup_grace_s=10.0)
    try:
        await exchange.stop()
        order = await live.place(type=S.ORDER_TYPE_MARKET, price="")
        method, path = LOOKUP_ROUTE[exchange.venue]
        exchange.delay_requests(method, path, 0.7)  # the lookup's read, slow (within timeout)
        exchange.requests.clear()
        await exchange.start()
        await until(lambda: any((m, p) == (method, path) for m, p, _ in exchange.requests))
        canceled = await live.cancel(order.order_id)  # while that read is out
        assert canceled.status == S.ORDER_STATUS_CANCELED
        exchange.delay_requests(method, path, 0.0)
        await asyncio.sleep(1.0)  # the read is back: it finds the order cancelled
        assert (await live.get(order.order_id)).status == S.ORDER_STATUS_CANCELED
        assert placements(exchange) == 0
        await live.assert_invariants()
    finally:
        await live.oms.close()


async def test_an_order_whose_commit_landed_unanswered_is_sent_not_rejected(
    exchange: FakeExchange, proxy: RedisFaultProxy
) -> None:
    # Redis runs the order's commit, but its reply is lost, and so are those of every retry
    # (and of the call's look for the order): UNAVAILABLE. The poll then finds the order
    # stored, never sent, and sends it within its grace (before, its lookup rejected it:
    # "no such order").
    live = await live_trading(await proxy.start(), exchange, lookup_grace_s=10.0)
    try:
        await exchange.wait_for_private_feed(API_KEY)
        placing = live.place(price="49000", client_order_id="unanswered")
        await landed_unanswered(proxy, b"unanswered", placing)
        order = await live.until_found("unanswered")
        opened = await live.until(order.order_id, settled, timeout_s=5)
        assert (opened.status, bool(opened.exchange_order_id)) == (S.ORDER_STATUS_OPEN, True)
        assert placements(exchange) == 1
        await live.assert_invariants()
    finally:
        await live.oms.close()


STOP_AT_51000: dict[str, Any] = {
    "type": S.ORDER_TYPE_STOP_MARKET,
    "price": "",
    "stop_price": "51000",
}


@pytest.mark.parametrize("retried", [True, False], ids=["by-the-retry", "by-the-poll"])
async def test_a_stop_whose_commit_landed_unanswered_is_held(
    live_via_proxy: LiveTrading, proxy: RedisFaultProxy, retried: bool
) -> None:
    # Held by the client's retry, or, when none comes, by the poll that finds it stored.
    live = live_via_proxy
    placing = live.place(client_order_id="unanswered-stop", **STOP_AT_51000)
    await landed_unanswered(proxy, b"unanswered-stop", placing)
    if retried:
        order = await live.place(client_order_id="unanswered-stop", **STOP_AT_51000)
        assert order.status == S.ORDER_STATUS_OPEN
    else:
        order = await live.until_found("unanswered-stop")
        await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_OPEN)
    live.exchange.set_price(BTC, Decimal("51000"))
    await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert placements(live.exchange) == 1
    await live.assert_invariants()


async def test_a_stop_retried_while_its_first_attempt_triggers_is_sent_once(
    live: LiveTrading, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The retry's commit finds the first attempt's stop PENDING_NEW, and its answer comes
    # late (a slow Redis reply): meanwhile the first attempt has held the stop, and a mark has
    # triggered it and is sending it (the exchange is slow to answer). The retry must not
    # send it a second time.
    record = live.oms.app.journal.record

    async def conflicts_answered_late(*args: Any, **kwargs: Any) -> Any:
        outcome = await record(*args, **kwargs)
        if isinstance(outcome, Conflict):
            await asyncio.sleep(0.5)
        return outcome

    monkeypatch.setattr(live.oms.app.journal, "record", conflicts_answered_late)
    for method, path in (ORDER_ROUTE[live.venue], ("POST", "/api/v5/trade/batch-orders")):
        live.exchange.delay_requests(method, path, 0.8)

    async def reached_once_held() -> None:
        held = await live.until_found("retried-stop")
        await live.until(held.order_id, lambda o: o.status == S.ORDER_STATUS_OPEN)
        live.exchange.set_price(BTC, Decimal("51000"))

    first, again, _ = await asyncio.gather(
        live.place(client_order_id="retried-stop", **STOP_AT_51000),
        live.place(client_order_id="retried-stop", **STOP_AT_51000),
        reached_once_held(),
    )
    assert first.order_id == again.order_id
    await live.until(first.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert len(live.exchange.orders(API_KEY)) == 1
    await live.assert_invariants()
