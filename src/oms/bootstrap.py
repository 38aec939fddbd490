"""The one place that wires settings, adapters, engine and API together, and runs them."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

import grpc

from oms.adapters.redis_store.store import RedisStore, connect
from oms.api.market_data_service import MarketDataService
from oms.api.order_service import OrderService
from oms.api.position_service import PositionService
from oms.api.server import OmsServer
from oms.api.trailing_stop_service import TrailingStopService
from oms.config import Settings
from oms.domain.identifiers import IdGenerator
from oms.domain.markets import Market, MarketCatalog
from oms.domain.paper_matching import FeeSchedule
from oms.engine.conditional_rules import ConditionalRules
from oms.engine.journal import Journal
from oms.engine.market_data import MarketData
from oms.engine.order_lifecycle import OrderLifecycle
from oms.engine.paper_exchange import PAPER, PaperExchange
from oms.engine.positions import Positions
from oms.engine.subscriptions import EventHub
from oms.engine.trailing_stops import TrailingStops

log = logging.getLogger("oms")


def paper_catalog(settings: Settings) -> MarketCatalog:
    return MarketCatalog(
        Market(
            exchange=PAPER,
            symbol=market.symbol,
            market_id=market.market_id,
            settle=market.settle,
            contract_size=market.contract_size,
            amount_step=market.amount_step,
            min_amount=market.min_amount,
            price_tick=market.price_tick,
            maintenance_margin_rate=market.maintenance_margin_rate,
        )
        for market in settings.paper.markets
    )


class Application:
    """The running service. `start` recovers state before it reports SERVING."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
    ) -> None:
        self.settings = settings
        self.store = RedisStore(connect(redis_url), settings.retention_events)
        self.hub = EventHub(
            self.store, settings.heartbeat_interval_s, settings.stream_buffer_events
        )
        catalog = paper_catalog(settings)
        ids = IdGenerator()
        fees = FeeSchedule(settings.paper.maker_fee_rate, settings.paper.taker_fee_rate)
        journal = Journal(self.store, self.hub)
        self.paper = PaperExchange(
            catalog, fees, journal, ids.new_id, time.time_ns, settings.paper.maker_fill_limit
        )
        orders = OrderLifecycle(self.store, catalog, self.paper, self.hub, ids.new_id, time.time_ns)
        self.market_data = MarketData(catalog, self.paper, settings.stream_buffer_events)
        positions = Positions(self.store, catalog, orders, self.hub, self.paper.last_price_of)
        self.rules = ConditionalRules(self.store, journal, self.paper, ids.new_id, time.time_ns)
        trailing_stops = TrailingStops(
            self.store, catalog, orders, self.paper, self.hub, ids.new_id
        )
        self.server = OmsServer(
            OrderService(orders, self.rules),
            MarketDataService(self.market_data),
            PositionService(positions),
            TrailingStopService(trailing_stops),
            extra_handlers,
        )
        self._stopping = asyncio.Event()

    async def start(self) -> int:
        """Recover, listen, report SERVING; returns the bound port."""
        await self.store.ping()
        await self.paper.recover()
        await self.rules.finish_pending()
        port = self.server.bind(self.settings.listen)
        await self.server.start()
        await self.server.ready()
        return port

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_for_stop_request(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """NOT_SERVING, end streams with UNAVAILABLE, drain unary calls, close the store."""
        await self.server.begin_shutdown()
        self.hub.close()
        self.market_data.close()
        await self.server.stop(self.settings.shutdown_grace_s)
        await self.store.close()


async def serve(
    settings: Settings,
    redis_url: str,
    extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
) -> None:
    app = Application(settings, redis_url, extra_handlers)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, app.request_stop)
    port = await app.start()
    host = settings.listen.rpartition(":")[0]
    # Tests and scripts wait for this line; keep its shape.
    print(f"oms serving on {host}:{port}", flush=True)
    await app.wait_for_stop_request()
    log.info("shutting down")
    await app.stop()
