"""Health and reflection are always on, for every service of the contract."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fixtures.client_streams import until
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.redis_proxy import RedisFaultProxy
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tradingboost.oms.v1 import market_data_pb2, order_pb2
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_service_pb2 as pb

BTC = "BTC/USDT:USDT"
UNKNOWN = "01KAQZ3V9Q6R8W2M4N5P7T0XYZ"

SERVICES = [
    "tradingboost.oms.v1.OrderService",
    "tradingboost.oms.v1.PositionService",
    "tradingboost.oms.v1.TrailingStopService",
    "tradingboost.oms.v1.MarketDataService",
    "tradingboost.oms.v1.AccountService",
]


@pytest.mark.parametrize("service", ["", *SERVICES])
async def test_health_serving_overall_and_per_service(oms: OmsHarness, service: str) -> None:
    response = await oms.health.Check(health_pb2.HealthCheckRequest(service=service))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def listed_services(oms: OmsHarness) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(oms.channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    async for response in responses:
        return {s.name for s in response.list_services_response.service}
    raise AssertionError("reflection answered nothing")


async def test_reflection_lists_every_service(oms: OmsHarness) -> None:
    names = await listed_services(oms)
    assert set(SERVICES) <= names
    assert {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_describes_every_service_it_lists(oms: OmsHarness, version: str) -> None:
    # What `grpcurl describe` or `buf curl --list-methods` asks for each listed service.
    info = oms.channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = info(None)  # requests written one at a time
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for name in await listed_services(oms):
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=name))
        response = await call.read()
        assert isinstance(response, reflection_pb2.ServerReflectionResponse)
        assert response.WhichOneof("message_response") == "file_descriptor_response", name
        for raw in response.file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[file.name] = file
        assert name in {f"{f.package}.{s.name}" for f in files.values() for s in f.service}
    await call.done_writing()
    # The renamed service's method takes and gives its own package's messages.
    (method,) = files["grpc/reflection/v1/reflection.proto"].service[0].method
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.output_type == ".grpc.reflection.v1.ServerReflectionResponse"


async def test_health_watch_follows_the_status_until_shutdown(redis_url: str) -> None:
    oms = await make_oms(redis_url)
    watch = oms.health.Watch(health_pb2.HealthCheckRequest(service=SERVICES[0]))
    try:
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(oms.app.stop())
        after = await watch.read()
        assert after.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping
    finally:
        await oms.channel.close(grace=None)


async def test_while_calls_finish_at_shutdown_health_checks_and_reflection_still_answer(
    redis_url: str, proxy: RedisFaultProxy
) -> None:
    # A PlaceOrder held in a stalled Redis keeps the server stopping (within its grace):
    # meanwhile other calls are refused UNAVAILABLE, and a load balancer's Check is told
    # NOT_SERVING, not refused like them.
    oms = await make_oms(await proxy.start(), shutdown_grace_s=10)
    try:
        await oms.market.PublishPrices(
            md.PublishPricesRequest(
                prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="50000")]
            )
        )
        proxy.hold_request(b"held-at-stop")
        placing = asyncio.ensure_future(
            oms.orders.PlaceOrder(
                pb.PlaceOrderRequest(
                    user_id="alice",
                    exchange="paper",
                    symbol=BTC,
                    side=order_pb2.SIDE_BUY,
                    type=order_pb2.ORDER_TYPE_MARKET,
                    quantity="0.01",
                    client_order_id="held-at-stop",
                )
            )
        )
        await until(lambda: proxy.held == 1)  # the call is running: its commit is held
        stopping = asyncio.create_task(oms.app.stop())
        check = health_pb2.HealthCheckRequest(service=SERVICES[0])
        async with asyncio.timeout(5):
            while True:  # until the stop has begun
                status = (await oms.health.Check(check)).status
                if status != health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.02)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await oms.orders.GetOrder(pb.GetOrderRequest(user_id="alice", order_id=UNKNOWN))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        overall = await oms.health.Check(health_pb2.HealthCheckRequest())
        assert overall.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert "grpc.health.v1.Health" in await listed_services(oms)
        await proxy.release_held()
        assert (await placing).order.status == order_pb2.ORDER_STATUS_FILLED
        await stopping
    finally:
        await oms.channel.close(grace=None)


async def test_reflection_v1_answers_as_v1alpha_does(oms: OmsHarness) -> None:
    # Tools that speak only grpc.reflection.v1 (same messages, another service name).
    info = oms.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    response = await call.read()
    assert isinstance(response, reflection_pb2.ServerReflectionResponse)
    assert set(SERVICES) <= {s.name for s in response.list_services_response.service}
    call.cancel()
