"""Self-resuming streams: every event exactly once, in order, across a server restart, a
slow-consumer cut-off and a dropped connection; errors that would repeat are raised."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fixtures.client_streams import (
    Consumer,
    assert_exactly_once_in_order,
    free_loopback_address,
    restartable_servers,
    until,
)
from fixtures.lossy_network import client_with, lost
from fixtures.oms_process import OmsProcess
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.tcp_proxy import SilencingProxy
from oms_client import STREAM_LIMIT_REASON, OmsClient, RetryPolicy, error_reasons
from tradingboost.oms.v1 import market_data_pb2, order_pb2

S = order_pb2
BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
USER = "alice"
BOTH_KINDS = [S.ORDER_EVENT_TYPE_ACCEPTED, S.ORDER_EVENT_TYPE_FILLED]


async def buy(client: OmsClient, symbol: str = BTC, user: str = USER, **fields: Any) -> S.Order:
    return await client.place_order(
        user_id=user,
        exchange="paper",
        symbol=symbol,
        side=S.SIDE_BUY,
        type=S.ORDER_TYPE_MARKET,
        quantity="0.01",
        **fields,
    )


async def tick(client: OmsClient, price: str, symbol: str = BTC) -> None:
    await client.publish_prices(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=symbol, price=price)]
    )


class RecordStreams(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Records each stream request, and the resume point of the latest heartbeat;
    `drop_first_after_live` turns the first connection into one that is lost once `drop`
    is set, ending with `drop_code` (UNAVAILABLE: a lost connection; CANCELLED: a stopping
    server): right after the server's going-live heartbeat, or, `reading_until_drop`, at
    the first message after `drop` is set."""

    def __init__(
        self,
        *,
        drop_first_after_live: bool = False,
        drop_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        reading_until_drop: bool = False,
    ) -> None:
        self.requests: list[Any] = []
        self.resume_after_sequence = 0
        self._drop_first = drop_first_after_live
        self._drop_code = drop_code
        self._reading_until_drop = reading_until_drop
        self.live = asyncio.Event()
        self.drop = asyncio.Event()

    async def intercept_unary_stream(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(details, request)
        self.requests.append(request)
        if not self._drop_first or len(self.requests) > 1:
            return call

        async def lost_after_live() -> AsyncIterator[Any]:
            async for response in call:
                if self.drop.is_set():
                    break
                yield response
                if response.WhichOneof("payload") == "heartbeat":
                    self.resume_after_sequence = response.heartbeat.resume_after_sequence
                    self.live.set()
                    if not self._reading_until_drop:
                        break
            await self.drop.wait()
            call.cancel()
            raise lost("connection lost (test)", self._drop_code)

        return lost_after_live()


# Across a server restart, with the real `oms serve` process and its embedded Redis


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[OmsProcess, OmsProcess]]:
    with restartable_servers(tmp_path / "data") as pair:
        yield pair


@pytest.mark.parametrize("stop", ["terminate", "kill9"])
async def test_streams_resume_across_a_restart_with_every_event_once_in_order(
    servers: tuple[OmsProcess, OmsProcess], stop: str
) -> None:
    first, second = servers
    address = await asyncio.to_thread(first.start)
    # Patient unary retries too: the test places orders right after the restart.
    async with OmsClient.connect(address, retry=RetryPolicy(attempts=20)) as client:
        await tick(client, "50000")
        await buy(client)
        snapshot = await client.list_orders_page(user_id=USER)
        updates = client.stream_order_updates(USER, after_sequence=snapshot.as_of_sequence)
        fills = client.stream_fills(USER, after_sequence=snapshot.as_of_sequence)
        update_consumer, fill_consumer = Consumer(updates), Consumer(fills)

        placed = [await buy(client) for _ in range(3)]
        await update_consumer.until(6)
        await fill_consumer.until(3)
        # Committed just before the stop: delivered before it, or replayed after the restart.
        placed += [await buy(client) for _ in range(2)]
        if stop == "kill9":
            first.kill9()
        else:
            await asyncio.to_thread(first.terminate)
        await asyncio.to_thread(second.start)
        placed += [await buy(client) for _ in range(3)]
        got_updates = await update_consumer.until(16)
        got_fills = await fill_consumer.until(8)

        assert [(u.order.order_id, u.event_type) for u in got_updates] == [
            (order.order_id, kind) for order in placed for kind in BOTH_KINDS
        ]
        assert_exactly_once_in_order([u.sequence for u in got_updates])
        listed = [f async for f in client.list_fills(user_id=USER)]
        assert [f.sequence for f in got_fills] == sorted(
            f.sequence for f in listed if f.sequence > snapshot.as_of_sequence
        )
        assert [f.order_id for f in got_fills] == [order.order_id for order in placed]
        assert updates.last_sequence == got_updates[-1].sequence
        assert fills.last_sequence == got_fills[-1].sequence
        await updates.aclose()
        await fills.aclose()
        await asyncio.gather(update_consumer.task, fill_consumer.task)


# Cut off for falling behind: RESOURCE_EXHAUSTED


async def test_a_slow_consumer_cut_off_resumes_and_still_sees_every_event_once(
    redis_url: str,
) -> None:
    oms = await make_oms(redis_url, stream_buffer_events=10)
    streams = RecordStreams()
    # No BDP probing: the receive window stays at 64 KiB, so a consumer that stops reading
    # stalls the server's writes and its bounded buffer overflows.
    options = [("grpc.http2.bdp_probe", 0)]
    try:
        async with client_with(oms.address, streams, options=options) as client:
            await tick(client, "50000")
            await buy(client)
            snapshot = await client.list_orders_page(user_id=USER)
            stream = client.stream_order_updates(USER, after_sequence=snapshot.as_of_sequence)
            orders = 120
            reading = asyncio.Event()
            got: list[S.OrderUpdate] = []

            async def slow_consumer() -> None:
                async for update in stream:
                    got.append(update)
                    await reading.wait()  # busy elsewhere after the first event
                    if len(got) == 2 * orders:
                        return

            consumer = asyncio.create_task(slow_consumer())
            placed = [await buy(client, metadata={"pad": "x" * 256})]
            await until(lambda: len(got) == 1)
            pad = {f"k{i}": "x" * 256 for i in range(8)}
            placed += [await buy(client, metadata=pad) for _ in range(orders - 1)]
            reading.set()
            await asyncio.wait_for(consumer, 10)

            assert [(u.order.order_id, u.event_type) for u in got] == [
                (order.order_id, kind) for order in placed for kind in BOTH_KINDS
            ]
            assert_exactly_once_in_order([u.sequence for u in got])
            # It was cut off and resumed from the last event it had, not from scratch.
            assert len(streams.requests) >= 2
            resumed_at = streams.requests[1].after_sequence
            assert snapshot.as_of_sequence < resumed_at < got[-1].sequence
            assert resumed_at in {u.sequence for u in got}
            await stream.aclose()
    finally:
        await oms.close()


# Dropped connections, and the heartbeat as a resume point


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
async def test_a_live_only_stream_dropped_before_any_event_resumes_from_the_heartbeat(
    oms: OmsHarness, code: grpc.StatusCode
) -> None:
    streams = RecordStreams(drop_first_after_live=True, drop_code=code)
    async with client_with(oms.address, streams) as client:
        await tick(client, "50000")
        await buy(client)
        newest = (await client.list_orders_page(user_id=USER)).as_of_sequence
        stream = client.stream_order_updates(USER)  # live only
        consumer = Consumer(stream)
        await asyncio.wait_for(streams.live.wait(), 5)

        missed = [await buy(client) for _ in range(2)]  # while the connection is down
        streams.drop.set()
        got = await consumer.until(4)

        # Live-only again would have started after these orders; the heartbeat did not.
        first_request, resumed = streams.requests
        assert first_request.after_sequence == 0
        assert newest <= resumed.after_sequence < got[0].sequence
        assert [(u.order.order_id, u.event_type) for u in got] == [
            (order.order_id, kind) for order in missed for kind in BOTH_KINDS
        ]
        await stream.aclose()
        await consumer.task


async def test_a_resuming_stream_never_skips_ahead_to_a_heartbeat(oms: OmsHarness) -> None:
    streams = RecordStreams(drop_first_after_live=True)
    async with client_with(oms.address, streams) as client:
        await tick(client, "50000")
        await tick(client, "3000", symbol=ETH)
        await buy(client, symbol=ETH)
        snapshot = await client.list_fills_page(user_id=USER)
        await buy(client)  # BTC: the heartbeat's sequence moves past what the stream sent
        eth_fills = client.stream_fills(
            USER, exchange="paper", symbol=ETH, after_sequence=snapshot.as_of_sequence
        )
        consumer = Consumer(eth_fills)
        await asyncio.wait_for(streams.live.wait(), 5)
        eth = await buy(client, symbol=ETH)
        streams.drop.set()
        got = await consumer.until(1)

        # Resumed after the BTC events the stream passed over (the heartbeat's resume point),
        # yet before the ETH fill it had not sent (the heartbeat's latest sequence).
        first_request, resumed = streams.requests
        assert first_request.after_sequence == snapshot.as_of_sequence
        assert snapshot.as_of_sequence < resumed.after_sequence < got[0].sequence
        assert [f.order_id for f in got] == [eth.order_id]
        await eth_fills.aclose()
        await consumer.task


async def test_a_quiet_filtered_stream_resumes_inside_the_retained_history(
    redis_url: str,
) -> None:
    # One ETH fill, then many more BTC events than retention keeps: the stream's last event
    # has left the history, but its heartbeats moved its resume point past the BTC events.
    oms = await make_oms(redis_url, retention_events=50, heartbeat_interval_s=0.1)
    streams = RecordStreams(drop_first_after_live=True, reading_until_drop=True)
    try:
        async with client_with(oms.address, streams) as client:
            await tick(client, "50000")
            await tick(client, "3000", symbol=ETH)
            eth_fills = client.stream_fills(USER, exchange="paper", symbol=ETH)
            consumer = Consumer(eth_fills)
            await asyncio.wait_for(streams.live.wait(), 5)
            placed = [await buy(client, symbol=ETH)]
            await consumer.until(1)
            for _ in range(40):
                await buy(client)
            newest = (await client.list_orders_page(user_id=USER)).as_of_sequence
            await until(lambda: streams.resume_after_sequence == newest)
            streams.drop.set()
            placed.append(await buy(client, symbol=ETH))
            got = await consumer.until(2)

            assert [f.order_id for f in got] == [order.order_id for order in placed]
            assert streams.requests[1].after_sequence == newest
            await eth_fills.aclose()
            await consumer.task
    finally:
        await oms.close()


async def test_a_stream_from_the_oldest_dropped_before_any_event_resumes_after_what_it_replayed(
    oms: OmsHarness,
) -> None:
    # Its going-live heartbeat's resume point is past the BTC orders it replayed and passed
    # over, and before the ETH fill it had not sent.
    streams = RecordStreams(drop_first_after_live=True)
    async with client_with(oms.address, streams) as client:
        await tick(client, "50000")
        await tick(client, "3000", symbol=ETH)
        await buy(client)
        eth_fills = client.stream_fills(USER, exchange="paper", symbol=ETH, from_oldest=True)
        consumer = Consumer(eth_fills)
        await asyncio.wait_for(streams.live.wait(), 5)
        eth = await buy(client, symbol=ETH)
        streams.drop.set()
        got = await consumer.until(1)

        first_request, resumed = streams.requests
        assert (first_request.after_sequence, first_request.from_oldest) == (0, True)
        assert not resumed.from_oldest
        assert 0 < resumed.after_sequence < got[0].sequence
        assert [f.order_id for f in got] == [eth.order_id]
        await eth_fills.aclose()
        await consumer.task


async def test_a_silent_connection_is_reconnected_without_losing_events(redis_url: str) -> None:
    # Heartbeats every 15 s against a 0.3 s idle limit: the client takes the quiet stream
    # for a dead connection, as it would one that vanished without a reset.
    oms = await make_oms(redis_url, heartbeat_interval_s=15)
    streams = RecordStreams()
    try:
        async with client_with(oms.address, streams, stream_idle_timeout_s=0.3) as client:
            await tick(client, "50000")
            await buy(client)
            snapshot = await client.list_orders_page(user_id=USER)
            stream = client.stream_order_updates(USER, after_sequence=snapshot.as_of_sequence)
            consumer = Consumer(stream)
            first = await buy(client)
            await consumer.until(2)
            await until(lambda: len(streams.requests) >= 3)
            second = await buy(client)
            got = await consumer.until(4)

            assert [(u.order.order_id, u.event_type) for u in got] == [
                (order.order_id, kind) for order in (first, second) for kind in BOTH_KINDS
            ]
            # From its last event, or a heartbeat's resume point past it.
            assert got[1].sequence <= streams.requests[-1].after_sequence < got[2].sequence
            await stream.aclose()
            await consumer.task
    finally:
        await oms.close()


async def test_a_consumer_timeout_does_not_lose_events(oms: OmsHarness) -> None:
    async with client_with(oms.address) as client:
        await tick(client, "50000")
        await buy(client)
        snapshot = await client.list_orders_page(user_id=USER)
        stream = client.stream_order_updates(USER, after_sequence=snapshot.as_of_sequence)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 0.2)  # nothing yet; cancels the call
        order = await buy(client)
        got = [await asyncio.wait_for(anext(stream), 5) for _ in range(2)]
        assert [(u.order.order_id, u.event_type) for u in got] == [
            (order.order_id, kind) for kind in BOTH_KINDS
        ]
        await stream.aclose()


async def test_consumer_timeouts_keep_a_live_only_stream_and_its_start(oms: OmsHarness) -> None:
    # A user with no events yet, read with timeouts far shorter than a round trip: each one
    # used to drop the call, and the next read went live again, after whatever had come.
    async with client_with(oms.address) as client:
        await tick(client, "50000")
        stream = client.stream_order_updates("newcomer")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 0.2)  # live by now
        orders = [await buy(client, user="newcomer") for _ in range(3)]
        got: list[S.OrderUpdate] = []
        async with asyncio.timeout(10):
            while len(got) < 6:
                with contextlib.suppress(TimeoutError):
                    got.append(await asyncio.wait_for(anext(stream), 0.001))
        assert [(u.order.order_id, u.event_type) for u in got] == [
            (order.order_id, kind) for order in orders for kind in BOTH_KINDS
        ]
        await stream.aclose()


async def test_list_then_watch_of_a_new_user_through_wait_live_misses_nothing(
    oms: OmsHarness,
) -> None:
    # A snapshot of a user with no events says as_of_sequence 0, which cannot be resumed
    # after; so the stream comes first, then the snapshot once the stream is live.
    async with client_with(oms.address) as client:
        await tick(client, "50000")
        stream = client.stream_order_updates("newcomer")
        assert await asyncio.wait_for(stream.wait_live(), 5) == 0
        first = await buy(client, user="newcomer")  # after going live, before the snapshot
        snapshot = await client.list_orders_page(user_id="newcomer")
        assert [o.order_id for o in snapshot.orders] == [first.order_id]
        second = await buy(client, user="newcomer")
        got: list[S.OrderUpdate] = []
        async with asyncio.timeout(5):
            async for update in stream:
                if update.sequence > snapshot.as_of_sequence:
                    got.append(update)
                if len(got) == 2:
                    break
        assert [(u.order.order_id, u.event_type) for u in got] == [
            (second.order_id, kind) for kind in BOTH_KINDS
        ]
        await stream.aclose()


async def test_list_then_watch_of_a_new_user_from_oldest_misses_nothing(
    oms: OmsHarness,
) -> None:
    # A snapshot of a user with no events says as_of_sequence 0: stream from the oldest.
    async with client_with(oms.address) as client:
        await tick(client, "50000")
        snapshot = await client.list_orders_page(user_id="newcomer")
        assert snapshot.as_of_sequence == 0
        first = await buy(client, user="newcomer")  # after the snapshot, before the stream
        stream = client.stream_order_updates("newcomer", from_oldest=True)
        got = [await asyncio.wait_for(anext(stream), 5) for _ in range(2)]
        assert [(u.order.order_id, u.event_type) for u in got] == [
            (first.order_id, kind) for kind in BOTH_KINDS
        ]
        assert got[0].sequence == 1
        await stream.aclose()
    with pytest.raises(ValueError, match="from_oldest"):
        client.stream_fills(USER, after_sequence=3, from_oldest=True)


async def test_wait_live_keeps_the_replayed_events_for_iteration(oms: OmsHarness) -> None:
    async with client_with(oms.address) as client:
        await tick(client, "50000")
        await buy(client)
        before = (await client.list_orders_page(user_id=USER)).as_of_sequence
        orders = [await buy(client) for _ in range(2)]
        newest = (await client.list_orders_page(user_id=USER)).as_of_sequence
        stream = client.stream_order_updates(USER, after_sequence=before)
        assert await asyncio.wait_for(stream.wait_live(), 5) == newest
        assert await stream.wait_live() == newest  # once live, at once
        # A cursor saved now, or after each event, resumes after what was delivered, not
        # after what was read ahead.
        assert stream.last_sequence == before
        got = []
        for _ in range(4):
            got.append(await asyncio.wait_for(anext(stream), 5))
            assert stream.last_sequence == got[-1].sequence
        assert [(u.order.order_id, u.event_type) for u in got] == [
            (order.order_id, kind) for order in orders for kind in BOTH_KINDS
        ]
        assert before < got[0].sequence and got[-1].sequence <= newest
        await stream.aclose()


async def test_a_live_only_stream_of_a_user_without_events_replays_what_came_while_it_was_down(
    oms: OmsHarness,
) -> None:
    streams = RecordStreams(drop_first_after_live=True)
    async with client_with(oms.address, streams) as client:
        await tick(client, "50000")
        stream = client.stream_order_updates("newcomer")  # live only; nothing to resume from
        consumer = Consumer(stream)
        await asyncio.wait_for(streams.live.wait(), 5)
        order = await buy(client, user="newcomer")  # while the connection is down
        streams.drop.set()
        got = await consumer.until(2)
        assert [(u.order.order_id, u.event_type) for u in got] == [
            (order.order_id, kind) for kind in BOTH_KINDS
        ]
        assert got[0].sequence == 1
        requests = [(r.after_sequence, r.from_oldest) for r in streams.requests]
        assert requests == [(0, False), (0, True)]
        await stream.aclose()
        await consumer.task


async def test_a_live_only_stream_of_a_user_without_events_goes_on_when_none_came(
    oms: OmsHarness,
) -> None:
    streams = RecordStreams(drop_first_after_live=True)
    async with client_with(oms.address, streams) as client:
        await tick(client, "50000")
        stream = client.stream_order_updates("newcomer")
        consumer = Consumer(stream)
        await asyncio.wait_for(streams.live.wait(), 5)
        streams.drop.set()
        await until(lambda: len(streams.requests) == 2)
        order = await buy(client, user="newcomer")
        got = await consumer.until(2)
        assert [(u.order.order_id, u.event_type) for u in got] == [
            (order.order_id, kind) for kind in BOTH_KINDS
        ]
        assert got[0].sequence == 1
        await stream.aclose()
        await consumer.task


async def test_a_stream_that_hears_nothing_gives_up_unavailable(oms: OmsHarness) -> None:
    host, port = oms.address.split(":")
    proxy = SilencingProxy(host, int(port))
    address = await proxy.start()
    retry = RetryPolicy(attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01)
    try:
        async with client_with(address, stream_idle_timeout_s=0.3, stream_retry=retry) as client:
            consumer = Consumer(client.stream_fills(USER))
            await until(lambda: proxy.connections == 1)
            await asyncio.sleep(0.2)  # the going-live heartbeat came
            proxy.silence()  # and the reconnects go over the same, silent, connection
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await consumer.until(1)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no message on the stream for 0.3 s" in (error.value.details() or "")
    finally:
        await proxy.close()


async def test_closing_the_client_ends_a_reading_consumer_cleanly(oms: OmsHarness) -> None:
    client = OmsClient.connect(oms.address)
    consumer = Consumer(client.stream_fills(USER))
    await asyncio.sleep(0.2)  # the consumer is now waiting for a fill
    await client.close()
    await asyncio.wait_for(consumer.task, 2)  # ended, not cancelled
    assert consumer.items == []


async def test_aclose_ends_a_waiting_consumer_cleanly(oms: OmsHarness) -> None:
    async with client_with(oms.address) as client:
        stream = client.stream_fills(USER)
        consumer = Consumer(stream)
        await asyncio.sleep(0.1)  # the consumer is now waiting for a fill
        await stream.aclose()
        await asyncio.wait_for(consumer.task, 2)  # ends without an exception
        assert consumer.items == []


async def test_a_consumer_that_leaves_its_loop_ends_the_stream_s_call(redis_url: str) -> None:
    # `break` out of `async for` drops the stream: its call must not stay open on the
    # server, which allows each user a bounded number (two here).
    oms = await make_oms(redis_url, max_streams_per_user=2)
    try:
        async with client_with(oms.address) as client:
            await tick(client, "50000")
            await buy(client)
            for _ in range(4):
                async for update in client.stream_order_updates(USER, from_oldest=True):
                    assert update.event_type == S.ORDER_EVENT_TYPE_ACCEPTED
                    break
                await until(lambda: oms.app.hub.following(USER) == 0)
    finally:
        await oms.close()


# Errors that reconnecting would not cure


async def test_the_stream_limit_is_raised_after_one_attempt(redis_url: str) -> None:
    # Unlike a slow consumer's cut-off (RESOURCE_EXHAUSTED too), opening again cannot cure it.
    oms = await make_oms(redis_url, max_streams_per_user=1)
    streams = RecordStreams()
    try:
        async with (
            client_with(oms.address, streams) as client,
            client.stream_fills(USER) as first,
        ):
            await first.wait_live()
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await anext(client.stream_order_updates(USER))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams_per_user" in (error.value.details() or "")
        assert error_reasons(error.value) == {STREAM_LIMIT_REASON}
        assert len(streams.requests) == 2
    finally:
        await oms.close()


async def test_out_of_range_is_raised_after_one_attempt(oms: OmsHarness) -> None:
    streams = RecordStreams()
    async with client_with(oms.address, streams) as client:
        stream = client.stream_order_updates(USER, after_sequence=1000)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await anext(stream)
        assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert len(streams.requests) == 1


async def test_reconnects_give_up_after_the_policy_attempts(oms: OmsHarness) -> None:
    retry = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01)
    async with OmsClient.connect(
        free_loopback_address(), stream_retry=retry
    ) as client:  # nobody listens there
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await anext(client.stream_fills(USER))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_reconnects_give_up_at_the_policy_deadline(oms: OmsHarness) -> None:
    retry = RetryPolicy(
        attempts=100_000, initial_backoff_s=0.01, max_backoff_s=0.01, deadline_s=0.5
    )
    async with OmsClient.connect(free_loopback_address(), stream_retry=retry) as client:
        async with asyncio.timeout(20):  # the attempts alone would take over 1000 s
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await anext(client.stream_fills(USER))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_deadline_shortens_the_last_reconnect_wait_so_that_one_more_attempt_fits(
    oms: OmsHarness,
) -> None:
    # As for unary calls: waits of 0.4 to 0.6 s, so a second one never fits whole into what
    # the first leaves of 0.8 s; it is cut so that a last attempt starts 0.1 s before it.
    retry = RetryPolicy(attempts=1000, initial_backoff_s=0.5, max_backoff_s=0.5, deadline_s=0.8)
    async with OmsClient.connect(free_loopback_address(), stream_retry=retry) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await anext(client.stream_fills(USER))
        elapsed = asyncio.get_running_loop().time() - started
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert 0.65 < elapsed < 0.9


# Prices


async def test_stream_prices_delivers_the_ticks_of_its_instruments(oms: OmsHarness) -> None:
    async with client_with(oms.address) as client:
        prices = client.stream_prices([market_data_pb2.Instrument(exchange="paper", symbol=BTC)])
        consumer = Consumer(prices)
        async with asyncio.timeout(5):
            while not consumer.items:  # live only, with no marker: tick until it is live
                await tick(client, "50000")
        await tick(client, "3000", symbol=ETH)
        await tick(client, "50001")
        await until(lambda: consumer.items[-1].price == "50001")
        assert {p.symbol for p in consumer.items} == {BTC}
        await prices.aclose()
        await consumer.task


async def test_stream_prices_starts_with_the_last_price(oms: OmsHarness) -> None:
    async with client_with(oms.address) as client:
        await tick(client, "50000")
        prices = client.stream_prices([market_data_pb2.Instrument(exchange="paper", symbol=BTC)])
        first = await asyncio.wait_for(anext(prices), 5)
        assert first.price == "50000"
        await tick(client, "50001")
        assert (await asyncio.wait_for(anext(prices), 5)).price == "50001"
        await prices.aclose()


class Outages(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Each stream call is lost (UNAVAILABLE) once `drop` is set, message or not; `taken`
    is set when the server has taken the call (its headers came)."""

    def __init__(self) -> None:
        self.calls = 0
        self.taken = asyncio.Event()
        self.drop = asyncio.Event()

    async def intercept_unary_stream(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(details, request)
        self.calls += 1

        async def lost_when_dropped() -> AsyncIterator[Any]:
            await call.initial_metadata()
            self.taken.set()
            await self.drop.wait()
            self.drop.clear()
            self.taken.clear()
            call.cancel()
            raise lost("connection lost (test)", grpc.StatusCode.UNAVAILABLE)
            yield  # an async generator, which the raise ends

        return lost_when_dropped()


async def test_a_quiet_price_stream_counts_separate_outages_apart(oms: OmsHarness) -> None:
    # No price for the instrument, so no message between the outages: each reconnect the
    # server takes ends an outage all the same, and two attempts in a row are never used up.
    outages = Outages()
    retry = RetryPolicy(attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01)
    async with client_with(oms.address, outages, stream_retry=retry) as client:
        prices = client.stream_prices([market_data_pb2.Instrument(exchange="paper", symbol=ETH)])
        reading = asyncio.ensure_future(anext(prices))
        for _ in range(3):
            await asyncio.wait_for(outages.taken.wait(), 5)
            outages.drop.set()
            await until(lambda: not outages.drop.is_set())
        await asyncio.wait_for(outages.taken.wait(), 5)
        assert not reading.done()
        assert outages.calls == 4
        reading.cancel()
        await prices.aclose()


async def test_a_connection_gone_silent_is_dropped_by_keepalive_and_the_stream_resumes(
    oms: OmsHarness,
) -> None:
    # No reset ever comes and the idle timeout is off: only keepalive pings can tell.
    host, port = oms.address.rsplit(":", 1)
    proxy = SilencingProxy(host, int(port))
    address = await proxy.start()
    try:
        async with (
            OmsClient.connect(address, keepalive_s=1, stream_idle_timeout_s=None) as client,
            OmsClient.connect(oms.address) as direct,
        ):
            await tick(direct, "50000")
            await buy(direct)
            snapshot = await direct.list_orders_page(user_id=USER)
            stream = client.stream_order_updates(USER, after_sequence=snapshot.as_of_sequence)
            consumer = Consumer(stream)
            await until(lambda: proxy.connections == 1)
            await asyncio.sleep(0.2)  # the stream is open through the proxy
            proxy.silence()
            order = await buy(direct)
            got = await consumer.until(2, timeout_s=15)
            assert [(u.order.order_id, u.event_type) for u in got] == [
                (order.order_id, kind) for kind in BOTH_KINDS
            ]
            assert proxy.connections == 2
            await stream.aclose()
            await consumer.task
    finally:
        await proxy.close()


async def test_closing_the_client_ends_its_streams_and_refuses_later_calls(
    oms: OmsHarness,
) -> None:
    client = OmsClient.connect(oms.address)
    await tick(client, "50000")
    fills = client.stream_fills(USER, from_oldest=True)
    await buy(client)
    consumer = Consumer(fills)
    [fill] = await consumer.until(1)
    await client.close()
    # The loop ends as a complete stream does: no reconnect against a closed channel.
    await asyncio.wait_for(consumer.task, 5)
    assert [f.order_id for f in consumer.items] == [fill.order_id]
    with pytest.raises(grpc.aio.UsageError, match="Channel is closed"):
        await client.get_price(exchange="paper", symbol=BTC)
