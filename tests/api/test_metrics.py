"""Prometheus /metrics (metrics_listen): calls by method and status, latency, engine gauges."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from fixtures.client_streams import until
from fixtures.metrics import plain, scrape
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.streams import StreamReader
from fixtures.trading import USER, order_request, place, tick
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr
from tradingboost.oms.v1 import order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.config import AuthSettings, TokenSettings

PLACE = "/tradingboost.oms.v1.OrderService/PlaceOrder"
GET = "/tradingboost.oms.v1.OrderService/GetOrder"
STREAM = "/tradingboost.oms.v1.OrderService/StreamOrderUpdates"
TOKEN = "metrics-test-token-0123456789"


def calls(method: str, code: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return "oms_rpc_calls_total", frozenset({("method", method), ("code", code)})


@pytest.fixture
async def oms(redis_url: str) -> AsyncIterator[OmsHarness]:
    harness = await make_oms(redis_url, metrics_listen="127.0.0.1:0")
    try:
        yield harness
    finally:
        await harness.close()


async def test_calls_are_counted_by_method_and_status_with_their_latency(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    resting = await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
    with pytest.raises(grpc.aio.AioRpcError):
        await oms.orders.PlaceOrder(order_request(quantity="-1"))
    with pytest.raises(grpc.aio.AioRpcError):
        await oms.orders.GetOrder(pb.GetOrderRequest(user_id=USER, order_id="no-such-order"))

    samples = await scrape(oms)

    assert samples[calls(PLACE, "OK")] == 1
    assert samples[calls(PLACE, "INVALID_ARGUMENT")] == 1
    assert samples[calls(GET, "NOT_FOUND")] == 1
    latency = frozenset({("method", PLACE)})
    assert samples[("oms_rpc_duration_seconds_count", latency)] == 2
    assert 0 < samples[("oms_rpc_duration_seconds_sum", latency)] < 10
    assert samples[plain("oms_paper_resting_orders")] == 1
    assert samples[plain("process_resident_memory_bytes")] > 0
    assert resting.status == order_pb2.ORDER_STATUS_OPEN


async def test_streams_are_gauged_while_open_and_counted_when_they_end(oms: OmsHarness) -> None:
    stream: StreamReader[order_pb2.OrderUpdate] = StreamReader(
        oms.orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(user_id=USER)),
        "order_update",
    )
    await stream.until_live()
    assert (await scrape(oms))[plain("oms_event_streams_open")] == 1

    stream.cancel()
    await until(lambda: oms.app.hub.streams == 0)
    samples = await scrape(oms)
    assert samples[plain("oms_event_streams_open")] == 0
    assert samples[calls(STREAM, "CANCELLED")] == 1
    # A stream's lifetime is no latency.
    assert ("oms_rpc_duration_seconds_count", frozenset({("method", STREAM)})) not in samples


async def test_calls_refused_by_auth_are_counted_too(redis_url: str) -> None:
    tokens = [TokenSettings(name="bot", token=SecretStr(TOKEN), users=[USER])]
    oms = await make_oms(redis_url, metrics_listen="127.0.0.1:0", auth=AuthSettings(tokens=tokens))
    try:
        request = pb.GetOrderRequest(user_id=USER, order_id="no-such-order")
        for metadata in ((), (("authorization", f"Bearer {TOKEN}"),)):
            with pytest.raises(grpc.aio.AioRpcError):
                await oms.orders.GetOrder(request, metadata=metadata)

        samples = await scrape(oms)

        assert samples[calls(GET, "UNAUTHENTICATED")] == 1
        assert samples[calls(GET, "NOT_FOUND")] == 1
    finally:
        await oms.close()


async def test_calls_refused_at_shutdown_are_counted_unavailable(oms: OmsHarness) -> None:
    await oms.app.server.begin_shutdown()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await oms.orders.GetOrder(pb.GetOrderRequest(user_id=USER, order_id="any"))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE

    assert (await scrape(oms))[calls(GET, "UNAVAILABLE")] == 1


async def test_what_commits_did_is_counted_by_exchange_and_type(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    await place(oms)  # a market order: ACCEPTED, then filled as taker
    await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000")  # rests...
    await tick(oms, "48000")  # ...then fills as maker
    crossing = order_pb2.TIME_IN_FORCE_POST_ONLY
    await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", time_in_force=crossing)

    samples = await scrape(oms)

    def order_events(kind: str) -> float:
        labels = frozenset({("exchange", "paper"), ("type", kind)})
        return samples.get(("oms_order_events_total", labels), 0)

    assert [order_events(k) for k in ("ACCEPTED", "FILLED", "REJECTED")] == [2, 2, 1]
    for liquidity in ("TAKER", "MAKER"):
        labels = frozenset({("exchange", "paper"), ("liquidity", liquidity)})
        assert samples[("oms_fills_total", labels)] == 1


async def test_reflection_streams_are_counted_too(oms: OmsHarness) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(oms.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request])):
        assert response.list_services_response.service

    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert (await scrape(oms))[calls(method, "OK")] == 1


async def test_metrics_beyond_loopback_are_served_with_a_warning(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    oms = await make_oms(redis_url, metrics_listen="0.0.0.0:0")
    try:
        assert (await scrape(oms))[plain("oms_event_streams_open")] == 0
        [warning] = [r for r in caplog.records if "no authentication" in r.getMessage()]
        assert warning.levelname == "WARNING"
    finally:
        await oms.close()
