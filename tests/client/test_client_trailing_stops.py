"""OmsClient's TrailingStopService calls against the real server: the worked example of the
contract on the resuming event stream, the client-made `client_id` under lost responses, the
cancel retry, decimals as Decimal or str, paging with filters, and a restart.

Paper exchange, tick 0.01. LONG, callback rate 2%, no activation price: ACTIVE at once with the
last price as watermark; stop = watermark x 0.98 rounded up to the tick; the first price at or
below it triggers a reduce-only MARKET sell "ts-<trailing_stop_id>", filled in that tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from fixtures.client_streams import Consumer, assert_exactly_once_in_order, restartable_servers
from fixtures.lossy_network import LoseRequests, LoseResponses, client_with
from fixtures.oms_process import OmsProcess
from fixtures.oms_server import OmsHarness
from oms_client import OmsClient, RetryPolicy
from tradingboost.oms.v1 import market_data_pb2, order_pb2, position_pb2, trailing_stop_pb2
from tradingboost.oms.v1 import trailing_stop_service_pb2 as tpb

S = order_pb2
T = trailing_stop_pb2
BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
USER = "alice"
LONG = S.POSITION_SIDE_LONG
SHORT = S.POSITION_SIDE_SHORT
ACTIVE = T.TRAILING_STOP_STATUS_ACTIVE
PENDING = T.TRAILING_STOP_STATUS_PENDING_ACTIVATION
TRIGGERED = T.TRAILING_STOP_STATUS_TRIGGERED
CANCELED = T.TRAILING_STOP_STATUS_CANCELED
CREATED = T.TRAILING_STOP_EVENT_TYPE_CREATED
STOP_PRICE_UPDATED = T.TRAILING_STOP_EVENT_TYPE_STOP_PRICE_UPDATED
TRIGGERED_EVENT = T.TRAILING_STOP_EVENT_TYPE_TRIGGERED
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01)


async def tick(client: OmsClient, price: str, symbol: str = BTC) -> None:
    await client.publish_prices(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=symbol, price=price)]
    )


async def market(
    client: OmsClient, side: S.Side.ValueType, quantity: str = "1", symbol: str = BTC
) -> S.Order:
    """A MARKET order at the last price: BUY opens a LONG, SELL a SHORT (hedge mode)."""
    order = await client.place_order(
        user_id=USER,
        exchange="paper",
        symbol=symbol,
        side=side,
        type=S.ORDER_TYPE_MARKET,
        quantity=quantity,
    )
    assert order.status == S.ORDER_STATUS_FILLED, order
    return order


async def trail(
    client: OmsClient,
    position_side: S.PositionSide.ValueType = LONG,
    symbol: str = BTC,
    **fields: Any,
) -> T.TrailingStop:
    """A trailing stop on the position; callback rate 0.02 unless a callback is given."""
    if "callback_rate" not in fields and "callback_spread" not in fields:
        fields["callback_rate"] = "0.02"
    return await client.create_trailing_stop(
        user_id=USER, exchange="paper", symbol=symbol, position_side=position_side, **fields
    )


def figures(stop: T.TrailingStop) -> tuple[int, str, str]:
    return (stop.status, stop.watermark_price, stop.stop_price)


@pytest.fixture
async def client(oms: OmsHarness) -> AsyncIterator[OmsClient]:
    async with OmsClient.connect(oms.address) as client:
        await tick(client, "100")
        yield client


# The worked example, on the stream


async def test_long_2pct_from_100_streams_created_stop_price_updated_and_triggered(
    client: OmsClient,
) -> None:
    await market(client, S.SIDE_BUY)
    snapshot = await client.list_trailing_stops_page(user_id=USER)
    assert list(snapshot.trailing_stops) == []
    events = client.stream_trailing_stop_events(USER, after_sequence=snapshot.as_of_sequence)
    consumer = Consumer(events)

    stop = await trail(client, callback_rate=Decimal("0.02"))
    assert figures(stop) == (ACTIVE, "100", "98")  # 100 x 0.98
    assert (stop.WhichOneof("callback"), stop.callback_rate) == ("callback_rate", "0.02")
    assert stop.client_id.startswith("c-")  # made by the client, see the retry tests
    await tick(client, "105")  # stop 102.9
    await tick(client, "102.91")  # above the stop: no event
    await tick(client, "102.90")  # at the stop: triggers

    got = await consumer.until(3)
    assert [(e.event_type, *figures(e.trailing_stop)) for e in got] == [
        (CREATED, ACTIVE, "100", "98"),
        (STOP_PRICE_UPDATED, ACTIVE, "105", "102.9"),
        (TRIGGERED_EVENT, TRIGGERED, "105", "102.9"),
    ]
    assert_exactly_once_in_order([e.sequence for e in got])
    assert snapshot.as_of_sequence < got[0].sequence
    assert events.last_sequence == got[-1].sequence
    fired = got[-1].trailing_stop
    assert fired.trailing_stop_id == stop.trailing_stop_id
    assert fired.triggered_price == "102.9"
    assert await client.get_trailing_stop(user_id=USER, trailing_stop_id=stop.trailing_stop_id) == (
        fired
    )
    assert await client.get_trailing_stop(user_id=USER, client_id=stop.client_id) == fired

    close = await client.get_order(user_id=USER, order_id=fired.order_id)
    assert close.client_order_id == f"ts-{stop.trailing_stop_id}"
    assert (close.type, close.side, close.reduce_only, close.quantity) == (
        S.ORDER_TYPE_MARKET,
        S.SIDE_SELL,
        True,
        "1",
    )
    assert (close.status, close.average_fill_price) == (S.ORDER_STATUS_FILLED, "102.9")
    position = await client.get_position(
        user_id=USER, exchange="paper", symbol=BTC, position_side=LONG
    )
    assert (position.status, position.realized_pnl) == (position_pb2.POSITION_STATUS_CLOSED, "2.9")

    with pytest.raises(grpc.aio.AioRpcError) as terminal:
        await client.cancel_trailing_stop(user_id=USER, trailing_stop_id=stop.trailing_stop_id)
    assert terminal.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await events.aclose()
    await consumer.task


# Create: decimals, exactly one callback, the client-made client_id


async def test_callbacks_and_prices_as_decimal_or_string_and_exactly_one_callback(
    client: OmsClient, oms: OmsHarness
) -> None:
    await market(client, S.SIDE_BUY)
    sent = LoseResponses("CreateTrailingStop")  # loses nothing: records what went out
    async with client_with(oms.address, sent) as recording:
        by_spread = await trail(
            recording, callback_spread=Decimal("2.50"), quantity=Decimal("5E-1")
        )
        by_rate = await trail(recording, callback_rate=Decimal("1E-2"), activation_price="101")
        with pytest.raises(TypeError, match="exactly one of callback_rate and callback_spread"):
            await trail(recording, callback_rate="0.02", callback_spread="2")
        with pytest.raises(TypeError, match="callback_rate must be a Decimal or a decimal string"):
            await trail(recording, callback_rate=0.02)
        with pytest.raises(ValueError, match="finite"):
            await trail(recording, callback_rate=Decimal("NaN"))
        with pytest.raises(TypeError, match="not both"):
            await recording.create_trailing_stop(
                tpb.CreateTrailingStopRequest(user_id=USER), callback_rate="0.02"
            )
    # Decimals travel written out in full; nothing left the client for the refused calls.
    assert [(r.callback_spread, r.quantity) for r in sent.requests[:1]] == [("2.50", "0.5")]
    assert [(r.callback_rate, r.activation_price) for r in sent.requests[1:]] == [("0.01", "101")]
    assert figures(by_spread) == (ACTIVE, "100", "97.5")
    assert (by_spread.callback_spread, by_spread.quantity) == ("2.5", "0.5")
    assert figures(by_rate) == (PENDING, "", "")

    with pytest.raises(grpc.aio.AioRpcError) as neither:  # representable: the server judges
        await client.create_trailing_stop(
            user_id=USER, exchange="paper", symbol=BTC, position_side=LONG
        )
    assert neither.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "callback" in (neither.value.details() or "")

    request = tpb.CreateTrailingStopRequest(
        user_id=USER, exchange="paper", symbol=BTC, position_side=LONG, callback_rate="0.05"
    )
    first = await client.create_trailing_stop(request)
    second = await client.create_trailing_stop(request)
    assert request.client_id == ""  # the caller's message is not changed
    assert first.trailing_stop_id != second.trailing_stop_id  # a new call is a new stop
    mine = await trail(client, client_id="my-stop-1")
    assert mine.client_id == "my-stop-1"


async def test_a_callback_given_as_none_is_not_set(client: OmsClient) -> None:
    await market(client, S.SIDE_BUY)
    no_rate: Decimal | None = None  # as a strategy holding either callback would pass it
    stop = await client.create_trailing_stop(
        user_id=USER,
        exchange="paper",
        symbol=BTC,
        position_side=LONG,
        callback_rate=no_rate,
        callback_spread="2.5",
        activation_price=None,
        quantity=None,
    )
    assert (stop.WhichOneof("callback"), stop.callback_spread) == ("callback_spread", "2.5")
    assert figures(stop) == (ACTIVE, "100", "97.5")


async def test_a_lost_create_response_is_retried_with_the_same_client_id_and_creates_one_stop(
    client: OmsClient, oms: OmsHarness
) -> None:
    await market(client, S.SIDE_BUY)
    # Before the retry the price reaches the activation price: judged again, the request would
    # be refused (activation already reached); the server answers the known client_id instead.
    lose = LoseResponses("CreateTrailingStop", times=1, meanwhile=lambda: tick(client, "111"))
    async with client_with(oms.address, lose, retry=FAST_RETRY) as losing:
        stop = await trail(losing, activation_price="110")
    first, retry = lose.requests
    assert first.client_id == retry.client_id == stop.client_id
    assert first.client_id.startswith("c-")
    assert figures(stop) == (ACTIVE, "111", "108.78")  # activated by the tick at 111
    assert [s.trailing_stop_id async for s in client.list_trailing_stops(user_id=USER)] == [
        stop.trailing_stop_id
    ]


# Cancel


async def test_a_retried_cancel_whose_first_attempt_cancelled_returns_the_canceled_stop(
    client: OmsClient, oms: OmsHarness
) -> None:
    await market(client, S.SIDE_BUY)
    stop = await trail(client, client_id="trend-ts-1")
    lose = LoseResponses("CancelTrailingStop", times=1)
    async with client_with(oms.address, lose, retry=FAST_RETRY) as losing:
        canceled = await losing.cancel_trailing_stop(user_id=USER, client_id="trend-ts-1")
    assert len(lose.requests) == 2  # the retry met FAILED_PRECONDITION, then read it back
    assert canceled.trailing_stop_id == stop.trailing_stop_id
    assert (canceled.status, canceled.status_reason) == (CANCELED, "canceled_by_user")
    assert canceled == await client.get_trailing_stop(
        user_id=USER, trailing_stop_id=stop.trailing_stop_id
    )
    await tick(client, "90")  # far through the old stop: no close order
    assert [o.side async for o in client.list_orders(user_id=USER)] == [S.SIDE_BUY]


async def test_a_retried_cancel_that_finds_the_stop_ended_another_way_keeps_the_error(
    client: OmsClient, oms: OmsHarness
) -> None:
    await market(client, S.SIDE_BUY)
    stop = await trail(client)

    async def position_closed() -> None:
        await client.close_position(user_id=USER, exchange="paper", symbol=BTC, position_side=LONG)

    # The first attempt never reaches the server; meanwhile the position goes flat, which
    # cancels the stop with "position_closed": not the caller's cancel, so no success.
    lose = LoseRequests("CancelTrailingStop", times=1, meanwhile=position_closed)
    async with client_with(oms.address, lose, retry=FAST_RETRY) as losing:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await losing.cancel_trailing_stop(user_id=USER, trailing_stop_id=stop.trailing_stop_id)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(lose.requests) == 2
    ended = await client.get_trailing_stop(user_id=USER, trailing_stop_id=stop.trailing_stop_id)
    assert (ended.status, ended.status_reason) == (CANCELED, "position_closed")


# Reading


async def test_list_trailing_stops_follows_every_page_with_its_filters(
    client: OmsClient,
) -> None:
    await tick(client, "3000", symbol=ETH)
    await market(client, S.SIDE_BUY)  # BTC long
    await market(client, S.SIDE_SELL)  # BTC short
    await market(client, S.SIDE_BUY, symbol=ETH)  # ETH long
    btc_long = await trail(client)
    btc_short = await trail(client, SHORT, callback_spread="5")
    eth_pending = await trail(client, symbol=ETH, activation_price="3100")
    btc_canceled = await trail(client, callback_rate="0.05")
    await client.cancel_trailing_stop(user_id=USER, trailing_stop_id=btc_canceled.trailing_stop_id)
    newest_first = [btc_canceled, eth_pending, btc_short, btc_long]

    def ids(stops: list[T.TrailingStop]) -> list[str]:
        return [s.trailing_stop_id for s in stops]

    page = await client.list_trailing_stops_page(user_id=USER, page_size=3)
    assert ids(list(page.trailing_stops)) == ids(newest_first[:3])
    assert page.next_page_token and page.as_of_sequence > 0
    assert [s async for s in client.list_trailing_stops(user_id=USER, page_size=1)] == [
        await client.get_trailing_stop(user_id=USER, trailing_stop_id=s.trailing_stop_id)
        for s in newest_first
    ]
    working = [s async for s in client.list_trailing_stops(user_id=USER, active_only=True)]
    assert ids(working) == ids(newest_first[1:])
    pending = [s async for s in client.list_trailing_stops(user_id=USER, statuses=[PENDING])]
    assert ids(pending) == ids([eth_pending])
    shorts = [s async for s in client.list_trailing_stops(user_id=USER, position_side=SHORT)]
    assert ids(shorts) == ids([btc_short])
    btc = [
        s
        async for s in client.list_trailing_stops(
            user_id=USER, exchange="paper", symbol="BTC-USDT-SWAP", page_size=1
        )
    ]
    assert ids(btc) == ids([btc_canceled, btc_short, btc_long])
    assert [s async for s in client.list_trailing_stops(user_id="bob")] == []


# Across a server restart, with the real `oms serve` process and its embedded Redis


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[OmsProcess, OmsProcess]]:
    with restartable_servers(tmp_path / "data") as pair:
        yield pair


@pytest.mark.parametrize("stop", ["terminate", "kill9"])
async def test_the_trailing_stop_stream_resumes_across_a_restart_with_every_event_once(
    servers: tuple[OmsProcess, OmsProcess], stop: str
) -> None:
    first, second = servers
    address = await asyncio.to_thread(first.start)
    # Patient unary retries: the test reads right after the restart.
    async with OmsClient.connect(address, retry=RetryPolicy(attempts=20)) as client:
        await tick(client, "100")
        await market(client, S.SIDE_BUY)
        snapshot = await client.list_trailing_stops_page(user_id=USER)
        events = client.stream_trailing_stop_events(
            USER, exchange="paper", symbol=BTC, after_sequence=snapshot.as_of_sequence
        )
        consumer = Consumer(events)
        trailing = await trail(client)
        await tick(client, "105")
        await consumer.until(2)
        # Committed just before the stop: delivered before it, or replayed after the restart.
        await tick(client, "106")  # stop 103.88
        before = await client.get_trailing_stop(
            user_id=USER, trailing_stop_id=trailing.trailing_stop_id
        )
        if stop == "kill9":
            first.kill9()
        else:
            await asyncio.to_thread(first.terminate)
        await asyncio.to_thread(second.start)
        after = await client.get_trailing_stop(
            user_id=USER, trailing_stop_id=trailing.trailing_stop_id
        )
        assert after == before
        await tick(client, "103.89")  # above the stop: nothing
        await tick(client, "103.88")  # triggers

        got = await consumer.until(4)
        assert [(e.event_type, *figures(e.trailing_stop)) for e in got] == [
            (CREATED, ACTIVE, "100", "98"),
            (STOP_PRICE_UPDATED, ACTIVE, "105", "102.9"),
            (STOP_PRICE_UPDATED, ACTIVE, "106", "103.88"),
            (TRIGGERED_EVENT, TRIGGERED, "106", "103.88"),
        ]
        assert_exactly_once_in_order([e.sequence for e in got])
        assert events.last_sequence == got[-1].sequence
        await events.aclose()
        await consumer.task
