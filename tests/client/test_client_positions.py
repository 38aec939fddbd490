"""OmsClient's PositionService calls and FindOpenOrders against the real server: brackets, the
idempotent open and close under lost responses, paging, the resuming position stream and the
portfolio figures.

Paper exchange: taker fee 0.0005 of notional, maker 0.0002; BTC/USDT:USDT and ETH/USDT:USDT
with amount step 0.001 and price tick 0.01. A MARKET order fills at the last price at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any, cast

import grpc
import pytest
from fixtures.client_streams import until
from fixtures.lossy_network import LoseResponses, client_with
from fixtures.oms_server import OmsHarness, make_oms
from oms_client import OmsClient, RetryPolicy
from tradingboost.oms.v1 import market_data_pb2, order_pb2, position_pb2
from tradingboost.oms.v1 import position_service_pb2 as ppb

S = order_pb2
P = position_pb2
BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
USER = "alice"
LONG = S.POSITION_SIDE_LONG
SHORT = S.POSITION_SIDE_SHORT
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01)


async def tick(client: OmsClient, price: str, symbol: str = BTC) -> None:
    await client.publish_prices(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=symbol, price=price)]
    )


async def open_market(
    client: OmsClient,
    position_side: S.PositionSide.ValueType = LONG,
    quantity: str = "0.01",
    symbol: str = BTC,
    **fields: Any,
) -> ppb.OpenPositionResponse:
    return await client.open_position(
        user_id=USER,
        exchange="paper",
        symbol=symbol,
        position_side=position_side,
        type=S.ORDER_TYPE_MARKET,
        quantity=quantity,
        **fields,
    )


async def close(
    client: OmsClient,
    position_side: S.PositionSide.ValueType = LONG,
    quantity: str = "",
    symbol: str = BTC,
) -> S.Order:
    return await client.close_position(
        user_id=USER,
        exchange="paper",
        symbol=symbol,
        position_side=position_side,
        quantity=quantity,
    )


async def held(
    client: OmsClient, position_side: S.PositionSide.ValueType = LONG, symbol: str = BTC
) -> P.Position:
    return await client.get_position(
        user_id=USER, exchange="paper", symbol=symbol, position_side=position_side
    )


@pytest.fixture
async def client(oms: OmsHarness) -> AsyncIterator[OmsClient]:
    async with OmsClient.connect(oms.address) as client:
        await tick(client, "50000")
        yield client


# Open with take-profit and stop-loss


async def test_a_take_profit_crossed_by_a_tick_closes_the_position(client: OmsClient) -> None:
    opened = await open_market(
        client,
        quantity="0.02",
        take_profit_price="51000",
        stop_loss_price="49000",
        strategy="breakout",
        leverage=5,
    )
    entry = opened.entry_order
    assert entry.client_order_id.startswith("c-")  # made by the client
    assert (entry.side, entry.reduce_only, entry.status) == (
        S.SIDE_BUY,
        False,
        S.ORDER_STATUS_FILLED,
    )
    assert (entry.average_fill_price, entry.strategy, entry.leverage) == ("50000", "breakout", 5)
    tp = await client.get_order(user_id=USER, order_id=opened.take_profit_order_id)
    sl = await client.get_order(user_id=USER, order_id=opened.stop_loss_order_id)
    assert (tp.type, tp.stop_price, tp.quantity) == (
        S.ORDER_TYPE_TAKE_PROFIT_MARKET,
        "51000",
        "0.02",
    )
    assert (sl.type, sl.stop_price, sl.quantity) == (S.ORDER_TYPE_STOP_MARKET, "49000", "0.02")
    assert tp.reduce_only and sl.reduce_only
    assert (tp.linked_order_id, sl.linked_order_id) == (sl.order_id, tp.order_id)
    opening = await held(client)
    assert (opening.status, opening.size, opening.entry_price, opening.leverage) == (
        P.POSITION_STATUS_OPEN,
        "0.02",
        "50000",
        5,
    )

    await tick(client, "50999.99")  # not yet
    assert (await held(client)).size == "0.02"
    await tick(client, "51000.5")  # through the take-profit

    closed = await held(client)
    assert closed.position_id == opening.position_id
    assert (closed.status, closed.size) == (P.POSITION_STATUS_CLOSED, "0")
    assert closed.realized_pnl == "20.01"  # (51000.5 - 50000) x 0.02: filled at the tick
    assert closed.fees == "1.010005"  # 0.5 + 51000.5 x 0.02 x 0.0005
    assert closed.HasField("closed_at")
    assert closed == await client.get_position(user_id=USER, position_id=opening.position_id)
    tp = await client.get_order(user_id=USER, order_id=opened.take_profit_order_id)
    sl = await client.get_order(user_id=USER, order_id=opened.stop_loss_order_id)
    assert (tp.status, tp.average_fill_price) == (S.ORDER_STATUS_FILLED, "51000.5")
    assert sl.status == S.ORDER_STATUS_CANCELED  # one-cancels-other
    assert [p async for p in client.list_positions(user_id=USER)] == []  # OPEN only
    assert [p async for p in client.list_positions(user_id=USER, include_closed=True)] == [closed]


async def test_a_lost_open_position_response_is_retried_and_opens_once(
    client: OmsClient, oms: OmsHarness
) -> None:
    lose = LoseResponses("OpenPosition", times=1)
    async with client_with(oms.address, lose, retry=FAST_RETRY) as losing:
        opened = await open_market(
            losing, quantity="0.03", take_profit_price="52000", stop_loss_price="48000"
        )
    first, retry = lose.requests
    assert first.client_order_id == retry.client_order_id == opened.entry_order.client_order_id
    assert first.client_order_id.startswith("c-")

    orders = [o async for o in client.list_orders(user_id=USER)]
    entries = [o for o in orders if not o.reduce_only]
    assert [o.order_id for o in entries] == [opened.entry_order.order_id]  # one entry
    # The retry answered with the exits the first attempt reserved: the only exits there are.
    assert {o.order_id for o in orders if o.reduce_only} == {
        opened.take_profit_order_id,
        opened.stop_loss_order_id,
    }
    fills = [f async for f in client.list_fills(user_id=USER)]
    assert [(f.order_id, f.quantity) for f in fills] == [(opened.entry_order.order_id, "0.03")]
    assert (await held(client)).size == "0.03"


async def test_a_retried_open_position_after_the_price_crossed_its_exit_returns_the_entry(
    client: OmsClient, oms: OmsHarness
) -> None:
    lose = LoseResponses("OpenPosition", times=1, meanwhile=lambda: tick(client, "51500"))
    async with client_with(oms.address, lose, retry=FAST_RETRY) as losing:
        opened = await open_market(losing, take_profit_price="51000", stop_loss_price="49000")
    assert len(lose.requests) == 2
    assert opened.entry_order.status == S.ORDER_STATUS_FILLED
    assert (await held(client)).status == P.POSITION_STATUS_CLOSED


# Close


async def test_nested_messages_may_be_dicts_with_decimals(client: OmsClient) -> None:
    # A PriceTick or TrailingStopConfig built by protobuf itself takes strings only.
    await client.publish_prices(
        prices=[{"exchange": "paper", "symbol": BTC, "price": Decimal("5E+4")}]
    )
    opened = await open_market(
        client, trailing_stop={"callback_rate": Decimal("0.010"), "activation_price": "50100"}
    )
    stop = await client.get_trailing_stop(user_id=USER, trailing_stop_id=opened.trailing_stop_id)
    assert (stop.callback_rate, stop.activation_price) == ("0.01", "50100")
    assert opened.entry_order.average_fill_price == "50000"
    with pytest.raises(TypeError, match=r"trailing_stop.callback_rate must be a Decimal"):
        await open_market(client, trailing_stop={"callback_rate": cast(str, 0.01)})


async def test_close_part_then_the_rest(client: OmsClient) -> None:
    opened = await open_market(client, quantity="0.03")
    await tick(client, "51000")

    part = await client.close_position(
        user_id=USER, exchange="paper", symbol=BTC, position_side=LONG, quantity="0.01"
    )
    assert (part.side, part.type, part.reduce_only, part.position_side) == (
        S.SIDE_SELL,
        S.ORDER_TYPE_MARKET,
        True,
        LONG,
    )
    assert (part.status, part.filled_quantity, part.average_fill_price) == (
        S.ORDER_STATUS_FILLED,
        "0.01",
        "51000",
    )
    assert part.client_order_id.startswith("c-")
    remaining = await held(client)
    assert (remaining.status, remaining.size, remaining.entry_price) == (
        P.POSITION_STATUS_OPEN,
        "0.02",
        "50000",
    )
    assert (remaining.realized_pnl, remaining.unrealized_pnl) == ("10", "20")

    with pytest.raises(grpc.aio.AioRpcError) as too_much:
        await client.close_position(
            user_id=USER, exchange="paper", symbol=BTC, position_side=LONG, quantity="0.021"
        )
    assert too_much.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    rest = await client.close_position(
        ppb.ClosePositionRequest(user_id=USER, exchange="paper", symbol=BTC, position_side=LONG)
    )
    assert (rest.quantity, rest.status) == ("0.02", S.ORDER_STATUS_FILLED)
    assert rest.client_order_id.startswith("c-") and rest.client_order_id != part.client_order_id
    closed = await held(client)
    assert (closed.status, closed.size, closed.realized_pnl) == (
        P.POSITION_STATUS_CLOSED,
        "0",
        "30",
    )
    assert closed.fees == "1.515"  # 0.03 x 50000 x 0.0005 + 0.03 x 51000 x 0.0005
    fills = [f async for f in client.list_fills(user_id=USER)]
    assert [(f.order_id, f.quantity) for f in fills] == [
        (rest.order_id, "0.02"),
        (part.order_id, "0.01"),
        (opened.entry_order.order_id, "0.03"),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as flat:
        await client.close_position(user_id=USER, exchange="paper", symbol=BTC, position_side=LONG)
    assert flat.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # The trade's ledger: every fill names the record, and lists by it.
    assert {f.position_id for f in fills} == {closed.position_id}
    another = await open_market(client)
    ledger = [f async for f in client.list_fills(user_id=USER, position_id=closed.position_id)]
    assert ledger == fills
    [next_fill] = [
        f
        async for f in client.list_fills(user_id=USER, position_id=(await held(client)).position_id)
    ]
    assert next_fill.order_id == another.entry_order.order_id


async def test_a_lost_close_response_is_retried_and_closes_once(
    client: OmsClient, oms: OmsHarness
) -> None:
    await open_market(client, quantity="0.02")
    lose = LoseResponses("ClosePosition", times=1)
    async with client_with(oms.address, lose, retry=FAST_RETRY) as losing:
        # The whole position: without the client's id the retry would find it flat.
        order = await losing.close_position(
            user_id=USER, exchange="paper", symbol=BTC, position_side=LONG
        )
    first, retry = lose.requests
    assert first.client_order_id == retry.client_order_id == order.client_order_id
    assert (order.quantity, order.status) == ("0.02", S.ORDER_STATUS_FILLED)
    assert (await held(client)).status == P.POSITION_STATUS_CLOSED
    closes = [o async for o in client.list_orders(user_id=USER) if o.reduce_only]
    assert [o.order_id for o in closes] == [order.order_id]


# Reading positions


async def test_list_positions_follows_every_page_with_its_filters(client: OmsClient) -> None:
    await tick(client, "3000", symbol=ETH)
    for symbol, side, quantity in (
        (BTC, LONG, "0.01"),
        (BTC, SHORT, "0.02"),
        (ETH, LONG, "1"),
        (ETH, SHORT, "2"),
    ):
        await open_market(client, side, quantity, symbol)
    await close(client, LONG)
    # Newest record first; the closed BTC long is left out.
    newest_first = [(ETH, SHORT), (ETH, LONG), (BTC, SHORT)]

    page = await client.list_positions_page(user_id=USER, page_size=2)
    assert [(p.symbol, p.position_side) for p in page.positions] == newest_first[:2]
    assert page.next_page_token and page.as_of_sequence > 0
    last = await client.list_positions_page(
        user_id=USER, page_size=2, page_token=page.next_page_token
    )
    assert [(p.symbol, p.position_side) for p in last.positions] == newest_first[2:]
    assert last.next_page_token == ""

    listed = [p async for p in client.list_positions(user_id=USER, page_size=2)]
    assert [(p.symbol, p.position_side, p.size) for p in listed] == [
        (ETH, SHORT, "2"),
        (ETH, LONG, "1"),
        (BTC, SHORT, "0.02"),
    ]
    assert len({p.position_id for p in listed}) == 3
    for position in listed:
        assert position == await held(client, position.position_side, position.symbol)
    everything = [
        p async for p in client.list_positions(user_id=USER, include_closed=True, page_size=1)
    ]
    assert [(p.symbol, p.position_side, p.status) for p in everything] == [
        (ETH, SHORT, P.POSITION_STATUS_OPEN),
        (ETH, LONG, P.POSITION_STATUS_OPEN),
        (BTC, SHORT, P.POSITION_STATUS_OPEN),
        (BTC, LONG, P.POSITION_STATUS_CLOSED),
    ]
    shorts = [
        p async for p in client.list_positions(user_id=USER, position_side=SHORT, page_size=1)
    ]
    assert [(p.symbol, p.size) for p in shorts] == [(ETH, "2"), (BTC, "0.02")]
    btc = [
        p
        async for p in client.list_positions(
            user_id=USER, exchange="paper", symbol=BTC, include_closed=True, page_size=1
        )
    ]
    assert [(p.position_side, p.status) for p in btc] == [
        (SHORT, P.POSITION_STATUS_OPEN),
        (LONG, P.POSITION_STATUS_CLOSED),
    ]
    assert [p async for p in client.list_positions(user_id="bob")] == []


async def test_portfolio_summary_figures(client: OmsClient) -> None:
    empty = await client.get_portfolio_summary(user_id=USER)
    assert (empty.total_positions, empty.total_notional, empty.total_realized_pnl) == (0, "0", "0")
    assert not empty.HasField("win_rate") and not empty.HasField("profit_factor")

    await tick(client, "3000", symbol=ETH)
    await open_market(client, LONG, "0.01")  # fee 0.25
    await open_market(client, SHORT, "1", ETH)  # fee 1.5
    await client.publish_prices(
        prices=[
            market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="51000"),
            market_data_pb2.PriceTick(exchange="paper", symbol=ETH, price="3100"),
        ]
    )
    await close(client, LONG)  # +10, fee 0.255
    await close(client, SHORT, symbol=ETH)  # -100, fee 1.55
    await open_market(client, SHORT, "0.02")  # at 51000, fee 0.51
    await open_market(client, LONG, "0.5", ETH)  # at 3100, fee 0.775
    await tick(client, "50500")  # BTC short: unrealized +10, notional 1010; ETH long 1550

    summary = await client.get_portfolio_summary(user_id=USER)
    assert (
        summary.user_id,
        summary.exchange,
        summary.total_positions,
        summary.open_positions,
        summary.closed_positions,
    ) == (USER, "", 4, 2, 2)
    assert (summary.total_notional, summary.total_unrealized_pnl) == ("2560", "10")
    assert (summary.total_realized_pnl, summary.total_fees) == ("-90", "4.84")
    assert (summary.win_rate, summary.profit_factor) == ("50", "0.1")
    assert summary.largest_position_pct == "60.546875"  # 1550 / 2560
    on_paper = await client.get_portfolio_summary(user_id=USER, exchange="paper")
    assert on_paper.exchange == "paper"
    on_paper.exchange = ""
    assert on_paper == summary


# FindOpenOrders


async def test_find_open_orders_by_grid_level_and_price_window(
    client: OmsClient, oms: OmsHarness
) -> None:
    def buy(price: str, level: int) -> Awaitable[S.Order]:
        return client.place_order(
            user_id=USER,
            exchange="paper",
            symbol=BTC,
            side=S.SIDE_BUY,
            type=S.ORDER_TYPE_LIMIT,
            quantity="0.01",
            price=price,
            grid_level=level,
        )

    level_3 = await buy("49000", 3)
    level_4 = await buy("48000", 4)
    again_3 = await buy("48990", 3)
    await tick(client, "3000", symbol=ETH)
    await client.place_order(
        user_id=USER,
        exchange="paper",
        symbol=ETH,
        side=S.SIDE_BUY,
        type=S.ORDER_TYPE_LIMIT,
        quantity="1",
        price="2900",
        grid_level=3,
    )  # another instrument
    filled = await client.place_order(
        user_id=USER,
        exchange="paper",
        symbol=BTC,
        side=S.SIDE_BUY,
        type=S.ORDER_TYPE_MARKET,
        quantity="0.01",
        grid_level=3,
    )  # not open
    assert filled.status == S.ORDER_STATUS_FILLED

    found = await client.find_open_orders(user_id=USER, exchange="paper", symbol=BTC, grid_level=3)
    assert [o.order_id for o in found] == [level_3.order_id, again_3.order_id]  # oldest first
    # A level, OR a price window (inclusive).
    either = await client.find_open_orders(
        user_id=USER,
        exchange="paper",
        symbol=BTC,
        grid_level=4,
        price="48995",
        price_tolerance="5",
    )
    assert [o.order_id for o in either] == [level_3.order_id, level_4.order_id, again_3.order_id]
    assert (
        await client.find_open_orders(
            user_id=USER, exchange="paper", symbol=BTC, grid_level=3, side=S.SIDE_SELL
        )
        == []
    )
    await client.cancel_order(user_id=USER, order_id=level_3.order_id)
    assert [
        o.order_id
        for o in await client.find_open_orders(
            user_id=USER, exchange="paper", symbol=BTC, grid_level=3
        )
    ] == [again_3.order_id]
    assert (
        await client.find_open_orders(user_id=USER, exchange="paper", symbol=BTC, grid_level=5)
        == []
    )

    with pytest.raises(grpc.aio.AioRpcError) as neither:
        await client.find_open_orders(user_id=USER, exchange="paper", symbol=BTC)
    assert neither.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    lose = LoseResponses("FindOpenOrders", times=1)  # a read: retried
    async with client_with(oms.address, lose, retry=FAST_RETRY) as losing:
        assert await losing.find_open_orders(
            user_id=USER, exchange="paper", symbol=BTC, grid_level=4
        ) == [level_4]
    assert len(lose.requests) == 2


# StreamPositions


class WatchStreams(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Records each stream call: its request, whether it went live (its first heartbeat),
    and the status it ended with."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.live: list[bool] = []
        self.ended: list[grpc.StatusCode] = []

    async def intercept_unary_stream(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(details, request)
        index = len(self.requests)
        self.requests.append(request)
        self.live.append(False)

        async def watched() -> AsyncIterator[Any]:
            try:
                async for response in call:
                    if response.WhichOneof("payload") == "heartbeat":
                        self.live[index] = True
                    yield response
            except grpc.aio.AioRpcError as error:
                self.ended.append(error.code())
                raise

        return watched()

    async def until_live(self) -> None:
        """The current call is subscribed: what is committed from now on reaches it live."""
        await until(lambda: bool(self.live) and self.live[-1])


async def test_stream_positions_resumes_after_each_cut_off_and_sees_every_update_once(
    redis_url: str,
) -> None:
    # A market fill commits four events of the user at once (accepted, filled, fill, position)
    # and the subscriber buffer holds three: every fill cuts a live stream off with
    # RESOURCE_EXHAUSTED, as a consumer too far behind would be.
    oms = await make_oms(redis_url, stream_buffer_events=3)
    streams = WatchStreams()
    try:
        async with client_with(oms.address, streams) as client:
            await tick(client, "50000")
            await open_market(client)  # history before the snapshot
            snapshot = await client.list_positions_page(user_id=USER)
            stream = client.stream_positions(USER, after_sequence=snapshot.as_of_sequence)
            got: list[P.PositionUpdate] = []

            async def consume() -> None:
                async for update in stream:
                    got.append(update)

            async def delivered(count: int) -> None:
                await until(lambda: len(got) >= count)
                assert len(got) == count

            consumer = asyncio.create_task(consume())
            # (action, position updates it makes, whether it cuts the stream off)
            actions: list[tuple[Callable[[], Awaitable[object]], int, bool]] = [
                (lambda: open_market(client), 1, True),  # long 0.02
                (lambda: tick(client, "50100"), 1, False),  # the mark moves: one event
                (lambda: open_market(client, SHORT, "0.03"), 1, True),
                (lambda: close(client, LONG, "0.005"), 1, True),
                (lambda: tick(client, "50200"), 2, False),  # both positions: two events
                (lambda: close(client, SHORT), 1, True),
            ]
            for action, updates, cut_off in actions:
                await streams.until_live()
                before, calls = len(got), len(streams.requests)
                await action()
                await delivered(before + updates)
                if cut_off:  # resumed from the last update it had delivered
                    assert len(streams.requests) == calls + 1
                    assert streams.requests[-1].after_sequence == (
                        got[before - 1].sequence if before else snapshot.as_of_sequence
                    )
                else:
                    assert len(streams.requests) == calls

            def figures(update: P.PositionUpdate) -> tuple[int, str, str]:
                p = update.position
                return (p.position_side, p.size, p.mark_price)

            assert [figures(u) for u in got[:4]] == [
                (LONG, "0.02", "50000"),
                (LONG, "0.02", "50100"),
                (SHORT, "0.03", "50100"),
                (LONG, "0.015", "50100"),
            ]
            assert {figures(u) for u in got[4:6]} == {
                (LONG, "0.015", "50200"),
                (SHORT, "0.03", "50200"),
            }
            assert figures(got[6]) == (SHORT, "0", "50200")
            sequences = [u.sequence for u in got]
            assert sequences == sorted(set(sequences))  # each once, in order
            assert snapshot.as_of_sequence < sequences[0]
            assert got[-1].position.status == P.POSITION_STATUS_CLOSED
            assert streams.ended == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4
            assert stream.last_sequence == sequences[-1]
            last_long = next(u for u in reversed(got) if u.position.position_side == LONG)
            assert last_long.position == await held(client)
            assert got[-1].position == await held(client, SHORT)
            await stream.aclose()
            await consumer
    finally:
        await oms.close()
