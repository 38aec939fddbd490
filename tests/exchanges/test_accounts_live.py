"""AccountService against the local fake exchange through real ccxt: activation checks the
credentials with the exchange, the active set is listed and paged, and an active account is
followed again after a restart (CONTRACT section 10)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import grpc
import pytest
from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import (
    API_KEY,
    BTC,
    MASTER_KEY,
    PASSWORD,
    SECRET,
    USER,
    LiveTrading,
    exchange_settings,
    live_trading,
)
from fixtures.metrics import plain, scrape
from fixtures.oms_server import connect, make_oms, new_app
from fixtures.redis_proxy import RedisFaultProxy, landed_unanswered
from fixtures.redis_server import free_port
from tradingboost.oms.v1 import account_pb2
from tradingboost.oms.v1 import account_service_pb2 as pb
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as orders_pb
from tradingboost.oms.v1 import position_service_pb2 as pos
from tradingboost.oms.v1 import trailing_stop_service_pb2 as ts

from oms.domain.paging import encode_key_token, listing_of
from oms.engine.accounts import ActiveAccountQuery


async def test_activation_lists_the_account_and_deactivation_stops_trading(
    redis_url: str, okx_exchange: FakeExchange
) -> None:
    okx_exchange.set_price(BTC, Decimal("50000"))
    live = await live_trading(redis_url, okx_exchange)
    try:
        listed = await live.accounts.ListActiveAccounts(pb.ListActiveAccountsRequest())
        [account] = listed.accounts
        assert (account.user_id, account.exchange, account.status) == (
            USER,
            "okx",
            account_pb2.ACCOUNT_STATUS_ACTIVE,
        )
        again = await live.accounts.ActivateAccount(
            pb.ActivateAccountRequest(user_id=USER, exchange="okx")
        )
        assert again.account == account
        off = await live.accounts.DeactivateAccount(
            pb.DeactivateAccountRequest(user_id=USER, exchange="okx")
        )
        assert off.account.status == account_pb2.ACCOUNT_STATUS_INACTIVE
        listed = await live.accounts.ListActiveAccounts(pb.ListActiveAccountsRequest())
        assert list(listed.accounts) == []
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await live.place(price="49000")
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no active account on okx" in (error.value.details() or "")
    finally:
        await live.oms.close()


async def test_credentials_the_exchange_refuses_leave_the_account_inactive(
    redis_url: str, binance_exchange: FakeExchange
) -> None:
    binance_exchange.add_account(API_KEY, SECRET)
    oms = await make_oms(
        redis_url, master_key=MASTER_KEY, exchanges=exchange_settings(binance_exchange)
    )
    try:
        await oms.accounts.RegisterCredentials(
            pb.RegisterCredentialsRequest(
                user_id=USER, exchange="binanceusdm", api_key=API_KEY, secret="wrong-secret"
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await oms.accounts.ActivateAccount(
                pb.ActivateAccountRequest(user_id=USER, exchange="binanceusdm")
            )
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "refused the credentials" in (error.value.details() or "")
        listed = await oms.accounts.ListActiveAccounts(pb.ListActiveAccountsRequest())
        assert list(listed.accounts) == []
    finally:
        await oms.close()


async def test_active_accounts_page_in_user_order_and_filter(
    redis_url: str, okx_exchange: FakeExchange
) -> None:
    users = ["dave", "ann", "bob.x", "bob"]
    oms = await make_oms(
        redis_url, master_key=MASTER_KEY, exchanges=exchange_settings(okx_exchange)
    )
    try:
        for user in users:
            key = f"key-{user}"
            okx_exchange.add_account(key, SECRET, PASSWORD)
            await oms.accounts.RegisterCredentials(
                pb.RegisterCredentialsRequest(
                    user_id=user, exchange="okx", api_key=key, secret=SECRET, password=PASSWORD
                )
            )
            await oms.accounts.ActivateAccount(
                pb.ActivateAccountRequest(user_id=user, exchange="okx")
            )
        first = await oms.accounts.ListActiveAccounts(pb.ListActiveAccountsRequest(page_size=3))
        assert [a.user_id for a in first.accounts] == ["ann", "bob", "bob.x"]
        rest = await oms.accounts.ListActiveAccounts(
            pb.ListActiveAccountsRequest(page_size=3, page_token=first.next_page_token)
        )
        assert ([a.user_id for a in rest.accounts], rest.next_page_token) == (["dave"], "")
        only_bob = await oms.accounts.ListActiveAccounts(
            pb.ListActiveAccountsRequest(user_id="bob")
        )
        assert [a.user_id for a in only_bob.accounts] == ["bob"]
        other_exchange = await oms.accounts.ListActiveAccounts(
            pb.ListActiveAccountsRequest(exchange="binanceusdm")
        )
        assert list(other_exchange.accounts) == []

        # A page token is bound to its listing's filters...
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await oms.accounts.ListActiveAccounts(
                pb.ListActiveAccountsRequest(user_id="bob", page_token=first.next_page_token)
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (error.value.details() or "")
        # ...and one made up for bob's listing (tokens are not signed) still lists only bob's
        # accounts: never those of a user whose id sorts before his.
        listing = listing_of(ActiveAccountQuery("bob", ""))
        for after in ("a", "ann", "bob", "dave"):
            crafted = await oms.accounts.ListActiveAccounts(
                pb.ListActiveAccountsRequest(
                    user_id="bob", page_token=encode_key_token(after, listing)
                )
            )
            assert {a.user_id for a in crafted.accounts} <= {"bob"}, after
    finally:
        await oms.close()


async def test_an_active_account_is_followed_again_after_a_restart(
    redis_url: str, binance_exchange: FakeExchange
) -> None:
    binance_exchange.set_price(BTC, Decimal("50000"))
    live = await live_trading(redis_url, binance_exchange)
    resting = await live.place(price="49000")
    await live.oms.close()
    # Filled while the OMS was down: the start-up reconciliation finds it.
    binance_exchange.set_price(BTC, Decimal("48000"))
    restarted = await make_oms(
        redis_url, master_key=MASTER_KEY, exchanges=exchange_settings(binance_exchange)
    )
    live.oms = restarted
    try:
        filled = await live.get(resting.order_id)
        assert (filled.status, filled.filled_quantity) == (S.ORDER_STATUS_FILLED, "0.02")
        placed = await live.place(price="47000")
        assert placed.status == S.ORDER_STATUS_OPEN
        await live.assert_invariants()
    finally:
        await restarted.close()


@asynccontextmanager
async def restarting_with_exchange_down(
    live: LiveTrading, redis_url: str, exchange: FakeExchange, **overrides: Any
) -> AsyncIterator[asyncio.Task[int]]:
    """Stops `live`'s server and exchange, then starts the server again (with `overrides`
    of its settings): yields its start, which waits for the exchange, with `live.oms` on the
    server meanwhile (it listens, NOT_SERVING, and takes calls)."""
    await live.oms.close()
    await exchange.stop()
    port = free_port()
    app = new_app(
        redis_url,
        listen=f"127.0.0.1:{port}",
        master_key=MASTER_KEY,
        exchanges=exchange_settings(exchange),
        **overrides,
    )
    starting = asyncio.create_task(app.start())
    live.oms = connect(app, port)
    try:
        yield starting
    finally:
        starting.cancel()
        await live.oms.close()


async def test_an_account_deactivated_while_the_start_waits_for_its_exchange_stays_inactive(
    redis_url: str, binance_exchange: FakeExchange
) -> None:
    # A DeactivateAccount answered while the start waits is not undone once the exchange is
    # back.
    binance_exchange.set_price(BTC, Decimal("50000"))
    live = await live_trading(redis_url, binance_exchange)
    async with restarting_with_exchange_down(live, redis_url, binance_exchange) as starting:
        deactivated = await live.oms.accounts.DeactivateAccount(
            pb.DeactivateAccountRequest(user_id=USER, exchange="binanceusdm"),
            wait_for_ready=True,
            timeout=10,
        )
        assert deactivated.account.status == account_pb2.ACCOUNT_STATUS_INACTIVE
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await live.place(price="49000")
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # inactive now
        assert not starting.done()
        await binance_exchange.start()
        await asyncio.wait_for(starting, 10)
        listed = await live.oms.accounts.ListActiveAccounts(pb.ListActiveAccountsRequest())
        assert list(listed.accounts) == []
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await live.place(price="49000")
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert binance_exchange.orders(API_KEY) == []


async def test_while_the_start_waits_for_its_exchange_an_active_account_is_unavailable(
    redis_url: str, binance_exchange: FakeExchange
) -> None:
    # Not FAILED_PRECONDITION "no active account, activate it first": that is not so, and a
    # client would not retry. UNAVAILABLE is retried, and the retry of an order placed
    # before the restart then answers that order.
    binance_exchange.set_price(BTC, Decimal("50000"))
    live = await live_trading(redis_url, binance_exchange)
    placed = await live.place(price="49000", client_order_id="dca-1")
    async with restarting_with_exchange_down(
        live, redis_url, binance_exchange, metrics_listen="127.0.0.1:0"
    ) as starting:
        await live.oms.orders.GetOrder(
            orders_pb.GetOrderRequest(user_id=USER, order_id=placed.order_id),
            wait_for_ready=True,
            timeout=10,
        )
        for client_order_id in ("dca-1", "dca-2"):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await live.place(price="49000", client_order_id=client_order_id)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "is active, but binanceusdm has not been reached" in (
                error.value.details() or ""
            )
        with pytest.raises(grpc.aio.AioRpcError) as error:  # its markets are not loaded yet
            await live.oms.market.GetMarket(md.GetMarketRequest(exchange="binanceusdm", symbol=BTC))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await scrape(live.oms))[plain("oms_accounts_not_reached")] == 1
        assert not starting.done()
        await binance_exchange.start()
        await asyncio.wait_for(starting, 10)
        assert (await scrape(live.oms))[plain("oms_accounts_not_reached")] == 0
        again = await live.place(price="49000", client_order_id="dca-1")
        assert again.order_id == placed.order_id
        assert len(binance_exchange.orders(API_KEY)) == 1


async def test_history_reads_after_a_restart_with_no_active_account(
    redis_url: str, okx_exchange: FakeExchange
) -> None:
    """Markets load with an exchange's first active account; reads of what is stored need
    none, and filter by the unified symbol the orders were stored under."""
    okx_exchange.set_price(BTC, Decimal("50000"))
    live = await live_trading(redis_url, okx_exchange)
    resting = await live.place(price="49000")
    await live.accounts.DeactivateAccount(pb.DeactivateAccountRequest(user_id=USER, exchange="okx"))
    await live.oms.close()
    oms = await make_oms(
        redis_url, master_key=MASTER_KEY, exchanges=exchange_settings(okx_exchange)
    )
    try:
        listed = await oms.orders.ListOrders(
            orders_pb.ListOrdersRequest(user_id=USER, exchange="okx", symbol=BTC)
        )
        assert [o.order_id for o in listed.orders] == [resting.order_id]
        other = await oms.orders.ListOrders(
            orders_pb.ListOrdersRequest(user_id=USER, exchange="okx", symbol="ETH/USDT:USDT")
        )
        assert list(other.orders) == []
        summary = await oms.positions.GetPortfolioSummary(
            pos.GetPortfolioSummaryRequest(user_id=USER, exchange="okx")
        )
        assert summary.portfolio_summary.open_positions == 0
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await oms.positions.GetPosition(
                pos.GetPositionRequest(
                    user_id=USER, exchange="okx", symbol=BTC, position_side=S.POSITION_SIDE_LONG
                )
            )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await oms.orders.ListOrders(
                orders_pb.ListOrdersRequest(user_id=USER, exchange="okx", symbol="X" * 65)
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "symbol" in (error.value.details() or "")
    finally:
        await oms.close()


@pytest.mark.parametrize(
    "rpc", ["PlaceOrder", "OpenPosition", "ClosePosition", "CreateTrailingStop"]
)
async def test_trading_on_a_real_exchange_needs_an_active_account(redis_url: str, rpc: str) -> None:
    oms = await make_oms(redis_url, master_key=MASTER_KEY)
    common: dict[str, Any] = {"user_id": USER, "exchange": "binanceusdm", "symbol": BTC}
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "PlaceOrder": lambda: oms.orders.PlaceOrder(
            orders_pb.PlaceOrderRequest(
                **common, side=S.SIDE_BUY, type=S.ORDER_TYPE_MARKET, quantity="0.01"
            )
        ),
        "OpenPosition": lambda: oms.positions.OpenPosition(
            pos.OpenPositionRequest(
                **common,
                position_side=S.POSITION_SIDE_LONG,
                type=S.ORDER_TYPE_MARKET,
                quantity="0.01",
            )
        ),
        "ClosePosition": lambda: oms.positions.ClosePosition(
            pos.ClosePositionRequest(**common, position_side=S.POSITION_SIDE_LONG)
        ),
        "CreateTrailingStop": lambda: oms.trailing_stops.CreateTrailingStop(
            ts.CreateTrailingStopRequest(
                **common, position_side=S.POSITION_SIDE_LONG, callback_rate="0.01"
            )
        ),
    }
    try:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await calls[rpc]()
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no active account on binanceusdm" in (error.value.details() or "")
    finally:
        await oms.close()


async def test_no_secret_reaches_a_log_line(
    redis_url: str, okx_exchange: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    okx_exchange.set_price(BTC, Decimal("50000"))
    live = await live_trading(redis_url, okx_exchange)
    try:
        order = await live.place(price="49000")
        okx_exchange.set_price(BTC, Decimal("48000"))
        await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
        await live.cancel((await live.place(price="47000")).order_id)
    finally:
        await live.oms.close()
    assert caplog.records, "nothing was logged: the check would prove nothing"
    for secret in (SECRET, PASSWORD, API_KEY, MASTER_KEY):
        assert secret not in caplog.text


async def test_activating_while_the_exchange_is_down_is_unavailable(
    redis_url: str, okx_exchange: FakeExchange
) -> None:
    okx_exchange.add_account(API_KEY, SECRET, PASSWORD)
    oms = await make_oms(
        redis_url, master_key=MASTER_KEY, exchanges=exchange_settings(okx_exchange)
    )
    try:
        await oms.accounts.RegisterCredentials(
            pb.RegisterCredentialsRequest(
                user_id=USER, exchange="okx", api_key=API_KEY, secret=SECRET, password=PASSWORD
            )
        )
        await okx_exchange.stop()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await oms.accounts.ActivateAccount(
                pb.ActivateAccountRequest(user_id=USER, exchange="okx")
            )
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "okx" in (error.value.details() or "")
        listed = await oms.accounts.ListActiveAccounts(pb.ListActiveAccountsRequest())
        assert list(listed.accounts) == []
    finally:
        await oms.close()


async def test_new_credentials_the_exchange_refuses_leave_an_active_account_on_its_old_ones(
    live: LiveTrading,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await live.accounts.RegisterCredentials(
            pb.RegisterCredentialsRequest(
                user_id=USER,
                exchange=live.venue,
                api_key=API_KEY,
                secret="not-the-secret",
                password=PASSWORD,
            )
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "refused the credentials" in (error.value.details() or "")
    # Still followed, on the keys that work.
    assert (await live.place(price="49000")).status == S.ORDER_STATUS_OPEN


OKX_ACCOUNT = {"user_id": USER, "exchange": "okx"}


@pytest.fixture
async def okx_via_proxy(
    okx_exchange: FakeExchange, proxy: RedisFaultProxy
) -> AsyncIterator[LiveTrading]:
    """USER's account active on OKX, with the OMS's Redis behind the fault `proxy`."""
    okx_exchange.set_price(BTC, Decimal("50000"))
    live = await live_trading(await proxy.start(), okx_exchange)
    try:
        yield live
    finally:
        await live.oms.close()


async def activate_unanswered(live: LiveTrading, proxy: RedisFaultProxy, marker: bytes) -> None:
    """The account deactivated, then activated again by a call that is UNAVAILABLE: every
    reply to a write with `marker` is lost."""
    await live.accounts.DeactivateAccount(pb.DeactivateAccountRequest(**OKX_ACCOUNT))
    activating = live.accounts.ActivateAccount(pb.ActivateAccountRequest(**OKX_ACCOUNT))
    await landed_unanswered(proxy, marker, activating)


async def assert_activated_and_trading(live: LiveTrading) -> None:
    on = await live.accounts.ActivateAccount(pb.ActivateAccountRequest(**OKX_ACCOUNT))
    assert on.account.status == account_pb2.ACCOUNT_STATUS_ACTIVE
    order = await live.place(price="49000")
    await live.until(order.order_id, lambda o: o.status == S.ORDER_STATUS_OPEN)


async def test_a_deactivation_stored_unanswered_stops_trading_and_its_retry_succeeds(
    okx_via_proxy: LiveTrading, proxy: RedisFaultProxy
) -> None:
    live = okx_via_proxy
    request = pb.DeactivateAccountRequest(**OKX_ACCOUNT)
    await landed_unanswered(proxy, b'"status":"INACTIVE"', live.accounts.DeactivateAccount(request))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await live.place(price="49000")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    off = await live.accounts.DeactivateAccount(request)
    assert off.account.status == account_pb2.ACCOUNT_STATUS_INACTIVE


async def test_an_activation_stored_unanswered_is_followed_by_its_retry(
    okx_via_proxy: LiveTrading, proxy: RedisFaultProxy
) -> None:
    await activate_unanswered(okx_via_proxy, proxy, b'"status":"ACTIVE"')
    await assert_activated_and_trading(okx_via_proxy)


async def test_an_activation_whose_reconciliation_meets_a_store_failure_leaves_nothing_running(
    okx_via_proxy: LiveTrading, proxy: RedisFaultProxy
) -> None:
    open_orders = b"{" + USER.encode() + b"}:open_orders"  # the reconciliation's first read
    await activate_unanswered(okx_via_proxy, proxy, open_orders)
    await asyncio.sleep(0.3)
    # Not followed: its feed and connection stopped with it (they ran on before).
    assert [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("okx")] == []
    await assert_activated_and_trading(okx_via_proxy)


async def test_the_retry_of_an_order_placed_before_a_restart_gets_it_with_its_account_inactive(
    redis_url: str, binance_exchange: FakeExchange
) -> None:
    # Its answer was lost; the account was deactivated and the OMS restarted: the markets of
    # the exchange are not loaded, yet the retry is judged against the order it names.
    binance_exchange.set_price(BTC, Decimal("50000"))
    live = await live_trading(redis_url, binance_exchange)
    placed = await live.place(price="49000", client_order_id="placed-before")
    await live.oms.accounts.DeactivateAccount(
        pb.DeactivateAccountRequest(user_id=USER, exchange="binanceusdm")
    )
    await live.oms.close()
    live.oms = await make_oms(
        redis_url, master_key=MASTER_KEY, exchanges=exchange_settings(binance_exchange)
    )
    try:
        again = await live.place(price="49000", client_order_id="placed-before")
        assert again.order_id == placed.order_id
        with pytest.raises(grpc.aio.AioRpcError) as changed:
            await live.place(price="48000", client_order_id="placed-before")
        assert changed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as new:
            await live.place(price="49000", client_order_id="never-placed")
        assert new.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await live.oms.close()
