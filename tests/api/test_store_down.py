"""Redis unreachable: calls answer UNAVAILABLE promptly, and nothing half-done is left."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from fixtures.oms_server import make_oms
from fixtures.trading import USER, place, tick
from tradingboost.oms.v1 import order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.adapters.redis_store.embedded import EmbeddedRedis


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
