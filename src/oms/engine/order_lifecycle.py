"""Order use cases: place, cancel, look up, list and follow orders and fills."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from oms.domain.commands import (
    OrderSpec,
    PlaceOrder,
    check_grid_level,
    check_order_fields,
    check_strategy,
    validate_place_order,
)
from oms.domain.decimals import parse_decimal, parse_positive
from oms.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from oms.domain.events import FillRecorded, Heartbeat, OrderUpdated, SequencedEvent, UserEvent
from oms.domain.fills import Fill
from oms.domain.identifiers import check_id, check_one_ref, check_user_id
from oms.domain.markets import MarketCatalog, as_placed
from oms.domain.orders import Bracket, Order, OrderStatus, Side, changed_parameters
from oms.domain.paging import page_size
from oms.engine.paper_exchange import PAPER, PaperExchange
from oms.engine.ports import FillQuery, OrderQuery, Page, StateStore, fetch_page
from oms.engine.prerender import Prerender
from oms.engine.subscriptions import EventHub

CANCELED_BY_USER = "canceled by user"
MAX_FOUND_ORDERS = 1000
MAX_SYMBOL_CHARS = 64


@dataclass(frozen=True, slots=True)
class OrderRef:
    """An order named by exactly one of its OMS id or client order id."""

    user_id: str
    order_id: str = ""
    client_order_id: str = ""


@dataclass(frozen=True, slots=True)
class OpenOrderSearch:
    user_id: str
    exchange: str
    symbol: str
    grid_level: int | None = None
    price: str = ""
    price_tolerance: str = ""
    side: Side | None = None


@dataclass(frozen=True, slots=True)
class StreamFilter:
    user_id: str
    exchange: str = ""
    symbol: str = ""
    after_sequence: int = 0
    from_oldest: bool = False


def _check_ref(ref: OrderRef) -> None:
    check_user_id(ref.user_id)
    check_one_ref("order_id", ref.order_id, "client_order_id", ref.client_order_id)


class Venue(Protocol):
    """Where orders go: the paper exchange, or real exchanges through their gateways."""

    async def place(
        self, order: Order, prerender: Prerender[object] | None = None
    ) -> tuple[Order, bool]:
        """The order as placed, and whether this call created it (False: its client order id
        already named that order, which is returned and not sent again). A venue that knows
        the resulting order before its commit returns hands it to `prerender` meanwhile."""
        ...

    async def cancel(
        self, order: Order, reason: str, prerender: Prerender[object] | None = None
    ) -> Order: ...


class LiveVenue(Venue, Protocol):
    """Real exchanges, each traded on through a user's active account."""

    def is_real(self, exchange: str) -> bool:
        """Whether `exchange` names a real exchange, whether or not any account is followed."""
        ...

    def check_followed(self, user_id: str, exchange: str) -> None:
        """FAILED_PRECONDITION when `exchange` is a real exchange the user has no active
        account on; nothing for an id that names no exchange (validation refuses it)."""
        ...


class OrderLifecycle:
    def __init__(
        self,
        store: StateStore,
        catalog: MarketCatalog,
        paper: PaperExchange,
        live: LiveVenue,
        hub: EventHub,
        new_id: Callable[[], str],
        clock_ns: Callable[[], int],
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._paper = paper
        self._live = live
        self._hub = hub
        self._new_id = new_id
        self._clock_ns = clock_ns

    def check_tradable(self, user_id: str, exchange: str) -> None:
        """FAILED_PRECONDITION for a real exchange whose markets are not loaded because the
        user has no active account there (its markets load with the first activation);
        anything else is left to validation."""
        if not self._catalog.has_exchange(exchange):
            check_user_id(user_id)  # a malformed request is INVALID_ARGUMENT whatever the venue
            self._live.check_followed(user_id, exchange)

    async def place(self, command: PlaceOrder, prerender: Prerender[object] | None = None) -> Order:
        """`prerender`: renders the caller's reply while the commit is in flight, where the
        venue allows (see Prerender)."""
        if not self._catalog.has_exchange(command.exchange):
            check_order_fields(command)  # malformed is INVALID_ARGUMENT, whatever the venue
            try:
                self.check_tradable(command.user_id, command.exchange)
            except FailedPrecondition:
                # The retry of an order placed while its account was active (before a
                # restart, say) gets that order, as the retry of one that landed does.
                if (placed := await self._placed_before(command)) is None:
                    raise
                return placed
        return await self.submit(validate_place_order(command, self._catalog), prerender)

    async def _placed_before(self, command: PlaceOrder) -> Order | None:
        """The order `command`'s client order id names, if it asked for just that."""
        if not command.client_order_id:
            return None
        existing = await self._store.get_order_by_client_id(
            command.user_id, command.client_order_id
        )
        if existing is None or existing.exchange != command.exchange:
            return None
        catalog = MarketCatalog([as_placed(existing.exchange, existing.symbol)])
        try:
            spec = validate_place_order(command, catalog)
        except InvalidArgument:  # another symbol, or the exchange's own id for it
            return None
        return existing if spec.fingerprint() == existing.fingerprint else None

    async def submit(self, spec: OrderSpec, prerender: Prerender[object] | None = None) -> Order:
        """Create the order a validated spec describes and send it to its venue; idempotent
        on the client order id."""
        now = self._clock_ns()
        order_id = self._new_id()
        fingerprint = spec.fingerprint()
        bracket = None
        if (
            spec.take_profit_price is not None
            or spec.stop_loss_price is not None
            or spec.trailing is not None
        ):
            bracket = Bracket(
                take_profit_price=spec.take_profit_price,
                stop_loss_price=spec.stop_loss_price,
                take_profit_order_id=self._new_id() if spec.take_profit_price else "",
                stop_loss_order_id=self._new_id() if spec.stop_loss_price else "",
                trailing=replace(spec.trailing, trailing_stop_id=self._new_id())
                if spec.trailing
                else None,
            )
        order = Order(
            order_id=order_id,
            client_order_id=spec.client_order_id or order_id,
            user_id=spec.user_id,
            exchange=spec.market.exchange,
            symbol=spec.market.symbol,
            side=spec.side,
            type=spec.type,
            time_in_force=spec.time_in_force,
            quantity=spec.quantity,
            price=spec.price,
            stop_price=spec.stop_price,
            reduce_only=spec.reduce_only,
            position_side=spec.position_side,
            leverage=spec.leverage,
            strategy=spec.strategy,
            grid_level=spec.grid_level,
            metadata=spec.metadata,
            fingerprint=fingerprint,
            created_at_ns=now,
            updated_at_ns=now,
            bracket=bracket,
        )
        try:
            placed, created = await self._venue(order.exchange).place(order, prerender)
        except (FailedPrecondition, ResourceExhausted, Unavailable):
            # Refused on the state of the moment (the side it would reduce is flat now, the
            # exchange is backed off from or banned us): the retry of an order that already
            # landed gets that order all the same.
            existing = spec.client_order_id and await self._store.get_order_by_client_id(
                spec.user_id, spec.client_order_id
            )
            if not existing:
                raise
            placed, created = existing, False
        if not created and placed.fingerprint != fingerprint:
            raise AlreadyExists(
                f"client_order_id {order.client_order_id!r} already names order "
                f"{placed.order_id} with {changed_parameters(placed, order)}"
            )
        return placed

    async def cancel(self, ref: OrderRef, prerender: Prerender[object] | None = None) -> Order:
        _check_ref(ref)
        # A resting paper order is known in memory: no store read before the cancel commit.
        order = self._paper.resting_order(ref.user_id, ref.order_id, ref.client_order_id)
        if order is None:
            order = await self._load(ref)
        return await self._venue(order.exchange).cancel(order, CANCELED_BY_USER, prerender)

    async def cancel_all(
        self, user_id: str, exchange: str, symbol: str, strategy: str = ""
    ) -> list[Order]:
        check_user_id(user_id)
        exchange, symbol = self.instrument_filter(exchange, symbol)
        check_strategy(strategy)
        targets = [
            order
            for order in sorted(await self._store.open_orders(user_id), key=lambda o: o.order_id)
            if self._matches(order, exchange, symbol)
            and (not strategy or order.strategy == strategy)
        ]
        # Concurrent cancels share commits on each symbol's desk.
        outcomes = await asyncio.gather(
            *(self._venue(order.exchange).cancel(order, CANCELED_BY_USER) for order in targets),
            return_exceptions=True,
        )
        canceled = []
        for outcome in outcomes:
            if isinstance(outcome, Order):
                canceled.append(outcome)
            elif not isinstance(outcome, FailedPrecondition):
                raise outcome
            # FailedPrecondition: it filled or was canceled meanwhile, nothing left to cancel.
        return canceled

    async def find_by_client_id(self, user_id: str, client_order_id: str) -> Order | None:
        return await self._store.get_order_by_client_id(user_id, client_order_id)

    async def get(self, ref: OrderRef) -> Order:
        _check_ref(ref)
        return await self._load(ref)

    async def _load(self, ref: OrderRef) -> Order:
        if ref.order_id:
            order = await self._store.get_order(ref.user_id, ref.order_id)
            name = f"order {ref.order_id}"
        else:
            order = await self._store.get_order_by_client_id(ref.user_id, ref.client_order_id)
            name = f"order with client_order_id {ref.client_order_id!r}"
        if order is None:
            raise NotFound(f"{name} not found for user {ref.user_id}")
        return order

    async def list_orders(
        self,
        user_id: str,
        *,
        exchange: str = "",
        symbol: str = "",
        open_only: bool = False,
        statuses: frozenset[OrderStatus] = frozenset(),
        grid_level: int | None = None,
        strategy: str = "",
        size: int = 0,
        page_token: str = "",
    ) -> Page[Order]:
        check_user_id(user_id)
        check_grid_level(grid_level)
        check_strategy(strategy)
        exchange, symbol = self.instrument_filter(exchange, symbol)
        return await fetch_page(
            self._store.list_orders,
            OrderQuery(
                user_id=user_id,
                page_size=page_size(size),
                exchange=exchange,
                symbol=symbol,
                open_only=open_only,
                statuses=statuses,
                grid_level=grid_level,
                strategy=strategy,
            ),
            page_token,
        )

    async def find_open_orders(self, query: OpenOrderSearch) -> tuple[list[Order], bool]:
        """Open orders of one instrument at a grid level OR within a price window, the
        oldest MAX_FOUND_ORDERS; and whether more matched."""
        check_user_id(query.user_id)
        exchange, symbol = self.instrument(query.exchange, query.symbol)
        window = None
        if query.price:
            price = parse_positive("price", query.price)
            tolerance = parse_decimal("price_tolerance", query.price_tolerance)
            window = (price - tolerance, price + tolerance)
        elif query.price_tolerance:
            raise InvalidArgument("price_tolerance", "must be empty without price")
        if query.grid_level is None and window is None:
            raise InvalidArgument("grid_level", "give grid_level, or price with price_tolerance")
        check_grid_level(query.grid_level)

        def matches(order: Order) -> bool:
            if order.exchange != exchange or order.symbol != symbol:
                return False
            if query.side is not None and order.side is not query.side:
                return False
            at_level = query.grid_level is not None and order.grid_level == query.grid_level
            price = order.price if order.price is not None else order.stop_price
            near = window is not None and price is not None and window[0] <= price <= window[1]
            return at_level or near

        found = [order for order in await self._store.open_orders(query.user_id) if matches(order)]
        found.sort(key=lambda o: o.order_id)
        return found[:MAX_FOUND_ORDERS], len(found) > MAX_FOUND_ORDERS

    async def list_fills(
        self,
        user_id: str,
        *,
        order_id: str = "",
        exchange: str = "",
        symbol: str = "",
        position_id: str = "",
        size: int = 0,
        page_token: str = "",
    ) -> Page[tuple[int, Fill]]:
        check_user_id(user_id)
        exchange, symbol = self.instrument_filter(exchange, symbol)
        if order_id:
            check_id(order_id, "order_id")
        if position_id:
            check_id(position_id, "position_id")
        return await fetch_page(
            self._store.list_fills,
            FillQuery(
                user_id=user_id,
                page_size=page_size(size),
                order_id=order_id,
                exchange=exchange,
                symbol=symbol,
                position_id=position_id,
            ),
            page_token,
        )

    def follow_orders(self, query: StreamFilter) -> AsyncIterator[SequencedEvent | Heartbeat]:
        def accept(event: UserEvent) -> bool:
            return isinstance(event, OrderUpdated) and self._matches(event.order, exchange, symbol)

        exchange, symbol = self._stream_filter(query)
        return self._hub.follow(query.user_id, query.after_sequence, accept, query.from_oldest)

    def follow_fills(self, query: StreamFilter) -> AsyncIterator[SequencedEvent | Heartbeat]:
        def accept(event: UserEvent) -> bool:
            return isinstance(event, FillRecorded) and self._matches(event.fill, exchange, symbol)

        exchange, symbol = self._stream_filter(query)
        return self._hub.follow(query.user_id, query.after_sequence, accept, query.from_oldest)

    def _stream_filter(self, query: StreamFilter) -> tuple[str, str]:
        check_user_id(query.user_id)
        return self.instrument_filter(query.exchange, query.symbol)

    @staticmethod
    def _matches(record: Order | Fill, exchange: str, symbol: str) -> bool:
        return (not exchange or record.exchange == exchange) and (
            not symbol or record.symbol == symbol
        )

    def instrument_filter(self, exchange: str, symbol: str) -> tuple[str, str]:
        """Validate optional exchange/symbol filters; the symbol comes back unified."""
        if symbol and not exchange:
            raise InvalidArgument("exchange", "is required when symbol is given")
        if not exchange:
            return "", ""
        return self.instrument(exchange, symbol) if symbol else (self.check_exchange(exchange), "")

    def check_exchange(self, exchange: str) -> str:
        """An exchange to read: paper, or any real one, its markets loaded or not."""
        if self._catalog.has_exchange(exchange) or self._live.is_real(exchange):
            return exchange
        return self._catalog.check_exchange(exchange)

    def instrument(self, exchange: str, symbol: str) -> tuple[str, str]:
        """(exchange, unified symbol) to read. A real exchange's markets load with its first
        active account; until then its history still reads, by the unified symbol it was
        stored under."""
        if self._catalog.has_exchange(exchange) or not self._live.is_real(exchange):
            return exchange, self._catalog.resolve(exchange, symbol).symbol
        if not symbol:
            raise InvalidArgument("symbol", "is required")
        if len(symbol) > MAX_SYMBOL_CHARS:
            raise InvalidArgument("symbol", f"is longer than {MAX_SYMBOL_CHARS} characters")
        if "/" not in symbol:  # a market id, or no symbol at all: it would match nothing
            raise InvalidArgument(
                "symbol",
                f"{symbol!r}: {exchange}'s markets are not loaded (no active account there), "
                "so only its unified symbols, such as BTC/USDT:USDT, can be read",
            )
        return exchange, symbol

    def _venue(self, exchange: str) -> Venue:
        return self._paper if exchange == PAPER else self._live
