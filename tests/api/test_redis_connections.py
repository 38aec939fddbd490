"""Reads share a bounded pool of Redis connections, however many calls arrive at once."""

from __future__ import annotations

import asyncio

import redis.asyncio
from fixtures.oms_server import make_oms
from fixtures.trading import USER, place, tick
from grpc_health.v1 import health_pb2
from tradingboost.oms.v1 import order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb


async def test_a_burst_of_reads_waits_for_the_pools_connections(redis_url: str) -> None:
    # An unbounded pool opens a connection per concurrent call and keeps them all.
    oms = await make_oms(redis_url, redis_max_connections=2)
    observer = redis.asyncio.Redis.from_url(redis_url)
    try:
        await tick(oms, "50000")
        order = await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
        request = pb.ListOrdersRequest(user_id=USER)

        # Redis holds every command for a while: the burst's calls are all in flight at once.
        await observer.execute_command("CLIENT", "PAUSE", 300)
        replies = await asyncio.gather(*(oms.orders.ListOrders(request) for _ in range(60)))

        assert all([o.order_id for o in r.orders] == [order.order_id] for r in replies)
        names = [client["name"] for client in await observer.client_list()]
        assert names.count("oms") == 2 + 1  # and the health watcher's own
    finally:
        await observer.aclose()
        await oms.close()


async def test_health_does_not_wait_behind_reads_holding_every_pooled_connection(
    redis_url: str,
) -> None:
    oms = await make_oms(
        redis_url, redis_max_connections=1, redis_timeout_s=1, store_check_interval_s=0.1
    )
    pool = oms.app.store.redis.connection_pool
    # As a long burst of reads would, all the while (redis-py leaves it untyped).
    held = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await asyncio.sleep(1.5)  # the store's timeout and then some: checks came meanwhile

        health = await oms.health.Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await pool.release(held)
        await oms.close()
