"""MarketDataService: synchronous ticks, last prices, price streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from decimal import Decimal
from typing import cast

import grpc
import pytest
from fixtures.oms_server import OmsHarness
from fixtures.positions import expect_code
from fixtures.rules import FILLED, create_rule
from fixtures.trading import BTC, get, place
from tradingboost.oms.v1 import market_data_pb2, order_pb2
from tradingboost.oms.v1 import market_data_service_pb2 as md

from oms.engine.market_data import MarketData, Tick
from oms.engine.ports import PriceUpdate

S = order_pb2


def ticks(*items: tuple[str, str]) -> md.PublishPricesRequest:
    return md.PublishPricesRequest(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=s, price=p) for s, p in items]
    )


async def test_publish_applies_ticks_in_order_and_answers_with_unified_symbols(
    oms: OmsHarness,
) -> None:
    await oms.market.PublishPrices(ticks(("BTC-USDT-SWAP", "50000")))
    buy = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000")
    sell = await place(oms, side=S.SIDE_SELL, type=S.ORDER_TYPE_LIMIT, price="51000")
    response = await oms.market.PublishPrices(
        ticks(("BTC-USDT-SWAP", "48000.5"), ("BTC/USDT:USDT", "52000"))
    )
    assert [(p.symbol, p.price) for p in response.prices] == [
        ("BTC/USDT:USDT", "48000.5"),
        ("BTC/USDT:USDT", "52000"),
    ]
    # Returned only after both ticks' fills were committed.
    assert (await get(oms, buy.order_id)).status == S.ORDER_STATUS_FILLED
    assert (await get(oms, sell.order_id)).status == S.ORDER_STATUS_FILLED
    last = await oms.market.GetPrice(md.GetPriceRequest(exchange="paper", symbol="BTC-USDT-SWAP"))
    assert (last.price.symbol, last.price.price) == ("BTC/USDT:USDT", "52000")
    assert last.price.time.seconds > 0


async def test_price_stream_carries_only_the_instruments_asked_for(oms: OmsHarness) -> None:
    stream = oms.market.StreamPrices(
        md.StreamPricesRequest(
            instruments=[market_data_pb2.Instrument(exchange="paper", symbol="ETH-USDT-SWAP")]
        )
    )
    # The subscription starts when the server handles the call: publish until it is seen.
    first = asyncio.ensure_future(stream.read())
    while not first.done():
        await oms.market.PublishPrices(ticks(("ETH/USDT:USDT", "3000")))
        await asyncio.sleep(0.01)
    assert cast(md.StreamPricesResponse, await first).price.symbol == "ETH/USDT:USDT"
    await oms.market.PublishPrices(ticks(("BTC/USDT:USDT", "50000"), ("ETH/USDT:USDT", "3001.5")))
    while True:
        update = cast(md.StreamPricesResponse, await asyncio.wait_for(stream.read(), 5))
        if update.price.price != "3000":
            break
    assert (update.price.symbol, update.price.price) == ("ETH/USDT:USDT", "3001.5")
    stream.cancel()


def instruments(*symbols: str) -> list[market_data_pb2.Instrument]:
    return [market_data_pb2.Instrument(exchange="paper", symbol=s) for s in symbols]


async def test_a_price_stream_with_last_prices_starts_with_them_in_the_order_asked(
    oms: OmsHarness,
) -> None:
    await oms.market.PublishPrices(ticks(("BTC/USDT:USDT", "50000"), ("ETH/USDT:USDT", "3000")))
    stream = oms.market.StreamPrices(
        md.StreamPricesRequest(
            # SOL has no price yet: nothing to start with. BTC twice: once.
            instruments=instruments(
                "ETH-USDT-SWAP", "SOL/USDT:USDT", "BTC/USDT:USDT", "BTC-USDT-SWAP"
            ),
            with_last_prices=True,
        )
    )
    seen = []
    for _ in range(2):
        update = cast(md.StreamPricesResponse, await asyncio.wait_for(stream.read(), 5))
        seen.append((update.price.symbol, update.price.price))
    assert seen == [("ETH/USDT:USDT", "3000"), ("BTC/USDT:USDT", "50000")]
    await oms.market.PublishPrices(ticks(("SOL/USDT:USDT", "150")))
    update = cast(md.StreamPricesResponse, await asyncio.wait_for(stream.read(), 5))
    assert (update.price.symbol, update.price.price) == ("SOL/USDT:USDT", "150")
    stream.cancel()


async def test_streams_opened_while_ticks_flow_miss_none_and_repeat_none(
    oms: OmsHarness,
) -> None:
    # Each stream's first price is the last one when it opened; every later tick follows
    # once, in order, even when it opened between a tick's commit and its delivery.
    last = 100
    await oms.market.PublishPrices(ticks(("BTC/USDT:USDT", "50000")))

    async def publish() -> None:
        for step in range(1, last + 1):
            await oms.market.PublishPrices(ticks(("BTC/USDT:USDT", str(50000 + step))))

    async def watch() -> list[int]:
        stream = oms.market.StreamPrices(
            md.StreamPricesRequest(instruments=instruments("BTC/USDT:USDT"), with_last_prices=True)
        )
        steps: list[int] = []
        while not steps or steps[-1] < last:
            update = cast(md.StreamPricesResponse, await asyncio.wait_for(stream.read(), 10))
            steps.append(int(update.price.price) - 50000)
        stream.cancel()
        return steps

    publisher = asyncio.ensure_future(publish())
    watchers: list[asyncio.Future[list[int]]] = []
    while not publisher.done() and len(watchers) < 40:
        watchers.append(asyncio.ensure_future(watch()))
        await asyncio.sleep(0.002)
    for steps in await asyncio.gather(*watchers):
        assert steps == list(range(steps[0], last + 1))
    assert len(watchers) == 40


async def tick_held_back_by_its_rule(oms: OmsHarness) -> asyncio.Future[list[PriceUpdate]]:
    """A tick at 48900 that fires a rule, so that its delivery waits for the rule's cancel:
    returned committed, not yet delivered."""
    await oms.market.PublishPrices(ticks(("BTC/USDT:USDT", "50000")))
    trigger = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000")
    other = await place(oms, type=S.ORDER_TYPE_LIMIT, side=S.SIDE_SELL, price="60000")
    await create_rule(oms.orders, "alice", trigger.order_id, FILLED, [other.order_id])
    paper = oms.app.paper
    first = asyncio.ensure_future(oms.app.market_data.publish([Tick("paper", BTC, "48900")]))
    # Every loop turn: the window between the commit and the delivery is short.
    while (last := paper.last_price(BTC)) is None or last.price != Decimal("48900"):  # noqa: ASYNC110
        await asyncio.sleep(0)
    return first


def btc_with_last(market: MarketData) -> AsyncGenerator[PriceUpdate, None]:
    return cast(AsyncGenerator[PriceUpdate, None], market.follow([("paper", BTC)], with_last=True))


async def the_rest(stream: AsyncGenerator[PriceUpdate, None]) -> list[Decimal]:
    """The prices the stream sends until it is quiet for 0.5 s; then closes it."""
    seen = []
    with contextlib.suppress(TimeoutError):
        while True:
            seen.append((await asyncio.wait_for(anext(stream), 0.5)).price)
    await stream.aclose()
    return seen


async def test_a_tick_delivered_after_a_later_one_is_not_sent_twice(oms: OmsHarness) -> None:
    # The first tick fires a rule, and is delivered only after the rule's cancel; a second
    # publisher's tick commits and is delivered meanwhile. A stream opened between the
    # first's commit and its delivery starts with it, and must not get it again.
    first = await tick_held_back_by_its_rule(oms)
    market = oms.app.market_data
    stream = btc_with_last(market)
    seen = [(await anext(stream)).price]
    second = asyncio.ensure_future(market.publish([Tick("paper", BTC, "48800")]))
    await asyncio.gather(first, second)
    seen += await the_rest(stream)
    assert seen == [Decimal("48900"), Decimal("48800")]


async def test_a_tick_delivered_after_a_newer_one_is_not_sent_after_it(oms: OmsHarness) -> None:
    # The first tick's delivery waits for its rule; a newer one is delivered meanwhile and
    # is the last price when the stream opens: the first must not follow it.
    first = await tick_held_back_by_its_rule(oms)
    market = oms.app.market_data
    await market.publish([Tick("paper", BTC, "48800")])
    stream = btc_with_last(market)
    seen = [(await anext(stream)).price]
    await first
    seen += await the_rest(stream)
    assert seen == [Decimal("48800")]


async def test_get_market_gives_the_trading_rules_by_symbol_or_market_id(oms: OmsHarness) -> None:
    for symbol in ("BTC/USDT:USDT", "BTC-USDT-SWAP"):
        response = await oms.market.GetMarket(md.GetMarketRequest(exchange="paper", symbol=symbol))
        assert response.market == market_data_pb2.Market(
            exchange="paper",
            symbol="BTC/USDT:USDT",
            market_id="BTC-USDT-SWAP",
            settle="USDT",
            contract_size="1",
            amount_step="0.001",
            min_amount="0.001",
            price_tick="0.01",
            max_leverage=125,
        )


@pytest.mark.parametrize(
    ("field", "request_"),
    [
        ("symbol", md.GetMarketRequest(exchange="paper", symbol="DOGE/USDT:USDT")),
        ("symbol", md.GetMarketRequest(exchange="paper")),
        ("exchange", md.GetMarketRequest(exchange="nope", symbol="BTC/USDT:USDT")),
    ],
)
async def test_get_market_names_what_it_does_not_know(
    oms: OmsHarness, field: str, request_: md.GetMarketRequest
) -> None:
    message = await expect_code(oms.market.GetMarket(request_), grpc.StatusCode.INVALID_ARGUMENT)
    assert message.startswith(field)


@pytest.mark.parametrize(
    ("symbol", "hint"),
    [
        ("BTC/USDT", "(did you mean 'BTC/USDT:USDT'?)"),
        ("btc-usdt-swap", "(did you mean 'BTC-USDT-SWAP'?)"),
        ("eth/usdt:usdt", "(did you mean 'ETH/USDT:USDT'?)"),
        ("BTC/USTD:USDT", "(did you mean 'BTC/USDT:USDT'?)"),
    ],
)
async def test_an_unknown_symbol_names_the_nearest_one(
    oms: OmsHarness, symbol: str, hint: str
) -> None:
    request = md.GetMarketRequest(exchange="paper", symbol=symbol)
    message = await expect_code(oms.market.GetMarket(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert message == f"symbol: unknown symbol {symbol!r} on paper {hint}"


async def test_a_market_the_exchange_does_not_have_gets_no_hint(oms: OmsHarness) -> None:
    # Not a typo of SOL/USDT:USDT, though most of it is the same.
    request = md.GetMarketRequest(exchange="paper", symbol="DOGE/USDT:USDT")
    message = await expect_code(oms.market.GetMarket(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert message == "symbol: unknown symbol 'DOGE/USDT:USDT' on paper"


async def test_a_real_exchange_without_an_active_account_is_failed_precondition(
    oms: OmsHarness,
) -> None:
    # Known by its ccxt id, but nothing of it is loaded yet: not an unknown exchange.
    for call in (
        oms.market.GetMarket(md.GetMarketRequest(exchange="okx", symbol="BTC/USDT:USDT")),
        oms.market.GetPrice(md.GetPriceRequest(exchange="okx", symbol="BTC/USDT:USDT")),
    ):
        message = await expect_code(call, grpc.StatusCode.FAILED_PRECONDITION)
        assert message.startswith("exchange: no account is active on okx")
