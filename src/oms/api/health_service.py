"""grpc.health.v1 whose Watch streams end at shutdown, as the OMS's own streams do.

grpc's servicer reports NOT_SERVING to its watchers at shutdown but keeps their streams
open, so the server's stop waited its whole grace period for them (a supervisor watching
health paid it on every stop). Here a watch ends `UNAVAILABLE` once NOT_SERVING has reached
it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

# grpcio-health-checking's asyncio servicer (untyped: its stub lacks `aio`).
_AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVING = health_pb2.HealthCheckResponse.SERVING


class _Ended(Exception):
    """A watch that reported NOT_SERVING at shutdown: done."""


class _Watch:
    """A Watch call's context that records what it last reported, and ends the watch
    once it has reported NOT_SERVING at shutdown."""

    def __init__(self, context: Any, service: HealthService) -> None:
        self._context = context
        self._service = service
        self.task = asyncio.current_task()
        self.last: int | None = None

    async def write(self, response: health_pb2.HealthCheckResponse) -> None:
        await self._context.write(response)
        self.last = response.status
        if self._service.ending and response.status == _NOT_SERVING:
            raise _Ended

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class HealthService(_AsyncHealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.ending = False
        self._watches: set[_Watch] = set()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        watch = _Watch(context, self)
        self._watches.add(watch)
        try:
            await super().Watch(request, watch)
        except _Ended:
            pass
        except asyncio.CancelledError:
            if not self.ending:
                raise  # the client went away
        finally:
            self._watches.discard(watch)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for good; every watch ends once it has reported it."""
        self.ending = True
        await super().enter_graceful_shutdown()
        for watch in list(self._watches):
            # A watch that reported SERVING is woken to report NOT_SERVING and ends then
            # (one that has reported nothing yet reports NOT_SERVING first thing). The rest
            # report nothing more (NOT_SERVING already, or an unknown service): ended here.
            if watch.last is not None and watch.last != _SERVING and watch.task is not None:
                watch.task.cancel()
