"""Prices: publish paper ticks (synchronously, through every effect), read and follow them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Container, Sequence
from dataclasses import dataclass
from decimal import Decimal

from oms.domain.decimals import parse_positive
from oms.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OmsError,
    ResourceExhausted,
    StreamLimit,
    Unavailable,
)
from oms.domain.markets import Market, MarketCatalog
from oms.engine.paper_exchange import PAPER, PaperExchange
from oms.engine.ports import PriceUpdate
from oms.engine.subscriptions import cut_off

MAX_TICKS_PER_CALL = 1000
MARKS_FOLLOWED = " (marks are read for symbols held in positions or stops)"


@dataclass(frozen=True, slots=True)
class Tick:
    exchange: str
    symbol: str
    price: str


class _PriceSubscription:
    def __init__(self, instruments: frozenset[tuple[str, str]], capacity: int) -> None:
        self.instruments = instruments
        self.queue: asyncio.Queue[PriceUpdate] = asyncio.Queue(capacity)
        self._stream = asyncio.current_task()
        self._capacity = capacity
        self._ended = False

    def push(self, update: PriceUpdate) -> None:
        if self._ended:
            return
        try:
            self.queue.put_nowait(update)
        except asyncio.QueueFull:
            self.end(ResourceExhausted(f"price stream fell more than {self._capacity} behind"))

    def end(self, error: OmsError) -> None:
        self._ended = True
        while not self.queue.empty():  # a stalled client holds no backlog
            self.queue.get_nowait()
        cut_off(self._stream, error)


class MarketData:
    def __init__(
        self,
        catalog: MarketCatalog,
        paper: PaperExchange,
        buffer_events: int,
        real_exchanges: Container[str],
        max_streams: int = 1000,
        not_reached: Callable[[str], str | None] = lambda exchange: None,
    ) -> None:
        """`real_exchanges`: every real exchange's id, its markets loaded or not.
        `max_streams`: price streams open at once, all clients'. `not_reached`: why the
        start has not reached an exchange with an active account yet; None if it has none."""
        self._catalog = catalog
        self._real = real_exchanges
        self._not_reached = not_reached
        self._paper = paper
        self._capacity = buffer_events
        self._max_streams = max_streams
        self._subscriptions: set[_PriceSubscription] = set()
        self._by_instrument: dict[tuple[str, str], set[_PriceSubscription]] = {}
        """The streams of each instrument: a tick costs a push per stream that names it."""
        self._live: dict[tuple[str, str], PriceUpdate] = {}
        """The latest mark of each real exchange's symbol, from its feed."""

    async def publish(self, ticks: Sequence[Tick]) -> list[PriceUpdate]:
        """Apply ticks in order; returns once every effect of every tick is committed."""
        if not ticks:
            raise InvalidArgument("prices", "must hold at least one tick")
        if len(ticks) > MAX_TICKS_PER_CALL:
            raise InvalidArgument("prices", f"holds more than {MAX_TICKS_PER_CALL} ticks")
        # Check every tick before applying any, so a bad one changes nothing.
        parsed = []
        for index, tick in enumerate(ticks):
            field = f"prices[{index}]"
            if tick.exchange in self._real:
                raise FailedPrecondition(
                    f"{field}: prices for {tick.exchange} come from its own feed"
                )
            market = self._resolve(tick.exchange, tick.symbol, field)
            price = parse_positive(f"{field}.price", tick.price)
            market.check_price(f"{field}.price", price)
            parsed.append((market, price))
        updates = []
        for market, price in parsed:
            update = await self._paper.on_price(market.symbol, price)
            updates.append(update)
            self._push(update)
        return updates

    def observe(self, updates: Sequence[PriceUpdate]) -> None:
        """Prices a real exchange's feed brought (committed already)."""
        for update in updates:
            self._live[(update.exchange, update.symbol)] = update
            self._push(update)

    def _push(self, update: PriceUpdate) -> None:
        for subscription in self._by_instrument.get((update.exchange, update.symbol), ()):
            subscription.push(update)

    def last_price_of(self, exchange: str, symbol: str) -> Decimal | None:
        """The last price (a real exchange's mark), None when none is known yet."""
        last = self._last(exchange, symbol)
        return last.price if last else None

    def get(self, exchange: str, symbol: str) -> PriceUpdate:
        market = self._resolve(exchange, symbol, "")
        last = self._last(market.exchange, market.symbol)
        if last is None:
            why = "" if market.exchange == PAPER else MARKS_FOLLOWED
            raise NotFound(f"no price yet for {market.symbol} on {market.exchange}{why}")
        return last

    def _last(self, exchange: str, symbol: str) -> PriceUpdate | None:
        if exchange == PAPER:
            return self._paper.last_price(symbol)
        return self._live.get((exchange, symbol))

    def market(self, exchange: str, symbol: str) -> Market:
        return self._resolve(exchange, symbol, "")

    async def follow(
        self, instruments: Sequence[tuple[str, str]], with_last: bool = False
    ) -> AsyncIterator[PriceUpdate]:
        """Ticks of the instruments, live; `with_last`: each one's last price first."""
        if not instruments:
            raise InvalidArgument("instruments", "must name at least one exchange and symbol")
        resolved = list(
            dict.fromkeys(
                (market.exchange, market.symbol)
                for index, (exchange, symbol) in enumerate(instruments)
                for market in [self._resolve(exchange, symbol, f"instruments[{index}]")]
            )
        )
        if len(self._subscriptions) >= self._max_streams:
            raise StreamLimit(
                f"{len(self._subscriptions)} price streams are open, as many as "
                "max_price_streams allows: close one first (one stream takes many instruments)"
            )
        subscription = _PriceSubscription(frozenset(resolved), self._capacity)
        self._subscriptions.add(subscription)
        for key in resolved:
            self._by_instrument.setdefault(key, set()).add(subscription)
        try:
            # Read once subscribed, all before the first yield: no tick falls in between.
            # A paper tick's push comes after its price is the last (its publisher resumes
            # later, after the tick's rules, say, and maybe after a later tick's push): a
            # push no newer than the price last sent is not sent, so the stream never
            # repeats a price or goes back to an older one.
            sent = {key: last for key in resolved if with_last and (last := self._last(*key))}
            for last in sent.values():
                yield last
            while True:
                update = await subscription.queue.get()
                key = (update.exchange, update.symbol)
                before = sent.get(key)
                if before is None or (update != before and update.time_ns >= before.time_ns):
                    sent[key] = update
                    yield update
        finally:
            self._subscriptions.discard(subscription)
            for key in resolved:
                streams = self._by_instrument[key]
                streams.discard(subscription)
                if not streams:
                    del self._by_instrument[key]

    @property
    def streams(self) -> int:
        """How many price streams are open now."""
        return len(self._subscriptions)

    def close(self) -> None:
        """Every stream ends with UNAVAILABLE, a stalled one too."""
        for subscription in self._subscriptions:
            subscription.end(Unavailable("server is shutting down"))

    def _resolve(self, exchange: str, symbol: str, prefix: str) -> Market:
        dot = f"{prefix}." if prefix else ""
        if exchange in self._real and not self._catalog.has_exchange(exchange):
            if (why := self._not_reached(exchange)) is not None:
                raise Unavailable(
                    f"{dot}exchange: an account is active on {exchange}, but it has not been "
                    f"reached since the server started ({why}): retry later"
                )
            raise FailedPrecondition(
                f"{dot}exchange: no account is active on {exchange}: its markets and prices "
                "load once one is"
            )
        self._catalog.check_exchange(exchange, f"{dot}exchange")
        return self._catalog.resolve(exchange, symbol, f"{dot}symbol")
