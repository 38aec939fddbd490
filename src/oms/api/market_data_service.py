"""MarketDataService: proto in, engine call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from tradingboost.oms.v1 import market_data_service_pb2 as pb
from tradingboost.oms.v1 import market_data_service_pb2_grpc

from oms.api.converters import market_to_proto, price_to_proto
from oms.engine.market_data import MarketData, Tick

Context = grpc.aio.ServicerContext[Any, Any]


class MarketDataService(market_data_service_pb2_grpc.MarketDataServiceServicer):
    def __init__(self, market_data: MarketData) -> None:
        self._market_data = market_data

    async def PublishPrices(
        self, request: pb.PublishPricesRequest, context: Context
    ) -> pb.PublishPricesResponse:
        ticks = [Tick(tick.exchange, tick.symbol, tick.price) for tick in request.prices]
        updates = await self._market_data.publish(ticks)
        return pb.PublishPricesResponse(prices=[price_to_proto(update) for update in updates])

    async def GetPrice(self, request: pb.GetPriceRequest, context: Context) -> pb.GetPriceResponse:
        update = self._market_data.get(request.exchange, request.symbol)
        return pb.GetPriceResponse(price=price_to_proto(update))

    async def GetMarket(
        self, request: pb.GetMarketRequest, context: Context
    ) -> pb.GetMarketResponse:
        market = self._market_data.market(request.exchange, request.symbol)
        return pb.GetMarketResponse(market=market_to_proto(market))

    async def StreamPrices(
        self, request: pb.StreamPricesRequest, context: Context
    ) -> AsyncIterator[pb.StreamPricesResponse]:
        instruments = [(item.exchange, item.symbol) for item in request.instruments]
        async for update in self._market_data.follow(instruments, request.with_last_prices):
            yield pb.StreamPricesResponse(price=price_to_proto(update))
