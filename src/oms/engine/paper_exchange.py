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
import bisect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from oms.domain.brackets import bracket_legs, moot_when_flat
from oms.domain.conditional_rules import ConditionalRule, RuleStatus
from oms.domain.decimals import ZERO
from oms.domain.errors import ConcurrentModification, FailedPrecondition, NotFound, OmsError
from oms.domain.events import (
    PositionUpdated,
    RuleUpdated,
    TrailingStopUpdated,
    Update,
    WatermarkMoved,
    apply_all,
)
from oms.domain.markets import PAPER, Market, MarketCatalog
from oms.domain.orders import (
    Order,
    OrderAmended,
    OrderCanceled,
    OrderEvent,
    OrderFilled,
    PositionSide,
    TrailingExit,
)
from oms.domain.paper_matching import (
    FeeSchedule,
    PaperContext,
    on_submit,
    on_tick,
    rests_as_limit,
    tick_reaches_at,
)
from oms.domain.positions import Position, reduces, take_fill
from oms.domain.trailing_stops import (
    CANCELED_BY_USER,
    POSITION_CLOSED,
    TrailingStop,
    TrailingStopEventType,
    TrailingStopSpec,
)
from oms.engine.journal import Journal
from oms.engine.ports import Conflict, ConflictKind, OrderChange, PriceUpdate
from oms.engine.prerender import Prerender
from oms.engine.trailing_book import TrailingBook

__all__ = ["PAPER", "PaperExchange"]

PositionSlot = tuple[str, PositionSide]
"""(user_id, position side): one desk's key for a position on its symbol."""

# Decisions per commit: bounds how long one commit script holds Redis.
MAX_BATCH = 256

T_contra = TypeVar("T_contra", contravariant=True)
RuleRunner = Callable[[ConditionalRule], Awaitable[object]]

log = logging.getLogger(__name__)


class _RestingBook:
    """Open paper orders of one symbol in placement order, by id and by client order id, and
    by the price at which a tick reaches them, so that a tick looks at those only."""

    def __init__(self) -> None:
        self._by_id: dict[str, Order] = {}
        self._by_client_id: dict[tuple[str, str], str] = {}
        # Plain sorted lists: bisect and inserts run in C (on a PlaceOrder's path), and moving
        # even 100,000 entries on an insert costs microseconds.
        self._rising: list[tuple[Decimal, str]] = []
        """(price, order id) of the orders that ticks at or above their price reach, sorted."""
        self._falling: list[tuple[Decimal, str]] = []
        """The same for ticks at or below."""

    def put(self, order: Order) -> None:
        replaced = self._by_id.get(order.order_id)
        if replaced is not None:
            self._unindex(replaced)
        self._by_id[order.order_id] = order
        self._by_client_id[(order.user_id, order.client_order_id)] = order.order_id
        at, rising = tick_reaches_at(order)
        bisect.insort(self._rising if rising else self._falling, (at, order.order_id))

    def remove(self, order: Order) -> None:
        del self._by_id[order.order_id]
        del self._by_client_id[(order.user_id, order.client_order_id)]
        self._unindex(order)

    def get(self, order_id: str) -> Order | None:
        return self._by_id.get(order_id)

    def find(self, user_id: str, order_id: str, client_order_id: str) -> Order | None:
        if not order_id:
            order_id = self._by_client_id.get((user_id, client_order_id), "")
        order = self._by_id.get(order_id)
        return order if order is not None and order.user_id == user_id else None

    def orders(self) -> list[Order]:
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def reached_by(self, price: Decimal) -> list[Order]:
        """The orders a tick at `price` reaches, in placement order (their ULIDs' order)."""
        rising = self._rising[: bisect.bisect_right(self._rising, (price, _AFTER_EVERY_ID))]
        falling = self._falling[bisect.bisect_left(self._falling, (price, "")) :]
        ids = [i for _, i in rising] + [i for _, i in falling]
        return [self._by_id[i] for i in sorted(ids)]

    def replace_all(self, orders: list[Order]) -> None:
        """Reset to these orders; ULIDs sort by placement time, so matching order holds."""
        self._by_id.clear()
        self._by_client_id.clear()
        self._rising.clear()
        self._falling.clear()
        for order in sorted(orders, key=lambda o: o.order_id):
            self.put(order)

    def _unindex(self, order: Order) -> None:
        at, rising = tick_reaches_at(order)
        index = self._rising if rising else self._falling
        del index[bisect.bisect_left(index, (at, order.order_id))]


_AFTER_EVERY_ID = "\U0010ffff"


class _RuleBook:
    """ACTIVE conditional rules whose trigger order trades on this desk, by trigger order."""

    def __init__(self) -> None:
        self._by_trigger: dict[str, dict[str, ConditionalRule]] = {}

    def put(self, rule: ConditionalRule) -> None:
        self._by_trigger.setdefault(rule.trigger_order_id, {})[rule.rule_id] = rule

    def remove(self, rule: ConditionalRule) -> None:
        rules = self._by_trigger[rule.trigger_order_id]
        del rules[rule.rule_id]
        if not rules:
            del self._by_trigger[rule.trigger_order_id]

    def on(self, order_id: str) -> list[ConditionalRule]:
        return list(self._by_trigger.get(order_id, {}).values())

    def get(self, trigger_order_id: str, rule_id: str) -> ConditionalRule | None:
        return self._by_trigger.get(trigger_order_id, {}).get(rule_id)

    def rules(self) -> list[ConditionalRule]:
        return [rule for rules in self._by_trigger.values() for rule in rules.values()]


class _Cancelling:
    """Orders that a fired rule lists, on every desk: its cancels follow the commit that
    fired it, and no later tick may fill them meanwhile (a tick queued behind the firing one,
    from another publisher or on another symbol, would: one-cancels-other would fill both).
    A mark, put by the firing's batch, goes when its rule is finished (or that batch rolls
    back), not when its order ends: a batch on another desk that ends the order and then
    rolls back would put back a mark its rule had released meanwhile. Apart from them, holds
    by rule: rules that may have fired (their firing commit failed, landed or not, or runs
    outside a desk), until that is settled; kept apart so that settling one never takes a
    mark of a firing decided since."""

    def __init__(self) -> None:
        self._rules: dict[str, set[str]] = {}
        """order id -> ids of the fired rules that list it"""
        self._maybe: dict[str, tuple[tuple[str, ...], int]] = {}
        """rule id -> the orders it lists and the hold's number, for rules that may have
        fired"""
        self._holds = 0

    def put(self, item: tuple[str, str]) -> None:
        order_id, rule_id = item
        self._rules.setdefault(order_id, set()).add(rule_id)

    def remove(self, item: tuple[str, str]) -> None:
        # Tolerant: a rule finished meanwhile may have released it already.
        order_id, rule_id = item
        rules = self._rules.get(order_id)
        if rules is None:
            return
        rules.discard(rule_id)
        if not rules:
            del self._rules[order_id]

    def hold(self, rule: ConditionalRule) -> None:
        self._holds += 1
        self._maybe[rule.rule_id] = (rule.cancel_order_ids, self._holds)

    def hold_number(self, rule: ConditionalRule) -> int | None:
        held = self._maybe.get(rule.rule_id)
        return None if held is None else held[1]

    def unhold(self, rule: ConditionalRule, number: int | None = None) -> None:
        """Lift the hold of `rule`; with its `number`, only if no hold of a later firing of
        the same rule has taken its place (that one is settled on its own)."""
        held = self._maybe.get(rule.rule_id)
        if held is not None and number in (None, held[1]):
            del self._maybe[rule.rule_id]

    def release(self, rule: ConditionalRule) -> None:
        self.unhold(rule)
        for order_id in rule.cancel_order_ids:
            self.remove((order_id, rule.rule_id))

    def order_ids(self) -> frozenset[str]:
        return frozenset(self._rules).union(*(ids for ids, _ in self._maybe.values()))


class _Keeps(Protocol[T_contra]):
    def put(self, item: T_contra) -> None: ...

    def remove(self, item: T_contra) -> None: ...


class _NotResting(Exception):
    """A cancel found no open order in the book: the caller reports the order as it is."""


@dataclass(eq=False)
class _Op:
    """One queued decision and the future its caller awaits."""

    future: asyncio.Future[Any] = field(init=False)
    redecided: bool = field(init=False, default=False)
    followups: list[asyncio.Future[object]] = field(init=False, default_factory=list)
    """Work the decision started that its caller waits for too (a fired rule's cancels)."""
    prerender: Prerender[object] | None = field(default=None, kw_only=True)
    """Given the decided order while its commit is in flight (place and cancel only)."""

    def __post_init__(self) -> None:
        self.future = asyncio.get_running_loop().create_future()

    def decide(self, desk: _Desk, batch: _Batch) -> Any:
        """Decide against the desk's state, record changes in `batch`; returns the result
        the caller gets once the batch is committed."""
        raise NotImplementedError

    def decided_order(self, result: Any) -> Order:
        """The order a result of `decide` shows its caller (ops that take a prerender)."""
        raise NotImplementedError


@dataclass(eq=False)
class _Place(_Op):
    order: Order

    def decide(self, desk: _Desk, batch: _Batch) -> Any:
        order = self.order
        key = ("order", order.user_id, order.client_order_id)
        if key in batch.new_client_ids:
            # Same client order id twice in one commit would pass both uniqueness guards:
            # decide it in the next batch, where the guard sees the first one.
            raise _Deferred
        resting = desk.book.find(order.user_id, "", order.client_order_id)
        if resting is not None:
            # A repeat of a place decided while this one waited (a client's retry): the
            # store's guard would refuse it too, but the book must never hold both.
            return resting, False
        if reduces(order.side, order.position_side) and not order.reduce_only:
            size = desk.open_size(order.user_id, order.position_side)
            if order.quantity > size:
                raise FailedPrecondition(
                    f"quantity {order.quantity} exceeds the {order.position_side.value} position "
                    f"of {size}: in hedge mode an order may not flip a side (use reduce_only to "
                    "cap it, or open the other side)"
                )
        return desk.submit_new(self, batch, order)

    def decided_order(self, result: tuple[Order, bool]) -> Order:
        return result[0]


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

    def decided_order(self, result: Order) -> Order:
        return result


@dataclass(eq=False)
class _Tick(_Op):
    price: Decimal

    def decide(self, desk: _Desk, batch: _Batch) -> Any:
        now = desk.clock_ns()
        update = PriceUpdate(PAPER, desk.symbol, self.price, now)
        batch.prices.append(update)
        batch.set_last(desk, update)
        # Those a rule fired by an earlier tick is cancelling; one price still fills every
        # order it crosses before a rule it fires can cancel (as on an exchange).
        held_back = desk.cancelling.order_ids()
        for reached in desk.book.reached_by(self.price):
            # As it stands now: an earlier fill of this tick may have ended it (one-cancels-
            # other) or changed it (an exit grown by its entry's fill, still to trigger).
            order = desk.book.get(reached.order_id)
            if order is None or order.order_id in held_back:
                continue
            events = on_tick(order, self.price, desk.context(order, now))
            if events:
                desk.record(self, batch, order, events, now)
        desk.trail(self, batch, self.price, now)
        interval = desk.mark_interval_ns
        for key, position in list(desk.positions.items()):
            if position.mark_price != self.price and (
                not interval or now - position.updated_at_ns >= interval
            ):
                batch.set_position(desk, key, position.mark(self.price, now))
        return update


@dataclass(eq=False)
class _CreateStop(_Op):
    spec: TrailingStopSpec
    trailing_stop_id: str

    def decide(self, desk: _Desk, batch: _Batch) -> Any:
        spec = self.spec
        key = ("trailing", spec.user_id, spec.client_id)
        if spec.client_id and key in batch.new_client_ids:
            raise _Deferred
        side = spec.position_side
        position = desk.positions.get((spec.user_id, side))
        if position is None:
            raise FailedPrecondition(
                f"no open {side.value} position on {spec.market.exchange} {spec.market.symbol} "
                "for a trailing stop to protect"
            )
        if desk.last is None:
            raise FailedPrecondition(f"no price yet for {spec.market.symbol}")
        now = desk.clock_ns()
        stop = spec.new_stop(self.trailing_stop_id, position.position_id, desk.last.price, now)
        if spec.client_id:
            batch.new_client_ids[key] = None
        desk.add_stop(self, batch, stop)
        return stop, True


@dataclass(eq=False)
class _CancelStop(_Op):
    user_id: str
    trailing_stop_id: str

    def decide(self, desk: _Desk, batch: _Batch) -> Any:
        stop = desk.trailing.get(self.trailing_stop_id)
        if stop is None or stop.user_id != self.user_id:
            raise _NotResting
        canceled = stop.cancel(CANCELED_BY_USER, desk.clock_ns())
        desk.change_stop(self, batch, stop, canceled, TrailingStopEventType.CANCELED)
        return canceled


@dataclass(eq=False)
class _CreateRule(_Op):
    rule: ConditionalRule

    def decide(self, desk: _Desk, batch: _Batch) -> Any:
        rule = self.rule
        trigger = desk.book.find(rule.user_id, rule.trigger_order_id, "")
        if trigger is None:
            raise _NotResting
        # A trigger past the condition already (a partial fill) fires it: never ACTIVE first.
        added = rule.on_trigger_change(trigger, desk.clock_ns()) or rule
        desk.change_rule(self, batch, None, added)
        return added


@dataclass(eq=False)
class _DeleteRule(_Op):
    rule: ConditionalRule

    def decide(self, desk: _Desk, batch: _Batch) -> Any:
        rule = desk.rules.get(self.rule.trigger_order_id, self.rule.rule_id)
        if rule is None:
            raise _NotResting
        deleted = rule.delete(desk.clock_ns())
        desk.change_rule(self, batch, rule, deleted)
        return deleted


class _Deferred(Exception):
    """The op cannot be decided in this batch; it goes first in the next one."""


class _Batch:
    """The changes of one commit, who caused each, and how to undo them in memory."""

    def __init__(self) -> None:
        self.changes: list[OrderChange] = []
        self.owners: list[_Op] = []
        self.prices: list[PriceUpdate] = []
        self.updates: list[Update] = []
        self.update_owners: list[_Op] = []
        self.fired: list[tuple[_Op, ConditionalRule]] = []
        """Rules fired in this batch, whose cancels follow the commit."""
        self.new_client_ids: dict[tuple[str, str, str], None] = {}
        """(kind, user, client id) created in this batch."""
        self.touched: dict[str, Position] = {}
        """Position records the op being decided changed, by id in order, as last set: one
        event each, coalesced (a tick's fills on one position make one update). By record,
        not side: a side that closes and opens again writes both records."""
        self.positions: list[Position] = []
        """The records each op decided before changed, one event each: every op's change
        is seen (concurrent orders filling on one position are as many updates)."""
        self._undo: list[Callable[[], None]] = []

    def _parts(self) -> tuple[list[Any] | dict[Any, Any], ...]:
        return (
            self.changes,
            self.owners,
            self.prices,
            self.updates,
            self.update_owners,
            self.fired,
            self.new_client_ids,
            self.touched,
            self.positions,
            self._undo,
        )

    def add(self, owner: _Op, change: OrderChange) -> None:
        self.changes.append(change)
        self.owners.append(owner)

    def note(self, owner: _Op, update: Update) -> None:
        self.updates.append(update)
        self.update_owners.append(owner)

    def put(self, book: _Keeps[T_contra], item: T_contra) -> None:
        book.put(item)
        self._undo.append(lambda: book.remove(item))

    def remove(self, book: _Keeps[T_contra], item: T_contra) -> None:
        book.remove(item)
        self._undo.append(lambda: book.put(item))

    def set_last(self, desk: _Desk, update: PriceUpdate) -> None:
        previous = desk.last
        desk.last = update

        def undo() -> None:
            desk.last = previous

        self._undo.append(undo)

    def closed_record(self, slot: PositionSlot) -> Position:
        """The record of `slot` (user, side) this batch closed."""
        user_id, side = slot
        return next(
            p
            for p in reversed([*self.positions, *self.touched.values()])
            if (p.user_id, p.position_side) == (user_id, side) and not p.is_open
        )

    def set_position(self, desk: _Desk, slot: PositionSlot, position: Position) -> None:
        """Write `position` in this commit and make it the slot's record in memory, or leave
        the slot empty once it is closed (only a reducing fill closes, so the slot held it)."""
        previous = desk.positions.get(slot)
        previous_closed = desk.closed.get(slot)
        if position.is_open:
            desk.positions[slot] = position
        else:
            del desk.positions[slot]
            desk.closed[slot] = position
        record_id = position.position_id
        written = self.touched.get(record_id)
        self.touched[record_id] = position

        def undo() -> None:
            if previous is None:
                del desk.positions[slot]
            else:
                desk.positions[slot] = previous
            if previous_closed is None:
                desk.closed.pop(slot, None)
            else:
                desk.closed[slot] = previous_closed
            # An earlier state of the record goes back; a record first touched here leaves
            # `touched` when the rollback cuts it to its mark.
            if written is not None:
                self.touched[record_id] = written

        self._undo.append(undo)

    def op_decided(self) -> None:
        """The op being decided is done: its position changes are final."""
        self.positions += self.touched.values()
        self.touched.clear()

    def all_updates(self) -> list[Update]:
        """What the commit writes besides order changes: the noted updates, then one event
        per position record each op changed."""
        return [*self.updates, *map(PositionUpdated, self.positions)]

    def mark(self) -> tuple[int, ...]:
        """Where the batch stands now, for `rollback(desk, to=mark)`."""
        return tuple(map(len, self._parts()))

    def rollback(self, desk: _Desk, to: tuple[int, ...] | None = None) -> None:
        """Undo in memory everything recorded since `to` (default: all of it)."""
        sizes = to or (0,) * len(self._parts())
        for step in reversed(self._undo[sizes[-1] :]):
            step()
        for part, size in zip(self._parts(), sizes, strict=True):
            if isinstance(part, list):
                del part[size:]
            else:
                # Dicts keep insertion order: the entries added since the mark are the last.
                for added in list(part)[size:]:
                    del part[added]
        desk.book.replace_all(desk.book.orders())


class _Desk:
    """One symbol's book, last price and decision queue."""

    def __init__(self, exchange: PaperExchange, symbol: str) -> None:
        self.symbol = symbol
        self.book = _RestingBook()
        self.trailing = TrailingBook()
        self.rules = _RuleBook()
        self.cancelling = exchange.cancelling
        self.last: PriceUpdate | None = None
        self.positions: dict[PositionSlot, Position] = {}
        """The open record of each (user, side) on this symbol. A side leaves when its
        position closes: its record lives on in the store, and its next fill opens a new one."""
        self.closed: dict[PositionSlot, Position] = {}
        """The last closed record of each (user, side) that has one: the side reopens at its
        leverage unless the opening order names one, as an exchange keeps an account's."""
        self.clock_ns = exchange.clock_ns
        self.mark_interval_ns = exchange.mark_interval_ns
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
        return position.size if position is not None else ZERO

    # -- decisions: each records its order changes and their consequences in the batch ----

    def submit_new(self, owner: _Op, batch: _Batch, order: Order) -> tuple[Order, bool]:
        batch.new_client_ids[("order", order.user_id, order.client_order_id)] = None
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
        # A fill goes into its position first: the fill and the order then name that position.
        events = [
            self._into_position(batch, start, event) if isinstance(event, OrderFilled) else event
            for event in events
        ]
        after, published = apply_all(start, events, now)
        batch.add(owner, OrderChange(after, None if before is None else before.version, published))
        if before is not None and self.book.get(before.order_id) is before:
            batch.remove(self.book, before)
        if after.is_open:
            batch.put(self.book, after)
        self.judge_rules(owner, batch, after, now)
        if not any(isinstance(event, OrderFilled) for event in events):
            return after
        if after.bracket is not None:
            if start.filled_quantity == 0:
                for leg in bracket_legs(after, now):
                    self.submit_new(owner, batch, leg)
                if after.bracket.trailing is not None:
                    self._start_trailing(owner, batch, after, after.bracket.trailing, now)
            else:
                self._grow_exits(owner, batch, after, now)
        if after.linked_order_id:
            self._cancel_if_resting(
                owner, batch, after.linked_order_id, f"one-cancels-other: {after.order_id} filled"
            )
        if after.parent_order_id:
            # The exit ended the trade: the rest of its entry must not reopen it unprotected.
            self._cancel_if_resting(
                owner, batch, after.parent_order_id, f"exit {after.order_id} filled"
            )
        if self.open_size(after.user_id, after.position_side) == 0:
            for order in self.book.orders():
                if (order.user_id, order.position_side) != (after.user_id, after.position_side):
                    continue
                if moot_when_flat(order):
                    self.cancel_resting(owner, batch, order, "position closed")
                elif order.reduce_only and rests_as_limit(order):
                    # As Binance expires them: left working, it would take from the side's
                    # next position. A reduce-only stop stays until it triggers, as there.
                    self.cancel_resting(owner, batch, order, "reduce-only: the position is flat")
            for stop in self.trailing.of_position(after.user_id, after.position_side):
                closed = stop.cancel(POSITION_CLOSED, now)
                self.change_stop(owner, batch, stop, closed, TrailingStopEventType.CANCELED)
        return after

    def trail(self, owner: _Op, batch: _Batch, price: Decimal, now: int) -> None:
        """A tick's effect on the trailing stops: activate, follow, trigger."""
        for stop in self.trailing.activated_by(price):
            self.change_stop(
                owner, batch, stop, stop.follow(price, now), TrailingStopEventType.ACTIVATED
            )
        for stop in self.trailing.improved_by(price):
            moved = stop.follow(price, now)
            kind = TrailingStopEventType.STOP_PRICE_UPDATED
            self.change_stop(
                owner, batch, stop, moved, kind if moved.stop_price != stop.stop_price else None
            )
        for stop in self.trailing.crossed_by(price):
            if self.trailing.get(stop.trailing_stop_id) is not stop:
                continue  # cancelled: an earlier trigger of this tick closed its position
            size = self.open_size(stop.user_id, stop.position_side)
            order = stop.close_order(self._exchange.new_id(), size, now)
            triggered = stop.trigger(price, order.order_id, now)
            self.change_stop(owner, batch, stop, triggered, TrailingStopEventType.TRIGGERED)
            self.submit_new(owner, batch, order)

    def change_stop(
        self,
        owner: _Op,
        batch: _Batch,
        before: TrailingStop,
        after: TrailingStop,
        kind: TrailingStopEventType | None,
    ) -> None:
        """Replace a working stop; `kind` None: a silent watermark move."""
        batch.remove(self.trailing, before)
        if after.status.is_working:
            batch.put(self.trailing, after)
        update = WatermarkMoved(after) if kind is None else TrailingStopUpdated(kind, after)
        batch.note(owner, update)

    def judge_rules(
        self, owner: _Op, batch: _Batch, trigger: Order, now: int
    ) -> dict[str, ConditionalRule]:
        """Fire or retire the rules an order change meets; returns the changed rules by id."""
        changed = {}
        for rule in self.rules.on(trigger.order_id):
            after = rule.on_trigger_change(trigger, now)
            if after is not None:
                self.change_rule(owner, batch, rule, after)
                changed[rule.rule_id] = after
        return changed

    def change_rule(
        self, owner: _Op, batch: _Batch, before: ConditionalRule | None, after: ConditionalRule
    ) -> None:
        if before is not None:
            batch.remove(self.rules, before)
        if after.status is RuleStatus.ACTIVE:
            batch.put(self.rules, after)
        batch.note(owner, RuleUpdated(after))
        if after.pending:
            batch.fired.append((owner, after))
            for order_id in after.cancel_order_ids:
                batch.put(self.cancelling, (order_id, after.rule_id))

    def _start_trailing(
        self, owner: _Op, batch: _Batch, entry: Order, exit: TrailingExit, now: int
    ) -> None:
        """An OpenPosition's trailing stop, on the whole position its entry just opened."""
        slot = (entry.user_id, entry.position_side)
        position = self.positions.get(slot) or batch.closed_record(slot)
        spec = TrailingStopSpec(
            entry.user_id,
            self._exchange.market(self.symbol),
            entry.position_side,
            exit.callback_rate,
            exit.callback_spread,
            exit.activation_price,
            quantity=None,
            client_id="",
        )
        assert self.last is not None, "a fill has a price"
        stop = spec.new_stop(
            exit.trailing_stop_id, position.position_id, self.last.price, now, refuse_reached=False
        )
        self.add_stop(owner, batch, stop)
        if not self.open_size(entry.user_id, entry.position_side):
            # An exit closed the position already (its entry filled through the stop-loss):
            # the stop whose id OpenPosition gave out exists, and is over.
            closed = stop.cancel(POSITION_CLOSED, now)
            self.change_stop(owner, batch, stop, closed, TrailingStopEventType.CANCELED)

    def add_stop(self, owner: _Op, batch: _Batch, stop: TrailingStop) -> None:
        batch.put(self.trailing, stop)
        batch.note(owner, TrailingStopUpdated(TrailingStopEventType.CREATED, stop))

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

    def _into_position(self, batch: _Batch, order: Order, filled: OrderFilled) -> OrderFilled:
        """Apply the fill to its position; the fill, marked with the position's id."""
        fill = filled.fill
        slot = (order.user_id, order.position_side)
        market = self._exchange.market(self.symbol)
        latest = self.positions.get(slot) or self.closed.get(slot)
        after = take_fill(latest, order, fill, market, self._exchange.new_id)
        mark = self.last.price if self.last else fill.price
        batch.set_position(self, slot, after.mark(mark, fill.time_ns))
        return OrderFilled(replace(fill, position_id=after.position_id))

    async def submit(self, op: _Op) -> Any:
        self._queue.append(op)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        # A caller that goes away cancels only its future: the queued op is still decided.
        result = await op.future
        if op.followups:
            # Shielded: a caller that goes away while they run would cancel them with the
            # gather, leaving a fired rule's cancels and results undone until a restart.
            await asyncio.shield(asyncio.gather(*op.followups))
        return result

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
            # Told only once what was decided before them is committed: a cancel that found
            # its order gone from the book (a tick in this batch filled it) reads the store
            # next, and must find the fill there.
            refused: dict[int, OmsError | _NotResting] = {}
            for op in ops:
                mark = batch.mark()
                try:
                    results[id(op)] = op.decide(self, batch)
                    batch.op_decided()
                    decided.append(op)
                except _Deferred:
                    deferred.append(op)
                except (OmsError, _NotResting) as error:
                    # A refused op leaves nothing behind, even if it failed half-way.
                    if batch.mark() != mark:
                        batch.rollback(self, to=mark)
                    refused[id(op)] = error
            if not decided:
                _settle_refused(ops, refused)
                ops = deferred
                continue
            if any(op.prerender is not None for op in decided):
                # Runs once this task waits for the commit, i.e. after it was sent.
                asyncio.get_running_loop().call_soon(_render_ahead, decided, results)
            try:
                outcome = await self._exchange.journal.record(
                    batch.changes, batch.prices, batch.all_updates()
                )
            except BaseException:
                fired = [rule for _, rule in batch.fired]
                batch.rollback(self)
                for rule in fired:
                    # The commit may have landed: finished once the store answers, its
                    # orders held back until then.
                    self._exchange.rule_unsure(rule)
                raise
            if not isinstance(outcome, Conflict):
                for owner, rule in batch.fired:
                    owner.followups.append(self._exchange.rule_fired(rule))
                for op in decided:
                    _settle(op, result=results[id(op)])
                _settle_refused(ops, refused)
                ops = deferred
                continue
            culprit, ahead, existing = _blame(batch, outcome)
            batch.rollback(self)
            # The store is ahead of memory when an earlier attempt of this very commit landed
            # but its reply was lost (the Redis client re-sent it) or after a fault: reload,
            # then decide the culprit again against the truth, once.
            if ahead:
                self._stale = True
                await self._exchange.reload(self)
                self._stale = False
            again = False
            if existing is not None and _repeat_of(culprit, existing):
                _settle(culprit, result=(existing, False))
            elif isinstance(existing, Order) and not ahead:
                # An order the OMS places itself (a stop's close, an exit) found its derived
                # client order id taken: placed before such ids were refused to callers.
                _settle(
                    culprit,
                    error=FailedPrecondition(
                        f"client order id {existing.client_order_id!r}, which the OMS gives an "
                        f"order it places itself, is taken by order {existing.order_id} of "
                        f"user {existing.user_id}"
                    ),
                )
            elif culprit.redecided:
                _settle(
                    culprit,
                    error=ConcurrentModification(
                        f"state changed concurrently ({outcome.kind.value}); try again"
                    ),
                )
            else:
                culprit.redecided = again = True
            # The refused ones are decided again too: what refused them is rolled back.
            ops = [
                op
                for op in ops
                if id(op) in refused or (id(op) in results and (op is not culprit or again))
            ] + deferred


def _settle_refused(ops: list[_Op], refused: dict[int, OmsError | _NotResting]) -> None:
    for op in ops:
        if id(op) in refused:
            _settle(op, error=refused[id(op)])


def _render_ahead(decided: list[_Op], results: dict[int, Any]) -> None:
    for op in decided:
        if op.prerender is not None:
            op.prerender.ahead(op.decided_order(results[id(op)]))


def _repeat_of(op: _Op, existing: Order | TrailingStop) -> bool:
    """Whether `existing` is what `op` asked for, under the client id it gave (a retry)."""
    if isinstance(op, _Place):
        return isinstance(existing, Order) and existing.client_order_id == op.order.client_order_id
    return isinstance(op, _CreateStop)


def _blame(batch: _Batch, conflict: Conflict) -> tuple[_Op, bool, Order | TrailingStop | None]:
    """(the op whose change failed its guard, whether the store is ahead of memory, the
    record that already holds the client id if that was the guard)."""
    index = conflict.change_index
    if conflict.kind is ConflictKind.TRAILING_CLIENT_ID_TAKEN:
        update = batch.updates[index]
        stop = conflict.existing_stop
        assert isinstance(update, TrailingStopUpdated) and stop is not None
        ours = stop.trailing_stop_id == update.trailing_stop.trailing_stop_id
        return batch.update_owners[index], ours, stop
    owner, change = batch.owners[index], batch.changes[index]
    if conflict.kind is ConflictKind.CLIENT_ORDER_ID_TAKEN:
        order = conflict.existing
        assert order is not None
        return owner, order.order_id == change.order.order_id, order
    return owner, True, None


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
        position_mark_interval_s: float = 0.0,
    ) -> None:
        self.journal = journal
        self.mark_interval_ns = int(position_mark_interval_s * 1e9)
        """A tick rewrites an open position's mark at most this often (fills always do)."""
        self.clock_ns = clock_ns
        self.new_id = new_id
        self._catalog = catalog
        self._fees = fees
        self._maker_fill_limit = maker_fill_limit
        self._desks: dict[str, _Desk] = {}
        self.cancelling = _Cancelling()
        self._rule_runner: RuleRunner | None = None
        self._unsure: Callable[[ConditionalRule], None] | None = None

    def run_rules_with(
        self, runner: RuleRunner, unsure: Callable[[ConditionalRule], None] | None = None
    ) -> None:
        """Who sends a fired rule's cancels (the engine's ConditionalRules), and who is
        told of a rule whose firing commit failed, landed or not (to finish it once the
        store answers, or find it never fired)."""
        self._rule_runner = runner
        self._unsure = unsure

    def rule_fired(self, rule: ConditionalRule) -> asyncio.Future[object]:
        assert self._rule_runner is not None, "run_rules_with was not called"
        return asyncio.ensure_future(self._rule_runner(rule))

    def rule_unsure(self, rule: ConditionalRule) -> None:
        self.hold_back(rule)
        if self._unsure is not None:
            self._unsure(rule)

    def hold_back(self, rule: ConditionalRule) -> None:
        """No tick fills an order `rule` lists until `stop_holding` or `release`: it may
        have fired."""
        self.cancelling.hold(rule)

    def stop_holding(self, rule: ConditionalRule, number: int | None = None) -> None:
        """`rule` never fired then: the hold of `hold_back` goes (with its `number`: only if
        no later firing of the rule has held it again since), not the marks of a desk's
        firing decided since."""
        self.cancelling.unhold(rule, number)

    def hold_number(self, rule: ConditionalRule) -> int | None:
        """Which `hold_back` of `rule` holds its orders now; None when none does."""
        return self.cancelling.hold_number(rule)

    def release(self, rule: ConditionalRule) -> None:
        """`rule` is finished: its orders fill again as ticks reach them."""
        self.cancelling.release(rule)

    async def recover(self) -> None:
        """Rebuild prices and resting books from the store (the crash-recovery path)."""
        for desk in await self._load():
            self._desks[desk.symbol] = desk

    async def reload(self, desk: _Desk) -> None:
        """Rebuild one desk from the store, after a commit whose outcome is unknown."""
        fresh = next((d for d in await self._load() if d.symbol == desk.symbol), None)
        fresh = fresh or _Desk(self, desk.symbol)
        desk.book.replace_all(fresh.book.orders())
        desk.trailing.replace_all(fresh.trailing.stops())
        desk.rules = fresh.rules
        desk.last = fresh.last
        desk.positions = fresh.positions
        desk.closed = fresh.closed

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
        for position in await store.open_positions_on(PAPER):
            desk = desks.setdefault(position.symbol, _Desk(self, position.symbol))
            desk.positions[(position.user_id, position.position_side)] = position
        for position in await store.closed_positions_on(PAPER):
            desk = desks.setdefault(position.symbol, _Desk(self, position.symbol))
            desk.closed[(position.user_id, position.position_side)] = position
        for stop in await store.working_trailing_stops_on(PAPER):
            desks.setdefault(stop.symbol, _Desk(self, stop.symbol)).trailing.put(stop)
        for rule in await store.active_rules_on(PAPER):
            desks.setdefault(rule.trigger_symbol, _Desk(self, rule.trigger_symbol)).rules.put(rule)
        return list(desks.values())

    @property
    def resting_orders(self) -> int:
        """How many open orders rest on the books now. Safe from another thread (metrics):
        the desks are copied in one step before they are counted."""
        return sum(len(desk.book) for desk in list(self._desks.values()))

    def last_price(self, symbol: str) -> PriceUpdate | None:
        desk = self._desks.get(symbol)
        return desk.last if desk else None

    def resting_order(self, user_id: str, order_id: str, client_order_id: str) -> Order | None:
        """An open order of this user, by either id, without a store read."""
        for desk in self._desks.values():
            order = desk.book.find(user_id, order_id, client_order_id)
            if order is not None:
                return order
        return None

    async def place(
        self, order: Order, prerender: Prerender[object] | None = None
    ) -> tuple[Order, bool]:
        """Submit a new order; returns (order, created). Not created: the client order id
        already names an order, which is returned unchanged."""
        placed: tuple[Order, bool] = await self._desk(order.symbol).submit(
            _Place(order, prerender=prerender)
        )
        return placed

    async def cancel(
        self, order: Order, reason: str, prerender: Prerender[object] | None = None
    ) -> Order:
        try:
            canceled: Order = await self._desk(order.symbol).submit(
                _Cancel(order.user_id, order.order_id, reason, prerender=prerender)
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

    async def create_trailing_stop(
        self, spec: TrailingStopSpec, trailing_stop_id: str
    ) -> tuple[TrailingStop, bool]:
        """(stop, created). Not created: the client id already names that stop."""
        created: tuple[TrailingStop, bool] = await self._desk(spec.market.symbol).submit(
            _CreateStop(spec, trailing_stop_id)
        )
        return created

    async def cancel_trailing_stop(self, stop: TrailingStop) -> TrailingStop | None:
        """The stop, CANCELED by its user; None when it is no longer working."""
        try:
            canceled: TrailingStop = await self._desk(stop.symbol).submit(
                _CancelStop(stop.user_id, stop.trailing_stop_id)
            )
            return canceled
        except _NotResting:
            return None

    async def add_rule(self, rule: ConditionalRule) -> ConditionalRule | None:
        """The rule as committed with its trigger order's current state (ACTIVE, or fired
        and finished); None when the trigger order is no longer open."""
        try:
            added: ConditionalRule = await self._desk(rule.trigger_symbol).submit(_CreateRule(rule))
            return added
        except _NotResting:
            return None

    async def delete_rule(self, rule: ConditionalRule) -> ConditionalRule | None:
        """The rule, CANCELED "deleted"; None when it is no longer ACTIVE."""
        try:
            deleted: ConditionalRule = await self._desk(rule.trigger_symbol).submit(
                _DeleteRule(rule)
            )
            return deleted
        except _NotResting:
            return None

    async def on_price(self, symbol: str, price: Decimal) -> PriceUpdate:
        """One tick: match the resting orders, commit fills and the price together."""
        update: PriceUpdate = await self._desk(symbol).submit(_Tick(price))
        return update

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
