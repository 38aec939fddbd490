"""Mark prices of real exchanges: read for every symbol a followed account holds a position
in or has a held stop on, published as prices (GetPrice, StreamPrices), marked onto those
positions (unrealized PnL, notional, liquidation estimate) and handed to the held stops.

One follower per exchange while it has a followed account. A position is re-marked under its
account's lock, so a mark never overwrites a fill committed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Protocol

from oms.domain.errors import ConcurrentModification, Unavailable
from oms.domain.events import PositionUpdated
from oms.domain.positions import Position
from oms.engine.gateway import GatewayConnector, GatewayError
from oms.engine.journal import Journal
from oms.engine.ports import PriceUpdate, StateStore
from oms.engine.venue_policy import VenuePolicy

log = logging.getLogger(__name__)


class Accounts(Protocol):
    """The followed accounts of an exchange, each with the lock its commits take, and the
    symbols whose held stops wait for a price."""

    def followed_locks(self, exchange: str) -> dict[str, asyncio.Lock]: ...

    def held_symbols(self, exchange: str) -> set[str]: ...

    async def on_marks(self, exchange: str, marks: dict[str, Decimal]) -> None: ...


class MarkPrices:
    def __init__(
        self,
        store: StateStore,
        journal: Journal,
        connector: GatewayConnector,
        accounts: Accounts,
        observe: Callable[[Sequence[PriceUpdate]], None],
        clock_ns: Callable[[], int],
        policy: Callable[[str], VenuePolicy],
    ) -> None:
        self._store = store
        self._journal = journal
        self._connector = connector
        self._accounts = accounts
        self._observe = observe
        self._clock_ns = clock_ns
        self._policy = policy
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._last: dict[tuple[str, str], Decimal] = {}
        self._unapplied: set[tuple[str, str]] = set()
        """Marks whose stops a failure kept from being moved or sent: applied again."""
        self._applying: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._nudged: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def last(self, exchange: str, symbol: str) -> Decimal | None:
        return self._last.get((exchange, symbol))

    def nudge(self, exchange: str) -> None:
        """A symbol may have come into use (a position opened, a stop held): look now."""
        self._nudged[exchange].set()

    def follow(self, exchange: str) -> None:
        if exchange not in self._followers:
            self._followers[exchange] = asyncio.get_running_loop().create_task(
                self._follow(exchange), name=f"{exchange}:marks"
            )

    async def unfollow(self, exchange: str) -> None:
        task = self._followers.pop(exchange, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        for exchange in list(self._followers):
            await self.unfollow(exchange)

    async def _follow(self, exchange: str) -> None:
        """Every interval: read the marks over REST (the fallback, and the only source where
        ccxt has no ticker feed) and keep one ticker watch per symbol in use."""
        watchers: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                try:
                    symbols = await self.refresh(exchange)
                except (GatewayError, Unavailable, ConcurrentModification) as error:
                    log.warning("%s mark prices: %s", exchange, error)
                except Exception:
                    # Every account's stops on the exchange hang on this loop: never end it.
                    log.exception("%s mark prices", exchange)
                else:
                    if self._connector.has_price_feed(exchange):
                        self._watch(exchange, symbols, watchers)
                nudged = self._nudged[exchange]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._policy(exchange).mark_interval_s):
                        await nudged.wait()
                nudged.clear()
        finally:
            for task in watchers.values():
                task.cancel()

    def _watch(
        self, exchange: str, symbols: Sequence[str], watchers: dict[str, asyncio.Task[None]]
    ) -> None:
        for symbol in set(watchers) - set(symbols):
            watchers.pop(symbol).cancel()
        for symbol in set(symbols) - set(watchers):
            watchers[symbol] = asyncio.get_running_loop().create_task(
                self._watch_symbol(exchange, symbol), name=f"{exchange}:{symbol}:ticker"
            )

    async def _watch_symbol(self, exchange: str, symbol: str) -> None:
        while True:
            try:
                price = await self._connector.watch_mark_price(exchange, symbol)
                await self._apply(exchange, {symbol: price})
            except (GatewayError, Unavailable, ConcurrentModification) as error:
                # The REST read at the next interval covers the gap; the next watch reconnects.
                log.warning("%s %s ticker feed: %s", exchange, symbol, error)
                await asyncio.sleep(self._policy(exchange).mark_interval_s)
            except Exception:
                log.exception("%s %s ticker feed", exchange, symbol)
                await asyncio.sleep(self._policy(exchange).mark_interval_s)

    def _due(self, position: Position, now_ns: int) -> bool:
        """Whether a mark may rewrite `position` now (position_mark_interval_s)."""
        interval_s = self._policy(position.exchange).position_mark_interval_s
        return not interval_s or now_ns - position.updated_at_ns >= interval_s * 1e9

    async def refresh(self, exchange: str) -> list[str]:
        """Read the marks of the symbols in use on `exchange` over REST and apply the ones
        that moved; returns those symbols."""
        positions = await self._positions(exchange)
        symbols = sorted(
            {position.symbol for position in positions} | self._accounts.held_symbols(exchange)
        )
        if symbols:
            marks = await self._connector.mark_prices(exchange, symbols)
            await self._apply(exchange, marks, positions)
        return symbols

    async def _positions(self, exchange: str) -> list[Position]:
        """The open positions of followed accounts on `exchange`."""
        locks = self._accounts.followed_locks(exchange)
        return [
            position
            for position in await self._store.open_positions_on(exchange)
            if position.user_id in locks
        ]

    async def _apply(
        self,
        exchange: str,
        marks: dict[str, Decimal],
        positions: list[Position] | None = None,
    ) -> None:
        """`positions`: the open ones when the caller has just read them (each is read again
        under its account's lock before it is marked)."""
        # One at a time per exchange: a REST read must not land over a newer pushed price.
        async with self._applying[exchange]:
            moved = {
                symbol: price
                for symbol, price in marks.items()
                if self._last.get((exchange, symbol)) != price
                or (exchange, symbol) in self._unapplied
            }
            if not moved:
                return
            now = self._clock_ns()
            updates = [PriceUpdate(exchange, symbol, price, now) for symbol, price in moved.items()]
            await self._journal.record([], prices=updates)
            self._last.update({(exchange, symbol): price for symbol, price in moved.items()})
            self._observe(updates)
            try:
                await self._accounts.on_marks(exchange, moved)
            except BaseException:
                # Not all the stops these marks reach were moved or sent: the next read of
                # the same prices applies them again, rather than find them "not moved".
                self._unapplied.update((exchange, symbol) for symbol in moved)
                raise
            self._unapplied.difference_update((exchange, symbol) for symbol in moved)
            held: defaultdict[str, list[Position]] = defaultdict(list)
            if positions is None:
                positions = await self._positions(exchange)
            for position in positions:
                if position.symbol in moved:
                    held[position.user_id].append(position)
            locks = self._accounts.followed_locks(exchange)
            for user_id, positions in held.items():
                lock = locks.get(user_id)
                if lock is None:
                    continue  # no longer followed: deactivated since the listing
                async with lock:
                    await self._mark(positions, moved, now)

    async def _mark(
        self, positions: list[Position], marks: dict[str, Decimal], now_ns: int
    ) -> None:
        updates = []
        for stale in positions:
            if stale.symbol not in marks or not self._due(stale, now_ns):
                continue  # the record only grows newer than the listing's
            # Re-read under the account's lock: a fill may have moved it since the listing.
            current = await self._store.current_position(stale.key)
            if current is not None and current.is_open and self._due(current, now_ns):
                updates.append(PositionUpdated(current.mark(marks[stale.symbol], now_ns)))
        if updates:
            await self._journal.record([], updates=updates)
