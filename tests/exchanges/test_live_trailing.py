"""Trailing stops on real exchanges (CONTRACT section 5): the same stops as on paper, followed
on the exchange's mark price, triggering a reduce-only market close sent to the exchange."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import grpc
import pytest
from fixtures.client_streams import until
from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import (
    API_KEY,
    BTC,
    USER,
    LiveTrading,
    placements,
)
from fixtures.redis_proxy import LOADING, RedisFaultProxy, landed_unanswered
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as opb
from tradingboost.oms.v1 import position_service_pb2 as pos
from tradingboost.oms.v1 import trailing_stop_pb2 as T
from tradingboost.oms.v1 import trailing_stop_service_pb2 as ts

ENDED = (
    S.ORDER_STATUS_FILLED,
    S.ORDER_STATUS_CANCELED,
    S.ORDER_STATUS_REJECTED,
    S.ORDER_STATUS_EXPIRED,
)


async def long_with_mark(live: LiveTrading) -> None:
    """A long 0.02 BTC, and the OMS holding the mark 50000 (a stop starts from it)."""
    await live.place(type=S.ORDER_TYPE_MARKET, price="")
    await live.until_mark("50000")


async def create(live: LiveTrading, **fields: str) -> T.TrailingStop:
    response = await live.oms.trailing_stops.CreateTrailingStop(
        ts.CreateTrailingStopRequest(
            user_id=USER,
            exchange=live.venue,
            symbol=BTC,
            position_side=S.POSITION_SIDE_LONG,
            callback_rate=fields.get("callback_rate", "0.01"),
            client_id=fields.get("client_id", ""),
        )
    )
    return response.trailing_stop


async def test_a_long_stop_follows_the_mark_up_and_closes_on_the_way_down(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    await long_with_mark(live)
    stop = await create(live)
    assert (stop.status, stop.watermark_price, stop.stop_price) == (
        T.TRAILING_STOP_STATUS_ACTIVE,
        "50000",
        "49500",
    )
    exchange.set_price(BTC, Decimal("51000"))
    await live.until_stop(stop.trailing_stop_id, lambda s: s.stop_price == "50490")
    exchange.set_price(BTC, Decimal("50500"))  # above the stop: nothing
    exchange.set_price(BTC, Decimal("50490"))
    triggered = await live.until_stop(
        stop.trailing_stop_id, lambda s: s.status == T.TRAILING_STOP_STATUS_TRIGGERED
    )
    assert triggered.triggered_price == "50490"
    close = await live.until(triggered.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert (close.client_order_id, close.reduce_only, close.side) == (
        f"ts-{stop.trailing_stop_id}",
        True,
        S.SIDE_SELL,
    )
    [at_exchange] = [o for o in exchange.orders(API_KEY) if o.client_id == f"oms{close.order_id}"]
    assert (at_exchange.type, at_exchange.filled) == ("market", Decimal("0.02"))
    [position] = (
        await live.oms.positions.ListPositions(
            pos.ListPositionsRequest(user_id=USER, include_closed=True)
        )
    ).positions
    assert position.size == "0"


async def test_two_stops_crossed_by_one_mark_close_the_position_once(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    # The nearer stop's close is on its way (not filled yet) when the farther one is reached
    # by the same mark: it covers the whole position, so the farther one sends nothing, and
    # ends as on paper once that close has closed the position.
    await long_with_mark(live)
    farther = await create(live, callback_rate="0.01")  # stop 49500
    nearer = await create(live, callback_rate="0.005")  # stop 49750
    exchange.set_price(BTC, Decimal("49400"))
    triggered = await live.until_stop(
        nearer.trailing_stop_id, lambda s: s.status == T.TRAILING_STOP_STATUS_TRIGGERED
    )
    await live.until(triggered.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    other = await live.until_stop(
        farther.trailing_stop_id, lambda s: s.status != T.TRAILING_STOP_STATUS_ACTIVE
    )
    assert (other.status, other.status_reason) == (
        T.TRAILING_STOP_STATUS_CANCELED,
        "position_closed",
    )
    listed = await live.oms.orders.ListOrders(opb.ListOrdersRequest(user_id=USER))
    assert [o.client_order_id[:3] for o in listed.orders].count("ts-") == 1


async def test_closing_the_position_cancels_the_stop(live: LiveTrading) -> None:
    await long_with_mark(live)
    stop = await create(live)
    await live.oms.positions.ClosePosition(
        pos.ClosePositionRequest(
            user_id=USER, exchange=live.venue, symbol=BTC, position_side=S.POSITION_SIDE_LONG
        )
    )
    canceled = await live.until_stop(
        stop.trailing_stop_id, lambda s: s.status == T.TRAILING_STOP_STATUS_CANCELED
    )
    assert canceled.status_reason == "position_closed"


async def test_a_cancelled_stop_never_triggers(live: LiveTrading, exchange: FakeExchange) -> None:
    await long_with_mark(live)
    stop = await create(live)
    response = await live.oms.trailing_stops.CancelTrailingStop(
        ts.CancelTrailingStopRequest(user_id=USER, trailing_stop_id=stop.trailing_stop_id)
    )
    assert response.trailing_stop.status == T.TRAILING_STOP_STATUS_CANCELED
    exchange.set_price(BTC, Decimal("40000"))
    await asyncio.sleep(0.3)  # several mark reads
    assert len(exchange.orders(API_KEY)) == 1  # the entry only


async def test_a_stop_without_a_position_is_refused(live: LiveTrading) -> None:
    try:
        await create(live)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no open LONG position" in (error.details() or "")
    else:
        raise AssertionError("created a trailing stop with no position")


async def test_a_stop_survives_a_restart(
    live: LiveTrading, exchange: FakeExchange, redis_url: str
) -> None:
    await long_with_mark(live)
    stop = await create(live)
    exchange.set_price(BTC, Decimal("52000"))
    await live.until_stop(stop.trailing_stop_id, lambda s: s.watermark_price == "52000")
    await live.oms.close()
    await live.start_again(redis_url)
    exchange.set_price(BTC, Decimal("51400"))  # stop 51480: crossed
    triggered = await live.until_stop(
        stop.trailing_stop_id, lambda s: s.status == T.TRAILING_STOP_STATUS_TRIGGERED
    )
    await live.until(triggered.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)


async def close_once_filled(
    live: LiveTrading, exchange: FakeExchange, fault: Callable[[], None]
) -> S.Order:
    """A long's 1% stop triggered with `fault` set on its close order's first send: the
    close order once the exchange filled it."""
    await long_with_mark(live)
    stop = await create(live)
    fault()
    exchange.set_price(BTC, Decimal("49400"))
    triggered = await live.until_stop(
        stop.trailing_stop_id, lambda s: s.status == T.TRAILING_STOP_STATUS_TRIGGERED
    )
    return await live.until(triggered.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)


async def test_a_close_order_met_by_a_rate_limit_is_sent_again_after_the_back_off(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    close = await close_once_filled(live, exchange, lambda: exchange.faults.rate_limit(1))
    assert close.filled_quantity == "0.02"
    await asyncio.sleep(0.6)  # past the lookup grace: a second send would be out
    assert placements(exchange) == 3  # the entry, then the close twice: refused, taken


async def test_a_close_order_the_exchange_never_took_is_sent_again(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    close = await close_once_filled(
        live, exchange, lambda: exchange.faults.fail_before_accept("http_503")
    )
    assert close.filled_quantity == "0.02"
    await asyncio.sleep(0.6)  # past the lookup grace: a second send would be out
    assert placements(exchange) == 3  # the entry, then the close twice: not taken, taken
    [position] = (
        await live.oms.positions.ListPositions(
            pos.ListPositionsRequest(user_id=USER, include_closed=True)
        )
    ).positions
    assert position.size == "0"


Read = Callable[[str], Awaitable[list[Any]]]


async def test_a_stop_that_triggers_during_a_key_rotation_stays_triggered(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It triggers while new keys are being taken on, in the first of the new connection's
    # reads of working stops or open orders; nothing read around it brings it back to work,
    # or to be cancelled later.
    await long_with_mark(live)
    stop = await create(live)
    store = live.oms.app.store
    raced = False

    def racing(read: Read) -> Read:
        async def racing_read(key: str) -> list[Any]:
            nonlocal raced
            result = await read(key)
            if not raced:
                raced = True
                exchange.set_price(BTC, Decimal("49400"))
                await live.until_stop(
                    stop.trailing_stop_id, lambda s: s.status == T.TRAILING_STOP_STATUS_TRIGGERED
                )
            return result

        return racing_read

    for name in ("working_trailing_stops_on", "open_orders"):
        monkeypatch.setattr(store, name, racing(getattr(store, name)))
    await live.register_keys_again()
    monkeypatch.undo()
    assert raced
    triggered = await live.until_stop(
        stop.trailing_stop_id, lambda s: s.status == T.TRAILING_STOP_STATUS_TRIGGERED
    )
    await live.until(triggered.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    exchange.set_price(BTC, Decimal("49000"))  # a copy of the stop still at work would fire
    await asyncio.sleep(0.5)
    after = await live.until_stop(stop.trailing_stop_id, lambda s: True)
    assert (after.status, after.order_id) == (T.TRAILING_STOP_STATUS_TRIGGERED, triggered.order_id)


async def test_a_mark_whose_trailing_move_fails_still_sends_the_held_stop_and_comes_again(
    live_via_proxy: LiveTrading, proxy: RedisFaultProxy
) -> None:
    # Redis refuses the trailing stop's move to the new mark past every retry: the held
    # stop that mark reaches is sent all the same, and once Redis takes it the stop moves at
    # the same mark (not left "not moved" until the price changes).
    live, exchange = live_via_proxy, live_via_proxy.exchange
    await long_with_mark(live)
    stop = await create(live)
    buy_stop = await live.place(type=S.ORDER_TYPE_STOP_MARKET, price="", stop_price="51000")
    moved = b'"type":"STOP_PRICE_UPDATED"'
    proxy.refuse(moved, LOADING, times=1000)
    exchange.set_price(BTC, Decimal("51000"))
    await live.until(buy_stop.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert (await live.until_stop(stop.trailing_stop_id, lambda s: True)).stop_price == "49500"
    proxy.refuse(moved, LOADING, times=0)
    await live.until_stop(stop.trailing_stop_id, lambda s: s.stop_price == "50490")


@pytest.mark.parametrize("failing", [0, 1], ids=["tighter-fails", "looser-fails"])
async def test_one_stop_whose_move_fails_does_not_keep_the_mark_from_the_others(
    live_via_proxy: LiveTrading, proxy: RedisFaultProxy, failing: int
) -> None:
    # Two stops on one position; Redis refuses every write of one of them (whichever the
    # mark reaches first, across the two runs). The other still follows the mark, and the
    # failed one moves at that same mark once Redis takes it.
    live, exchange = live_via_proxy, live_via_proxy.exchange
    await long_with_mark(live)
    stops = [await create(live, callback_rate="0.01"), await create(live, callback_rate="0.02")]
    moved_to = ["50490", "49980"]  # at 51000
    failed, other = stops[failing], stops[1 - failing]
    marker = f'"trailing_stop_id":"{failed.trailing_stop_id}"'.encode()
    proxy.refuse(marker, LOADING, times=1000)
    exchange.set_price(BTC, Decimal("51000"))
    await live.until_stop(other.trailing_stop_id, lambda s: s.stop_price == moved_to[1 - failing])
    assert (await live.until_stop(failed.trailing_stop_id, lambda s: True)).stop_price == (
        failed.stop_price
    )
    proxy.refuse(marker, LOADING, times=0)
    await live.until_stop(failed.trailing_stop_id, lambda s: s.stop_price == moved_to[failing])


async def test_a_stop_whose_cancel_landed_unanswered_never_triggers(
    live_via_proxy: LiveTrading, proxy: RedisFaultProxy
) -> None:
    # Redis stores the cancel, but every reply to it is lost: UNAVAILABLE. The stop is
    # cancelled in the store; a mark above must not move it (writing it back as ACTIVE),
    # nor the price through it later fire a close.
    live, exchange = live_via_proxy, live_via_proxy.exchange
    await long_with_mark(live)
    stop = await create(live)
    request = ts.CancelTrailingStopRequest(user_id=USER, trailing_stop_id=stop.trailing_stop_id)
    canceling = live.oms.trailing_stops.CancelTrailingStop(request)
    await landed_unanswered(proxy, b'"kind":"trailing_stop","type":"CANCELED"', canceling)
    exchange.set_price(BTC, Decimal("51000"))
    await live.until_mark("51000")
    exchange.set_price(BTC, Decimal("49000"))  # through the stop at 49500
    await live.until_mark("49000")
    await asyncio.sleep(0.5)  # a mark round or more: a stop still at work would fire
    after = await live.until_stop(stop.trailing_stop_id, lambda s: True)
    assert (after.status, after.order_id, after.stop_price) == (
        T.TRAILING_STOP_STATUS_CANCELED,
        "",
        "49500",
    )
    assert len([o for o in exchange.orders(API_KEY) if o.side == "sell"]) == 0


async def trigger_landed_unanswered(
    live: LiveTrading, proxy: RedisFaultProxy, caplog: pytest.LogCaptureFixture
) -> T.TrailingStop:
    """A stop on a long triggered by a mark; the trigger (the stop TRIGGERED, its close
    stored) lands, and the reply to it and to every retry is lost."""
    await long_with_mark(live)
    stop = await create(live)
    triggering = b'"kind":"trailing_stop","type":"TRIGGERED"'
    proxy.lose_reply_to(triggering, times=1000)
    live.exchange.set_price(BTC, Decimal("49000"))
    triggered = await live.until_stop(
        stop.trailing_stop_id, lambda s: s.status == T.TRAILING_STOP_STATUS_TRIGGERED
    )
    await until(lambda: any("store unreachable" in r.getMessage() for r in caplog.records))
    proxy.lose_reply_to(triggering, times=0)
    return triggered


@pytest.mark.live_policy(lookup_grace_s=60)
async def test_a_close_whose_trigger_landed_unanswered_is_sent_at_once(
    live_via_proxy: LiveTrading, proxy: RedisFaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    # The close never left: it goes at once, not a lookup grace later (60 s here) as an
    # order the exchange might yet have taken would.
    live, exchange = live_via_proxy, live_via_proxy.exchange
    triggered = await trigger_landed_unanswered(live, proxy, caplog)
    await live.until(triggered.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    [close] = [o for o in exchange.orders(API_KEY) if o.side == "sell"]
    assert (close.client_id, close.filled) == (f"oms{triggered.order_id}", Decimal("0.02"))


async def test_a_close_whose_trigger_landed_unanswered_is_sent_even_past_its_grace(
    live_via_proxy: LiveTrading, proxy: RedisFaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    # Its lookups fail until its grace (0.5 s) has passed: a stop that fired is owed all
    # the same, never REJECTED as a new order that never left would be.
    live, exchange = live_via_proxy, live_via_proxy.exchange
    lookup = {"binanceusdm": "/fapi/v1/order", "okx": "/api/v5/trade/order"}[exchange.venue]
    exchange.fail_requests("GET", lookup, count=4)
    triggered = await trigger_landed_unanswered(live, proxy, caplog)
    # Ended, not merely settled: where the failures meet its own read-back instead (OKX's
    # sparse acknowledgement), it is OPEN under its exchange id until its fill is read.
    ended = await live.until(triggered.order_id, lambda o: o.status in ENDED)
    assert (ended.status, ended.filled_quantity) == (S.ORDER_STATUS_FILLED, "0.02")


async def test_a_stop_whose_create_landed_unanswered_is_watched_once_its_retry_finds_it(
    live_via_proxy: LiveTrading, proxy: RedisFaultProxy
) -> None:
    live, exchange = live_via_proxy, live_via_proxy.exchange
    await long_with_mark(live)
    creating = live.oms.trailing_stops.CreateTrailingStop(
        ts.CreateTrailingStopRequest(
            user_id=USER,
            exchange=live.venue,
            symbol=BTC,
            position_side=S.POSITION_SIDE_LONG,
            callback_rate="0.01",
            client_id="unanswered",
        )
    )
    await landed_unanswered(proxy, b'"client_id":"unanswered"', creating)
    stop = await create(live, client_id="unanswered")  # the retry finds it
    assert stop.status == T.TRAILING_STOP_STATUS_ACTIVE
    exchange.set_price(BTC, Decimal("51000"))
    await live.until_stop(stop.trailing_stop_id, lambda s: s.stop_price == "50490")
    exchange.set_price(BTC, Decimal("50400"))
    triggered = await live.until_stop(
        stop.trailing_stop_id, lambda s: s.status == T.TRAILING_STOP_STATUS_TRIGGERED
    )
    await live.until(triggered.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
