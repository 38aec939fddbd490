"""The local fake exchange against real ccxt 4.5.90, built exactly as the OMS builds its
instances (URLs re-hosted to the fake). Each test runs for Binance USD-M and for OKX.

What ccxt raises for each fault (pinned by the tests below):

| fault                         | binanceusdm                      | okx                      |
|-------------------------------|----------------------------------|--------------------------|
| accept_then_timeout           | RequestTimeout                   | RequestTimeout           |
| *_accept/*_cancel http_503    | ExchangeNotAvailable             | ExchangeNotAvailable     |
| *_accept/*_cancel disconnect  | ExchangeNotAvailable             | ExchangeNotAvailable     |
| binance_1007 / okx_50004      | RequestTimeout                   | RequestTimeout           |
| duplicate_on_submit           | ExchangeError (code -4116)       | InvalidOrder (51016)     |
| rate_limit 429                | DDoSProtection ("429" in text)   | RateLimitExceeded        |
| rate_limit 418                | DDoSProtection ("418" in text)   | RateLimitExceeded        |
| fill_on_cancel, nothing left  | OrderNotFound (-2011)            | OrderNotFound (51400)    |

Binance's futures-only codes (-2019, -4116, -5022, ...) sit in ccxt's `exceptions["linear"]`,
which ccxt consults only for URLs starting with https://fapi.binance.com/; on a re-hosted URL
they fall through to ExchangeError. The tests show that merging that table restores them.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async  # type: ignore[import-untyped]
import pytest
from ccxt.base import errors  # type: ignore[import-untyped]
from fixtures.fake_exchange import FakeExchange

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
KEY, SECRET, PASSWORD = "test-key-1", "test-secret-1", "test-pass-1"
CID = "oms01JXYZABCDEFGHJKMNPQRSTV"
SIZE = {"binanceusdm": Decimal(1), "okx": Decimal("0.01")}  # BTC contract size


def rehost(urls: Any, base: str) -> Any:
    if isinstance(urls, str):
        return re.sub(r"^https?://[^/]+", base, urls)
    if isinstance(urls, dict):
        return {key: rehost(value, base) for key, value in urls.items()}
    return urls


def build(exchange: FakeExchange, key: str = KEY, secret: str = SECRET, pw: str = PASSWORD) -> Any:
    """A ccxt instance as the OMS builds it."""
    client: Any
    if exchange.venue == "binanceusdm":
        client = ccxt_async.binanceusdm(
            {"apiKey": key, "secret": secret, "password": "", "enableRateLimit": False,
             "timeout": 1000, "options": {"fetchCurrencies": False}}
        )  # fmt: skip
    else:
        client = ccxt_async.okx(
            {"apiKey": key, "secret": secret, "password": pw, "enableRateLimit": False,
             "timeout": 1000, "options": {"fetchMarkets": {"types": ["swap"]}}}
        )  # fmt: skip
        client.has["fetchCurrencies"] = False
    client.urls["api"] = rehost(client.urls["api"], exchange.url)
    return client


@pytest.fixture(params=["binanceusdm", "okx"])
def exchange(request: pytest.FixtureRequest) -> FakeExchange:
    # Synchronous on purpose: an async fixture cannot getfixturevalue() an async fixture
    # (pytest-asyncio would start the loop inside the running loop).
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
        await close(ccxt_client)


async def close(ccxt_client: Any) -> None:
    ccxt_client.timeout_on_exit = 0  # ccxt otherwise sleeps 250 ms in close()
    await ccxt_client.close()


def side(exchange: FakeExchange, position_side: str = "LONG") -> dict[str, str]:
    if exchange.venue == "binanceusdm":
        return {"positionSide": position_side}
    return {"posSide": position_side.lower()}


async def place(
    client: Any,
    exchange: FakeExchange,
    price: str | None = "49000",
    cid: str = CID,
    amount: str = "0.02",
    order_side: str = "buy",
    **extra: Any,
) -> Any:
    kind = "limit" if price is not None else "market"
    params = {"clientOrderId": cid, **side(exchange), **extra}
    return await client.create_order(BTC, kind, order_side, amount, price, params)


async def order_trades(client: Any, exchange: FakeExchange, order_id: str) -> list[Any]:
    # ccxt's binance fetch_order_trades is spot-only; fetch_my_trades with orderId is the way.
    if exchange.venue == "binanceusdm":
        trades: list[Any] = await client.fetch_my_trades(BTC, None, None, {"orderId": order_id})
        return trades
    return list(await client.fetch_order_trades(order_id, BTC))


def fee(exchange: FakeExchange, price: str, amount: str, rate: str) -> Decimal:
    return Decimal(price) * Decimal(amount) * SIZE[exchange.venue] * Decimal(rate)


def venue_code(exchange: FakeExchange) -> str:
    return "binance_1007" if exchange.venue == "binanceusdm" else "okx_50004"


# -- markets, prices, matching ----------------------------------------------------------------


async def test_markets_have_the_venues_precision_and_contract_size(
    client: Any, exchange: FakeExchange
) -> None:
    markets = client.markets
    assert set(markets) == {BTC, ETH}
    btc, eth = markets[BTC], markets[ETH]
    assert btc["swap"] and btc["linear"] and btc["settle"] == "USDT"
    if exchange.venue == "binanceusdm":
        assert (btc["id"], btc["precision"]["price"], btc["precision"]["amount"]) == (
            "BTCUSDT", 0.1, 0.001,
        )  # fmt: skip
        assert (btc["contractSize"], btc["limits"]["amount"]["min"]) == (1, 0.001)
        assert btc["limits"]["cost"]["min"] == 5
        assert (eth["precision"]["price"], eth["precision"]["amount"]) == (0.01, 0.001)
    else:
        assert (btc["id"], btc["precision"]["price"], btc["precision"]["amount"]) == (
            "BTC-USDT-SWAP", 0.1, 0.01,
        )  # fmt: skip
        assert (btc["contractSize"], btc["limits"]["amount"]["min"]) == (0.01, 0.01)
        assert (eth["contractSize"], eth["precision"]["price"]) == (0.1, 0.01)
    assert (await client.fetch_ticker(BTC))["last"] == 50000
    balance = await client.fetch_balance()
    assert balance["USDT"]["total"] == 10000


async def test_a_limit_rests_then_fills_as_maker_on_set_price(
    client: Any, exchange: FakeExchange
) -> None:
    created = await place(client, exchange)
    # OKX's create answer carries ids only: no status, amount or price.
    assert created["status"] == ("open" if exchange.venue == "binanceusdm" else None)
    assert created["clientOrderId"] == CID
    [resting] = exchange.orders(KEY)
    assert (resting.status, resting.client_id, resting.position_side) == ("open", CID, "LONG")
    assert resting.exchange_order_id == created["id"]
    assert [o["id"] for o in await client.fetch_open_orders(BTC)] == [created["id"]]

    exchange.set_price(BTC, Decimal("49500"))  # not reached
    assert (await client.fetch_order(created["id"], BTC, {}))["status"] == "open"
    exchange.set_price(BTC, Decimal("48900"))
    done = await client.fetch_order(created["id"], BTC, {})
    assert (done["status"], done["filled"], done["average"]) == ("closed", 0.02, 49000)
    assert await client.fetch_open_orders(BTC) == []

    [trade] = await order_trades(client, exchange, created["id"])
    [fake_trade] = exchange.trades(KEY)
    expected_fee = fee(exchange, "49000", "0.02", "0.0002")
    assert fake_trade.fee == expected_fee and fake_trade.liquidity == "maker"
    assert (trade["id"], trade["order"], trade["takerOrMaker"]) == (
        fake_trade.trade_id, created["id"], "maker",
    )  # fmt: skip
    assert (trade["price"], trade["amount"], trade["side"]) == (49000, 0.02, "buy")
    assert Decimal(str(trade["fee"]["cost"])) == expected_fee
    assert trade["fee"]["currency"] == "USDT"

    [position] = await client.fetch_positions([BTC])
    assert (position["side"], position["contracts"], position["entryPrice"]) == (
        "long", 0.02, 49000,
    )  # fmt: skip
    balance = await client.fetch_balance()
    upl = (Decimal("48900") - Decimal("49000")) * Decimal("0.02") * SIZE[exchange.venue]
    total = Decimal("10000") - expected_fee + upl
    assert Decimal(str(balance["USDT"]["total"])) == total
    assert exchange.wallet(KEY) == Decimal("10000") - expected_fee


async def test_partial_fills_with_max_fill(client: Any, exchange: FakeExchange) -> None:
    created = await place(client, exchange)
    exchange.set_price(BTC, Decimal("49000"), max_fill=Decimal("0.01"))
    partly = await client.fetch_order(created["id"], BTC, {})
    assert (partly["status"], partly["filled"]) == ("open", 0.01)
    exchange.set_price(BTC, Decimal("48000"), max_fill=Decimal("0.01"))
    done = await client.fetch_order(created["id"], BTC, {})
    assert (done["status"], done["filled"]) == ("closed", 0.02)
    trades = await order_trades(client, exchange, created["id"])
    assert [t["amount"] for t in trades] == [0.01, 0.01]
    assert len({t["id"] for t in trades}) == 2
    assert all(t["price"] == 49000 and t["takerOrMaker"] == "maker" for t in trades)
    since = int(time.time() * 1000) - 60_000
    assert len(await client.fetch_my_trades(BTC, since)) == 2


async def test_market_and_crossing_limit_fill_at_once_as_taker(
    client: Any, exchange: FakeExchange
) -> None:
    market = await place(client, exchange, price=None, cid="m1")
    crossing = await place(client, exchange, price="51000", cid="c1")
    for created in (market, crossing):
        done = await client.fetch_order(created["id"], BTC, {})
        assert (done["status"], done["filled"], done["average"]) == ("closed", 0.02, 50000)
        [trade] = await order_trades(client, exchange, created["id"])
        assert (trade["takerOrMaker"], trade["price"]) == ("taker", 50000)
        assert Decimal(str(trade["fee"]["cost"])) == fee(exchange, "50000", "0.02", "0.0005")
    if exchange.venue == "binanceusdm":
        assert market["status"] == "closed"  # the RESULT answer is already final
    assert [t.liquidity for t in exchange.trades(KEY)] == ["taker", "taker"]
    [position] = await client.fetch_positions([BTC])
    assert position["contracts"] == 0.04


async def test_closing_a_position_realizes_pnl(client: Any, exchange: FakeExchange) -> None:
    await place(client, exchange, price=None, cid="open1")
    exchange.set_price(BTC, Decimal("51000"))
    await place(client, exchange, price=None, cid="close1", order_side="sell")
    assert await client.fetch_positions([BTC]) == []
    size = SIZE[exchange.venue]
    fees = fee(exchange, "50000", "0.02", "0.0005") + fee(exchange, "51000", "0.02", "0.0005")
    assert exchange.wallet(KEY) == Decimal("10000") + 1000 * Decimal("0.02") * size - fees
    with pytest.raises(errors.ExchangeError, match=r"-2022|51169"):  # nothing left to close
        await place(client, exchange, price=None, cid="close2", order_side="sell")


async def test_post_only_and_ioc_that_cannot_rest(client: Any, exchange: FakeExchange) -> None:
    if exchange.venue == "binanceusdm":
        # -5022: refused and not recorded
        with pytest.raises(errors.InvalidOrder, match="-5022"):
            await place(client, exchange, price="51000", cid="po1", postOnly=True)
        ioc = await place(client, exchange, price="49000", cid="ioc1", timeInForce="IOC")
        assert ioc["status"] == "expired"
        assert [(o.client_id, o.status) for o in exchange.orders(KEY)] == [("ioc1", "expired")]
    else:
        # accepted, then cancelled by the venue
        po = await place(client, exchange, price="51000", cid="po1", postOnly=True)
        ioc = await place(client, exchange, price="49000", cid="ioc1", timeInForce="IOC")
        for created in (po, ioc):
            assert (await client.fetch_order(created["id"], BTC, {}))["status"] == "canceled"
        assert [o.status for o in exchange.orders(KEY)] == ["canceled", "canceled"]
        assert [o.time_in_force for o in exchange.orders(KEY)] == ["PO", "IOC"]
    resting = await place(client, exchange, price="49000", cid="po2", postOnly=True)
    assert (await client.fetch_order(resting["id"], BTC, {}))["postOnly"] is True
    assert exchange.trades(KEY) == []


# -- cancel, lookups, refusals ---------------------------------------------------------------


async def test_cancel_and_cancel_again(client: Any, exchange: FakeExchange) -> None:
    created = await place(client, exchange)
    canceled = await client.cancel_order(created["id"], BTC, {})
    # OKX's cancel answer carries ids only.
    assert canceled["status"] == ("canceled" if exchange.venue == "binanceusdm" else None)
    assert canceled["id"] == created["id"]
    assert (await client.fetch_order(created["id"], BTC, {}))["status"] == "canceled"
    assert exchange.orders(KEY)[0].status == "canceled"
    with pytest.raises(errors.OrderNotFound):
        await client.cancel_order(created["id"], BTC, {})


async def test_lookup_by_client_order_id(client: Any, exchange: FakeExchange) -> None:
    created = await place(client, exchange)
    found = await client.fetch_order(None, BTC, {"clientOrderId": CID})
    assert (found["id"], found["clientOrderId"], found["amount"]) == (created["id"], CID, 0.02)
    assert found["price"] == 49000
    with pytest.raises(errors.OrderNotFound):
        await client.fetch_order(None, BTC, {"clientOrderId": "oms01NEVERSENT"})


async def test_unknown_order_is_order_not_found(client: Any, exchange: FakeExchange) -> None:
    with pytest.raises(errors.OrderNotFound):
        await client.fetch_order("123456789", BTC, {})
    with pytest.raises(errors.OrderNotFound):
        await client.cancel_order("123456789", BTC, {})


async def test_bad_credentials_are_authentication_errors(exchange: FakeExchange) -> None:
    bad = [build(exchange, secret="wrong"), build(exchange, key="nobody")]
    if exchange.venue == "okx":
        bad.append(build(exchange, pw="wrong"))
    for ccxt_client in bad:
        try:
            with pytest.raises(errors.AuthenticationError):
                await ccxt_client.fetch_balance()
        finally:
            await close(ccxt_client)
    keys = {key for _, path, key in exchange.requests if "balance" in path or "account" in path}
    assert keys == {KEY, "nobody"}


async def test_insufficient_margin_records_nothing(client: Any, exchange: FakeExchange) -> None:
    amount = "1000" if exchange.venue == "okx" else "10"  # 49,000 / 490,000 of margin
    if exchange.venue == "binanceusdm":
        # -2019 is in ccxt's linear table, which a re-hosted URL does not reach.
        with pytest.raises(errors.ExchangeError, match="-2019") as caught:
            await place(client, exchange, amount=amount)
        assert type(caught.value) is errors.ExchangeError
        client.exceptions["exact"] |= client.exceptions["linear"]["exact"]
    with pytest.raises(errors.InsufficientFunds):
        await place(client, exchange, amount=amount)
    assert exchange.orders(KEY) == []


async def test_off_tick_price_and_off_step_quantity_are_refused(
    client: Any, exchange: FakeExchange
) -> None:
    # ccxt rounds prices and amounts itself, so the raw venue fields are overridden.
    if exchange.venue == "binanceusdm":
        params = {"clientOrderId": CID, **side(exchange)}
        with pytest.raises(errors.BadRequest, match="-4014"):
            await client.create_order(
                BTC, "limit", "buy", "0.02", "49000", params | {"price": "49000.05"}
            )
        with pytest.raises(errors.BadRequest, match="-1111"):
            await client.create_order(
                BTC, "limit", "buy", "0.02", "49000", params | {"quantity": "0.0205"}
            )
    else:
        with pytest.raises(errors.BadRequest, match="51000"):
            await place(client, exchange, px="49000.05")
        with pytest.raises(errors.InvalidOrder, match="51121"):
            await place(client, exchange, sz="0.015")
    assert exchange.orders(KEY) == []


# -- faults ------------------------------------------------------------------------------------

KINDS = ["http_503", "disconnect", "venue_code"]
RAISED = {"http_503": errors.ExchangeNotAvailable, "disconnect": errors.ExchangeNotAvailable,
          "venue_code": errors.RequestTimeout}  # fmt: skip


def kind_for(exchange: FakeExchange, kind: str) -> str:
    return venue_code(exchange) if kind == "venue_code" else kind


async def test_accept_then_timeout(client: Any, exchange: FakeExchange) -> None:
    exchange.faults.accept_then_timeout(hang_s=1.5)
    with pytest.raises(errors.RequestTimeout):
        await place(client, exchange)
    [order] = exchange.orders(KEY)
    assert order.status == "open"
    found = await client.fetch_order(None, BTC, {"clientOrderId": CID})
    assert found["id"] == order.exchange_order_id
    await place(client, exchange, cid="next")  # the fault was used up


@pytest.mark.parametrize("kind", KINDS)
async def test_fail_before_accept(client: Any, exchange: FakeExchange, kind: str) -> None:
    exchange.faults.fail_before_accept(kind_for(exchange, kind))
    with pytest.raises(RAISED[kind]):
        await place(client, exchange)
    assert exchange.orders(KEY) == []
    with pytest.raises(errors.OrderNotFound):
        await client.fetch_order(None, BTC, {"clientOrderId": CID})
    await place(client, exchange)
    assert len(exchange.orders(KEY)) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_ambiguous_accept(client: Any, exchange: FakeExchange, kind: str) -> None:
    exchange.faults.ambiguous_accept(kind_for(exchange, kind))
    with pytest.raises(RAISED[kind]):
        await place(client, exchange, price=None)  # a market order: matched, too
    [order] = exchange.orders(KEY)
    assert (order.status, order.filled) == ("filled", Decimal("0.02"))
    assert (await client.fetch_order(None, BTC, {"clientOrderId": CID}))["status"] == "closed"


async def test_duplicate_on_submit(client: Any, exchange: FakeExchange) -> None:
    exchange.faults.duplicate_on_submit()
    if exchange.venue == "binanceusdm":
        with pytest.raises(errors.ExchangeError, match="-4116") as caught:
            await place(client, exchange)
        assert type(caught.value) is errors.ExchangeError
    else:
        with pytest.raises(errors.InvalidOrder, match="51016"):
            await place(client, exchange)
    [order] = exchange.orders(KEY)
    assert (order.client_id, order.status) == (CID, "open")
    # A real second submit of an open client id is refused the same way, and not recorded.
    with pytest.raises(errors.ExchangeError, match=r"-4116|51016"):
        await place(client, exchange)
    assert len(exchange.orders(KEY)) == 1


async def test_rate_limit(client: Any, exchange: FakeExchange) -> None:
    exchange.faults.rate_limit(count_429=1, count_418=1)
    if exchange.venue == "binanceusdm":
        # ccxt's binance raises DDoSProtection for any 418/429; the status is in the text.
        with pytest.raises(errors.DDoSProtection, match=" 429 ") as first:
            await place(client, exchange, cid="a")
        with pytest.raises(errors.DDoSProtection, match=r" 418 .*IP banned") as second:
            await place(client, exchange, cid="b")
        assert not isinstance(first.value, errors.RateLimitExceeded)
        assert not isinstance(second.value, errors.RateLimitExceeded)
    else:
        # 50011 decides before the HTTP status: both are RateLimitExceeded.
        for cid in ("a", "b"):
            with pytest.raises(errors.RateLimitExceeded, match="50011"):
                await place(client, exchange, cid=cid)
    assert exchange.orders(KEY) == []
    await place(client, exchange, cid="c")
    assert [o.client_id for o in exchange.orders(KEY)] == ["c"]


async def test_fill_on_cancel_partly(client: Any, exchange: FakeExchange) -> None:
    created = await place(client, exchange)
    exchange.faults.fill_on_cancel(Decimal("0.01"))
    await client.cancel_order(created["id"], BTC, {})
    after = await client.fetch_order(created["id"], BTC, {})
    assert (after["status"], after["filled"]) == ("canceled", 0.01)
    [trade] = exchange.trades(KEY)
    assert (trade.quantity, trade.price, trade.liquidity) == (
        Decimal("0.01"), Decimal("49000"), "maker",
    )  # fmt: skip


async def test_fill_on_cancel_fully(client: Any, exchange: FakeExchange) -> None:
    created = await place(client, exchange)
    exchange.faults.fill_on_cancel()
    with pytest.raises(errors.OrderNotFound):
        await client.cancel_order(created["id"], BTC, {})
    after = await client.fetch_order(created["id"], BTC, {})
    assert (after["status"], after["filled"]) == ("closed", 0.02)


@pytest.mark.parametrize("kind", KINDS)
async def test_fail_cancel(client: Any, exchange: FakeExchange, kind: str) -> None:
    created = await place(client, exchange)
    exchange.faults.fail_cancel(kind_for(exchange, kind))
    with pytest.raises(RAISED[kind]):
        await client.cancel_order(created["id"], BTC, {})
    assert exchange.orders(KEY)[0].status == "open"
    if kind == "disconnect" and exchange.venue == "binanceusdm":
        # aiohttp resends an idempotent DELETE once on a dropped connection; both dropped.
        cancels = [r for r in exchange.requests if r[0] == "DELETE"]
        assert len(cancels) == 2
    await client.cancel_order(created["id"], BTC, {})
    assert exchange.orders(KEY)[0].status == "canceled"


@pytest.mark.parametrize("kind", KINDS)
async def test_ambiguous_cancel(client: Any, exchange: FakeExchange, kind: str) -> None:
    created = await place(client, exchange)
    exchange.faults.ambiguous_cancel(kind_for(exchange, kind))
    with pytest.raises(RAISED[kind]):
        await client.cancel_order(created["id"], BTC, {})
    assert exchange.orders(KEY)[0].status == "canceled"


async def test_fault_kinds_are_checked_per_venue(exchange: FakeExchange) -> None:
    foreign = "okx_50004" if exchange.venue == "binanceusdm" else "binance_1007"
    with pytest.raises(ValueError, match=f"fault kind '{foreign}' does not apply"):
        exchange.faults.fail_before_accept(foreign)


async def test_requests_record_the_calling_key(client: Any, exchange: FakeExchange) -> None:
    await place(client, exchange)
    placements = [r for r in exchange.requests if r[0] == "POST" and "order" in r[1]]
    assert [key for *_, key in placements] == [KEY]
    assert all(key == "" for _, path, key in exchange.requests if "exchangeInfo" in path)
