"""TrailingStopService: proto in, engine call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from tradingboost.oms.v1 import trailing_stop_service_pb2 as pb
from tradingboost.oms.v1 import trailing_stop_service_pb2_grpc

from oms.api.converters import (
    POSITION_SIDES,
    TRAILING_STOP_STATUSES,
    RenderedOnce,
    create_trailing_stop_command,
    heartbeat_to_proto,
    statuses,
    stream_filter,
    trailing_stop_event_to_proto,
    trailing_stop_to_proto,
)
from oms.domain.events import Heartbeat
from oms.domain.orders import PositionSide
from oms.domain.trailing_stops import TrailingStopStatus
from oms.engine.trailing_stops import TrailingStopRef, TrailingStops

Context = grpc.aio.ServicerContext[Any, Any]


class TrailingStopService(trailing_stop_service_pb2_grpc.TrailingStopServiceServicer):
    def __init__(self, trailing_stops: TrailingStops) -> None:
        self._stops = trailing_stops
        self._event = RenderedOnce(
            lambda e: pb.StreamTrailingStopEventsResponse(
                trailing_stop_event=trailing_stop_event_to_proto(e)
            )
        )

    async def CreateTrailingStop(
        self, request: pb.CreateTrailingStopRequest, context: Context
    ) -> pb.CreateTrailingStopResponse:
        stop = await self._stops.create(create_trailing_stop_command(request))
        return pb.CreateTrailingStopResponse(trailing_stop=trailing_stop_to_proto(stop))

    async def GetTrailingStop(
        self, request: pb.GetTrailingStopRequest, context: Context
    ) -> pb.GetTrailingStopResponse:
        ref = TrailingStopRef(request.user_id, request.trailing_stop_id, request.client_id)
        stop = await self._stops.get(ref)
        return pb.GetTrailingStopResponse(trailing_stop=trailing_stop_to_proto(stop))

    async def ListTrailingStops(
        self, request: pb.ListTrailingStopsRequest, context: Context
    ) -> pb.ListTrailingStopsResponse:
        page = await self._stops.list(
            request.user_id,
            exchange=request.exchange,
            symbol=request.symbol,
            position_side=POSITION_SIDES.parse(
                "position_side", request.position_side, PositionSide
            ),
            working_only=request.active_only,
            statuses=statuses(TRAILING_STOP_STATUSES, list(request.statuses), TrailingStopStatus),
            size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListTrailingStopsResponse(
            trailing_stops=[trailing_stop_to_proto(stop) for stop in page.items],
            next_page_token=page.next_page_token,
            as_of_sequence=page.as_of_sequence,
        )

    async def CancelTrailingStop(
        self, request: pb.CancelTrailingStopRequest, context: Context
    ) -> pb.CancelTrailingStopResponse:
        ref = TrailingStopRef(request.user_id, request.trailing_stop_id, request.client_id)
        stop = await self._stops.cancel(ref)
        return pb.CancelTrailingStopResponse(trailing_stop=trailing_stop_to_proto(stop))

    async def StreamTrailingStopEvents(
        self, request: pb.StreamTrailingStopEventsRequest, context: Context
    ) -> AsyncIterator[pb.StreamTrailingStopEventsResponse]:
        query = stream_filter(request)
        async for item in self._stops.follow(query):
            if isinstance(item, Heartbeat):
                yield pb.StreamTrailingStopEventsResponse(heartbeat=heartbeat_to_proto(item))
            else:
                yield self._event(item)
