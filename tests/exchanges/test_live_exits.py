"""OpenPosition's take-profit and stop-loss on real exchanges (CONTRACT section 4): placed
when the entry fills, held by the OMS, linked one-cancels-other, cancelled when the position
goes flat another way."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from typing import Any

import grpc
import pytest
from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import (
    API_KEY,
    BTC,
    CANCEL_ROUTE,
    USER,
    LiveTrading,
    live_trading,
)
from fixtures.redis_proxy import RedisFaultProxy
from tradingboost.oms.v1 import account_service_pb2 as acc
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as opb
from tradingboost.oms.v1 import position_pb2, trailing_stop_pb2
from tradingboost.oms.v1 import position_service_pb2 as pos
from tradingboost.oms.v1 import trailing_stop_service_pb2 as ts


def long_request(venue: str, **fields: Any) -> pos.OpenPositionRequest:
    """An OpenPosition of 0.02 BTC LONG at market on `venue`, with `fields` on top."""
    values: dict[str, Any] = {
        "user_id": USER,
        "exchange": venue,
        "symbol": BTC,
        "position_side": S.POSITION_SIDE_LONG,
        "type": S.ORDER_TYPE_MARKET,
        "quantity": "0.02",
    }
    return pos.OpenPositionRequest(**(values | fields))


async def open_long(
    live: LiveTrading, take_profit_price: str, stop_loss_price: str
) -> pos.OpenPositionResponse:
    response: pos.OpenPositionResponse = await live.oms.positions.OpenPosition(
        long_request(
            live.venue, take_profit_price=take_profit_price, stop_loss_price=stop_loss_price
        )
    )
    return response


async def close_long(live: LiveTrading, quantity: str = "") -> None:
    """ClosePosition of the LONG side: all of it, or `quantity`."""
    await live.oms.positions.ClosePosition(
        pos.ClosePositionRequest(
            user_id=USER,
            exchange=live.venue,
            symbol=BTC,
            position_side=S.POSITION_SIDE_LONG,
            quantity=quantity,
        )
    )


async def assert_open_with(live: LiveTrading, size: str) -> position_pb2.Position:
    """The LONG side's current position, asserted open with `size`."""
    response = await live.oms.positions.GetPosition(
        pos.GetPositionRequest(
            user_id=USER, exchange=live.venue, symbol=BTC, position_side=S.POSITION_SIDE_LONG
        )
    )
    assert (response.position.status, response.position.size) == (
        position_pb2.POSITION_STATUS_OPEN,
        size,
    )
    return response.position


async def position(live: LiveTrading) -> position_pb2.Position:
    [record] = (
        await live.oms.positions.ListPositions(
            pos.ListPositionsRequest(user_id=USER, include_closed=True)
        )
    ).positions
    return record


@pytest.mark.parametrize(
    ("price", "fills", "cancelled"),
    [("51200", "take_profit_order_id", "stop_loss_order_id"),
     ("48800", "stop_loss_order_id", "take_profit_order_id")],
)  # fmt: skip
async def test_the_exit_that_fires_cancels_its_twin(
    live: LiveTrading, exchange: FakeExchange, price: str, fills: str, cancelled: str
) -> None:
    opened = await open_long(live, take_profit_price="51000", stop_loss_price="49000")
    assert opened.entry_order.status == S.ORDER_STATUS_FILLED
    first, twin = getattr(opened, fills), getattr(opened, cancelled)
    held = await live.until(first, lambda o: o.status == S.ORDER_STATUS_OPEN)
    assert (held.quantity, held.reduce_only, held.exchange_order_id) == ("0.02", True, "")
    assert held.position_id == (await position(live)).position_id
    exchange.set_price(BTC, Decimal(price))
    done = await live.until(first, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert done.average_fill_price == price
    other = await live.until(twin, lambda o: o.status == S.ORDER_STATUS_CANCELED)
    assert other.cancel_reason == f"one-cancels-other: {first} filled"
    closed = await position(live)
    assert (closed.status, closed.size) == (position_pb2.POSITION_STATUS_CLOSED, "0")


async def test_after_a_partial_close_the_exit_that_fires_closes_what_is_left(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    opened = await open_long(live, take_profit_price="51000", stop_loss_price="49000")
    await live.until(opened.take_profit_order_id, lambda o: o.status == S.ORDER_STATUS_OPEN)
    await close_long(live, quantity="0.01")
    exchange.set_price(BTC, Decimal("51200"))
    # Sent for 0.02, the exchange would have refused it (more than the position holds).
    done = await live.until(
        opened.take_profit_order_id, lambda o: o.status == S.ORDER_STATUS_FILLED
    )
    assert (done.quantity, done.filled_quantity) == ("0.01", "0.01")
    other = await live.until(
        opened.stop_loss_order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED
    )
    assert other.cancel_reason == f"one-cancels-other: {opened.take_profit_order_id} filled"
    closed = await position(live)
    assert (closed.status, closed.size) == (position_pb2.POSITION_STATUS_CLOSED, "0")


async def half_filled_entry(
    live: LiveTrading, exchange: FakeExchange, **exits: str
) -> pos.OpenPositionResponse:
    """An OpenPosition whose 0.02 LIMIT entry at 49000 filled 0.01, its exits held."""
    opened: pos.OpenPositionResponse = await live.oms.positions.OpenPosition(
        long_request(live.venue, type=S.ORDER_TYPE_LIMIT, price="49000", **exits)
    )
    exchange.set_price(BTC, Decimal("48900"), max_fill=Decimal("0.01"))
    prefix, exit_id = (
        ("tp-", opened.take_profit_order_id)
        if opened.take_profit_order_id
        else ("sl-", opened.stop_loss_order_id)
    )
    await live.until_found(prefix + opened.entry_order.order_id)  # placed once the entry fills
    await live.until(exit_id, lambda o: o.status == S.ORDER_STATUS_OPEN)
    return opened


async def assert_entry_cancelled_for_good(
    live: LiveTrading, exchange: FakeExchange, entry_id: str, reason: str
) -> None:
    """Cancelled with 0.01 filled, at the exchange too: its price again fills nothing, and
    the position stays closed."""
    entry = await live.until(entry_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
    assert (entry.filled_quantity, entry.cancel_reason) == ("0.01", reason)
    [at_exchange] = [o for o in exchange.orders(API_KEY) if o.client_id == f"oms{entry_id}"]
    assert at_exchange.status == "canceled"
    # (The exchange fills as the price is set. The OMS no longer follows this mark, as it
    # holds nothing on the symbol now, so it is not waited for.)
    trades = len(exchange.trades(API_KEY))
    exchange.set_price(BTC, Decimal("48900"))
    assert len(exchange.trades(API_KEY)) == trades
    assert (await position(live)).status == position_pb2.POSITION_STATUS_CLOSED
    await live.assert_invariants()


async def test_an_exit_that_fills_cancels_the_rest_of_its_entry(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    opened = await half_filled_entry(
        live, exchange, take_profit_price="52000", stop_loss_price="48500"
    )
    exchange.set_price(BTC, Decimal("52100"))
    await live.until(opened.take_profit_order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    # Nothing is left at the entry's price to reopen the position unprotected.
    await assert_entry_cancelled_for_good(
        live, exchange, opened.entry_order.order_id, f"exit {opened.take_profit_order_id} filled"
    )


async def test_a_close_to_flat_cancels_the_rest_of_a_partly_filled_entry(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    begun = await half_filled_entry(live, exchange, stop_loss_price="47000")
    # A DCA entry below, nothing filled yet: it would open a new trade with exits of its own.
    waiting = await live.oms.positions.OpenPosition(
        long_request(
            live.venue,
            type=S.ORDER_TYPE_LIMIT,
            price="48000",
            stop_loss_price="47000",
            client_order_id="dca-1",
        )
    )
    await close_long(live)
    await assert_entry_cancelled_for_good(
        live, exchange, begun.entry_order.order_id, "position closed"
    )
    assert (await live.get(waiting.entry_order.order_id)).status == S.ORDER_STATUS_OPEN


async def late_filled_entry(live: LiveTrading, exchange: FakeExchange) -> tuple[str, Any]:
    """An OpenPosition entry half filled, its take-profit fired; the cancel of the entry's
    rest is slow to land, and the price comes back through the entry meanwhile: its rest
    fills, 0.01, and opens the side again, with nothing to protect it. The entry's id and
    that late fill."""
    begun = await half_filled_entry(
        live, exchange, take_profit_price="52000", stop_loss_price="47000"
    )
    entry_id = begun.entry_order.order_id
    trade = (await assert_open_with(live, "0.01")).position_id
    exchange.delay_requests(*CANCEL_ROUTE[live.venue], 1.0)
    exchange.set_price(BTC, Decimal("52100"))
    await live.until(begun.take_profit_order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    await live.until(entry_id, lambda o: o.status == S.ORDER_STATUS_PENDING_CANCEL)
    exchange.set_price(BTC, Decimal("48900"))
    entry = await live.until(entry_id, lambda o: o.filled_quantity == "0.02")
    [late] = [fill for fill in await live.fills(entry_id) if fill.position_id != trade]
    assert entry.position_id == late.position_id != trade
    exchange.delay_requests(*CANCEL_ROUTE[live.venue], 0)
    return entry_id, late


async def assert_taken_back(live: LiveTrading, entry_id: str, late: Any) -> None:
    """Closed at market, once: the trade was over."""
    taken_back = await live.until_found(f"fl-{late.fill_id}")
    working = (S.ORDER_STATUS_PENDING_NEW, S.ORDER_STATUS_OPEN)
    taken_back = await live.until(taken_back.order_id, lambda o: o.status not in working)
    assert (taken_back.status, taken_back.type, taken_back.side, taken_back.quantity) == (
        S.ORDER_STATUS_FILLED,
        S.ORDER_TYPE_MARKET,
        S.SIDE_SELL,
        "0.01",
    )
    assert taken_back.reduce_only
    assert (taken_back.parent_order_id, taken_back.position_id) == (entry_id, late.position_id)
    current = await live.oms.positions.GetPosition(
        pos.GetPositionRequest(
            user_id=USER, exchange=live.venue, symbol=BTC, position_side=S.POSITION_SIDE_LONG
        )
    )
    assert (current.position.position_id, current.position.status) == (
        late.position_id,
        position_pb2.POSITION_STATUS_CLOSED,
    )
    await asyncio.sleep(1.5)  # (the entry's cancel has landed, and found it filled)
    # The take-profit and this close: nothing sold twice.
    assert len([o for o in live.exchange.orders(API_KEY) if o.side == "sell"]) == 2
    await live.assert_invariants()


async def test_a_late_fill_of_an_entry_whose_trade_ended_is_taken_back(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    await assert_taken_back(live, *await late_filled_entry(live, exchange))


async def test_a_late_fill_a_crash_left_open_is_taken_back_when_followed_again(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crashed(*args: Any) -> None:
        pass

    monkeypatch.setattr(live.oms.app.exchanges, "_take_back_late_fills", crashed)
    entry_id, late = await late_filled_entry(live, exchange)
    await asyncio.sleep(0.5)
    assert (await assert_open_with(live, "0.01")).position_id == late.position_id
    monkeypatch.undo()
    await follow_again(live)
    await assert_taken_back(live, entry_id, late)


async def next_trade(live: LiveTrading) -> pos.OpenPositionResponse:
    """The next trade's entry (LIMIT 48000, stop-loss 46000), nothing filled yet."""
    response: pos.OpenPositionResponse = await live.oms.positions.OpenPosition(
        long_request(
            live.venue,
            type=S.ORDER_TYPE_LIMIT,
            price="48000",
            stop_loss_price="46000",
            client_order_id="next-trade",
        )
    )
    return response


async def assert_next_trade_kept(live: LiveTrading, later: pos.OpenPositionResponse) -> None:
    """Its entry, which filled 0.01 and reopened the side, and its stop-loss still work."""
    entry = await live.get(later.entry_order.order_id)
    assert (entry.status, entry.cancel_reason) == (S.ORDER_STATUS_PARTIALLY_FILLED, "")
    stop_loss = await live.get(later.stop_loss_order_id)
    assert stop_loss.status == S.ORDER_STATUS_OPEN, stop_loss.cancel_reason


async def test_a_close_cancels_its_own_trades_exits_not_those_of_the_next_one(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = await live.oms.positions.OpenPosition(
        long_request(live.venue, stop_loss_price="47000")
    )
    await live.until_found(f"sl-{opened.entry_order.order_id}")
    later = await next_trade(live)
    later_id = later.entry_order.order_id
    exchanges = live.oms.app.exchanges
    position_closed = exchanges._trailing.position_closed
    reopened = False

    async def meanwhile(*side: Any) -> None:
        # The close's fill is committed (flat) and its follow-ups have begun: the next
        # trade's entry fills now and reopens the side.
        nonlocal reopened
        if not reopened:
            reopened = True
            exchange.set_price(BTC, Decimal("47900"), max_fill=Decimal("0.01"))
            await live.until_found(f"sl-{later_id}")  # its stop-loss, placed on the fill
        await position_closed(*side)

    monkeypatch.setattr(exchanges._trailing, "position_closed", meanwhile)
    await close_long(live)
    assert reopened
    await asyncio.sleep(0.5)  # (any follow-up of the close would have run by now)
    await assert_open_with(live, "0.01")
    await assert_next_trade_kept(live, later)
    # The closed trade's own stop-loss does not stay to close the next trade.
    closed_stop = await live.until(
        opened.stop_loss_order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED
    )
    assert closed_stop.cancel_reason == "position closed"
    await live.assert_invariants()


async def close_meanwhile(
    live: LiveTrading, exchange: FakeExchange, later: pos.OpenPositionResponse | None
) -> None:
    """The position is closed now, by a reduce-only order of its own (ClosePosition would
    cancel the side's exits itself), and, given the next trade (`later`), its entry fills
    and opens the side again."""
    closing = await live.place(
        side=S.SIDE_SELL, type=S.ORDER_TYPE_MARKET, price="", reduce_only=True
    )
    assert closing.status == S.ORDER_STATUS_FILLED
    if later is not None:
        exchange.set_price(BTC, Decimal("47900"), max_fill=Decimal("0.01"))
        await live.until_found(f"sl-{later.entry_order.order_id}")


@pytest.mark.parametrize("reopened", [False, True], ids=["flat", "reopened"])
@pytest.mark.parametrize("stage", ["before-stored", "held"])
async def test_an_exit_placed_while_the_close_commits_is_cancelled_too(
    live: LiveTrading,
    exchange: FakeExchange,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
    reopened: bool,
) -> None:
    later = await next_trade(live) if reopened else None
    exchanges = live.oms.app.exchanges
    closed = False

    async def close_once() -> None:
        nonlocal closed
        if not closed:
            closed = True
            await close_meanwhile(live, exchange, later)

    if stage == "before-stored":
        place_exits = exchanges._place_exits

        async def close_then_place(followed: Any, entry: Any) -> None:
            # The entry's follow-up is about to store its stop-loss: the trade is over now.
            await close_once()
            await place_exits(followed, entry)

        monkeypatch.setattr(exchanges, "_place_exits", close_then_place)
    else:
        judge = exchanges._rules.judge

        async def close_once_held(order: Any) -> None:
            # The stop-loss is committed held, and not yet in the book of held stops.
            if order.parent_order_id:
                await close_once()
            await judge(order)

        monkeypatch.setattr(exchanges._rules, "judge", close_once_held)
    opened = await live.oms.positions.OpenPosition(
        long_request(live.venue, stop_loss_price="47000")
    )
    await live.until_found(f"sl-{opened.entry_order.order_id}")
    assert closed
    await asyncio.sleep(0.5)  # (any follow-up of the close would have run by now)
    stop_loss = await live.get(opened.stop_loss_order_id)
    # Not held on the flat side, nor on the next trade, where it would close that trade.
    assert (stop_loss.status, stop_loss.cancel_reason) == (
        S.ORDER_STATUS_CANCELED,
        "position closed",
    )
    if later is None:
        assert (await position(live)).status == position_pb2.POSITION_STATUS_CLOSED
    else:
        await assert_next_trade_kept(live, later)
    await live.assert_invariants()


async def test_a_trailing_stop_started_after_its_trade_closed_is_not_the_next_trades(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    later = await next_trade(live)
    exchanges = live.oms.app.exchanges
    start_trailing = exchanges._start_trailing
    closed = False

    async def start_after_a_close(entry: Any) -> None:
        nonlocal closed
        if not closed:
            closed = True
            await close_meanwhile(live, exchange, later)
        await start_trailing(entry)

    monkeypatch.setattr(exchanges, "_start_trailing", start_after_a_close)
    opened = await live.oms.positions.OpenPosition(
        long_request(
            live.venue, trailing_stop=trailing_stop_pb2.TrailingStopConfig(callback_rate="0.01")
        )
    )
    request = ts.GetTrailingStopRequest(user_id=USER, trailing_stop_id=opened.trailing_stop_id)
    stop = (await live.oms.trailing_stops.GetTrailingStop(request)).trailing_stop
    assert closed
    # Started on the trade it was opened with, over already, not on the one open now.
    assert (stop.status, stop.status_reason) == (
        trailing_stop_pb2.TRAILING_STOP_STATUS_CANCELED,
        "position_closed",
    )
    assert stop.position_id != (await assert_open_with(live, "0.01")).position_id
    await assert_next_trade_kept(live, later)


def cut_close_follow_ups_short(live: LiveTrading, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on a close's follow-ups, which cancel what its trade left, never run (as
    when a crash cuts in before them)."""

    async def cut_short(*args: Any) -> None:
        pass

    monkeypatch.setattr(live.oms.app.exchanges, "_after_flat", cut_short)


@pytest.mark.parametrize("found_by", ["trigger", "follow"])
async def test_an_exit_a_crash_left_on_its_closed_trade_is_cancelled_not_sent_on_the_next(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch, found_by: str
) -> None:
    opened = await live.oms.positions.OpenPosition(
        long_request(live.venue, stop_loss_price="47000")
    )
    await live.until(opened.stop_loss_order_id, lambda o: o.status == S.ORDER_STATUS_OPEN)
    cut_close_follow_ups_short(live, monkeypatch)
    await close_meanwhile(live, exchange, None)
    # The next trade: 0.01 at 47900, stop-loss 46000.
    later = await live.oms.positions.OpenPosition(
        long_request(
            live.venue, type=S.ORDER_TYPE_LIMIT, price="48000", quantity="0.01",
            stop_loss_price="46000", client_order_id="next-trade",
        )
    )  # fmt: skip
    exchange.set_price(BTC, Decimal("47900"))
    await live.until_found(f"sl-{later.entry_order.order_id}")  # placed once it fills
    await live.until(later.stop_loss_order_id, lambda o: o.status == S.ORDER_STATUS_OPEN)
    assert (await live.get(opened.stop_loss_order_id)).status == S.ORDER_STATUS_OPEN
    if found_by == "trigger":
        exchange.set_price(BTC, Decimal("46950"))  # reaches the closed trade's stop-loss only
    else:  # the account followed again (as at the start after the crash)
        account = {"user_id": USER, "exchange": live.venue}
        await live.accounts.DeactivateAccount(acc.DeactivateAccountRequest(**account))
        await live.accounts.ActivateAccount(acc.ActivateAccountRequest(**account))
    stop_loss = await live.until(
        opened.stop_loss_order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED
    )
    assert (stop_loss.cancel_reason, stop_loss.filled_quantity) == ("position closed", "0")
    await assert_open_with(live, "0.01")
    assert (await live.get(later.stop_loss_order_id)).status == S.ORDER_STATUS_OPEN
    await live.assert_invariants()


async def test_a_trailing_stop_a_crash_left_on_its_closed_trade_does_not_close_the_next(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = await live.oms.positions.OpenPosition(
        long_request(
            live.venue, trailing_stop=trailing_stop_pb2.TrailingStopConfig(callback_rate="0.01")
        )
    )  # active at once: stop price 49500
    cut_close_follow_ups_short(live, monkeypatch)
    await close_meanwhile(live, exchange, None)
    # The next trade: 0.01 bought at 49800, above the closed trade's stop.
    entry = await live.place(price="49800", quantity="0.01")
    exchange.set_price(BTC, Decimal("49700"))
    await live.until(entry.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    exchange.set_price(BTC, Decimal("49400"))  # crosses the closed trade's trailing stop
    stop = await live.until_stop(
        opened.trailing_stop_id,
        lambda s: s.status != trailing_stop_pb2.TRAILING_STOP_STATUS_ACTIVE,
    )
    assert (stop.status, stop.status_reason) == (
        trailing_stop_pb2.TRAILING_STOP_STATUS_CANCELED,
        "position_closed",
    )
    await assert_open_with(live, "0.01")
    await live.assert_invariants()


async def test_a_retry_follow_up_leaves_the_next_trade_its_exits(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The closed trade: a market long placed with a client id, then closed.
    first = await live.place(type=S.ORDER_TYPE_MARKET, price="", client_order_id="trade-a")
    assert first.status == S.ORDER_STATUS_FILLED
    later = await next_trade(live)
    await close_long(live)
    assert (await position(live)).status == position_pb2.POSITION_STATUS_CLOSED
    store = live.oms.app.exchanges._store
    get_position = store.get_position
    armed = True

    async def reopened_meanwhile(*ref: Any) -> Any:
        # _follow_up reads the first trade closed; the next trade's entry fills right after
        # (its fill and its stop-loss are committed while _follow_up reads what the close
        # left moot).
        nonlocal armed
        read = await get_position(*ref)
        if armed:
            armed = False
            exchange.set_price(BTC, Decimal("47900"), max_fill=Decimal("0.01"))
            await asyncio.sleep(0.5)
        return read

    monkeypatch.setattr(store, "get_position", reopened_meanwhile)
    # The retry of the first order (a client that did not hear the answer): its follow-ups.
    again = await live.place(type=S.ORDER_TYPE_MARKET, price="", client_order_id="trade-a")
    assert again.order_id == first.order_id and not armed
    await asyncio.sleep(0.5)
    await assert_next_trade_kept(live, later)
    await live.assert_invariants()


async def test_fills_and_the_orders_they_fill_name_the_trade_they_went_into(
    live: LiveTrading,
) -> None:
    market: dict[str, Any] = {"type": S.ORDER_TYPE_MARKET, "price": ""}
    opening = await live.place(**market)
    first = (await assert_open_with(live, "0.02")).position_id
    adding = await live.place(**market, quantity="0.01")
    closing = await live.place(**market, side=S.SIDE_SELL, reduce_only=True, quantity="0.03")
    assert (await position(live)).status == position_pb2.POSITION_STATUS_CLOSED
    reopening = await live.place(**market)
    second = (await assert_open_with(live, "0.02")).position_id
    assert second != first
    for order, trade in ((opening, first), (adding, first), (closing, first), (reopening, second)):
        assert order.status == S.ORDER_STATUS_FILLED
        assert order.position_id == trade
        assert {fill.position_id for fill in await live.fills(order.order_id)} == {trade}


async def follow_again(live: LiveTrading) -> None:
    """The account followed again, as at the start after a crash: the follow-ups of its
    recent fills run again."""
    account = {"user_id": USER, "exchange": live.venue}
    await live.accounts.DeactivateAccount(acc.DeactivateAccountRequest(**account))
    await live.accounts.ActivateAccount(acc.ActivateAccountRequest(**account))
    await asyncio.sleep(0.5)  # (any follow-up would have run by now)


async def test_the_late_follow_ups_of_an_entry_whose_trade_closed_leave_the_next_trade_alone(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    exchanges = live.oms.app.exchanges
    after_fills = exchanges._after_fills
    crashed = True

    async def cut_short_for_the_first_entry(followed: Any, order: Any, flat: Any) -> None:
        # A crash came between the entry's fill and its follow-ups: no exits yet.
        if not (crashed and order.client_order_id == "trade-a"):
            await after_fills(followed, order, flat)

    monkeypatch.setattr(exchanges, "_after_fills", cut_short_for_the_first_entry)
    opened = await live.oms.positions.OpenPosition(
        long_request(live.venue, stop_loss_price="47000", client_order_id="trade-a")
    )
    trade_a = (await assert_open_with(live, "0.02")).position_id
    await close_meanwhile(live, exchange, later := await next_trade(live))
    assert (await assert_open_with(live, "0.01")).position_id != trade_a
    crashed = False
    # The entry's follow-ups run now, for its own trade, which is over: its stop-loss is
    # not the next trade's, which taken for its trade would hold a second one, for 0.02.
    await follow_again(live)
    assert (await live.get(opened.entry_order.order_id)).position_id == trade_a
    stop_loss = await live.get(opened.stop_loss_order_id)
    assert (stop_loss.status, stop_loss.cancel_reason, stop_loss.position_id) == (
        S.ORDER_STATUS_CANCELED,
        "position closed",
        trade_a,
    )
    await assert_next_trade_kept(live, later)
    await live.assert_invariants()


async def test_a_partly_filled_entry_a_crash_left_on_its_closed_trade_is_cancelled_later(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    begun = await half_filled_entry(live, exchange, stop_loss_price="47000")
    cut_close_follow_ups_short(live, monkeypatch)
    closing = await live.place(
        side=S.SIDE_SELL, type=S.ORDER_TYPE_MARKET, price="", reduce_only=True, quantity="0.01"
    )
    assert closing.status == S.ORDER_STATUS_FILLED
    monkeypatch.undo()
    # The next trade, at market (the rest of the entry, at 49000, does not fill).
    following = await live.place(type=S.ORDER_TYPE_MARKET, price="", quantity="0.01")
    trade_b = (await assert_open_with(live, "0.01")).position_id
    assert following.position_id == trade_b
    # The close's follow-ups, run again, cancel what its trade left, not the next trade.
    await follow_again(live)
    entry = await live.get(begun.entry_order.order_id)
    assert (entry.status, entry.filled_quantity, entry.cancel_reason) == (
        S.ORDER_STATUS_CANCELED,
        "0.01",
        "position closed",
    )
    assert (await assert_open_with(live, "0.01")).position_id == trade_b
    await live.assert_invariants()


async def test_closing_the_position_cancels_both_exits(live: LiveTrading) -> None:
    opened = await open_long(live, take_profit_price="51000", stop_loss_price="49000")
    await live.until(opened.stop_loss_order_id, lambda o: o.status == S.ORDER_STATUS_OPEN)
    await close_long(live)
    for exit_id in (opened.take_profit_order_id, opened.stop_loss_order_id):
        canceled = await live.until(exit_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
        assert canceled.cancel_reason == "position closed"


async def test_an_open_position_trailing_stop_starts_with_the_entry(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    opened = await live.oms.positions.OpenPosition(
        long_request(
            live.venue, trailing_stop=trailing_stop_pb2.TrailingStopConfig(callback_rate="0.01")
        )
    )
    assert opened.entry_order.status == S.ORDER_STATUS_FILLED
    stop = (
        await live.oms.trailing_stops.GetTrailingStop(
            ts.GetTrailingStopRequest(user_id=USER, trailing_stop_id=opened.trailing_stop_id)
        )
    ).trailing_stop
    assert (stop.status, stop.watermark_price, stop.stop_price) == (
        trailing_stop_pb2.TRAILING_STOP_STATUS_ACTIVE,
        "50000",
        "49500",
    )
    exchange.set_price(BTC, Decimal("49400"))
    close = await live.until_found(f"ts-{stop.trailing_stop_id}")
    closed = await live.until(close.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert closed.average_fill_price == "49400"


async def test_an_entry_filled_through_its_stop_loss_exits_at_once(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    # The price gaps through the resting entry and its stop-loss in one move: whether the new
    # mark reaches the OMS before the fill (the stop is sent as soon as it is placed) or after
    # (it is held, then triggered), the position does not stay open without its stop.
    opened = await live.oms.positions.OpenPosition(
        long_request(
            live.venue,
            type=S.ORDER_TYPE_LIMIT,
            price="49000",
            take_profit_price="52000",
            stop_loss_price="48500",
        )
    )
    assert opened.entry_order.status == S.ORDER_STATUS_OPEN
    exchange.set_price(BTC, Decimal("48000"))
    await live.until_found(f"sl-{opened.entry_order.order_id}")  # placed once the entry fills
    stop_loss = await live.until(
        opened.stop_loss_order_id, lambda o: o.status == S.ORDER_STATUS_FILLED
    )
    assert stop_loss.average_fill_price == "48000"
    await live.until(opened.take_profit_order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
    closed = await position(live)
    assert closed.status == position_pb2.POSITION_STATUS_CLOSED
    # (48000 - 49000) x 0.02 x the contract size: 1 BTC on binanceusdm, 0.01 on okx.
    assert closed.realized_pnl == {"binanceusdm": "-20", "okx": "-0.2"}[live.venue]
    await live.assert_invariants()


async def entry_filled_while_down(
    live: LiveTrading, redis_url: str, **exits: Any
) -> pos.OpenPositionResponse:
    """A limit OpenPosition (0.02 LONG at 49500) with `exits`, whose entry fills while the
    OMS is down; the OMS started again, with the fill applied."""
    opened: pos.OpenPositionResponse = await live.oms.positions.OpenPosition(
        long_request(live.venue, type=S.ORDER_TYPE_LIMIT, price="49500", **exits)
    )
    assert opened.entry_order.status == S.ORDER_STATUS_OPEN
    await live.oms.close()
    live.exchange.set_price(BTC, Decimal("49400"))  # the entry fills while nobody watches
    await live.start_again(redis_url)
    assert (await live.get(opened.entry_order.order_id)).status == S.ORDER_STATUS_FILLED
    return opened


async def test_an_entry_that_filled_while_the_oms_was_down_gets_its_exits_at_start(
    live: LiveTrading, exchange: FakeExchange, redis_url: str
) -> None:
    opened = await entry_filled_while_down(
        live, redis_url, take_profit_price="51000", stop_loss_price="48000"
    )
    take_profit = await live.get(opened.take_profit_order_id)
    assert (take_profit.status, take_profit.quantity) == (S.ORDER_STATUS_OPEN, "0.02")
    exchange.set_price(BTC, Decimal("51100"))
    await live.until(opened.take_profit_order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    stop_loss = await live.until(
        opened.stop_loss_order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED
    )
    assert stop_loss.cancel_reason == f"one-cancels-other: {opened.take_profit_order_id} filled"


async def test_an_entry_that_filled_while_the_oms_was_down_gets_its_trailing_stop_at_start(
    live: LiveTrading, exchange: FakeExchange, redis_url: str
) -> None:
    opened = await entry_filled_while_down(
        live,
        redis_url,
        stop_loss_price="48000",
        trailing_stop=trailing_stop_pb2.TrailingStopConfig(callback_rate="0.01"),
    )
    assert (await live.get(opened.stop_loss_order_id)).status == S.ORDER_STATUS_OPEN
    stop = (
        await live.oms.trailing_stops.GetTrailingStop(
            ts.GetTrailingStopRequest(user_id=USER, trailing_stop_id=opened.trailing_stop_id)
        )
    ).trailing_stop
    assert stop.status == trailing_stop_pb2.TRAILING_STOP_STATUS_ACTIVE
    # The account is followed: the stop works, and so do new orders.
    exchange.set_price(BTC, Decimal("48800"))
    close = await live.until_found(f"ts-{stop.trailing_stop_id}")
    await live.until(close.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert (await live.place(price="40000")).status == S.ORDER_STATUS_OPEN


async def test_an_entry_that_filled_through_its_stop_loss_unfollowed_still_has_its_trailing_stop(
    live: LiveTrading,
) -> None:
    # The account is not followed while its entry fills below the stop-loss. When it is
    # again, the mark (followed for another user's position) reaches the stop-loss at once:
    # it closes the position before the entry's follow-ups start the trailing stop. That
    # stop exists all the same, over already.
    await live.add_user("carol")
    carol = opb.PlaceOrderRequest(
        user_id="carol",
        exchange=live.venue,
        symbol=BTC,
        side=S.SIDE_BUY,
        type=S.ORDER_TYPE_MARKET,
        quantity="0.02",
    )
    assert (await live.oms.orders.PlaceOrder(carol)).order.status == S.ORDER_STATUS_FILLED
    await live.until_mark("50000")
    opened = await live.oms.positions.OpenPosition(
        long_request(
            live.venue,
            type=S.ORDER_TYPE_LIMIT,
            price="49000",
            stop_loss_price="48000",
            trailing_stop=trailing_stop_pb2.TrailingStopConfig(callback_rate="0.01"),
        )
    )
    account = {"user_id": USER, "exchange": live.venue}
    await live.accounts.DeactivateAccount(acc.DeactivateAccountRequest(**account))
    live.exchange.set_price(BTC, Decimal("47000"))  # fills the entry, below its stop-loss
    await live.until_mark("47000")
    await live.accounts.ActivateAccount(acc.ActivateAccountRequest(**account))
    await live.until(opened.stop_loss_order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    request = ts.GetTrailingStopRequest(user_id=USER, trailing_stop_id=opened.trailing_stop_id)
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):  # NOT_FOUND until it is started
                stop = (await live.oms.trailing_stops.GetTrailingStop(request)).trailing_stop
                if stop.status == trailing_stop_pb2.TRAILING_STOP_STATUS_CANCELED:
                    break
            await asyncio.sleep(0.05)
    assert stop.status_reason == "position_closed"
    assert (await position(live)).status == position_pb2.POSITION_STATUS_CLOSED


def entry_with_exits(venue: str) -> pos.OpenPositionRequest:
    return long_request(
        venue, take_profit_price="51000", stop_loss_price="49000", client_order_id="entry"
    )


async def fill_then_lose_the_store(exchange: FakeExchange, proxy: RedisFaultProxy) -> LiveTrading:
    """An OpenPosition whose entry's fill is committed, then Redis goes away before its
    exits are."""
    live = await live_trading(await proxy.start(), exchange)
    await exchange.wait_for_private_feed(API_KEY)
    proxy.vanish_after(b'"kind":"fill"')
    with contextlib.suppress(grpc.aio.AioRpcError):  # UNAVAILABLE, if it was the RPC's
        await live.oms.positions.OpenPosition(entry_with_exits(live.venue))
    assert proxy.gone
    return live


async def assert_exits_work(live: LiveTrading, exchange: FakeExchange) -> None:
    """The entry filled once, its two exits held and linked: the take-profit fills, the
    stop-loss is cancelled."""
    entry = (
        await live.oms.orders.GetOrder(opb.GetOrderRequest(user_id=USER, client_order_id="entry"))
    ).order
    assert (entry.status, entry.filled_quantity) == (S.ORDER_STATUS_FILLED, "0.02")
    listed = await live.oms.orders.ListOrders(opb.ListOrdersRequest(user_id=USER))
    exits = {o.stop_price: o for o in listed.orders if o.parent_order_id == entry.order_id}
    assert sorted((price, o.status, o.quantity) for price, o in exits.items()) == [
        ("49000", S.ORDER_STATUS_OPEN, "0.02"),
        ("51000", S.ORDER_STATUS_OPEN, "0.02"),
    ]
    exchange.set_price(BTC, Decimal("51100"))
    await live.until(exits["51000"].order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    await live.until(exits["49000"].order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
    await live.assert_invariants()


async def test_exits_lost_with_the_store_right_after_the_fill_are_placed_at_the_next_start(
    exchange: FakeExchange, proxy: RedisFaultProxy, redis_url: str
) -> None:
    live = await fill_then_lose_the_store(exchange, proxy)
    await live.oms.close()
    await live.start_again(redis_url)
    try:
        await assert_exits_work(live, exchange)
    finally:
        await live.oms.close()


async def test_exits_lost_with_the_store_right_after_the_fill_are_placed_by_the_retry(
    exchange: FakeExchange, proxy: RedisFaultProxy
) -> None:
    live = await fill_then_lose_the_store(exchange, proxy)
    try:
        proxy.come_back()
        retried = await live.oms.positions.OpenPosition(entry_with_exits(live.venue))
        assert retried.take_profit_order_id and retried.stop_loss_order_id
        await assert_exits_work(live, exchange)
    finally:
        await live.oms.close()


STOP_LOSS = b'"client_order_id":"sl-'  # only in a stop-loss's own document


async def open_without_stop_loss(
    live: LiveTrading, proxy: RedisFaultProxy
) -> pos.OpenPositionResponse:
    """An OpenPosition whose entry fills while every reply to a write of its stop-loss is
    lost (a failover, say): answered with its entry, the stop-loss stored at most (and
    accepted at most by the poll, which finds it stored, its reply lost too), never held.
    The replies stay lost."""
    proxy.lose_reply_to(STOP_LOSS, times=1000)
    opened = await live.oms.positions.OpenPosition(entry_with_exits(live.venue))
    entry = opened.entry_order
    assert (entry.status, entry.filled_quantity) == (S.ORDER_STATUS_FILLED, "0.02")
    listed = await live.oms.orders.ListOrders(opb.ListOrdersRequest(user_id=USER))
    assert {o.order_id: o.status for o in listed.orders}.get(opened.stop_loss_order_id) in (
        None,
        S.ORDER_STATUS_PENDING_NEW,
        S.ORDER_STATUS_OPEN,
    )
    return opened


async def assert_exits_placed_once_redis_takes_them(
    live: LiveTrading, proxy: RedisFaultProxy, opened: pos.OpenPositionResponse
) -> None:
    proxy.lose_reply_to(STOP_LOSS, times=0)
    await live.until_found(f"sl-{opened.entry_order.order_id}")
    await live.until(opened.stop_loss_order_id, lambda o: o.status == S.ORDER_STATUS_OPEN)
    await assert_exits_work(live, live.exchange)


async def test_exits_a_store_failure_kept_from_being_placed_are_placed_once_it_answers(
    live_via_proxy: LiveTrading, proxy: RedisFaultProxy
) -> None:
    # In the background, with no retry or restart.
    opened = await open_without_stop_loss(live_via_proxy, proxy)
    await assert_exits_placed_once_redis_takes_them(live_via_proxy, proxy, opened)


async def test_an_activation_whose_follow_ups_meet_a_store_failure_follows_the_account(
    live_via_proxy: LiveTrading, proxy: RedisFaultProxy
) -> None:
    # The account is deactivated before Redis takes the stop-loss, then activated while
    # Redis still refuses it: the activation succeeds, the account is followed in full,
    # and what its fills left undone is done once Redis takes it.
    live = live_via_proxy
    opened = await open_without_stop_loss(live, proxy)
    account = {"user_id": USER, "exchange": live.venue}
    await live.accounts.DeactivateAccount(acc.DeactivateAccountRequest(**account))
    await live.accounts.ActivateAccount(acc.ActivateAccountRequest(**account))
    await assert_exits_placed_once_redis_takes_them(live, proxy, opened)
