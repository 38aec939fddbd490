"""Health and reflection are always on, for every service of the contract."""

from __future__ import annotations

import asyncio

import pytest
from fixtures.oms_server import OmsHarness, make_oms
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

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


async def test_reflection_lists_every_service(oms: OmsHarness) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(oms.channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    async for response in responses:
        names = {s.name for s in response.list_services_response.service}
        break
    assert set(SERVICES) <= names
    assert "grpc.health.v1.Health" in names


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
