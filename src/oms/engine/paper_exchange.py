"""The built-in deterministic `paper` exchange.

Matching rules live in `domain.paper_matching`; this module holds the resting book and the last
prices in memory (rebuilt from the store at start) and commits every decision atomically.

Each symbol has one desk: submits, cancels and ticks queue there and are decided in arrival
order, and every decision queued while the previous commit was in flight goes to the store in
one commit (group commit). A tick therefore sees every order placed before it, a cancel never
races a fill, and concurrent callers share the store round trip instead of queueing behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from oms.domain.brackets import bracket_legs
from oms.domain.decimals import ZERO
from oms.domain.errors import ConcurrentModification, FailedPrecondition, NotFound, OmsError
from oms.domain.events import FillRecorded, PositionUpdated, apply_all
from oms.domain.fills import Fill
from oms.domain.markets import Market, MarketCatalog
from oms.domain.orders import Order, OrderAmended, OrderCanceled, OrderEvent, PositionSide
from oms.domain.paper_matching import FeeSchedule, PaperContext, on_submit, on_tick
from oms.domain.positions import Position, apply_fill, open_record, reduces
from oms.engine.journal import Journal
from oms.engine.ports import Conflict, ConflictKind, OrderChange, PriceUpdate

PAPER = "paper"

PositionSlot = tuple[str, PositionSide]
"""(user_id, position side): one desk's key for a position on its symbol."""

# Decisions per commit: bounds how long one commit script holds Redis.
MAX_BATCH = 256

log = logging.getLogger(__name__)


class _RestingBook:
    """Open paper orders of one symbol in placement order, by id and by client order id."""

    def __init__(self) -> None:
        self._by_id: dict[str, Order] = {}
        self._by_client_id: dict[tuple[str, str], str] = {}

    def put(self, order: Order) -> None:
        self._by_id[order.order_id] = order
        self._by_client_id[(order.user_id, order.client_order_id)] = order.order_id

    def remove(self, order: Order) -> None:
        del self._by_id[order.order_id]
        del self._by_client_id[(order.user_id, order.client_order_id)]

    def get(self, order_id: str) -> Order | None:
        return self._by_id.get(order_id)

    def find(self, user_id: str, order_id: str, client_order_id: str) -> Order | None:
        if not order_id:
            order_id = self._by_client_id.get((user_id, client_order_id), "")
        order = self._by_id.get(order_id)
        return order if order is not None and order.user_id == user_id else None

    def orders(self) -> list[Order]:
        return list(self._by_id.values())

    def replace_all(self, orders: list[Order]) -> None:
        """Reset to these orders; ULIDs sort by placement time, so matching order holds."""
        self._by_id.clear()
        self._by_client_id.clear()
        for order in sorted(orders, key=lambda o: o.order_id):
            self.put(order)


class _NotResting(Exception):
    """A cancel found no open order in the book: the caller reports the order as it is."""


@dataclass(eq=False)
class _Op:
    """One queued decision and the future its caller awaits."""

    future: asyncio.Future[Any] = field(init=False)
    redecided: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.future = asyncio.get_running_loop().create_future()

    def decide(self, desk: _Desk, batch: _Batch) -> Any:
        """Decide against the desk's state, record changes in `batch`; returns the result
        the caller gets once the batch is committed."""
        raise NotImplementedError


@dataclass(eq=False)
class _Place(_Op):
    order: Order

    def decide(self, desk: _Desk, batch: _Batch) -> Any:
        order = self.order
        key = (order.user_id, order.client_order_id)
        if key in batch.new_client_ids:
            # Same client order id twice in one commit would pass both uniqueness guards:
            # decide it in the next batch, where the guard sees the first one.
            raise _Deferred
        if reduces(order.side, order.position_side) and not order.reduce_only:
            size = desk.open_size(order.user_id, order.position_side)
            if order.quantity > size:
                raise FailedPrecondition(
                    f"quantity {order.quantity} exceeds the {order.position_side.value} position "
                    f"of {size}: in hedge mode an order may not flip a side (use reduce_only to "
                    "cap it, or open the other side)"
                )
        return desk.submit_new(self, batch, order)


@dataclass(eq=False)
class _Cancel(_Op):
    user_id: str
    order_id: str
    reason: str

    def decide(self, desk: _Desk, batch: _Batch) -> Any:
        current = desk.book.find(self.user_id, self.order_id, "")
        if current is None:
            raise _NotResting
        return desk.cancel_resting(self, batch, current, self.reason)


@dataclass(eq=False)
class _Tick(_Op):
    price: Decimal

    def decide(self, desk: _Desk, batch: _Batch) -> Any:
        now = desk.clock_ns()
        update = PriceUpdate(PAPER, desk.symbol, self.price, now)
        batch.prices.append(update)
        batch.set_last(desk, update)
        for order in desk.book.orders():
            if desk.book.get(order.order_id) is not order:
                continue  # canceled or changed by an earlier fill of this tick (OCO)
            events = on_tick(order, self.price, desk.context(order, now))
            if events:
                desk.record(self, batch, order, events, now)
        for key, position in list(desk.positions.items()):
            if position.is_open and position.mark_price != self.price:
                batch.set_position(desk, key, position.mark(self.price, now))
        return update


class _Deferred(Exception):
    """The op cannot be decided in this batch; it goes first in the next one."""


class _Batch:
    """The changes of one commit, who caused each, and how to undo them in memory."""

    def __init__(self) -> None:
        self.changes: list[OrderChange] = []
        self.owners: list[_Op] = []
        self.prices: list[PriceUpdate] = []
        self.new_client_ids: dict[tuple[str, str], None] = {}
        self.touched: dict[PositionSlot, None] = {}
        """Positions changed in this batch, in order: one event each, coalesced."""
        self._undo: list[Callable[[], None]] = []

    def add(self, owner: _Op, change: OrderChange) -> None:
        self.changes.append(change)
        self.owners.append(owner)

    def put(self, book: _RestingBook, order: Order) -> None:
        book.put(order)
        self._undo.append(lambda: book.remove(order))

    def remove(self, book: _RestingBook, order: Order) -> None:
        book.remove(order)
        self._undo.append(lambda: book.put(order))

    def set_last(self, desk: _Desk, update: PriceUpdate) -> None:
        previous = desk.last
        desk.last = update

        def undo() -> None:
            desk.last = previous

        self._undo.append(undo)

    def set_position(self, desk: _Desk, slot: PositionSlot, position: Position) -> None:
        previous = desk.positions.get(slot)
        desk.positions[slot] = position
        self.touched[slot] = None

        def undo() -> None:
            if previous is None:
                del desk.positions[slot]
            else:
                desk.positions[slot] = previous

        self._undo.append(undo)

    def position_updates(self, desk: _Desk) -> list[PositionUpdated]:
        return [PositionUpdated(desk.positions[slot]) for slot in self.touched]

    def mark(self) -> tuple[int, ...]:
        """Where the batch stands now, for `rollback(desk, to=mark)`."""
        sizes = (self.changes, self.prices, self.new_client_ids, self.touched, self._undo)
        return tuple(len(part) for part in sizes)

    def rollback(self, desk: _Desk, to: tuple[int, ...] = (0, 0, 0, 0, 0)) -> None:
        """Undo in memory everything recorded since `to` (default: all of it)."""
        changes, prices, client_ids, touched, undo = to
        for step in reversed(self._undo[undo:]):
            step()
        del self._undo[undo:], self.changes[changes:], self.owners[changes:]
        del self.prices[prices:]
        # Dicts keep insertion order: the entries added since the mark are the last ones.
        for added in list(self.new_client_ids)[client_ids:]:
            del self.new_client_ids[added]
        for slot in list(self.touched)[touched:]:
            del self.touched[slot]
        desk.book.replace_all(desk.book.orders())


class _Desk:
    """One symbol's book, last price and decision queue."""

    def __init__(self, exchange: PaperExchange, symbol: str) -> None:
        self.symbol = symbol
        self.book = _RestingBook()
        self.last: PriceUpdate | None = None
        self.positions: dict[PositionSlot, Position] = {}
        """The current record of each (user, side) on this symbol: open, or the last closed."""
        self.clock_ns = exchange.clock_ns
        self._exchange = exchange
        self._queue: list[_Op] = []
        self._worker: asyncio.Task[None] | None = None
        self._stale = False

    def context(self, order: Order, now_ns: int) -> PaperContext:
        reducible = None
        if reduces(order.side, order.position_side):
            reducible = self.open_size(order.user_id, order.position_side)
        return self._exchange.context(self.symbol, now_ns, reducible)

    def open_size(self, user_id: str, side: PositionSide) -> Decimal:
        position = self.positions.get((user_id, side))
        return position.size if position is not None and position.is_open else ZERO

    # -- decisions: each records its order changes and their consequences in the batch ----

    def submit_new(self, owner: _Op, batch: _Batch, order: Order) -> tuple[Order, bool]:
        batch.new_client_ids[(order.user_id, order.client_order_id)] = None
        now = self.clock_ns()
        last = self.last.price if self.last else None
        placed = self.record(
            owner, batch, None, on_submit(order, last, self.context(order, now)), now, order
        )
        return placed, True

    def cancel_resting(self, owner: _Op, batch: _Batch, order: Order, reason: str) -> Order:
        return self.record(owner, batch, order, [OrderCanceled(reason)], self.clock_ns())

    def record(
        self,
        owner: _Op,
        batch: _Batch,
        before: Order | None,
        events: list[OrderEvent],
        now: int,
        new: Order | None = None,
    ) -> Order:
        """Apply venue events to an order (`before`, or `new` when it is being placed) and
        everything they cause: resting book, positions, bracket exits, one-cancels-other."""
        start = before if before is not None else new
        assert start is not None
        after, published = apply_all(start, events, now)
        batch.add(owner, OrderChange(after, None if before is None else before.version, published))
        if before is not None and self.book.get(before.order_id) is before:
            batch.remove(self.book, before)
        if after.is_open:
            batch.put(self.book, after)
        fills = [event.fill for event in published if isinstance(event, FillRecorded)]
        for fill in fills:
            self._apply_fill(batch, after, fill)
        if not fills:
            return after
        if after.bracket is not None:
            if start.filled_quantity == 0:
                for leg in bracket_legs(after, now):
                    self.submit_new(owner, batch, leg)
            else:
                self._grow_exits(owner, batch, after, now)
        if after.linked_order_id:
            self._cancel_if_resting(
                owner, batch, after.linked_order_id, f"one-cancels-other: {after.order_id} filled"
            )
        if self.open_size(after.user_id, after.position_side) == 0:
            for order in self.book.orders():
                if order.parent_order_id and (order.user_id, order.position_side) == (
                    after.user_id,
                    after.position_side,
                ):
                    self.cancel_resting(owner, batch, order, "position closed")
        return after

    def _grow_exits(self, owner: _Op, batch: _Batch, entry: Order, now: int) -> None:
        """A further fill of an entry: its exits cover everything filled so far."""
        assert entry.bracket is not None
        for leg_id in (entry.bracket.take_profit_order_id, entry.bracket.stop_loss_order_id):
            leg = self.book.get(leg_id)
            if leg is not None and leg.quantity < entry.filled_quantity:
                self.record(owner, batch, leg, [OrderAmended(entry.filled_quantity)], now)

    def _cancel_if_resting(self, owner: _Op, batch: _Batch, order_id: str, reason: str) -> None:
        order = self.book.get(order_id)
        if order is not None:
            self.cancel_resting(owner, batch, order, reason)

    def _apply_fill(self, batch: _Batch, order: Order, fill: Fill) -> None:
        slot = (order.user_id, order.position_side)
        position = self.positions.get(slot)
        opening = not reduces(fill.side, order.position_side)
        if position is None or not position.is_open:
            if not opening:
                raise AssertionError(f"reducing fill {fill.fill_id} with no open position")
            market = self._exchange.market(self.symbol)
            position = open_record(
                self._exchange.new_id(), order.user_id, market, order.position_side, fill.time_ns
            )
        after = apply_fill(position, fill, order.grid_level, order.leverage if opening else None)
        mark = self.last.price if self.last else fill.price
        batch.set_position(self, slot, after.mark(mark, fill.time_ns))

    async def submit(self, op: _Op) -> Any:
        self._queue.append(op)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        # A caller that goes away cancels only its future: the queued op is still decided.
        return await op.future

    async def _drain(self) -> None:
        while self._queue:
            ops, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                if self._stale:
                    await self._exchange.reload(self)
                    self._stale = False
                await self._run(ops)
            except Exception as error:
                # The commit may or may not have landed: rebuild from the store before
                # deciding anything else.
                self._stale = True
                for op in ops:
                    _settle(op, error=error)

    async def _run(self, ops: list[_Op]) -> None:
        while ops:
            batch = _Batch()
            results: dict[int, Any] = {}
            decided: list[_Op] = []
            deferred: list[_Op] = []
            for op in ops:
                mark = batch.mark()
                try:
                    results[id(op)] = op.decide(self, batch)
                    decided.append(op)
                except _Deferred:
                    deferred.append(op)
                except (OmsError, _NotResting) as error:
                    # A refused op leaves nothing behind, even if it failed half-way.
                    if batch.mark() != mark:
                        batch.rollback(self, to=mark)
                    _settle(op, error=error)
            if not decided:
                ops = deferred
                continue
            try:
                outcome = await self._exchange.journal.record(
                    batch.changes, batch.prices, batch.position_updates(self)
                )
            except BaseException:
                batch.rollback(self)
                raise
            if not isinstance(outcome, Conflict):
                for op in decided:
                    _settle(op, result=results[id(op)])
                ops = deferred
                continue
            culprit = batch.owners[outcome.change_index]
            change = batch.changes[outcome.change_index]
            batch.rollback(self)
            # The store is ahead of memory when an earlier attempt of this very commit landed
            # but its reply was lost (the Redis client re-sent it) or after a fault: reload,
            # then decide the culprit again against the truth, once.
            ahead = outcome.kind is not ConflictKind.CLIENT_ORDER_ID_TAKEN or (
                outcome.existing is not None and outcome.existing.order_id == change.order.order_id
            )
            if ahead:
                self._stale = True
                await self._exchange.reload(self)
                self._stale = False
            again = False
            if outcome.kind is ConflictKind.CLIENT_ORDER_ID_TAKEN:
                _settle(culprit, result=(outcome.existing, False))
            elif culprit.redecided:
                _settle(
                    culprit,
                    error=ConcurrentModification(
                        f"order {change.order.order_id} changed concurrently ({outcome.kind.value})"
                    ),
                )
            else:
                culprit.redecided = again = True
            ops = [op for op in decided if op is not culprit or again] + deferred


def _settle(op: _Op, *, result: Any = None, error: BaseException | None = None) -> None:
    if op.future.done():
        return
    if error is not None:
        op.future.set_exception(error)
    else:
        op.future.set_result(result)


class PaperExchange:
    def __init__(
        self,
        catalog: MarketCatalog,
        fees: FeeSchedule,
        journal: Journal,
        new_id: Callable[[], str],
        clock_ns: Callable[[], int],
        maker_fill_limit: Decimal | None = None,
    ) -> None:
        self.journal = journal
        self.clock_ns = clock_ns
        self.new_id = new_id
        self._catalog = catalog
        self._fees = fees
        self._maker_fill_limit = maker_fill_limit
        self._desks: dict[str, _Desk] = {}

    async def recover(self) -> None:
        """Rebuild prices and resting books from the store (the crash-recovery path)."""
        for desk in await self._load():
            self._desks[desk.symbol] = desk

    async def reload(self, desk: _Desk) -> None:
        """Rebuild one desk from the store, after a commit whose outcome is unknown."""
        fresh = next((d for d in await self._load() if d.symbol == desk.symbol), None)
        desk.book.replace_all(fresh.book.orders() if fresh else [])
        desk.last = fresh.last if fresh else None
        desk.positions = fresh.positions if fresh else {}

    async def _load(self) -> list[_Desk]:
        store = self.journal.store
        desks: dict[str, _Desk] = {}
        for price in await store.load_prices():
            if price.exchange == PAPER:
                desks.setdefault(price.symbol, _Desk(self, price.symbol)).last = price
        by_symbol: dict[str, list[Order]] = {}
        for order in await store.open_orders_on(PAPER):
            by_symbol.setdefault(order.symbol, []).append(order)
        for symbol, orders in by_symbol.items():
            desks.setdefault(symbol, _Desk(self, symbol)).book.replace_all(orders)
        for position in await store.current_positions_on(PAPER):
            desk = desks.setdefault(position.symbol, _Desk(self, position.symbol))
            desk.positions[(position.user_id, position.position_side)] = position
        return list(desks.values())

    def last_price(self, symbol: str) -> PriceUpdate | None:
        desk = self._desks.get(symbol)
        return desk.last if desk else None

    def last_price_of(self, exchange: str, symbol: str) -> Decimal | None:
        last = self.last_price(symbol) if exchange == PAPER else None
        return last.price if last else None

    def resting_order(self, user_id: str, order_id: str, client_order_id: str) -> Order | None:
        """An open order of this user, by either id, without a store read."""
        for desk in self._desks.values():
            order = desk.book.find(user_id, order_id, client_order_id)
            if order is not None:
                return order
        return None

    async def place(self, order: Order) -> tuple[Order, bool]:
        """Submit a new order; returns (order, created). Not created: the client order id
        already names an order, which is returned unchanged."""
        placed: tuple[Order, bool] = await self._desk(order.symbol).submit(_Place(order))
        return placed

    async def cancel(self, order: Order, reason: str) -> Order:
        try:
            canceled: Order = await self._desk(order.symbol).submit(
                _Cancel(order.user_id, order.order_id, reason)
            )
            return canceled
        except _NotResting:
            pass
        # Not resting, so not open: the domain refuses to cancel it as it is now.
        current = await self.journal.store.get_order(order.user_id, order.order_id)
        if current is None:
            raise NotFound(f"order {order.order_id} not found")
        current.apply(OrderCanceled(reason), self.clock_ns())
        raise ConcurrentModification(f"order {order.order_id} is open but not on the paper book")

    async def on_price(self, symbol: str, price: Decimal) -> PriceUpdate:
        """One tick: match the resting orders, commit fills and the price together."""
        update: PriceUpdate = await self._desk(symbol).submit(_Tick(price))
        return update

    def position(self, user_id: str, symbol: str, side: PositionSide) -> Position | None:
        """The current record of one side, from memory."""
        desk = self._desks.get(symbol)
        return desk.positions.get((user_id, side)) if desk else None

    def market(self, symbol: str) -> Market:
        return self._catalog.resolve(PAPER, symbol)

    def context(self, symbol: str, now_ns: int, reducible: Decimal | None) -> PaperContext:
        return PaperContext(
            self.market(symbol),
            self._fees,
            self.new_id,
            now_ns,
            reducible,
            self._maker_fill_limit,
        )

    def _desk(self, symbol: str) -> _Desk:
        desk = self._desks.get(symbol)
        if desk is None:
            desk = self._desks[symbol] = _Desk(self, symbol)
        return desk
