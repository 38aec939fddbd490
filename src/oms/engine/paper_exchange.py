"""The built-in deterministic `paper` exchange.

Matching rules live in `domain.paper_matching`; this module holds the resting book and the last
prices in memory (rebuilt from the store at start) and commits every decision in one atomic
step. A lock per symbol orders submits, cancels and ticks, so a tick sees every order placed
before it and a cancel never races a fill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal

from oms.domain.errors import NotFound
from oms.domain.events import OrderEventType, OrderUpdated, apply_all
from oms.domain.markets import MarketCatalog
from oms.domain.orders import Order, OrderCanceled
from oms.domain.paper_matching import FeeSchedule, PaperContext, on_submit, on_tick
from oms.engine.journal import Journal
from oms.engine.ports import ExistingOrder, OrderChange, PriceUpdate

PAPER = "paper"


class PaperExchange:
    def __init__(
        self,
        catalog: MarketCatalog,
        fees: FeeSchedule,
        journal: Journal,
        new_id: Callable[[], str],
        clock_ns: Callable[[], int],
    ) -> None:
        self._catalog = catalog
        self._fees = fees
        self._journal = journal
        self._new_id = new_id
        self._clock_ns = clock_ns
        self._locks: dict[str, asyncio.Lock] = {}
        self._last: dict[str, PriceUpdate] = {}
        self._resting: dict[str, dict[str, Order]] = {}
        """symbol -> order_id -> order, in placement order."""

    async def recover(self) -> None:
        """Rebuild prices and the resting book from the store (the crash-recovery path)."""
        store = self._journal.store
        for price in await store.load_prices():
            if price.exchange == PAPER:
                self._last[price.symbol] = price
        # ULIDs sort by placement time: the book keeps matching in placement order.
        for order in sorted(await store.open_orders_on(PAPER), key=lambda o: o.order_id):
            self._book(order.symbol)[order.order_id] = order

    def last_price(self, symbol: str) -> PriceUpdate | None:
        return self._last.get(symbol)

    def resting_order(self, order_id: str, symbol: str) -> Order | None:
        return self._book(symbol).get(order_id)

    async def place(self, order: Order) -> tuple[Order, bool]:
        """Submit a new order; returns (order, created). Not created: the client order id
        already names an order, which is returned unchanged."""
        async with self._lock(order.symbol):
            now = self._clock_ns()
            last = self._last.get(order.symbol)
            events = on_submit(order, last.price if last else None, self._context(order, now))
            placed, published = apply_all(order, events, now)
            result = await self._journal.record([OrderChange(placed, None, published)])
            if isinstance(result, ExistingOrder):
                return result.order, False
            if placed.is_open:
                self._book(order.symbol)[placed.order_id] = placed
            return placed, True

    async def cancel(self, order: Order, reason: str) -> Order:
        async with self._lock(order.symbol):
            current = self._book(order.symbol).get(order.order_id)
            if current is None:
                # Not resting, so not open: report the order as it is now.
                fresh = await self._journal.store.get_order(order.user_id, order.order_id)
                if fresh is None:
                    raise NotFound(f"order {order.order_id} not found")
                current = fresh
            canceled = current.apply(OrderCanceled(reason), self._clock_ns())
            event = OrderUpdated(OrderEventType.CANCELED, canceled)
            await self._journal.record([OrderChange(canceled, current.version, [event])])
            del self._book(order.symbol)[order.order_id]
            return canceled

    async def on_price(self, symbol: str, price: Decimal) -> PriceUpdate:
        """One tick: match the resting orders, commit fills and the price together."""
        async with self._lock(symbol):
            now = self._clock_ns()
            book = self._book(symbol)
            changes = []
            for order in list(book.values()):
                events = on_tick(order, price, self._context(order, now))
                if events:
                    after, published = apply_all(order, events, now)
                    changes.append(OrderChange(after, order.version, published))
            update = PriceUpdate(PAPER, symbol, price, now)
            await self._journal.record(changes, [update])
            for change in changes:
                if change.order.is_open:
                    book[change.order.order_id] = change.order
                else:
                    del book[change.order.order_id]
            self._last[symbol] = update
            return update

    def _context(self, order: Order, now_ns: int) -> PaperContext:
        market = self._catalog.resolve(PAPER, order.symbol)
        return PaperContext(market, self._fees, self._new_id, now_ns)

    def _lock(self, symbol: str) -> asyncio.Lock:
        lock = self._locks.get(symbol)
        if lock is None:
            lock = self._locks[symbol] = asyncio.Lock()
        return lock

    def _book(self, symbol: str) -> dict[str, Order]:
        book = self._resting.get(symbol)
        if book is None:
            book = self._resting[symbol] = {}
        return book
