"""The real server (embedded Redis, AOF on, paper exchange) plus one no-op RPC.

`tradingboost.oms.bench.Noop/PlaceOrder` takes a PlaceOrderRequest and answers a canned
PlaceOrderResponse through the same server stack (interceptor, serialization, uvloop): the
baseline every figure is divided by.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import uvloop
from tradingboost.oms.v1 import order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.adapters.redis_store.embedded import EmbeddedRedis
from oms.bootstrap import serve
from oms.config import load_settings

NOOP_METHOD = "/tradingboost.oms.bench.Noop/PlaceOrder"

_CANNED = pb.PlaceOrderResponse(
    order=order_pb2.Order(
        order_id="01KAQZ3V9Q6R8W2M4N5P7T0XYZ",
        client_order_id="bench-0000000001",
        user_id="bench",
        exchange="paper",
        symbol="BTC/USDT:USDT",
        side=order_pb2.SIDE_BUY,
        type=order_pb2.ORDER_TYPE_LIMIT,
        time_in_force=order_pb2.TIME_IN_FORCE_GTC,
        quantity="0.01",
        price="40000",
        position_side=order_pb2.POSITION_SIDE_LONG,
        status=order_pb2.ORDER_STATUS_OPEN,
        filled_quantity="0",
        remaining_quantity="0.01",
        fees="0",
    )
)


async def _noop(request: pb.PlaceOrderRequest, context: Any) -> pb.PlaceOrderResponse:
    return _CANNED


def noop_handler() -> grpc.GenericRpcHandler[Any, Any]:
    service, method = NOOP_METHOD.strip("/").split("/")
    return grpc.method_handlers_generic_handler(
        service,
        {
            method: grpc.unary_unary_rpc_method_handler(
                _noop,
                request_deserializer=pb.PlaceOrderRequest.FromString,
                response_serializer=pb.PlaceOrderResponse.SerializeToString,
            )
        },
    )


def start(data_dir: Path, wrapper: Sequence[str] = ()) -> tuple[subprocess.Popen[str], str]:
    """This module's server in a process of its own (run under `wrapper`, e.g. valgrind):
    the process and the address it serves on, once it serves."""
    server = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "bench.server", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith("oms serving on "):
            return server, line.removeprefix("oms serving on ").strip()
    raise RuntimeError(f"bench server did not start: {server.wait()}")


def main() -> None:
    data_dir = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="oms-bench-"))
    )
    settings = load_settings({"listen": "127.0.0.1:0", "data_dir": data_dir})
    redis = EmbeddedRedis(settings.data_dir)
    try:
        uvloop.run(serve(settings, redis.start(), [noop_handler()]))
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
