"""Redis unreachable: calls answer UNAVAILABLE promptly, and nothing half-done is left."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.redis_proxy import RedisFaultProxy
from fixtures.redis_server import go_back_to, snapshot
from fixtures.trading import USER, place, tick
from grpc_health.v1 import health_pb2
from tradingboost.oms.v1 import order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.adapters.redis_store import keys
from oms.adapters.redis_store.embedded import EmbeddedRedis
from oms.bootstrap import StartupError


async def test_requests_answer_unavailable_when_redis_is_down(tmp_path: Path) -> None:
    redis_server = EmbeddedRedis(tmp_path, appendonly=False)
    url = redis_server.start()
    oms = await make_oms(url)
    try:
        await tick(oms, "50000")
        resting = await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
        redis_server.stop()

        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await place(oms, client_order_id="while-down")
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "state store unreachable" in (error.value.details() or "")
        assert time.monotonic() - started < 5
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await oms.orders.GetOrder(pb.GetOrderRequest(user_id=USER, order_id=resting.order_id))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await oms.orders.CancelOrder(
                pb.CancelOrderRequest(user_id=USER, order_id=resting.order_id)
            )
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        # The failed cancel changed nothing in memory: the order still rests in the book.
        assert oms.app.paper.resting_order(USER, resting.order_id, "") is not None
    finally:
        await oms.close()
        redis_server.stop()


@dataclass
class Partitionable:
    """The OMS behind a proxy that can cut Redis off, with one resting order placed."""

    oms: OmsHarness
    proxy: RedisFaultProxy
    resting: order_pb2.Order


@pytest.fixture
async def partitionable(
    redis_server: EmbeddedRedis, redis_url: str
) -> AsyncIterator[Partitionable]:
    proxy = RedisFaultProxy(redis_server.socket_path)  # redis_url: a flushed server
    oms = await make_oms(await proxy.start(), redis_timeout_s=0.2)
    try:
        await tick(oms, "50000")
        resting = await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
        yield Partitionable(oms, proxy, resting)
    finally:
        await oms.close()
        await proxy.close()


async def test_a_commit_redis_stops_answering_is_unavailable_and_the_retry_finds_the_order(
    partitionable: Partitionable,
) -> None:
    oms, proxy = partitionable.oms, partitionable.proxy
    proxy.swallow_replies(True)  # a partition: Redis runs what it gets, nothing comes back
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await place(oms, client_order_id="in-the-dark")
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 5
    proxy.swallow_replies(False)
    # The commit had reached Redis: the client's retry gets that order, not a second one.
    again = await place(oms, client_order_id="in-the-dark")
    listed = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    assert sorted(o.order_id for o in listed.orders) == sorted(
        [partitionable.resting.order_id, again.order_id]
    )


async def test_a_read_redis_stops_answering_is_unavailable_within_the_timeout(
    partitionable: Partitionable,
) -> None:
    oms, proxy = partitionable.oms, partitionable.proxy
    get = pb.GetOrderRequest(user_id=USER, order_id=partitionable.resting.order_id)
    proxy.swallow_replies(True)  # a partition: the connection stays open, no reply comes
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await oms.orders.GetOrder(get, timeout=10)  # unbounded, it would wait forever
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "did not answer within 0.2 s" in (error.value.details() or "")
    assert time.monotonic() - started < 5
    proxy.swallow_replies(False)
    assert (await oms.orders.GetOrder(get)).order == partitionable.resting


async def test_health_is_not_serving_while_redis_does_not_answer(
    redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = RedisFaultProxy(redis_server.socket_path)
    oms = await make_oms(await proxy.start(), redis_timeout_s=0.2, store_check_interval_s=0.05)
    try:
        assert await health_of(oms) == health_pb2.HealthCheckResponse.SERVING
        proxy.swallow_replies(True)
        await until_health(oms, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert "reporting NOT_SERVING: no answer within 0.2 s" in caplog.text
        proxy.swallow_replies(False)
        await until_health(oms, health_pb2.HealthCheckResponse.SERVING)
    finally:
        await oms.close()
        await proxy.close()


async def health_of(oms: OmsHarness) -> int:
    return int((await oms.health.Check(health_pb2.HealthCheckRequest())).status)


async def until_health(oms: OmsHarness, status: int) -> None:
    """Until Health.Watch reports `status` for the OrderService."""
    watch = oms.health.Watch(
        health_pb2.HealthCheckRequest(service="tradingboost.oms.v1.OrderService")
    )
    try:
        async with asyncio.timeout(5):
            async for update in watch:
                if update.status == status:
                    break
        assert await health_of(oms) == status  # overall too
    finally:
        watch.cancel()


async def test_nothing_is_written_to_a_store_that_lost_its_data(redis_url: str) -> None:
    # Before the server's next check notices (and stops it), commits are refused already.
    oms = await make_oms(redis_url, store_check_interval_s=60)
    try:
        await tick(oms, "50000")
        with redis.Redis.from_url(redis_url) as client:
            client.flushall()  # Redis restarted empty
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await place(oms, client_order_id="into-the-void")
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "lost its data" in (error.value.details() or "")
            assert list(client.scan_iter("oms:u:*")) == []
    finally:
        await oms.close()


async def test_a_store_that_went_back_in_time_takes_no_commit_and_the_server_stops(
    redis_url: str,
) -> None:
    # What an OS crash within appendfsync everysec's second leaves on Redis's host (or a
    # failover to a replica that lagged): Redis restarted as it was a moment ago.
    oms = await make_oms(redis_url, store_check_interval_s=0.2)
    resting = {"type": order_pb2.ORDER_TYPE_LIMIT, "price": "49000"}
    taken = keys.client_order_ids(USER)
    try:
        await tick(oms, "50000")
        await place(oms, client_order_id="kept", **resting)
        with redis.Redis.from_url(redis_url) as client:
            older = snapshot(client)
            # Connections dropped with nothing lost: the commits go on, on new ones.
            client.client_kill_filter(_type="normal", skipme=True)
            await place(oms, client_order_id="acknowledged-then-lost", **resting)

            go_back_to(client, older)

            with pytest.raises(grpc.aio.AioRpcError) as error:
                await place(oms, client_order_id="into-the-past", **resting)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "lost commits it had acknowledged" in (error.value.details() or "")
            assert client.hexists(taken, "kept")
            assert not client.hexists(taken, "into-the-past")
        async with asyncio.timeout(5):
            await oms.app.wait_for_stop_request()
        assert oms.app.store_lost
    finally:
        await oms.close()


async def test_a_store_that_went_back_in_time_stops_an_idle_server_too_and_its_next_start(
    redis_url: str, tmp_path: Path
) -> None:
    settings = {"store_check_interval_s": 0.2, "data_dir": tmp_path}
    oms = await make_oms(redis_url, **settings)
    try:
        await tick(oms, "50000")
        with redis.Redis.from_url(redis_url) as client:
            older = snapshot(client)
            await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
            go_back_to(client, older)
        # No commit comes to find out: the health watcher's next check does.
        async with asyncio.timeout(5):
            await oms.app.wait_for_stop_request()
        assert oms.app.store_lost
    finally:
        await oms.close()
    # Restarted as a supervisor would, the server still refuses that store...
    with pytest.raises(StartupError, match="Redis lost commits it had acknowledged") as refused:
        await make_oms(redis_url, **settings)
    floors = tmp_path / "commit-floors"
    assert str(floors) in str(refused.value)
    # ...until the operator accepts it as it is.
    for recorded in floors.iterdir():
        recorded.unlink()
    again = await make_oms(redis_url, **settings)
    await again.close()
