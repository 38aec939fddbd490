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


class _RestingBook:
    """Open paper orders, per symbol in placement order, and by id and client order id."""

    def __init__(self) -> None:
        self._by_symbol: dict[str, dict[str, Order]] = {}
        self._by_id: dict[str, Order] = {}
        self._by_client_id: dict[tuple[str, str], str] = {}

    def put(self, order: Order) -> None:
        self._by_symbol.setdefault(order.symbol, {})[order.order_id] = order
        self._by_id[order.order_id] = order
        self._by_client_id[(order.user_id, order.client_order_id)] = order.order_id

    def remove(self, order: Order) -> None:
        del self._by_symbol[order.symbol][order.order_id]
        del self._by_id[order.order_id]
        del self._by_client_id[(order.user_id, order.client_order_id)]

    def get(self, order_id: str) -> Order | None:
        return self._by_id.get(order_id)

    def find(self, user_id: str, order_id: str, client_order_id: str) -> Order | None:
        if not order_id:
            order_id = self._by_client_id.get((user_id, client_order_id), "")
        order = self._by_id.get(order_id)
        return order if order is not None and order.user_id == user_id else None

    def on(self, symbol: str) -> list[Order]:
        return list(self._by_symbol.get(symbol, {}).values())


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
        self._book = _RestingBook()

    async def recover(self) -> None:
        """Rebuild prices and the resting book from the store (the crash-recovery path)."""
        store = self._journal.store
        for price in await store.load_prices():
            if price.exchange == PAPER:
                self._last[price.symbol] = price
        # ULIDs sort by placement time: the book keeps matching in placement order.
        for order in sorted(await store.open_orders_on(PAPER), key=lambda o: o.order_id):
            self._book.put(order)

    def last_price(self, symbol: str) -> PriceUpdate | None:
        return self._last.get(symbol)

    def resting_order(self, user_id: str, order_id: str, client_order_id: str) -> Order | None:
        """An open order of this user, by either id, without a store read."""
        return self._book.find(user_id, order_id, client_order_id)

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
                self._book.put(placed)
            return placed, True

    async def cancel(self, order: Order, reason: str) -> Order:
        async with self._lock(order.symbol):
            current = self._book.get(order.order_id)
            if current is None:
                # Not resting, so not open: report the order as it is now.
                fresh = await self._journal.store.get_order(order.user_id, order.order_id)
                if fresh is None:
                    raise NotFound(f"order {order.order_id} not found")
                current = fresh
            canceled = current.apply(OrderCanceled(reason), self._clock_ns())
            event = OrderUpdated(OrderEventType.CANCELED, canceled)
            await self._journal.record([OrderChange(canceled, current.version, [event])])
            self._book.remove(current)
            return canceled

    async def on_price(self, symbol: str, price: Decimal) -> PriceUpdate:
        """One tick: match the resting orders, commit fills and the price together."""
        async with self._lock(symbol):
            now = self._clock_ns()
            changes = []
            for order in self._book.on(symbol):
                events = on_tick(order, price, self._context(order, now))
                if events:
                    after, published = apply_all(order, events, now)
                    changes.append(OrderChange(after, order.version, published))
            update = PriceUpdate(PAPER, symbol, price, now)
            await self._journal.record(changes, [update])
            for change in changes:
                if change.order.is_open:
                    self._book.put(change.order)
                else:
                    self._book.remove(change.order)
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
