"""Position use cases: look up, list, follow and summarize positions; open and close them.

Positions themselves are kept by the venue desks, in the same commit as the fills that move
them; this module reads them and turns OpenPosition / ClosePosition into orders.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal

from oms.domain.commands import OpenPosition, OrderSpec, validate_open_position
from oms.domain.decimals import parse_positive
from oms.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from oms.domain.events import Heartbeat, PositionUpdated, SequencedEvent, UserEvent
from oms.domain.identifiers import check_id, check_new_client_order_id, check_user_id
from oms.domain.markets import Market, MarketCatalog
from oms.domain.orders import Order, OrderType, PositionSide, Side, TimeInForce
from oms.domain.paging import page_size
from oms.domain.positions import (
    PortfolioSummary,
    Position,
    PositionKey,
    summarize,
)
from oms.engine.keyed_locks import ClientIdTurns
from oms.engine.order_lifecycle import OrderLifecycle, StreamFilter
from oms.engine.ports import Page, PositionQuery, StateStore, fetch_page
from oms.engine.run_to_end import run_to_end
from oms.engine.subscriptions import EventHub


@dataclass(frozen=True, slots=True)
class OpenedPosition:
    entry_order: Order
    take_profit_order_id: str
    stop_loss_order_id: str
    trailing_stop_id: str


@dataclass(frozen=True, slots=True)
class PositionRef:
    """A position record by id, or the current record of one side of an instrument."""

    user_id: str
    position_id: str = ""
    exchange: str = ""
    symbol: str = ""
    position_side: PositionSide | None = None


@dataclass(frozen=True, slots=True)
class ClosePosition:
    user_id: str
    exchange: str
    symbol: str
    position_side: PositionSide | None
    quantity: str
    client_order_id: str


class Positions:
    def __init__(
        self,
        store: StateStore,
        catalog: MarketCatalog,
        orders: OrderLifecycle,
        hub: EventHub,
        last_price: Callable[[str, str], Decimal | None],
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._orders = orders
        self._hub = hub
        self._last_price = last_price
        self._turns = ClientIdTurns()

    async def get(self, ref: PositionRef) -> Position:
        check_user_id(ref.user_id)
        by_side = bool(ref.exchange or ref.symbol or ref.position_side)
        if bool(ref.position_id) == by_side:
            raise InvalidArgument(
                "position_id", "give either position_id or exchange, symbol and position_side"
            )
        if ref.position_id:
            check_id(ref.position_id, "position_id")
            position = await self._store.get_position(ref.user_id, ref.position_id)
            name = f"position {ref.position_id}"
        else:
            exchange, symbol = self._orders.instrument(ref.exchange, ref.symbol)
            key = self._key(ref.user_id, exchange, symbol, ref.position_side)
            position = await self._store.current_position(key)
            name = f"{key.position_side.value} position on {key.exchange} {key.symbol}"
        if position is None:
            raise NotFound(f"{name} not found for user {ref.user_id}")
        return position

    async def list(
        self,
        user_id: str,
        *,
        exchange: str = "",
        symbol: str = "",
        position_side: PositionSide | None = None,
        include_closed: bool = False,
        size: int = 0,
        page_token: str = "",
    ) -> Page[Position]:
        check_user_id(user_id)
        exchange, symbol = self._orders.instrument_filter(exchange, symbol)
        return await fetch_page(
            self._store.list_positions,
            PositionQuery(
                user_id=user_id,
                page_size=page_size(size),
                exchange=exchange,
                symbol=symbol,
                position_side=position_side,
                include_closed=include_closed,
            ),
            page_token,
        )

    async def summary(self, user_id: str, exchange: str = "") -> PortfolioSummary:
        check_user_id(user_id)
        if exchange:
            self._orders.check_exchange(exchange)
        positions = await self._store.all_positions(user_id)
        return summarize([p for p in positions if not exchange or p.exchange == exchange])

    def follow(self, query: StreamFilter) -> AsyncIterator[SequencedEvent | Heartbeat]:
        check_user_id(query.user_id)
        exchange, symbol = self._orders.instrument_filter(query.exchange, query.symbol)

        def accept(event: UserEvent) -> bool:
            if not isinstance(event, PositionUpdated):
                return False
            position = event.position
            return (not exchange or position.exchange == exchange) and (
                not symbol or position.symbol == symbol
            )

        return self._hub.follow(query.user_id, query.after_sequence, accept, query.from_oldest)

    @run_to_end
    async def open(self, command: OpenPosition) -> OpenedPosition:
        self._orders.check_tradable(command.user_id, command.exchange)
        market = self._catalog.resolve(command.exchange, command.symbol)
        if command.client_order_id:
            check_user_id(command.user_id)
            check_new_client_order_id(command.client_order_id)
        async with self._turns(command.user_id, command.client_order_id):
            return await self._open(command, market)

    async def _open(self, command: OpenPosition, market: Market) -> OpenedPosition:
        last = self._last_price(market.exchange, market.symbol)
        # A retry is answered by idempotency, not judged again against a price that has
        # moved since the first attempt.
        if command.client_order_id and await self._orders.find_by_client_id(
            command.user_id, command.client_order_id
        ):
            last = None
        spec = validate_open_position(command, self._catalog, last)
        entry = await self._orders.submit(spec)
        bracket = entry.bracket
        return OpenedPosition(
            entry_order=entry,
            take_profit_order_id=bracket.take_profit_order_id if bracket else "",
            stop_loss_order_id=bracket.stop_loss_order_id if bracket else "",
            trailing_stop_id=bracket.trailing.trailing_stop_id
            if bracket and bracket.trailing
            else "",
        )

    @run_to_end
    async def close(self, command: ClosePosition) -> Order:
        check_user_id(command.user_id)
        self._orders.check_tradable(command.user_id, command.exchange)
        market = self._catalog.resolve(command.exchange, command.symbol)
        key = self._key(command.user_id, market.exchange, market.symbol, command.position_side)
        quantity = None
        if command.quantity:
            quantity = parse_positive("quantity", command.quantity)
            market.check_quantity("quantity", quantity)
        if command.client_order_id:
            check_new_client_order_id(command.client_order_id)
        async with self._turns(command.user_id, command.client_order_id):
            return await self._close(key, market, quantity, command.client_order_id)

    async def _close(
        self, key: PositionKey, market: Market, quantity: Decimal | None, client_order_id: str
    ) -> Order:
        if client_order_id:
            done = await self._orders.find_by_client_id(key.user_id, client_order_id)
            if done is not None:
                return self._same_close(done, key, market, quantity)
        position = await self._store.current_position(key)
        if position is None:
            raise NotFound(
                f"no {key.position_side.value} position on {key.exchange} {key.symbol} "
                f"for user {key.user_id}"
            )
        if not position.is_open:
            raise FailedPrecondition(
                f"the {key.position_side.value} position on {key.symbol} is flat (CLOSED)"
            )
        if quantity is not None and quantity > position.size:
            raise FailedPrecondition(
                f"quantity {quantity} exceeds the position size {position.size}"
            )
        return await self._orders.submit(
            _close_spec(
                key,
                market,
                quantity if quantity is not None else position.size,
                client_order_id,
                partial=quantity is not None,
            )
        )

    @staticmethod
    def _same_close(
        order: Order, key: PositionKey, market: Market, quantity: Decimal | None
    ) -> Order:
        """A retried ClosePosition: the order its client order id names, if it is that close
        (a whole close's quantity is the size it found, so any quantity passes for it)."""
        if quantity is not None:
            same_size = order.quantity == quantity
        else:  # a whole close: not one that named its quantity
            partial = _close_spec(key, market, order.quantity, order.client_order_id, partial=True)
            same_size = order.fingerprint != partial.fingerprint()
        same = (
            order.reduce_only
            and order.type is OrderType.MARKET
            and (order.exchange, order.symbol, order.position_side)
            == (key.exchange, key.symbol, key.position_side)
            and same_size
        )
        if not same:
            raise AlreadyExists(
                f"client_order_id {order.client_order_id!r} already names order "
                f"{order.order_id} with different parameters"
            )
        return order

    def _key(
        self, user_id: str, exchange: str, symbol: str, side: PositionSide | None
    ) -> PositionKey:
        """`exchange` and `symbol` as resolved by the caller."""
        if side is None:
            raise InvalidArgument("position_side", "is required")
        return PositionKey(user_id, exchange, symbol, side)


def _close_spec(
    key: PositionKey, market: Market, quantity: Decimal, client_order_id: str, *, partial: bool
) -> OrderSpec:
    """The reduce-only market order of a ClosePosition; `partial`: it named its quantity."""
    return OrderSpec(
        user_id=key.user_id,
        market=market,
        side=Side.SELL if key.position_side is PositionSide.LONG else Side.BUY,
        type=OrderType.MARKET,
        time_in_force=TimeInForce.GTC,
        quantity=quantity,
        price=None,
        stop_price=None,
        reduce_only=True,
        position_side=key.position_side,
        leverage=None,
        client_order_id=client_order_id or None,
        strategy="",
        grid_level=None,
        metadata={},
        partial_close=partial,
    )
