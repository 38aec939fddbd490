"""PositionService: proto in, engine call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from tradingboost.oms.v1 import position_service_pb2 as pb
from tradingboost.oms.v1 import position_service_pb2_grpc

from oms.api.converters import (
    POSITION_SIDES,
    RenderedOnce,
    heartbeat_to_proto,
    open_position_command,
    order_to_proto,
    portfolio_summary_to_proto,
    position_to_proto,
    position_update_to_proto,
    stream_filter,
)
from oms.domain.events import Heartbeat
from oms.domain.orders import PositionSide
from oms.engine.positions import ClosePosition, PositionRef, Positions

Context = grpc.aio.ServicerContext[Any, Any]


class PositionService(position_service_pb2_grpc.PositionServiceServicer):
    def __init__(self, positions: Positions) -> None:
        self._positions = positions
        self._update = RenderedOnce(
            lambda e: pb.StreamPositionsResponse(position_update=position_update_to_proto(e))
        )

    async def GetPosition(
        self, request: pb.GetPositionRequest, context: Context
    ) -> pb.GetPositionResponse:
        ref = PositionRef(
            user_id=request.user_id,
            position_id=request.position_id,
            exchange=request.exchange,
            symbol=request.symbol,
            position_side=_side(request.position_side),
        )
        return pb.GetPositionResponse(position=position_to_proto(await self._positions.get(ref)))

    async def ListPositions(
        self, request: pb.ListPositionsRequest, context: Context
    ) -> pb.ListPositionsResponse:
        page = await self._positions.list(
            request.user_id,
            exchange=request.exchange,
            symbol=request.symbol,
            position_side=_side(request.position_side),
            include_closed=request.include_closed,
            size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListPositionsResponse(
            positions=[position_to_proto(position) for position in page.items],
            next_page_token=page.next_page_token,
            as_of_sequence=page.as_of_sequence,
        )

    async def OpenPosition(
        self, request: pb.OpenPositionRequest, context: Context
    ) -> pb.OpenPositionResponse:
        opened = await self._positions.open(open_position_command(request))
        return pb.OpenPositionResponse(
            entry_order=order_to_proto(opened.entry_order),
            take_profit_order_id=opened.take_profit_order_id,
            stop_loss_order_id=opened.stop_loss_order_id,
            trailing_stop_id=opened.trailing_stop_id,
        )

    async def ClosePosition(
        self, request: pb.ClosePositionRequest, context: Context
    ) -> pb.ClosePositionResponse:
        order = await self._positions.close(
            ClosePosition(
                user_id=request.user_id,
                exchange=request.exchange,
                symbol=request.symbol,
                position_side=_side(request.position_side),
                quantity=request.quantity,
                client_order_id=request.client_order_id,
            )
        )
        return pb.ClosePositionResponse(order=order_to_proto(order))

    async def StreamPositions(
        self, request: pb.StreamPositionsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPositionsResponse]:
        query = stream_filter(request)
        async for item in self._positions.follow(query):
            if isinstance(item, Heartbeat):
                yield pb.StreamPositionsResponse(heartbeat=heartbeat_to_proto(item))
            else:
                yield self._update(item)

    async def GetPortfolioSummary(
        self, request: pb.GetPortfolioSummaryRequest, context: Context
    ) -> pb.GetPortfolioSummaryResponse:
        summary = await self._positions.summary(request.user_id, request.exchange)
        return pb.GetPortfolioSummaryResponse(
            portfolio_summary=portfolio_summary_to_proto(request.user_id, request.exchange, summary)
        )


def _side(value: int) -> PositionSide | None:
    return POSITION_SIDES.parse("position_side", value, PositionSide)
