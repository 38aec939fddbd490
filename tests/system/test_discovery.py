"""Health and reflection are always on, for every service of the contract."""

from __future__ import annotations

import pytest
from fixtures.oms_server import OmsHarness
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
