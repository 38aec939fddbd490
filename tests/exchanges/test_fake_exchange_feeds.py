"""The fake exchange's websocket feeds against real ccxt.pro 4.5.90, built as the OMS builds
its instances (`build` below). Each test runs for Binance USD-M and for OKX.

What ccxt.pro does with them (pinned by the tests below):
* watch_orders() / watch_my_trades() without a symbol follow every symbol of the account.
  With ccxt's default newUpdates=True each call returns only the orders (trades) that changed
  since the previous call, as the cached dicts themselves (later updates mutate them); two
  updates of one order between calls show as one, in its latest state.
* A watch_* call only wakes on a message that arrives while it waits: an update that lands
  between two calls is returned by the next call, but only once another message arrives.
* A dropped socket makes every pending watch_* raise NetworkError ("Connection closed by
  remote server, closing code 1001"); the next watch_* reconnects (Binance reuses the
  listenKey, OKX logs in again).
* OKX's watch_my_trades reports the fee as sent, negative for a fee paid (fillFee), unlike
  fetch_my_trades; Binance's is positive on both.
* A fill that arrives after the cancel (delay_fill_events) turns the cached order back from
  "canceled" to "open" on both venues.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import ccxt.pro as ccxt_pro  # type: ignore[import-untyped]
import pytest
from ccxt.base import errors  # type: ignore[import-untyped]
from fixtures.fake_exchange import FakeExchange

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
KEY, SECRET, PASSWORD = "feed-key-1", "feed-secret-1", "feed-pass-1"
CID = "oms01FEEDCLIENTORDER"
WAIT = 2.0  # a missing event fails the test after this long
QUIET = 0.3  # how long "nothing arrives" is watched for

T = TypeVar("T")


def build(exchange: FakeExchange, key: str = KEY) -> Any:
    """A ccxt.pro instance as the OMS builds it (REST and websocket on the fake)."""
    client: Any
    if exchange.venue == "binanceusdm":
        client = ccxt_pro.binanceusdm(
            {"apiKey": key, "secret": SECRET, "enableRateLimit": False, "timeout": 1000,
             "options": {"fetchCurrencies": False,
                         # else every new private socket first GETs leverageBracket + positionRisk
                         "watchPositions": {"fetchPositionsSnapshot": False}}}
        )  # fmt: skip
    else:
        client = ccxt_pro.okx(
            {"apiKey": key, "secret": SECRET, "password": PASSWORD, "enableRateLimit": False,
             "timeout": 1000, "options": {"fetchMarkets": {"types": ["swap"]}}}
        )  # fmt: skip
        client.has["fetchCurrencies"] = False
    client.urls["api"] = exchange.rehost(client.urls["api"])
    return client


@pytest.fixture(params=["binanceusdm", "okx"])
def exchange(request: pytest.FixtureRequest) -> FakeExchange:
    name = "binance_exchange" if request.param == "binanceusdm" else "okx_exchange"
    fake: FakeExchange = request.getfixturevalue(name)
    fake.add_account(KEY, SECRET, PASSWORD)
    fake.set_price(BTC, Decimal("50000"))
    fake.set_price(ETH, Decimal("3000"))
    return fake


@pytest.fixture
async def client(exchange: FakeExchange) -> AsyncIterator[Any]:
    ccxt_client = build(exchange)
    await ccxt_client.load_markets()
    try:
        yield ccxt_client
    finally:
        ccxt_client.timeout_on_exit = 0  # ccxt otherwise sleeps 250 ms in close()
        await ccxt_client.close()


async def pending(watch: Awaitable[T]) -> asyncio.Task[T]:
    """Start a watch_* call and let it register before anything is sent."""
    task = asyncio.ensure_future(watch)
    for _ in range(5):
        await asyncio.sleep(0)
    return task


async def result(task: Awaitable[T]) -> T:
    return await asyncio.wait_for(task, WAIT)


async def watch_until(
    first: Awaitable[list[Any]],
    again: Callable[[], Awaitable[list[Any]]],
    done: Callable[[list[dict[str, Any]]], bool],
) -> list[dict[str, Any]]:
    """Copies of what `first`, then repeated `again()` calls, return until done(all of it).
    Two updates can come back as one (the second landed before the watcher woke up) or as
    two, so waiting for a state is the only reliable way (the OMS must do the same)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        seen += [dict(row) for row in await first]  # ccxt mutates its cached dicts later
        while not done(seen):
            seen += [dict(row) for row in await again()]
    return seen


async def quiet(task: asyncio.Task[Any]) -> None:
    """The watch stays pending: nothing arrived."""
    done, _ = await asyncio.wait({task}, timeout=QUIET)
    assert not done, task.result()


def side(exchange: FakeExchange, position_side: str = "LONG") -> dict[str, str]:
    if exchange.venue == "binanceusdm":
        return {"positionSide": position_side}
    return {"posSide": position_side.lower()}


async def place(
    client: Any, exchange: FakeExchange, price: str | None = "49000", cid: str = CID
) -> Any:
    kind = "limit" if price is not None else "market"
    params = {"clientOrderId": cid, **side(exchange)}
    return await client.create_order(BTC, kind, "buy", "0.02", price, params)


def fee_cost(exchange: FakeExchange, trade: Any) -> Decimal:
    """The fee paid, from a ccxt trade of watch_my_trades (OKX's comes negative)."""
    cost = Decimal(str(trade["fee"]["cost"]))
    return -cost if exchange.venue == "okx" else cost


# -- watch_orders / watch_my_trades -------------------------------------------------------------


async def test_watch_orders_sees_acceptance_partial_and_final_fill(
    client: Any, exchange: FakeExchange
) -> None:
    watch = await pending(client.watch_orders())
    await exchange.wait_for_private_feed(KEY)
    created = await place(client, exchange)
    [accepted] = await result(watch)
    assert (accepted["id"], accepted["clientOrderId"], accepted["symbol"]) == (
        created["id"], CID, BTC,
    )  # fmt: skip
    assert (accepted["status"], accepted["filled"], accepted["amount"]) == ("open", 0, 0.02)
    assert (accepted["price"], accepted["side"]) == (49000, "buy")

    watch = await pending(client.watch_orders())
    exchange.set_price(BTC, Decimal("49000"), max_fill=Decimal("0.01"))
    [partly] = await result(watch)
    assert (partly["id"], partly["clientOrderId"]) == (created["id"], CID)
    assert (partly["status"], partly["filled"], partly["remaining"]) == ("open", 0.01, 0.01)

    watch = await pending(client.watch_orders())
    exchange.set_price(BTC, Decimal("48000"), max_fill=Decimal("0.01"))
    [done] = await result(watch)
    assert (done["id"], done["clientOrderId"]) == (created["id"], CID)
    assert (done["status"], done["filled"], done["average"]) == ("closed", 0.02, 49000)


async def test_watch_orders_follows_every_symbol(client: Any, exchange: FakeExchange) -> None:
    watch = await pending(client.watch_orders())
    await exchange.wait_for_private_feed(KEY)
    eth = await client.create_order(ETH, "limit", "sell", "0.1", "3100", side(exchange, "SHORT"))
    [order] = await result(watch)
    assert (order["id"], order["symbol"], order["status"]) == (eth["id"], ETH, "open")


async def test_watch_my_trades_sees_each_trade_once(client: Any, exchange: FakeExchange) -> None:
    watch = await pending(client.watch_my_trades())
    await exchange.wait_for_private_feed(KEY)
    created = await place(client, exchange)
    await quiet(watch)  # an acceptance is no trade

    exchange.set_price(BTC, Decimal("49000"), max_fill=Decimal("0.01"))
    [first] = await result(watch)
    watch = await pending(client.watch_my_trades())
    exchange.set_price(BTC, Decimal("49000"), max_fill=Decimal("0.01"))
    [second] = await result(watch)
    watch = await pending(client.watch_my_trades())
    market = await place(client, exchange, price=None, cid="oms01MARKET")  # taker at 49000
    [third] = await result(watch)

    fakes = exchange.trades(KEY)
    assert [t["id"] for t in (first, second, third)] == [t.trade_id for t in fakes]
    assert [t["order"] for t in (first, second, third)] == [created["id"]] * 2 + [market["id"]]
    assert [t["takerOrMaker"] for t in (first, second, third)] == ["maker", "maker", "taker"]
    for trade, fake in zip((first, second, third), fakes, strict=True):
        assert (trade["symbol"], trade["side"], trade["price"]) == (BTC, "buy", 49000)
        assert Decimal(str(trade["amount"])) == fake.quantity
        assert fee_cost(exchange, trade) == fake.fee and trade["fee"]["currency"] == "USDT"
    assert len(client.myTrades) == 3  # each once
    rest = await client.fetch_my_trades(BTC)
    assert sorted(t["id"] for t in rest) == sorted(t.trade_id for t in fakes)


async def test_raw_messages_carry_the_venue_fields(client: Any, exchange: FakeExchange) -> None:
    """The raw messages carry the venue's own fields (what the OMS may read from `info`)."""
    watch = await pending(client.watch_orders())
    await exchange.wait_for_private_feed(KEY)
    await place(client, exchange, price=None)  # accepted, then filled as taker
    seen = await watch_until(watch, client.watch_orders, lambda s: s[-1]["status"] == "closed")
    assert seen[0]["info"]["x" if exchange.venue == "binanceusdm" else "state"] in (
        "NEW", "live",  # or already the fill, if both came at once
        "TRADE", "filled",
    )  # fmt: skip
    info = seen[-1]["info"]
    [fake] = exchange.trades(KEY)
    if exchange.venue == "binanceusdm":
        assert (info["x"], info["X"], info["c"], info["ps"]) == ("TRADE", "FILLED", CID, "LONG")
        assert (info["t"], info["l"], info["L"], info["z"]) == (
            int(fake.trade_id), "0.02", "50000", "0.02",
        )  # fmt: skip
        assert (Decimal(info["n"]), info["N"], info["m"]) == (fake.fee, "USDT", False)
    else:
        assert (info["state"], info["clOrdId"], info["tradeId"]) == ("filled", CID, fake.trade_id)
        assert (info["fillSz"], info["fillPx"], info["accFillSz"]) == ("0.02", "50000", "0.02")
        assert (Decimal(info["fillFee"]), info["fillFeeCcy"], info["execType"]) == (
            -fake.fee, "USDT", "T",
        )  # fmt: skip


async def test_unknown_api_key_cannot_follow_a_feed(exchange: FakeExchange) -> None:
    stranger = build(exchange, key="nobody")
    try:
        await stranger.load_markets()
        with pytest.raises(errors.AuthenticationError):
            await result(stranger.watch_orders())
    finally:
        stranger.timeout_on_exit = 0
        await stranger.close()


# -- public prices ------------------------------------------------------------------------------


async def test_watch_ticker_and_mark_price_see_set_price(
    client: Any, exchange: FakeExchange
) -> None:
    ticker = await result(client.watch_ticker(BTC))  # the current price first
    assert (ticker["symbol"], ticker["last"]) == (BTC, 50000)
    watch = await pending(client.watch_ticker(BTC))
    exchange.set_price(ETH, Decimal("3100"))  # another symbol: not this watch
    await quiet(watch)
    exchange.set_price(BTC, Decimal("50100.5"))
    assert (await result(watch))["last"] == 50100.5

    mark = await result(client.watch_mark_price(ETH))
    assert (mark["symbol"], mark["markPrice"]) == (ETH, 3100)
    watch = await pending(client.watch_mark_price(ETH))
    exchange.set_price(ETH, Decimal("3099.99"))
    assert (await result(watch))["markPrice"] == 3099.99


# -- faults -------------------------------------------------------------------------------------


async def test_drop_raises_network_error_and_the_next_watch_reconnects(
    client: Any, exchange: FakeExchange
) -> None:
    orders = await pending(client.watch_orders())
    trades = await pending(client.watch_my_trades())
    await exchange.wait_for_private_feed(KEY)
    exchange.faults.drop_private_feeds()
    for watch in (orders, trades):
        with pytest.raises(errors.NetworkError, match="closed by remote server"):
            await result(watch)
    assert exchange.private_feeds(KEY) == 0

    created = await place(client, exchange)  # while disconnected: held for the reconnect
    [accepted] = await result(client.watch_orders())
    assert (accepted["id"], accepted["status"]) == (created["id"], "open")
    watch = await pending(client.watch_orders())
    exchange.set_price(BTC, Decimal("48000"))
    assert [o["status"] for o in await result(watch)] == ["closed"]
    sockets = [path for method, path, _ in exchange.requests if method == "WS"]
    assert len(sockets) == 2
    listen_keys = [r for r in exchange.requests if r[:2] == ("POST", "/fapi/v1/listenKey")]
    assert len(listen_keys) == (1 if exchange.venue == "binanceusdm" else 0)  # reused


async def test_drop_losing_events_until_the_reconnect(client: Any, exchange: FakeExchange) -> None:
    watch = await pending(client.watch_orders())
    await exchange.wait_for_private_feed(KEY)
    exchange.faults.drop_private_feeds(lose_events_until_reconnect=True)
    with pytest.raises(errors.NetworkError):
        await result(watch)
    lost = await place(client, exchange, cid="oms01LOST")

    watch = await pending(client.watch_orders())
    await exchange.wait_for_private_feed(KEY)
    await quiet(watch)
    seen = await place(client, exchange, cid="oms01SEEN")
    assert [o["id"] for o in await result(watch)] == [seen["id"]]
    assert {o["id"] for o in await client.fetch_open_orders(BTC)} == {lost["id"], seen["id"]}


async def test_muted_events_never_arrive_but_rest_lists_them(
    client: Any, exchange: FakeExchange
) -> None:
    orders = await pending(client.watch_orders())
    trades = await pending(client.watch_my_trades())
    await exchange.wait_for_private_feed(KEY)
    exchange.faults.mute_private_feeds()
    muted = await place(client, exchange, cid="oms01MUTED")
    exchange.set_price(BTC, Decimal("48000"))  # fills it
    await quiet(orders)
    await quiet(trades)
    assert exchange.private_feeds(KEY) == 1  # the socket is still up

    exchange.faults.unmute_private_feeds()
    heard = await place(client, exchange, price=None, cid="oms01HEARD")
    seen = await watch_until(orders, client.watch_orders, lambda s: s[-1]["status"] == "closed")
    assert {o["id"] for o in seen} == {heard["id"]}
    [trade] = await result(trades)
    assert trade["order"] == heard["id"]
    # The muted fill is only known to REST.
    rest = await client.fetch_my_trades(BTC)
    assert sorted(t["order"] for t in rest) == sorted([muted["id"], heard["id"]])
    assert (await client.fetch_order(muted["id"], BTC))["status"] == "closed"


async def test_a_delayed_fill_arrives_after_the_cancel(client: Any, exchange: FakeExchange) -> None:
    exchange.faults.delay_fill_events(0.3)
    watch = await pending(client.watch_orders())
    await exchange.wait_for_private_feed(KEY)
    created = await place(client, exchange)
    [accepted] = await result(watch)  # not a fill: on time
    assert accepted["status"] == "open"

    watch = await pending(client.watch_orders())
    trades = await pending(client.watch_my_trades())
    exchange.faults.fill_on_cancel(Decimal("0.01"))
    await client.cancel_order(created["id"], BTC)  # fills 0.01, then cancels
    [canceled] = await result(watch)
    assert (canceled["status"], canceled["filled"]) == ("canceled", 0.01)
    assert not trades.done()

    watch = await pending(client.watch_orders())
    [late] = await result(watch)
    [trade] = await result(trades)
    assert (trade["order"], trade["amount"]) == (created["id"], 0.01)
    # The late fill's own status wins in ccxt's cache: the order looks open again.
    assert (late["id"], late["status"], late["filled"]) == (created["id"], "open", 0.01)
    raw = "x" if exchange.venue == "binanceusdm" else "state"
    assert late["info"][raw] == ("TRADE" if exchange.venue == "binanceusdm" else "partially_filled")
