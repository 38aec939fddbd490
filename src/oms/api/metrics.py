"""Prometheus metrics on a listener of their own (`metrics_listen`): every RPC's outcome,
unary latency, gauges of the engine's state, and the process (memory, CPU, descriptors)."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from oms.domain.events import FillRecorded, OrderUpdated, SequencedEvent, TrailingStopUpdated

if TYPE_CHECKING:  # generic only in the stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]

# From a PlaceOrder on the paper exchange (~1 ms) to a live exchange's slowest answers.
_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.calls = Counter(
            "oms_rpc_calls",
            "RPCs answered, by method and status code (streams when they end).",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "oms_rpc_duration_seconds",
            "Time the server took to answer a unary RPC, by method.",
            ["method"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.order_events = Counter(
            "oms_order_events",
            "Committed order events, by exchange and type (ACCEPTED, FILLED, REJECTED...).",
            ["exchange", "type"],
            registry=self.registry,
        )
        self.fills = Counter(
            "oms_fills",
            "Committed fills, by exchange and liquidity (MAKER, TAKER).",
            ["exchange", "liquidity"],
            registry=self.registry,
        )
        self.trailing_stop_events = Counter(
            "oms_trailing_stop_events",
            "Committed trailing-stop events, by type (CREATED, TRIGGERED...).",
            ["type"],
            registry=self.registry,
        )
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def observe_events(self, events: list[SequencedEvent]) -> None:
        """Count what a commit did (see EventHub.add_event_listener)."""
        for sequenced in events:
            match sequenced.event:
                case OrderUpdated(event_type=kind, order=order):
                    self.order_events.labels(order.exchange, kind.value).inc()
                case FillRecorded(fill=fill):
                    self.fills.labels(fill.exchange, fill.liquidity.value).inc()
                case TrailingStopUpdated(event_type=kind):
                    self.trailing_stop_events.labels(kind.value).inc()

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge read when scraped."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def counter(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A counter read when scraped (`read` never goes down): `name`_total."""
        self.registry.register(_ReadCounter(name, documentation, read))

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics from a thread of its own; returns the port (`port` 0: any free)."""
        self._http = start_http_server(port, host, registry=self.registry)
        return int(self._http[0].server_port)

    def close(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join()
            self._http = None


class _ReadCounter(Collector):
    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._name, self._documentation, self._read = name, documentation, read

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """The outermost interceptor: it sees the final status of every call, refused ones too."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._last: dict[str, tuple[Handler, Handler]] = {}
        """Per method, the last handler seen and its observed copy: the inner interceptors
        hand out one handler per method (a new one per call only with auth on)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: not counted, its name is the caller's to choose
            return handler
        method = handler_call_details.method
        last = self._last.get(method)
        if last is not None and last[0] is handler:
            return last[1]
        observed = self._observe(method, handler)
        self._last[method] = (handler, observed)
        return observed

    def _observe(self, method: str, handler: Any) -> Handler:
        calls = self._metrics.calls
        if handler.unary_unary is not None:
            ok = calls.labels(method, "OK")
            latency = self._metrics.latency.labels(method)
            behavior: Behavior = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started = time.perf_counter()
                try:
                    response = await behavior(request, context)
                except BaseException as error:
                    calls.labels(method, _failed(context, error)).inc()
                    raise
                else:
                    (ok if context.code() is None else calls.labels(method, _code(context))).inc()
                    return response
                finally:
                    latency.observe(time.perf_counter() - started)

            return handler._replace(unary_unary=unary)  # type: ignore[no-any-return]
        streams: dict[str, Callable[..., Any]] = {}
        for kind in ("unary_stream", "stream_stream"):
            stream = getattr(handler, kind)
            # Coroutines write through context.write (the error mapping makes ours so);
            # reflection's stream is an async generator.
            if asyncio.iscoroutinefunction(stream):
                streams[kind] = _counted(calls, method, stream)
            elif inspect.isasyncgenfunction(stream):
                streams[kind] = _counted_generator(calls, method, stream)
        return handler._replace(**streams)  # type: ignore[no-any-return]


def _counted(calls: Counter, method: str, stream: Behavior) -> Behavior:
    async def counted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            await stream(request, context)
        except BaseException as error:
            calls.labels(method, _failed(context, error)).inc()
            raise
        calls.labels(method, _code(context)).inc()

    return counted


def _counted_generator(
    calls: Counter, method: str, stream: Callable[..., AsyncIterator[Any]]
) -> Callable[..., AsyncIterator[Any]]:
    async def counted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            async for response in stream(request, context):
                yield response
        except BaseException as error:
            calls.labels(method, _failed(context, error)).inc()
            raise
        calls.labels(method, _code(context)).inc()

    return counted


def _code(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    return "OK" if code is None else code.name


def _failed(context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> str:
    """The status a call that raised ends with: the one it aborted with, else CANCELLED for
    a client that went away, else UNKNOWN (what grpc answers an unexpected exception)."""
    if context.code() is not None:
        return _code(context)
    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"
