"""kill -9 and restart with the embedded Redis: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest
import redis
from fixtures.client_streams import until
from fixtures.oms_process import OmsProcess
from fixtures.redis_proxy import RedisFaultProxy
from fixtures.trading import BTC, USER, order_request
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tradingboost.oms.v1 import market_data_pb2, order_pb2
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_service_pb2 as pb

S = order_pb2


@pytest.fixture
def oms_process(tmp_path: Path) -> Iterator[OmsProcess]:
    process = OmsProcess(tmp_path / "data")
    yield process
    process.stop()


def _tick(price: str) -> md.PublishPricesRequest:
    return md.PublishPricesRequest(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price=price)]
    )


async def test_kill_9_then_restart_keeps_orders_fills_and_sequences(
    oms_process: OmsProcess,
) -> None:
    oms_process.start()
    async with oms_process.channel() as channel:
        orders, market = oms_process.stubs(channel)
        await market.PublishPrices(_tick("50000"))
        filled = (await orders.PlaceOrder(order_request(client_order_id="m1"))).order
        resting = (
            await orders.PlaceOrder(
                order_request(client_order_id="l1", type=S.ORDER_TYPE_LIMIT, price="49000")
            )
        ).order
        before = await orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
        fills_before = await orders.ListFills(pb.ListFillsRequest(user_id=USER))
    oms_process.kill9()

    oms_process.start()
    async with oms_process.channel() as channel:
        orders, market = oms_process.stubs(channel)
        after = await orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
        assert list(after.orders) == list(before.orders)
        assert after.as_of_sequence == before.as_of_sequence == 5
        fills_after = await orders.ListFills(pb.ListFillsRequest(user_id=USER))
        assert list(fills_after.fills) == list(fills_before.fills)
        # The last price survived too: a market order fills without a new tick.
        again = (await orders.PlaceOrder(order_request(client_order_id="m1"))).order
        assert again == filled  # idempotency across the restart
        # The resting limit is back in the paper book and fills on the next tick.
        await market.PublishPrices(_tick("48000"))
        now = await orders.GetOrder(pb.GetOrderRequest(user_id=USER, order_id=resting.order_id))
        assert now.order.status == S.ORDER_STATUS_FILLED
        assert now.order.average_fill_price == "49000"
        # Sequences continue without a gap: the fill and FILLED update are 6 and 7.
        fills = await orders.ListFills(pb.ListFillsRequest(user_id=USER, order_id=resting.order_id))
        assert [f.sequence for f in fills.fills] == [6]
        stream = orders.StreamOrderUpdates(
            pb.StreamOrderUpdatesRequest(user_id=USER, after_sequence=5)
        )
        first = cast(pb.StreamOrderUpdatesResponse, await asyncio.wait_for(stream.read(), 5))
        assert first.order_update.sequence == 7
        assert first.order_update.order.status == S.ORDER_STATUS_FILLED
        stream.cancel()


async def test_sigterm_reports_not_serving_ends_streams_and_exits_cleanly(
    oms_process: OmsProcess,
) -> None:
    oms_process.start()
    async with oms_process.channel() as channel:
        orders, _ = oms_process.stubs(channel)
        stream = orders.StreamFills(pb.StreamFillsRequest(user_id=USER))
        live = cast(pb.StreamFillsResponse, await asyncio.wait_for(stream.read(), 5))
        assert live.WhichOneof("payload") == "heartbeat"
        assert oms_process.process is not None
        terminate = asyncio.get_running_loop().run_in_executor(None, oms_process.terminate)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await asyncio.wait_for(stream.read(), 10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        await terminate
    assert oms_process.process.returncode == 0


async def test_calls_queued_at_sigterm_finish_or_are_refused_retryably(
    oms_process: OmsProcess,
) -> None:
    # Calls the server has received but not started when SIGTERM arrives must not end
    # CANCELLED (which clients cannot tell from their own cancel, and do not retry): they run,
    # or are refused UNAVAILABLE; and whatever was acknowledged is there after a restart.
    oms_process.start()
    async with oms_process.channel() as channel:
        orders, market = oms_process.stubs(channel)
        await market.PublishPrices(_tick("50000"))
        assert oms_process.process is not None
        calls = [
            asyncio.ensure_future(
                orders.PlaceOrder(
                    order_request(client_order_id=f"q{n}", type=S.ORDER_TYPE_LIMIT, price="40000")
                )
            )
            for n in range(300)
        ]
        await asyncio.sleep(0.05)
        oms_process.process.send_signal(signal.SIGTERM)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    codes = [
        o.code() if isinstance(o, grpc.aio.AioRpcError) else grpc.StatusCode.OK for o in outcomes
    ]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert oms_process.wait_exit() == 0
    oms_process.start()
    async with oms_process.channel() as channel:
        orders, _ = oms_process.stubs(channel)
        for n, code in enumerate(codes):
            if code is grpc.StatusCode.OK:
                request = pb.GetOrderRequest(user_id=USER, client_order_id=f"q{n}")
                assert (await orders.GetOrder(request)).order.status == S.ORDER_STATUS_OPEN


async def test_the_embedded_redis_dying_stops_the_server_with_an_error(
    oms_process: OmsProcess,
) -> None:
    # Its state gone from under it, the process exits non-zero for its supervisor to restart
    # it (recovering from the append-only file) instead of serving failures.
    oms_process.start()
    redis_pid = int((oms_process.data_dir / "redis.pid").read_text())
    os.kill(redis_pid, signal.SIGKILL)
    assert oms_process.wait_exit() == 1
    assert oms_process.process is not None and oms_process.process.stdout is not None
    assert "the embedded redis-server exited" in oms_process.process.stdout.read()
    oms_process.start()  # and the next start recovers
    async with oms_process.channel() as channel:
        _, market = oms_process.stubs(channel)
        await market.PublishPrices(_tick("50000"))


async def test_a_store_that_comes_back_without_its_data_stops_the_server(
    tmp_path: Path, redis_url: str
) -> None:
    # Redis restarted empty under a running server: serving on would hand out sequences
    # again from 1, which streams following from before would skip as already seen.
    env = {"OMS_REDIS_URL": redis_url, "OMS_STORE_CHECK_INTERVAL_S": "0.1"}
    process = OmsProcess(tmp_path / "data", env=env)
    process.start()
    try:
        async with process.channel() as channel:
            orders, market = process.stubs(channel)
            await market.PublishPrices(_tick("50000"))
            await orders.PlaceOrder(order_request(client_order_id="before"))
        with redis.Redis.from_url(redis_url) as client:
            client.flushall()
        assert await asyncio.to_thread(process.wait_exit) == 1
        assert process.process is not None and process.process.stdout is not None
        assert "the state store lost its data" in process.process.stdout.read()
    finally:
        process.stop()


async def test_a_second_sigterm_stops_at_once_without_waiting_out_the_grace(
    tmp_path: Path, proxy: RedisFaultProxy
) -> None:
    # A call stuck in a stalled Redis would hold the stop for the whole grace (a minute
    # here): an operator's second signal cancels it (UNAVAILABLE, so the client retries
    # under the same client_order_id) and the process exits cleanly at once.
    env = {"OMS_REDIS_URL": await proxy.start(), "OMS_SHUTDOWN_GRACE_S": "60"}
    process = OmsProcess(tmp_path / "data", env=env)
    await asyncio.to_thread(process.start)  # the proxy runs on this loop
    try:
        async with process.channel() as channel:
            orders, market = process.stubs(channel)
            await market.PublishPrices(_tick("50000"))
            proxy.hold_request(b"held-at-stop")
            placing = asyncio.ensure_future(
                orders.PlaceOrder(order_request(client_order_id="held-at-stop"))
            )
            await until(lambda: proxy.held == 1)
            assert process.process is not None
            process.process.send_signal(signal.SIGTERM)
            health = health_pb2_grpc.HealthStub(channel)
            async with asyncio.timeout(10):
                while True:  # until the stop has begun
                    status = (await health.Check(health_pb2.HealthCheckRequest())).status
                    if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    await asyncio.sleep(0.02)
            stopping_since = time.monotonic()
            process.process.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await placing
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            assert await asyncio.to_thread(process.wait_exit, 30) == 0
            # Half the grace at most, not the whole of it (it took ~1 s).
            assert time.monotonic() - stopping_since < 30
        assert process.process.stdout is not None
        assert "asked to stop again" in process.process.stdout.read()
    finally:
        await proxy.release_held()
        process.stop()
