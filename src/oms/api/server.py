"""The gRPC server: services, health, reflection, and the shutdown order."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from tradingboost.oms.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    market_data_service_pb2,
    market_data_service_pb2_grpc,
    order_service_pb2,
    order_service_pb2_grpc,
    position_service_pb2,
    position_service_pb2_grpc,
    trailing_stop_service_pb2,
    trailing_stop_service_pb2_grpc,
)

from oms.api.account_service import AccountService
from oms.api.auth import AuthInterceptor
from oms.api.error_mapping import ErrorMappingInterceptor
from oms.api.health_service import HealthService
from oms.api.market_data_service import MarketDataService
from oms.api.metrics import Metrics, MetricsInterceptor
from oms.api.order_service import OrderService
from oms.api.position_service import PositionService
from oms.api.trailing_stop_service import TrailingStopService

log = logging.getLogger(__name__)

# Shutting down: gRPC has handed over every queued call once none has come for this long.
_QUIET_S = 0.05
_REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_MAX_PENDING_CALLS = 20_000

_SERVICES = (
    account_service_pb2.DESCRIPTOR.services_by_name["AccountService"],
    order_service_pb2.DESCRIPTOR.services_by_name["OrderService"],
    market_data_service_pb2.DESCRIPTOR.services_by_name["MarketDataService"],
    position_service_pb2.DESCRIPTOR.services_by_name["PositionService"],
    trailing_stop_service_pb2.DESCRIPTOR.services_by_name["TrailingStopService"],
)
SERVICE_NAMES = tuple(service.full_name for service in _SERVICES)


class _GenericHandlersOnly:
    """What the generated `add_*_to_server` functions register on: their generic handlers.

    grpc.aio (1.85) keeps one pending request per registered method and, for every call,
    runs asyncio.wait over all of them (~35 here): about 200k instructions a call, 39% of
    a no-op call's CPU (callgrind). The generic handler each generated function adds beside
    its registered methods serves the same methods without that wait.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service_name: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """Left out: the generic handler added with them serves these methods."""


class OmsServer:
    """A grpc.aio server with health and reflection always on; NOT_SERVING until `ready()`."""

    def __init__(
        self,
        orders: OrderService,
        market_data: MarketDataService,
        positions: PositionService,
        trailing_stops: TrailingStopService,
        accounts: AccountService,
        extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
        auth: AuthInterceptor | None = None,
        keepalive_s: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        """`auth` None: no tokens configured, every call admitted. `keepalive_s`: how often a
        client with calls open is pinged (see Settings.keepalive_s). `metrics` None: calls
        are not counted."""
        # The first interceptor is the outermost: a call is admitted before anything runs,
        # and counted with the status it ended with, whoever answered it.
        self._calls = ErrorMappingInterceptor()
        interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [self._calls]
        if auth is not None:
            interceptors.insert(0, auth)
        if metrics is not None:
            interceptors.insert(0, MetricsInterceptor(metrics))
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", 0),
                # Clients' keepalive pings (oms_client's every 10 s) are welcome, down to one
                # a second; gRPC's default answers pings more often than every 5 min with GOAWAY.
                ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(keepalive_s * 1000 / 3)),
                # What bounds the wait for a ping's answer in gRPC >= 1.60 (as oms_client).
                ("grpc.http2.ping_timeout_ms", int(keepalive_s * 1000 / 3)),
                # gRPC's core cancels calls beyond 1,000 (at random) or 3,000 (all) waiting for
                # the application: a burst of bots reconnecting would read CANCELLED, which
                # looks like their own cancel. Queued instead: their deadlines bound the wait.
                ("grpc.server.max_pending_requests", _MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", 2 * _MAX_PENDING_CALLS),
            ],
        )
        # Duck-typed: the generated functions call only the two methods it has.
        target = cast(grpc.aio.Server, _GenericHandlersOnly(self.server))
        order_service_pb2_grpc.add_OrderServiceServicer_to_server(orders, target)
        market_data_service_pb2_grpc.add_MarketDataServiceServicer_to_server(market_data, target)
        position_service_pb2_grpc.add_PositionServiceServicer_to_server(positions, target)
        trailing_stop_service_pb2_grpc.add_TrailingStopServiceServicer_to_server(
            trailing_stops, target
        )
        account_service_pb2_grpc.add_AccountServiceServicer_to_server(accounts, target)
        self.server.add_generic_rpc_handlers(list(extra_handlers))
        self.health = HealthService()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, target)
        # What reflection.enable_server_reflection does for a grpc.aio server.
        reflector = reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
            (*SERVICE_NAMES, health.SERVICE_NAME, _REFLECTION_V1, reflection.SERVICE_NAME)
        )
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflector, target)
        # grpc.reflection.v1 is v1alpha renamed, the same messages on the wire; grpcio-reflection
        # ships only v1alpha, and tools that speak only v1 would find no reflection at all.
        _describe_reflection_v1()
        v1 = grpc.stream_stream_rpc_method_handler(
            reflector.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(_REFLECTION_V1, {"ServerReflectionInfo": v1})]
        )

    def bind(self, listen: str) -> int:
        try:
            return self.server.add_insecure_port(listen)
        except RuntimeError as error:  # grpc's "Failed to bind", and no more
            raise OSError(f"cannot listen on {listen}: {_why_not_bound(listen)}") from error

    async def start(self) -> None:
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

    async def ready(self) -> None:
        """Recovery is done (or the state store is reachable again): report SERVING overall
        and per service."""
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)

    async def not_serving(self) -> None:
        """The state store is unreachable: every call would fail."""
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def begin_shutdown(self) -> None:
        """NOT_SERVING, and every call from now on refused UNAVAILABLE."""
        await self.health.enter_graceful_shutdown()
        self._calls.refuse_calls()

    async def stop(self, grace_s: float) -> None:
        """Refuse the calls gRPC had queued (until none has come for a moment, within half the
        grace period), then stop: calls still running get what is left of `grace_s`."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        refused = -1
        while refused != self._calls.refused and loop.time() - started < grace_s / 2:
            refused = self._calls.refused
            await asyncio.sleep(_QUIET_S)
        await self.server.stop(max(0.0, grace_s - (loop.time() - started)))

    async def stop_now(self) -> None:
        """Stop without waiting: calls still running are cancelled (grpc answers them
        UNAVAILABLE), also while a `stop` waits for them."""
        await self.server.stop(None)

    async def _set_all(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        await self.health.set(health.OVERALL_HEALTH, status)
        for name in SERVICE_NAMES:
            await self.health.set(name, status)


def _describe_reflection_v1() -> None:
    """Adds grpc.reflection.v1's file (v1alpha's, renamed) to the descriptor pool reflection
    reads, so that tools which list the services can describe v1 too."""
    pool = descriptor_pool.Default()
    name = "grpc/reflection/v1/reflection.proto"
    try:
        pool.FindFileByName(name)
        return  # added by an earlier server, or shipped by a newer grpcio-reflection
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = name, "grpc.reflection.v1"
    file.ClearField("options")  # v1alpha's: deprecated, and other languages' package names
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for message in file.message_type:
        for field in message.field:
            if field.type_name:  # set only on message fields: an empty one would read as set
                field.type_name = field.type_name.replace(old, new)
    for method in file.service[0].method:
        method.input_type = method.input_type.replace(old, new)
        method.output_type = method.output_type.replace(old, new)
    pool.AddSerializedFile(file.SerializeToString())


def _why_not_bound(listen: str) -> str:
    """The operating system's reason a TCP address cannot be listened on, found by binding
    it here (grpc logs it only to stderr)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if listen.startswith("unix") or not port.isdigit():
        return "grpc could not bind it"
    try:
        family = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, int(port)))
    except OSError as error:
        return error.strerror or str(error)
    return "in use by another process?"
