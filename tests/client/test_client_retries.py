"""Retries: a lost response is retried with the same client order id, so nothing is placed
twice; errors that would repeat are raised at once.

`fixtures.lossy_network` stands in for a network that loses answers after the server committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from fixtures.client_streams import restartable_servers
from fixtures.lossy_network import LoseRequests, LoseResponses, client_with
from fixtures.oms_server import OmsHarness
from fixtures.redis_server import free_port
from fixtures.tcp_proxy import SilencingProxy
from oms_client import (
    CHANNEL_OPTIONS,
    NO_RETRY,
    SHUTTING_DOWN_REASON,
    OmsClient,
    OutcomeUnknown,
    RetryPolicy,
    error_reasons,
    field_violations,
    new_client_order_id,
)
from tradingboost.oms.v1 import market_data_pb2, order_pb2

S = order_pb2
BTC = "BTC/USDT:USDT"
USER = "alice"
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01)
LIMIT_BUY: dict[str, Any] = {
    "user_id": USER,
    "exchange": "paper",
    "symbol": BTC,
    "side": order_pb2.SIDE_BUY,
    "type": order_pb2.ORDER_TYPE_LIMIT,
    "quantity": "0.01",
    "price": "49000",
}


@pytest.fixture
async def oms_priced(oms: OmsHarness) -> OmsHarness:
    async with OmsClient(oms.channel) as client:
        await client.publish_prices(
            prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="50000")]
        )
    return oms


# UNAVAILABLE: a connection lost after the server committed. CANCELLED: a server that stopped
# with the call queued or running (grpc.aio reports the caller's own cancel as
# asyncio.CancelledError instead). Either way the outcome is unknown and the call is retried.
@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
async def test_a_lost_place_order_response_is_retried_with_the_same_id_and_places_once(
    oms_priced: OmsHarness, code: grpc.StatusCode
) -> None:
    lose = LoseResponses("PlaceOrder", times=1, code=code)
    async with client_with(oms_priced.address, lose, retry=FAST_RETRY) as client:
        order = await client.place_order(
            user_id=USER,
            exchange="paper",
            symbol=BTC,
            side=S.SIDE_BUY,
            type=S.ORDER_TYPE_MARKET,
            quantity="0.01",
        )
        first, retry = lose.requests
        assert first.client_order_id == retry.client_order_id == order.client_order_id
        assert first.client_order_id.startswith("c-")
        orders = [o async for o in client.list_orders(user_id=USER)]
        assert orders == [order]
        fills = [f async for f in client.list_fills(user_id=USER)]
        assert [f.order_id for f in fills] == [order.order_id]  # sent to the exchange once


class HoldFirstAnswer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """The first call is answered by the server, and the answer never reaches the caller."""

    def __init__(self) -> None:
        self.held = False

    async def intercept_unary_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(details, request)
        if not self.held:
            self.held = True
            await call
            await asyncio.Event().wait()
        return call


async def test_a_call_the_caller_gave_up_on_is_sent_again_with_its_own_id_and_places_once(
    oms_priced: OmsHarness,
) -> None:
    # A caller's own timeout cancels the call, and the id the client would have made with
    # it: a bot that times calls out makes the id first and sends it again.
    hold = HoldFirstAnswer()
    async with client_with(oms_priced.address, hold) as client:
        key = new_client_order_id()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.place_order(**LIMIT_BUY, client_order_id=key), 0.5)
        order = await client.place_order(**LIMIT_BUY, client_order_id=key)
        assert [o async for o in client.list_orders(user_id=USER)] == [order]


async def test_retries_give_up_after_the_policy_attempts(oms_priced: OmsHarness) -> None:
    lose = LoseResponses("GetPrice", times=10)
    async with client_with(oms_priced.address, lose, retry=FAST_RETRY) as client:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.get_price(exchange="paper", symbol=BTC)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(lose.requests) == FAST_RETRY.attempts


@pytest.mark.parametrize(
    ("attempts", "deadline_s", "expected"),
    [(None, None, 6), (3, 30.0, 3)],
    ids=["default", "explicit-under-a-deadline"],
)
async def test_attempts_bound_the_retries_6_by_default_and_as_given_even_under_a_deadline(
    oms_priced: OmsHarness, attempts: int | None, deadline_s: float | None, expected: int
) -> None:
    lose = LoseResponses("GetPrice", times=1000)
    retry = RetryPolicy(
        attempts=attempts, initial_backoff_s=0.01, max_backoff_s=0.01, deadline_s=deadline_s
    )
    async with client_with(oms_priced.address, lose, retry=retry) as client:
        with pytest.raises(grpc.aio.AioRpcError):
            await client.get_price(exchange="paper", symbol=BTC)
        assert len(lose.requests) == expected


async def test_a_deadline_without_attempts_retries_through_an_outage_until_the_server_is_back(
    tmp_path: Path,
) -> None:
    # 6 attempts, the default without a deadline, would give up within about 1 s.
    retry = RetryPolicy(max_backoff_s=0.25, deadline_s=30)
    with restartable_servers(tmp_path / "data") as (first, second):
        address = await asyncio.to_thread(first.start)
        async with OmsClient.connect(address) as client:
            await client.list_orders_page(user_id=USER)
            first.kill9()
            reading = asyncio.create_task(client.list_orders_page(user_id=USER, retry=retry))
            await asyncio.sleep(1.5)
            assert not reading.done()
            await asyncio.to_thread(second.start)
            assert list((await reading).orders) == []


async def test_a_deadline_shortens_the_last_wait_so_that_a_final_attempt_still_fits(
    oms_priced: OmsHarness,
) -> None:
    # Waits of 0.4 to 0.6 s: a second one never fits whole into what the first leaves of 0.8 s.
    # It is cut instead so that a third attempt starts 0.1 s before the deadline.
    lose = LoseResponses("GetPrice", times=1000)
    retry = RetryPolicy(attempts=1000, initial_backoff_s=0.5, max_backoff_s=0.5, deadline_s=0.8)
    async with client_with(oms_priced.address, lose, retry=retry) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.get_price(exchange="paper", symbol=BTC)
        elapsed = asyncio.get_running_loop().time() - started
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(lose.requests) == 3
        assert 0.65 < elapsed < 0.9


async def test_a_deadline_ends_the_retries_long_before_the_attempts_run_out(
    oms_priced: OmsHarness,
) -> None:
    lose = LoseResponses("GetPrice", times=1000)
    retry = RetryPolicy(attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.05, deadline_s=0.5)
    async with client_with(oms_priced.address, lose, retry=retry) as client:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.get_price(exchange="paper", symbol=BTC)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        # Waits of 0.04 s or more (0.05 +/-20%) fit at most 13 times into 0.5 s.
        assert 2 <= len(lose.requests) <= 14


async def test_a_deadline_cuts_an_attempt_short_on_a_connection_gone_silent(
    oms_priced: OmsHarness,
) -> None:
    host, port = oms_priced.address.rsplit(":", 1)
    proxy = SilencingProxy(host, int(port))
    address = await proxy.start()
    retry = RetryPolicy(attempts=5, initial_backoff_s=0.01, max_backoff_s=0.01, deadline_s=0.5)
    try:
        async with OmsClient.connect(address, retry=retry, default_timeout_s=60) as client:
            await client.get_price(exchange="paper", symbol=BTC)
            proxy.silence()
            async with asyncio.timeout(20):  # each attempt alone could wait 60 s
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await client.get_price(exchange="paper", symbol=BTC)
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await proxy.close()


def test_waits_grow_to_the_cap_jittered_below_and_never_overflow() -> None:
    retry = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, deadline_s=3600)
    for number, nominal in ((1, 0.1), (2, 0.2), (4, 0.8), (5, 1.0), (5000, 1.0)):
        waits = {retry.backoff_s(number) for _ in range(50)}
        assert all(0.8 * nominal <= wait <= nominal for wait in waits), (number, waits)
        assert len(waits) > 1  # jittered, at the cap too
    assert RetryPolicy(initial_backoff_s=0, max_backoff_s=0).backoff_s(3) == 0


def test_a_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="deadline_s"):
        RetryPolicy(deadline_s=0)


async def test_invalid_argument_is_raised_after_one_attempt(oms_priced: OmsHarness) -> None:
    count = LoseResponses("PlaceOrder")
    async with client_with(oms_priced.address, count, retry=FAST_RETRY) as client:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.place_order(
                user_id=USER,
                exchange="paper",
                symbol=BTC,
                side=S.SIDE_BUY,
                type=S.ORDER_TYPE_MARKET,
                quantity="0.0101",  # off the 0.001 step: the OMS never rounds
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error.value) == {
            "quantity": "0.0101 is not a multiple of the amount step 0.001"
        }
        assert error_reasons(error.value) == set()
        assert len(count.requests) == 1


async def test_already_exists_is_raised_after_one_attempt(oms_priced: OmsHarness) -> None:
    count = LoseResponses("PlaceOrder")
    async with client_with(oms_priced.address, count, retry=FAST_RETRY) as client:
        fields: dict[str, Any] = {
            "user_id": USER,
            "exchange": "paper",
            "symbol": BTC,
            "side": S.SIDE_BUY,
            "type": S.ORDER_TYPE_MARKET,
            "client_order_id": "dca-1",
        }
        await client.place_order(quantity="0.01", **fields)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.place_order(quantity="0.02", **fields)
        assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert len(count.requests) == 2


async def test_a_retried_cancel_whose_first_attempt_cancelled_returns_the_canceled_order(
    oms_priced: OmsHarness,
) -> None:
    lose = LoseResponses("CancelOrder", times=1)
    async with client_with(oms_priced.address, lose, retry=FAST_RETRY) as client:
        resting = await client.place_order(
            user_id=USER,
            exchange="paper",
            symbol=BTC,
            side=S.SIDE_BUY,
            type=S.ORDER_TYPE_LIMIT,
            quantity="0.01",
            price="49000",
        )
        canceled = await client.cancel_order(user_id=USER, order_id=resting.order_id)
        assert len(lose.requests) == 2  # the retry met FAILED_PRECONDITION, then read it
        assert canceled.order_id == resting.order_id
        assert canceled.status == S.ORDER_STATUS_CANCELED


class SlowRetriedCancel(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Holds the second CancelOrder for `delay_s`, as a congested network would, and records
    the timeout each GetOrder is sent with."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.cancels = 0
        self.read_timeouts: list[float | None] = []

    async def intercept_unary_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if method.endswith("/CancelOrder"):
            self.cancels += 1
            if self.cancels == 2:
                await asyncio.sleep(self.delay_s)
        elif method.endswith("/GetOrder"):
            self.read_timeouts.append(details.timeout)
        return await continuation(details, request)


async def test_the_read_after_a_retried_cancel_gets_only_what_is_left_of_its_attempts_time(
    oms_priced: OmsHarness,
) -> None:
    slow = SlowRetriedCancel(delay_s=1.0)
    lose = LoseResponses("CancelOrder", times=1)
    async with client_with(oms_priced.address, slow, lose, retry=FAST_RETRY) as client:
        resting = await client.place_order(**LIMIT_BUY)
        canceled = await client.cancel_order(user_id=USER, order_id=resting.order_id, timeout_s=3.0)
    assert canceled.status == S.ORDER_STATUS_CANCELED
    # The retry took a second of its three: the read gets at most the two left.
    [read_timeout] = slow.read_timeouts
    assert read_timeout is not None and read_timeout <= 2.0


async def test_cancelling_a_filled_order_stays_failed_precondition(
    oms_priced: OmsHarness,
) -> None:
    lose = LoseResponses("CancelOrder", times=1)
    async with client_with(oms_priced.address, lose, retry=FAST_RETRY) as client:
        filled = await client.place_order(
            user_id=USER,
            exchange="paper",
            symbol=BTC,
            side=S.SIDE_BUY,
            type=S.ORDER_TYPE_MARKET,
            quantity="0.01",
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.cancel_order(user_id=USER, order_id=filled.order_id)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_publish_prices_is_not_retried_because_a_tick_is_not_idempotent(
    oms_priced: OmsHarness,
) -> None:
    lose = LoseResponses("PublishPrices", times=1)
    async with client_with(oms_priced.address, lose, retry=FAST_RETRY) as client:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.publish_prices(
                prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="51000")]
            )
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(lose.requests) == 1
        assert (await client.get_price(exchange="paper", symbol=BTC)).price == "51000"


async def test_a_server_that_stops_refuses_calls_as_not_run_and_nothing_is_taken_for_unknown(
    oms_priced: OmsHarness,
) -> None:
    # Refused before they ran: a PlaceOrder that ran out of attempts is no OutcomeUnknown, and
    # PublishPrices, not idempotent, is retried by default all the same.
    sent = LoseRequests("PublishPrices")  # loses nothing: counts the attempts
    async with client_with(oms_priced.address, sent, retry=FAST_RETRY) as client:
        await oms_priced.app.server.begin_shutdown()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.place_order(**LIMIT_BUY)
        assert not isinstance(refused.value, OutcomeUnknown)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reasons(refused.value) == {SHUTTING_DOWN_REASON}
        assert "was not run" in (refused.value.details() or "")

        tick = [market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="51000")]
        with pytest.raises(grpc.aio.AioRpcError) as publish_refused:
            await client.publish_prices(prices=tick)
        assert error_reasons(publish_refused.value) == {SHUTTING_DOWN_REASON}
        assert len(sent.requests) == 3  # FAST_RETRY's attempts
        with pytest.raises(grpc.aio.AioRpcError):
            await client.publish_prices(prices=tick, retry=NO_RETRY)
        assert len(sent.requests) == 4


async def test_a_place_order_that_never_reached_a_server_is_no_unknown_outcome() -> None:
    # Nothing listens: every attempt fails to connect, so none was sent, and the caller is
    # told the plain error, not to look up an order that cannot exist.
    address = f"127.0.0.1:{free_port()}"
    async with OmsClient.connect(address, retry=FAST_RETRY) as client:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.place_order(**LIMIT_BUY)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not isinstance(error.value, OutcomeUnknown)


async def test_a_publish_prices_refused_unrun_is_sent_again_and_applied_once(
    oms_priced: OmsHarness,
) -> None:
    # As a server answers while it stops (above), the first attempt never ran: the second is
    # the only one the server applies.
    refused = LoseRequests("PublishPrices", times=1, reason=SHUTTING_DOWN_REASON)
    async with client_with(oms_priced.address, refused, retry=FAST_RETRY) as client:
        prices = await client.publish_prices(
            prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="51000")]
        )
        assert [p.price for p in prices] == ["51000"]
        assert len(refused.requests) == 2
        assert (await client.get_price(exchange="paper", symbol=BTC)).price == "51000"


async def test_a_publish_prices_issued_while_the_server_is_down_is_sent_once_it_is_back(
    tmp_path: Path,
) -> None:
    # Nothing was sent while nothing listened: waiting for the channel cannot apply a tick twice.
    ticks = [market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="51000")]
    with restartable_servers(tmp_path / "data") as (first, second):
        address = await asyncio.to_thread(first.start)
        async with OmsClient.connect(address) as client:
            await client.list_orders_page(user_id=USER)
            first.kill9()
            with pytest.raises(grpc.aio.AioRpcError) as waited:
                await client.publish_prices(prices=ticks, timeout_s=0.3)
            assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # not at once

            publishing = asyncio.create_task(client.publish_prices(prices=ticks, timeout_s=30))
            await asyncio.sleep(0.5)
            assert not publishing.done()
            await asyncio.to_thread(second.start)
            assert [p.price for p in await publishing] == ["51000"]
            assert (await client.get_price(exchange="paper", symbol=BTC)).price == "51000"


async def test_a_place_order_that_runs_out_of_attempts_hands_back_its_client_order_id(
    oms_priced: OmsHarness,
) -> None:
    # Every answer lost: the order may exist. The error carries the id the client made, and a
    # retry under it finds that order instead of placing a second one.
    lose = LoseResponses("PlaceOrder", times=3)
    fields: dict[str, Any] = {
        "user_id": USER,
        "exchange": "paper",
        "symbol": BTC,
        "side": S.SIDE_BUY,
        "type": S.ORDER_TYPE_LIMIT,
        "quantity": "0.01",
        "price": "49000",
    }
    async with client_with(oms_priced.address, lose, retry=FAST_RETRY) as client:
        with pytest.raises(OutcomeUnknown) as error:
            await client.place_order(**fields)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error.value.key_field == "client_order_id"
        assert error.value.key == lose.requests[0].client_order_id
        order = await client.place_order(**fields, client_order_id=error.value.key)
        assert [o async for o in client.list_orders(user_id=USER)] == [order]


# RESOURCE_EXHAUSTED: a rate limit. ABORTED: the state changed under the decision ("try
# again"). Either way nothing was done, and the caller is told so when every attempt got it.
@pytest.mark.parametrize("code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED])
async def test_a_place_order_refused_at_every_attempt_is_no_unknown_outcome(
    oms_priced: OmsHarness, code: grpc.StatusCode
) -> None:
    throttle = LoseRequests("PlaceOrder", times=3, code=code)
    async with client_with(oms_priced.address, throttle, retry=FAST_RETRY) as client:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.place_order(**LIMIT_BUY)
        assert error.value.code() == code
        assert not isinstance(error.value, OutcomeUnknown)
        assert len(throttle.requests) == 3  # retried
        assert [o async for o in client.list_orders(user_id=USER)] == []


async def test_a_place_order_whose_first_answer_was_lost_stays_unknown_when_refused_after(
    oms_priced: OmsHarness,
) -> None:
    # The first attempt reached the server (its answer lost), the retries were refused: the
    # order exists, so the caller must get the id to look it up with.
    throttle = LoseRequests("PlaceOrder", times=2, code=grpc.StatusCode.RESOURCE_EXHAUSTED, skip=1)
    lose = LoseResponses("PlaceOrder", times=1)
    async with client_with(oms_priced.address, throttle, lose, retry=FAST_RETRY) as client:
        with pytest.raises(OutcomeUnknown) as error:
            await client.place_order(**LIMIT_BUY)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        [order] = [o async for o in client.list_orders(user_id=USER)]
        assert order.client_order_id == error.value.key


@asynccontextmanager
async def own_channel_client(address: str) -> AsyncIterator[OmsClient]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        yield OmsClient(channel)


@pytest.mark.parametrize(
    "make_client", [OmsClient.connect, own_channel_client], ids=["connect", "own-channel"]
)
async def test_the_first_calls_after_a_server_restart_find_it_with_the_default_policy(
    tmp_path: Path, make_client: Callable[[str], AbstractAsyncContextManager[OmsClient]]
) -> None:
    # Down for long enough that the channel's reconnect backoff is at its longest (a stream
    # reconnecting meanwhile keeps the channel trying); the calls start the moment the new
    # server listens.
    with restartable_servers(tmp_path / "data") as (first, second):
        address = await asyncio.to_thread(first.start)
        async with make_client(address) as client:
            await client.list_orders_page(user_id=USER)
            updates = client.stream_order_updates(USER)
            reading = asyncio.create_task(anext(updates))
            await asyncio.sleep(0.5)
            first.kill9()
            await asyncio.sleep(4.0)
            await asyncio.to_thread(second.start)
            for _ in range(3):
                page = await client.list_orders_page(user_id=USER)
                assert list(page.orders) == []
            reading.cancel()
            await updates.aclose()
