"""Streams: live delivery, resume, list-then-watch, retention, heartbeats, slow subscribers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from fixtures.client_streams import until
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.streams import StreamReader
from fixtures.tcp_proxy import SilencingProxy
from fixtures.trading import BTC, USER, place, tick
from grpc_health.v1 import health_pb2
from oms_client import HISTORY_TRIMMED_REASON, SEQUENCE_AHEAD_REASON, error_info
from tradingboost.oms.v1 import (
    market_data_pb2,
    market_data_service_pb2_grpc,
    order_pb2,
    order_service_pb2_grpc,
)
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_service_pb2 as pb

S = order_pb2


def order_stream(
    oms: OmsHarness, after: int = 0, channel: grpc.aio.Channel | None = None, **filters: Any
) -> StreamReader[S.OrderUpdate]:
    """USER's order updates, over `channel` if given (the harness's own otherwise)."""
    orders = oms.orders if channel is None else order_service_pb2_grpc.OrderServiceStub(channel)
    call = orders.StreamOrderUpdates(
        pb.StreamOrderUpdatesRequest(user_id=USER, after_sequence=after, **filters)
    )
    return StreamReader(call, "order_update")


def stalling_channel(oms: OmsHarness) -> grpc.aio.Channel:
    """A client channel that never widens its receive window (no BDP probing): once its
    client stops reading, the server's writes block after ~64 KiB."""
    return grpc.aio.insecure_channel(oms.address, options=[("grpc.http2.bdp_probe", 0)])


def fill_stream(oms: OmsHarness, after: int = 0, **filters: Any) -> StreamReader[S.Fill]:
    call = oms.orders.StreamFills(
        pb.StreamFillsRequest(user_id=USER, after_sequence=after, **filters)
    )
    return StreamReader(call, "fill")


async def test_live_order_updates_and_fills(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    updates, fills = order_stream(oms), fill_stream(oms)
    assert await updates.until_live() == 0
    await fills.until_live()

    order = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000", quantity="0.01")
    await tick(oms, "48000")

    accepted, filled = await updates.events(2)
    assert (accepted.event_type, accepted.order.status) == (
        S.ORDER_EVENT_TYPE_ACCEPTED,
        S.ORDER_STATUS_OPEN,
    )
    assert (filled.event_type, filled.order.status) == (
        S.ORDER_EVENT_TYPE_FILLED,
        S.ORDER_STATUS_FILLED,
    )
    [fill] = await fills.events(1)
    assert (fill.order_id, fill.price, fill.quantity) == (order.order_id, "49000", "0.01")
    # One sequence across kinds: ACCEPTED, then the fill, then FILLED.
    assert accepted.sequence < fill.sequence < filled.sequence
    assert filled.sequence - accepted.sequence == 2
    updates.cancel()
    fills.cancel()


async def test_filters_deliver_only_their_symbol(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    await tick(oms, "3000", symbol="ETH/USDT:USDT")
    eth = fill_stream(oms, exchange="paper", symbol="ETH-USDT-SWAP")
    await eth.until_live()
    await place(oms)  # BTC
    eth_order = await place(oms, symbol="ETH/USDT:USDT")
    [fill] = await eth.events(1)
    assert fill.order_id == eth_order.order_id
    assert fill.symbol == "ETH/USDT:USDT"
    eth.cancel()


async def test_resume_after_disconnect_delivers_exactly_the_missed_events(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    stream = order_stream(oms)
    await stream.until_live()
    await place(oms)
    seen = await stream.events(2)
    stream.cancel()
    last = seen[-1].sequence

    missed = [await place(oms) for _ in range(3)]  # while disconnected
    resumed = order_stream(oms, after=last)
    replayed = await resumed.events(6)
    assert [u.sequence for u in replayed] == sorted({u.sequence for u in replayed})
    assert all(u.sequence > last for u in replayed)
    assert [(u.order.order_id, u.event_type) for u in replayed] == [
        (o.order_id, kind)
        for o in missed
        for kind in (S.ORDER_EVENT_TYPE_ACCEPTED, S.ORDER_EVENT_TYPE_FILLED)
    ]
    await resumed.until_live()
    later = await place(oms)
    accepted, filled = await resumed.events(2)
    assert accepted.order.order_id == later.order_id == filled.order.order_id
    assert accepted.sequence > replayed[-1].sequence
    assert await resumed.no_event_within(0.2)
    resumed.cancel()


async def test_list_then_stream_misses_nothing_and_counts_nothing_twice(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    for price in ("49000", "48000", "47000"):
        await place(oms, type=S.ORDER_TYPE_LIMIT, price=price)
    snapshot = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER, open_only=True))
    book = {o.order_id: o for o in snapshot.orders}
    assert len(book) == 3

    # Changes land between the snapshot and the watch: the stream must replay them.
    await tick(oms, "48500")  # fills the 49000 buy
    new = await place(oms, type=S.ORDER_TYPE_LIMIT, price="46000")
    stream = order_stream(oms, after=snapshot.as_of_sequence)
    for update in await stream.events(2):
        assert update.sequence > snapshot.as_of_sequence
        book[update.order.order_id] = update.order
    assert {o.order_id for o in book.values() if o.status == S.ORDER_STATUS_OPEN} == {
        o.order_id
        for o in (
            await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER, open_only=True))
        ).orders
    }
    assert new.order_id in book
    stream.cancel()


async def test_a_listing_of_several_pages_then_a_stream_from_its_first_page_converges(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    for price in ("49000", "48000", "47000", "46000"):
        await place(oms, type=S.ORDER_TYPE_LIMIT, price=price)
    request = pb.ListOrdersRequest(user_id=USER, page_size=2)
    first = await oms.orders.ListOrders(request)
    # Between the pages: an order of the second page fills, another is placed.
    await tick(oms, "48500")  # fills the 49000 buy, the oldest
    new = await place(oms, type=S.ORDER_TYPE_LIMIT, price="45000")
    request.page_token = first.next_page_token
    second = await oms.orders.ListOrders(request)
    assert second.as_of_sequence > first.as_of_sequence and not second.next_page_token
    book = {o.order_id: o for o in [*first.orders, *second.orders]}
    assert len(book) == 4 and new.order_id not in book
    stream = order_stream(oms, after=first.as_of_sequence)
    # (the fill's update, then the new order's acceptance)
    for update in await stream.events(2):
        book[update.order.order_id] = update.order
    assert await stream.no_event_within(0.2)
    listed_now = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    assert book == {o.order_id: o for o in listed_now.orders}
    stream.cancel()


async def test_for_a_new_user_stream_then_list_misses_nothing(oms: OmsHarness) -> None:
    # A new user's snapshot has as_of_sequence 0, and after_sequence 0 means live only: the
    # other way round (the proto's recipe), streaming first, then listing, loses nothing.
    await tick(oms, "50000")
    stream = order_stream(oms)
    assert await stream.until_live() == 0
    first = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000")
    listing = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    second = await place(oms, type=S.ORDER_TYPE_LIMIT, price="48000")

    streamed = await stream.events(2)
    assert [o.order_id for o in listing.orders] == [first.order_id]
    after_listing = [u for u in streamed if u.sequence > listing.as_of_sequence]
    assert [u.order.order_id for u in after_listing] == [second.order_id]


async def test_resume_point_in_the_future_is_out_of_range(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    await place(oms)
    stream = order_stream(oms, after=1000)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream.next_message()
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
    # ACCEPTED, fill, FILLED and the position's update.
    assert "newest sequence 4" in (error.value.details() or "")
    assert error_info(error.value) == {SEQUENCE_AHEAD_REASON: {"newest_sequence": "4"}}


async def test_resume_point_older_than_retention_is_out_of_range(redis_url: str) -> None:
    oms = await make_oms(redis_url, retention_events=5)
    try:
        await tick(oms, "50000")
        for _ in range(4):
            await place(oms)  # 16 events (ACCEPTED, fill, FILLED, position); 5 kept: 12..16
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await order_stream(oms, after=10).next_message()
        assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "oldest available sequence is 12" in (error.value.details() or "")
        assert error_info(error.value) == {HISTORY_TRIMMED_REASON: {"oldest_sequence": "12"}}
        # Resuming right before the oldest retained event still works.
        ok = order_stream(oms, after=11)
        [first] = await ok.events(1)
        assert first.sequence == 13  # 12 is the 3rd position update; 13 the 4th ACCEPTED
        ok.cancel()
    finally:
        await oms.close()


async def test_from_oldest_replays_every_retained_event_then_goes_live(redis_url: str) -> None:
    oms = await make_oms(redis_url, retention_events=5)
    try:
        await tick(oms, "50000")
        fill_call = oms.orders.StreamFills(pb.StreamFillsRequest(user_id=USER, from_oldest=True))
        fills: StreamReader[S.Fill] = StreamReader(fill_call, "fill")
        assert await fills.until_live() == 0  # a user with no events: live at once
        for _ in range(4):
            await place(oms)  # 16 events (ACCEPTED, fill, FILLED, position); 5 kept: 12..16
        assert [f.sequence for f in await fills.events(4)] == [2, 6, 10, 14]
        fills.cancel()
        call = oms.orders.StreamOrderUpdates(
            pb.StreamOrderUpdatesRequest(user_id=USER, from_oldest=True)
        )
        updates: StreamReader[S.OrderUpdate] = StreamReader(call, "order_update")
        assert [u.sequence for u in await updates.events(2)] == [13, 15]  # ACCEPTED, FILLED
        await place(oms)
        assert [u.sequence for u in await updates.events(2)] == [17, 19]
        updates.cancel()
    finally:
        await oms.close()


async def test_from_oldest_starts_at_what_is_retained_when_it_reads(redis_url: str) -> None:
    # A commit lands between the stream reading the retained bounds and its first read,
    # and trims the oldest event: the replay starts at the new oldest, not OUT_OF_RANGE.
    oms = await make_oms(redis_url, retention_events=5)
    try:
        await tick(oms, "50000")
        for _ in range(3):
            await place(oms)  # 12 events; 8..12 kept
        store = oms.app.hub._store
        bounds = store.sequence_bounds

        async def bounds_then_a_commit(user_id: str) -> tuple[int, int]:
            read = await bounds(user_id)
            store.sequence_bounds = bounds  # type: ignore[method-assign]
            await place(oms)  # 16 events; 12..16 kept
            return read

        store.sequence_bounds = bounds_then_a_commit  # type: ignore[method-assign]
        call = oms.orders.StreamOrderUpdates(
            pb.StreamOrderUpdatesRequest(user_id=USER, from_oldest=True)
        )
        updates: StreamReader[S.OrderUpdate] = StreamReader(call, "order_update")
        assert [u.sequence for u in await updates.events(2)] == [13, 15]
        updates.cancel()
    finally:
        await oms.close()


async def test_from_oldest_with_a_resume_point_is_invalid(oms: OmsHarness) -> None:
    call = oms.orders.StreamOrderUpdates(
        pb.StreamOrderUpdatesRequest(user_id=USER, after_sequence=3, from_oldest=True)
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await StreamReader(call, "order_update").next_message()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith("from_oldest:")


async def test_idle_stream_sends_heartbeats_with_the_latest_sequence(redis_url: str) -> None:
    oms = await make_oms(redis_url, heartbeat_interval_s=0.2)
    try:
        await tick(oms, "50000")
        await place(oms)
        stream = fill_stream(oms)
        assert await stream.until_live() == 4
        beat = await stream.next_message(timeout_s=2)
        assert beat.WhichOneof("payload") == "heartbeat"
        assert beat.heartbeat.latest_sequence == 4
        assert beat.heartbeat.resume_after_sequence == 4  # live only: from the newest on
        stream.cancel()
    finally:
        await oms.close()


async def test_a_stalled_subscriber_is_cut_off_while_others_keep_flowing(redis_url: str) -> None:
    oms = await make_oms(redis_url, stream_buffer_events=20)
    stalled_channel = stalling_channel(oms)
    try:
        stalled = order_stream(oms, channel=stalled_channel)
        healthy = order_stream(oms)
        await stalled.until_live()
        await healthy.until_live()
        await tick(oms, "50000")

        orders = 400
        received: list[S.OrderUpdate] = []

        async def drain() -> None:
            received.extend(await healthy.events(2 * orders, timeout_s=10))

        drainer = asyncio.create_task(drain())
        for _ in range(orders):
            await place(oms, metadata={"pad": "x" * 200})
        await drainer
        assert len(received) == 2 * orders  # the healthy stream got everything, in order
        assert [u.sequence for u in received] == sorted(u.sequence for u in received)

        # The stalled client reads again: what was in flight, then RESOURCE_EXHAUSTED naming
        # exactly the last of those as the resume point (no gap, no duplicate).
        got: list[int] = []
        with pytest.raises(grpc.aio.AioRpcError) as error:
            while True:
                got.extend(u.sequence for u in await stalled.events(1, timeout_s=5))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert got == sorted(got)
        assert (error.value.details() or "").endswith(f"resume with after_sequence={got[-1]}")
        healthy.cancel()
    finally:
        await stalled_channel.close(grace=None)
        await oms.close()


async def test_a_slow_replay_on_a_busy_user_catches_up_without_being_cut_off(
    redis_url: str,
) -> None:
    # Events committed while a stream replays are read from the store as its client takes
    # them: however many they are, a slow reader catching up is never cut off for it.
    oms = await make_oms(redis_url, stream_buffer_events=20)
    stalled_channel = stalling_channel(oms)
    try:
        await tick(oms, "50000")
        for _ in range(150):
            await place(oms, metadata={"pad": "x" * 200})
        slow = order_stream(oms, after=1, channel=stalled_channel)
        await until(lambda: oms.app.hub.following(USER) == 1)
        for _ in range(100):  # meanwhile its replay waits for the client: ~64 KiB sent
            await place(oms, metadata={"pad": "x" * 200})

        reference = order_stream(oms, after=1)
        expected: list[int] = []
        while (message := await reference.next_message()).WhichOneof("payload") != "heartbeat":
            expected.append(message.order_update.sequence)
        got: list[int] = []
        while (message := await slow.next_message()).WhichOneof("payload") != "heartbeat":
            got.append(message.order_update.sequence)
        assert len(expected) == 2 * 250 - 1
        assert got == expected
        slow.cancel()
        reference.cancel()
    finally:
        await stalled_channel.close(grace=None)
        await oms.close()


async def test_a_subscriber_that_never_reads_again_is_ended_at_once(redis_url: str) -> None:
    # Its server-side stream waits on a send that flow control holds: nothing but the
    # cut-off itself may end it, or it would hold its task and subscription for good.
    oms = await make_oms(redis_url, stream_buffer_events=20)
    stalled_channel = stalling_channel(oms)
    try:
        stalled = order_stream(oms, channel=stalled_channel)
        await stalled.until_live()
        await tick(oms, "50000")
        for _ in range(300):
            await place(oms, metadata={"pad": "x" * 200})
        await until(lambda: oms.app.hub.following(USER) == 0)

        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stalled.events(600, timeout_s=5)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await stalled_channel.close(grace=None)
        await oms.close()


async def test_a_price_subscriber_that_never_reads_again_is_ended_at_once(
    redis_url: str,
) -> None:
    oms = await make_oms(redis_url, stream_buffer_events=20)
    stalled_channel = stalling_channel(oms)
    try:
        prices = market_data_service_pb2_grpc.MarketDataServiceStub(stalled_channel).StreamPrices(
            md.StreamPricesRequest(
                instruments=[market_data_pb2.Instrument(exchange="paper", symbol=BTC)]
            )
        )
        await until(lambda: oms.app.market_data.streams == 1)  # subscribed: it sees the tick
        await tick(oms, "50000")
        first = await prices.read()
        assert isinstance(first, md.StreamPricesResponse) and first.price.price == "50000"
        for round_ in range(10):  # ~64 KiB of ticks fill the window, then 20 more overflow
            for price in range(1000):
                await tick(oms, f"{40000 + price}.{round_}")
            if oms.app.market_data.streams == 0:
                break
        assert oms.app.market_data.streams == 0

        with pytest.raises(grpc.aio.AioRpcError) as error:
            while True:
                await prices.read()
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await stalled_channel.close(grace=None)
        await oms.close()


async def test_a_cut_off_as_the_heartbeat_falls_due_still_ends_the_stream_with_its_error(
    redis_url: str,
) -> None:
    oms = await make_oms(redis_url, stream_buffer_events=20, heartbeat_interval_s=0.5)
    try:
        await tick(oms, "50000")
        stream = order_stream(oms)
        await stream.until_live()
        await place(oms)
        await stream.events(2)
        events = await oms.app.store.read_events(USER, 0, 10)
        # Overflow the idle stream's subscription just after its heartbeat falls due, holding
        # the loop until both are due: they run in one loop iteration, the heartbeat first.
        asyncio.get_running_loop().call_later(0.55, oms.app.hub.publish, events * 11)
        time.sleep(0.7)  # noqa: ASYNC251 (blocking the loop is the point)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            while True:
                await stream.next_message()
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await oms.close()


async def test_shutdown_ends_a_stalled_stream_at_once_with_its_resume_point(
    redis_url: str,
) -> None:
    # A long grace: the stream must not hold its subscription (or the stop) until it ends.
    oms = await make_oms(redis_url, shutdown_grace_s=60)
    stalled_channel = stalling_channel(oms)
    try:
        stalled = order_stream(oms, channel=stalled_channel)
        await stalled.until_live()
        await tick(oms, "50000")
        for _ in range(300):  # ~64 KiB: the server's writes now wait for the client
            await place(oms, metadata={"pad": "x" * 200})
        stop = asyncio.create_task(oms.app.stop())
        await until(lambda: oms.app.hub.following(USER) == 0)

        got: list[int] = []
        with pytest.raises(grpc.aio.AioRpcError) as error:
            while True:
                got.extend(u.sequence for u in await stalled.events(1))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (error.value.details() or "").endswith(f"resume with after_sequence={got[-1]}")
        async with asyncio.timeout(20):
            await stop
    finally:
        await stalled_channel.close(grace=None)
        await oms.channel.close(grace=None)


async def test_the_hub_forgets_a_user_once_no_stream_follows_them(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    stream = order_stream(oms)
    assert await stream.until_live() == 0
    await place(oms)
    await stream.events(2)
    await place(oms, user_id="nobody-follows")
    stream.cancel()
    await until(lambda: oms.app.hub.following(USER) == 0)
    assert oms.app.hub._latest == {}  # one entry per user ever seen would grow for good


async def test_a_stream_past_the_users_limit_is_resource_exhausted(redis_url: str) -> None:
    # Every event is written to each stream of its user: one client leaking streams must not
    # starve the others.
    oms = await make_oms(redis_url, max_streams_per_user=3)
    try:
        await tick(oms, "50000")
        first, second, fills = order_stream(oms), order_stream(oms), fill_stream(oms)
        for stream in (first, second, fills):
            await stream.until_live()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await fill_stream(oms).next_message()  # every kind counts
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = error.value.details() or ""
        assert f"user_id '{USER}' already has 3 streams open" in details
        assert "max_streams_per_user" in details
        other_user: StreamReader[S.OrderUpdate] = StreamReader(
            oms.orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(user_id="other-user")),
            "order_update",
        )
        await other_user.until_live()

        first.cancel()  # frees its place
        await until(lambda: oms.app.hub.following(USER) == 2)
        third = order_stream(oms)
        await third.until_live()
        order = await place(oms)
        for stream in (second, third):
            [accepted, *_] = await stream.events(2)
            assert accepted.order.order_id == order.order_id
        [fill] = await fills.events(1)
        assert fill.order_id == order.order_id
    finally:
        await oms.close()


async def test_a_price_stream_past_the_servers_limit_is_resource_exhausted(
    redis_url: str,
) -> None:
    # Each tick is written to every stream that names its instrument: a client leaking
    # price streams must not slow every tick for everyone.
    oms = await make_oms(redis_url, max_price_streams=2)

    def price_stream(symbol: str) -> Any:
        return oms.market.StreamPrices(
            md.StreamPricesRequest(
                instruments=[market_data_pb2.Instrument(exchange="paper", symbol=symbol)]
            )
        )

    try:
        btc, eth = price_stream(BTC), price_stream("ETH/USDT:USDT")
        await until(lambda: oms.app.market_data.streams == 2)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await price_stream(BTC).read()
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 price streams are open" in (error.value.details() or "")
        assert "max_price_streams" in (error.value.details() or "")

        eth.cancel()  # frees its place
        await until(lambda: oms.app.market_data.streams == 1)
        again = price_stream(BTC)
        await until(lambda: oms.app.market_data.streams == 2)
        await tick(oms, "50000")
        for stream in (btc, again):
            pushed = await stream.read()
            assert pushed.price.price == "50000"
        assert oms.app.market_data._by_instrument.keys() == {("paper", BTC)}
    finally:
        await oms.close()


async def test_a_client_that_stops_answering_is_disconnected_and_its_streams_end(
    redis_url: str,
) -> None:
    # A hung client, or one behind a partition: no reset ever comes, only silence.
    oms = await make_oms(redis_url, keepalive_s=1)
    host, port = oms.address.split(":")
    proxy = SilencingProxy(host, int(port))
    channel = grpc.aio.insecure_channel(await proxy.start())
    try:
        stream = order_stream(oms, channel=channel)
        await stream.until_live()
        assert oms.app.hub.following(USER) == 1
        proxy.silence()
        await until(lambda: oms.app.hub.following(USER) == 0)
    finally:
        await channel.close(grace=None)
        await proxy.close()
        await oms.close()


async def test_shutdown_ends_streams_with_unavailable(redis_url: str) -> None:
    oms = await make_oms(redis_url)
    stream = order_stream(oms)
    await stream.until_live()
    stop = asyncio.create_task(oms.app.stop())
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream.next_message()
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    # The user had no events: after_sequence=0 would resume live only, missing some.
    assert (error.value.details() or "").endswith("resume with from_oldest")
    await stop
    await oms.channel.close(grace=None)


async def test_shutdown_ends_health_watches_without_waiting_out_the_grace(
    redis_url: str,
) -> None:
    # A long grace: a stop that waited for the watches would outlast the wait below.
    oms = await make_oms(redis_url, shutdown_grace_s=60)
    request = health_pb2.HealthCheckRequest
    serving = oms.health.Watch(request(service="tradingboost.oms.v1.OrderService"))
    unknown = oms.health.Watch(request(service="no.such.Service"))
    try:
        assert (await serving.read()).status == health_pb2.HealthCheckResponse.SERVING
        assert (await unknown.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        async with asyncio.timeout(20):
            await oms.app.stop()
        assert await _until_ended(serving) == [health_pb2.HealthCheckResponse.NOT_SERVING]
        assert await _until_ended(unknown) == []
    finally:
        await oms.channel.close(grace=None)


async def _until_ended(watch: Any) -> list[int]:
    """What a health watch reports until it ends, which must be UNAVAILABLE."""
    reported = []
    with pytest.raises(grpc.aio.AioRpcError) as error:
        while True:
            update = await watch.read()
            assert isinstance(update, health_pb2.HealthCheckResponse), "it ended OK"
            reported.append(update.status)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (error.value.details() or "")
    return reported


async def test_events_trimmed_during_a_replay_end_the_stream_out_of_range(redis_url: str) -> None:
    # Retention trims the stream while a slow client is still replaying: the stream must end
    # OUT_OF_RANGE rather than jump over the trimmed events.
    oms = await make_oms(redis_url, retention_events=1200)
    slow_channel = stalling_channel(oms)  # the server's writes stall mid-replay

    async def rest(count: int) -> None:  # a resting limit: one event each
        for _ in range(count // 50):
            await asyncio.gather(
                *(place(oms, type=S.ORDER_TYPE_LIMIT, price="40000") for _ in range(50))
            )

    try:
        await tick(oms, "50000")  # no event: nothing of this user's changes
        await rest(1300)  # sequences 1..1300; 101..1300 retained
        slow = order_stream(oms, 100, channel=slow_channel)
        [first] = await slow.events(1)
        assert first.sequence == 101
        await rest(1300)  # 1401..2600 retained now
        last = first.sequence
        with pytest.raises(grpc.aio.AioRpcError) as error:
            while True:
                [update] = await slow.events(1, timeout_s=20)
                assert update.sequence == last + 1, f"skipped from {last} to {update.sequence}"
                last = update.sequence
        assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "oldest available sequence is 1401" in (error.value.details() or "")
        assert error_info(error.value) == {HISTORY_TRIMMED_REASON: {"oldest_sequence": "1401"}}
    finally:
        await slow_channel.close(grace=None)
        await oms.close()
