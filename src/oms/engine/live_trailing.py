"""Trailing stops on real exchanges: the same stops as on paper (domain/trailing_stops.py),
followed on the exchange's mark price instead of paper ticks.

Each change of a stop is committed under its account's lock, so a mark never races a cancel.
A trigger commits the stop TRIGGERED together with its reduce-only close order (PENDING_NEW,
client order id `ts-<trailing_stop_id>`, which the store refuses twice), then sends that
order like any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Protocol

from oms.domain.decimals import total
from oms.domain.errors import ConcurrentModification, FailedPrecondition, OmsError, Unavailable
from oms.domain.events import OrderEventType, OrderUpdated, TrailingStopUpdated, WatermarkMoved
from oms.domain.markets import Market
from oms.domain.orders import Order, OrderType, PositionSide, TrailingExit
from oms.domain.positions import PositionKey
from oms.domain.trailing_stops import (
    CANCELED_BY_USER,
    POSITION_CLOSED,
    TrailingStop,
    TrailingStopEventType,
    TrailingStopSpec,
)
from oms.engine.journal import Journal
from oms.engine.ports import Conflict, ConflictKind, OrderChange, StateStore
from oms.engine.trailing_book import TrailingBook

log = logging.getLogger(__name__)


class Venue(Protocol):
    """What the stops need of the live venue (engine.live_exchanges.LiveExchanges)."""

    def account_lock(self, user_id: str, exchange: str) -> asyncio.Lock:
        """FAILED_PRECONDITION when the user has no active account on the exchange."""
        ...

    def last_mark(self, exchange: str, symbol: str) -> Decimal | None: ...

    def send_later(self, order: Order) -> None:
        """Send a committed PENDING_NEW order in the background."""
        ...

    def unsent(self, order: Order, why: str) -> None:
        """`order`'s commit failed UNAVAILABLE, so it never left: if the commit landed all
        the same, the poll's lookup sends it at once."""
        ...


class LiveTrailingStops:
    def __init__(
        self,
        store: StateStore,
        journal: Journal,
        venue: Venue,
        new_id: Callable[[], str],
        clock_ns: Callable[[], int],
    ) -> None:
        self._store = store
        self._journal = journal
        self._venue = venue
        self._new_id = new_id
        self._clock_ns = clock_ns
        self._books: defaultdict[tuple[str, str], TrailingBook] = defaultdict(TrailingBook)
        self._unsure: defaultdict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
        """By (exchange, symbol): the (user_id, stop id) of stops whose last write's outcome
        is unknown (its replies lost): out of the book until read back from the store."""

    def symbols(self, exchange: str) -> set[str]:
        return {
            symbol
            for (ex, symbol), book in self._books.items()
            if ex == exchange and (book or self._unsure.get((ex, symbol)))
        }

    def load(self, stops: list[TrailingStop]) -> None:
        """Working stops from the store (start-up, or an account followed again)."""
        for stop in stops:
            book = self._books[(stop.exchange, stop.symbol)]
            if book.get(stop.trailing_stop_id) is None:
                book.put(stop)

    def forget_user(self, user_id: str, exchange: str) -> None:
        for (ex, _), book in self._books.items():
            if ex == exchange:
                for stop in [s for s in book.stops() if s.user_id == user_id]:
                    book.remove(stop)
        for (ex, _), unsure in self._unsure.items():
            if ex == exchange:
                unsure.difference_update({key for key in unsure if key[0] == user_id})

    async def create(
        self,
        spec: TrailingStopSpec,
        trailing_stop_id: str,
        opening_price: Decimal | None = None,
        trade: str = "",
    ) -> tuple[TrailingStop, bool]:
        """A new stop on the position. `opening_price`: the stop of an OpenPosition whose
        entry just filled at that price, used when no mark is known yet, and activating at
        once when its activation price is already reached (as on paper); `trade`: the
        position that entry filled into, when known."""
        market = spec.market
        async with self._venue.account_lock(spec.user_id, market.exchange):
            key = PositionKey(spec.user_id, market.exchange, market.symbol, spec.position_side)
            # The entry's own trade, which the side may have left since (closed, reopened).
            position = await (
                self._store.get_position(spec.user_id, trade)
                if trade
                else self._store.current_position(key)
            )
            # (An OpenPosition's stop is started on a closed one too: see below.)
            if position is None or (not position.is_open and opening_price is None):
                raise FailedPrecondition(
                    f"no open {spec.position_side.value} position on {market.exchange} "
                    f"{market.symbol} for a trailing stop to protect"
                )
            last = self._venue.last_mark(market.exchange, market.symbol) or opening_price
            if last is None:
                raise FailedPrecondition(
                    f"no mark price yet for {market.symbol} on {market.exchange}; try again"
                )
            stop = spec.new_stop(
                trailing_stop_id,
                position.position_id,
                last,
                self._clock_ns(),
                refuse_reached=opening_price is None,
            )
            updates = [TrailingStopUpdated(TrailingStopEventType.CREATED, stop)]
            if not position.is_open:
                # An OpenPosition's stop whose position closed before its entry's follow-ups
                # ran: the stop whose id OpenPosition gave out exists, and is over.
                stop = stop.cancel(POSITION_CLOSED, stop.created_at_ns)
                updates.append(TrailingStopUpdated(TrailingStopEventType.CANCELED, stop))
            try:
                outcome = await self._journal.record([], updates=updates)
            except Unavailable:
                self._unsure_of(stop)
                raise
            if isinstance(outcome, Conflict):
                assert outcome.kind is ConflictKind.TRAILING_CLIENT_ID_TAKEN
                assert outcome.existing_stop is not None
                return outcome.existing_stop, False
            if stop.status.is_working:
                self._books[(market.exchange, market.symbol)].put(stop)
            return stop, True

    async def start_exit(self, entry: Order, exit: TrailingExit, market: Market) -> None:
        """An OpenPosition's trailing stop, on the whole position (the entry's trade, when
        known), once its entry filled."""
        if await self._store.get_trailing_stop(entry.user_id, exit.trailing_stop_id):
            return
        spec = TrailingStopSpec(
            entry.user_id,
            market,
            entry.position_side,
            exit.callback_rate,
            exit.callback_spread,
            exit.activation_price,
            quantity=None,
            client_id="",
        )
        await self.create(
            spec,
            exit.trailing_stop_id,
            opening_price=entry.average_fill_price,
            trade=entry.position_id,
        )

    async def cancel(
        self, stop: TrailingStop, reason: str = CANCELED_BY_USER
    ) -> TrailingStop | None:
        """The stop cancelled; None when it is not working here (triggered meanwhile)."""
        await self._read_back(stop.exchange, stop.symbol)
        async with self._venue.account_lock(stop.user_id, stop.exchange):
            book = self._books[(stop.exchange, stop.symbol)]
            current = book.get(stop.trailing_stop_id)
            if current is None:
                return None
            canceled = current.cancel(reason, self._clock_ns())
            await self._change(book, current, canceled, TrailingStopEventType.CANCELED)
            return canceled

    def working_of(
        self, user_id: str, exchange: str, symbol: str, side: PositionSide
    ) -> list[TrailingStop]:
        """The working stops of one position side."""
        return self._books[(exchange, symbol)].of_position(user_id, side)

    async def position_closed(self, stops: Sequence[TrailingStop]) -> None:
        """Their side went flat another way: those still working are CANCELED."""
        for stop in stops:
            await self.cancel(stop, POSITION_CLOSED)

    async def on_mark(self, exchange: str, symbol: str, price: Decimal) -> None:
        """A new mark: activate, follow, trigger, as a paper tick does."""
        await self._read_back(exchange, symbol)
        book = self._books.get((exchange, symbol))
        if not book:
            return
        now = self._clock_ns()
        failed: list[OmsError] = []
        for stop in book.activated_by(price):
            await self._locked(
                stop,
                lambda s: self._change(
                    book, s, s.follow(price, now), TrailingStopEventType.ACTIVATED
                ),
                failed,
            )
        for stop in book.improved_by(price):

            def improve(s: TrailingStop) -> Awaitable[None]:
                moved = s.follow(price, now)
                kind = TrailingStopEventType.STOP_PRICE_UPDATED
                return self._change(
                    book, s, moved, kind if moved.stop_price != s.stop_price else None
                )

            await self._locked(stop, improve, failed)
        for stop in book.crossed_by(price):
            await self._locked(stop, lambda s: self._trigger(book, s, price, now), failed)
        if failed:
            raise failed[0]

    async def _locked(
        self,
        stop: TrailingStop,
        change: Callable[[TrailingStop], Awaitable[None]],
        failed: list[OmsError],
    ) -> None:
        """`change` the stop as it is now, under its account's lock; a failure is added to
        `failed`, so that one stop's does not keep the mark from the others."""
        try:
            lock = self._venue.account_lock(stop.user_id, stop.exchange)
        except FailedPrecondition:
            return  # the account is not followed: its stops wait
        async with lock:
            current = self._books[(stop.exchange, stop.symbol)].get(stop.trailing_stop_id)
            if current is not None:  # not cancelled or triggered meanwhile
                try:
                    await change(current)
                except (Unavailable, ConcurrentModification) as error:
                    failed.append(error)

    def _unsure_of(self, stop: TrailingStop) -> None:
        """The stop's last write may or may not have landed: read it back before it acts."""
        self._unsure[(stop.exchange, stop.symbol)].add((stop.user_id, stop.trailing_stop_id))

    async def _read_back(self, exchange: str, symbol: str) -> None:
        """Put back in the book, as stored, the stops of the symbol whose last write's
        outcome was unknown and that are working; forget the others."""
        unsure = self._unsure.get((exchange, symbol))
        while unsure:
            user_id, stop_id = key = next(iter(unsure))
            try:
                lock = self._venue.account_lock(user_id, exchange)
            except FailedPrecondition:
                unsure.discard(key)  # not followed: read at its next follow
                continue
            async with lock:
                stored = await self._store.get_trailing_stop(user_id, stop_id)
                book = self._books[(exchange, symbol)]
                if stored and stored.status.is_working and book.get(stop_id) is None:
                    book.put(stored)
                unsure.discard(key)

    async def _trigger(
        self, book: TrailingBook, stop: TrailingStop, price: Decimal, now: int
    ) -> None:
        stored = await self._store.get_trailing_stop(stop.user_id, stop.trailing_stop_id)
        if stored is None or not stored.status.is_working:
            # Ended by a change that landed unanswered (a cancel whose reply was lost): the
            # store is right, the copy here is not.
            book.remove(stop)
            return
        key = PositionKey(stop.user_id, stop.exchange, stop.symbol, stop.position_side)
        position = await self._store.current_position(key)
        # Its own trade only: the side may hold the next one (a crash cut short the close's
        # follow-ups, which cancel it).
        if position is None or not position.holds(stop.position_id):
            await self._change(
                book, stop, stop.cancel(POSITION_CLOSED, now), TrailingStopEventType.CANCELED
            )
            return
        if await self._closing(position.key) >= position.size:
            # Closes on their way cover the whole position (another stop's, from this very
            # mark; a ClosePosition): the stored size shrinks only once their fills are
            # reported. One that fills closes the position, which cancels this stop; should
            # they all fail, the next mark that reaches it triggers it.
            return
        order = stop.close_order(self._new_id(), position.size, now)
        triggered = stop.trigger(price, order.order_id, now)
        try:
            outcome = await self._journal.record(
                [OrderChange(order, None, [OrderUpdated(OrderEventType.CREATED, order)])],
                updates=[TrailingStopUpdated(TrailingStopEventType.TRIGGERED, triggered)],
            )
        except Unavailable as error:
            # Landed or not. If it did not, the next mark triggers the stop again.
            self._venue.unsent(order, error.message)
            raise
        book.remove(stop)
        if isinstance(outcome, Conflict):
            # Its close order exists: it triggered before (a repeat after a crash).
            log.error("trailing stop %s: close order exists already", stop.trailing_stop_id)
            return
        log.info("trailing stop %s triggered at %s", stop.trailing_stop_id, price)
        self._venue.send_later(order)

    async def _closing(self, key: PositionKey) -> Decimal:
        """What the side's open reduce-only market orders have still to close."""
        return total(
            order.remaining_quantity
            for order in await self._store.open_orders(key.user_id)
            if order.reduce_only
            and order.type is OrderType.MARKET
            and (order.exchange, order.symbol, order.position_side)
            == (key.exchange, key.symbol, key.position_side)
        )

    async def _change(
        self,
        book: TrailingBook,
        before: TrailingStop,
        after: TrailingStop,
        kind: TrailingStopEventType | None,
    ) -> None:
        """Replace a working stop; `kind` None: a silent watermark move."""
        update = WatermarkMoved(after) if kind is None else TrailingStopUpdated(kind, after)
        try:
            await self._journal.record([], updates=[update])
        except Unavailable:
            # Landed or not: neither copy is known to be the stored one. Out of the book
            # (a copy moved later would write over a cancel that landed) until read back.
            book.remove(before)
            self._unsure_of(before)
            raise
        book.remove(before)
        if after.status.is_working:
            book.put(after)
