"""Positions kept from fills (hedge mode) and the figures derived from them (CONTRACT section 4).

A position record lives from its first opening fill until it is flat; then it is CLOSED and
kept, and the next opening fill on that side starts a new record. Sums and products are exact;
the one division (the average entry) runs at 160 significant digits, and figures that do not
terminate are rounded only for display (`decimals.display`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

from oms.domain.decimals import ZERO, add, display, div, mul, sub, total
from oms.domain.fills import Fill
from oms.domain.markets import Market
from oms.domain.orders import Order, PositionSide, Side

DEFAULT_LEVERAGE = 1
_HUNDRED = Decimal(100)


class PositionStatus(StrEnum):
    OPEN = "OPEN"
    CLOSED = "CLOSED"


def reduces(side: Side, position_side: PositionSide) -> bool:
    """Hedge mode: a SELL on the LONG side and a BUY on the SHORT side reduce it."""
    return (side is Side.SELL) == (position_side is PositionSide.LONG)


@dataclass(frozen=True, slots=True)
class GridLevel:
    level: int
    quantity: Decimal
    entry_price: Decimal


@dataclass(frozen=True, slots=True)
class PositionKey:
    user_id: str
    exchange: str
    symbol: str
    position_side: PositionSide

    def field(self) -> str:
        return f"{self.exchange}|{self.symbol}|{self.position_side.value}"


@dataclass(frozen=True, slots=True)
class Position:
    position_id: str
    user_id: str
    exchange: str
    symbol: str
    position_side: PositionSide
    contract_size: Decimal
    settle_currency: str
    maintenance_margin_rate: Decimal
    opened_at_ns: int
    updated_at_ns: int
    status: PositionStatus = PositionStatus.OPEN
    size: Decimal = ZERO
    entry_price: Decimal = ZERO
    mark_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO
    leverage: int = DEFAULT_LEVERAGE
    grid_levels: tuple[GridLevel, ...] = ()
    closed_at_ns: int = 0

    @property
    def key(self) -> PositionKey:
        return PositionKey(self.user_id, self.exchange, self.symbol, self.position_side)

    @property
    def is_open(self) -> bool:
        return self.status is PositionStatus.OPEN

    def holds(self, trade: str) -> bool:
        """Whether this record is open and is the trade `trade` ("": any trade of its side):
        what an exit or a trailing stop of that trade may still act on."""
        return self.is_open and trade in ("", self.position_id)

    @property
    def direction(self) -> Decimal:
        return Decimal(1) if self.position_side is PositionSide.LONG else Decimal(-1)

    @property
    def unrealized_pnl(self) -> Decimal:
        if not self.is_open:
            return ZERO
        return mul(
            sub(self.mark_price, self.entry_price), self.size, self.contract_size, self.direction
        )

    @property
    def notional(self) -> Decimal:
        return mul(self.size, self.contract_size, self.mark_price) if self.is_open else ZERO

    @property
    def initial_margin(self) -> Decimal:
        return div(mul(self.entry_price, self.size, self.contract_size), Decimal(self.leverage))

    @property
    def pnl_percentage(self) -> Decimal:
        margin = self.initial_margin
        return div(mul(self.unrealized_pnl, _HUNDRED), margin) if margin else ZERO

    @property
    def liquidation_price(self) -> Decimal:
        """Isolated-margin estimate: where the loss eats the margin down to maintenance."""
        swing = sub(div(Decimal(1), Decimal(self.leverage)), self.maintenance_margin_rate)
        return mul(self.entry_price, sub(Decimal(1), mul(self.direction, swing)))

    def mark(self, price: Decimal, now_ns: int) -> Position:
        return replace(self, mark_price=price, updated_at_ns=now_ns)


def open_record(
    position_id: str, user_id: str, market: Market, position_side: PositionSide, now_ns: int
) -> Position:
    """A new, still empty record; the opening fill is applied to it next."""
    return Position(
        position_id=position_id,
        user_id=user_id,
        exchange=market.exchange,
        symbol=market.symbol,
        position_side=position_side,
        contract_size=market.contract_size,
        settle_currency=market.settle,
        maintenance_margin_rate=market.maintenance_margin_rate,
        opened_at_ns=now_ns,
        updated_at_ns=now_ns,
    )


def take_fill(
    position: Position | None, order: Order, fill: Fill, market: Market, new_id: Callable[[], str]
) -> Position:
    """The record of the order's side after its fill: `position` (the side's latest record)
    grown or reduced, or a new record (id from `new_id`) when the fill opens a flat side, at
    the order's leverage or else at that of the side's last record.
    ValueError for a fill that would reduce a flat side, or reduce it below zero."""
    opening = not reduces(fill.side, order.position_side)
    leverage = order.leverage if opening else None
    if position is None or not position.is_open:
        if not opening:
            raise ValueError(f"fill {fill.fill_id} reduces a flat position")
        if position is not None and leverage is None:
            # An exchange keeps the account's leverage until an order sets another: the side
            # reopens at the leverage its last record ended at (within what the market takes
            # now).
            leverage = min(position.leverage, market.max_leverage)
        position = open_record(new_id(), order.user_id, market, order.position_side, fill.time_ns)
    return apply_fill(position, fill, order.grid_level, leverage)


def apply_fill(
    position: Position, fill: Fill, grid_level: int | None, leverage: int | None
) -> Position:
    """The record after one fill of an order on its side. A reducing fill must not exceed
    the size: the engine caps reductions before they reach here."""
    if reduces(fill.side, position.position_side):
        return _reduce(position, fill, grid_level)
    size = add(position.size, fill.quantity)
    entry = div(add(mul(position.entry_price, position.size), mul(fill.price, fill.quantity)), size)
    levels = position.grid_levels
    if grid_level is not None:
        levels = _add_to_level(levels, grid_level, fill.quantity, fill.price)
    return replace(
        position,
        size=size,
        entry_price=entry,
        fees=add(position.fees, fill.fee),
        leverage=leverage if leverage is not None else position.leverage,
        grid_levels=levels,
        updated_at_ns=fill.time_ns,
    )


def _reduce(position: Position, fill: Fill, grid_level: int | None) -> Position:
    if not position.is_open or fill.quantity > position.size:
        raise ValueError(
            f"fill {fill.fill_id} of {fill.quantity} exceeds position {position.position_id} "
            f"of {position.size}"
        )
    size = sub(position.size, fill.quantity)
    pnl = mul(
        sub(fill.price, position.entry_price),
        fill.quantity,
        position.contract_size,
        position.direction,
    )
    closed = size == 0
    return replace(
        position,
        size=size,
        realized_pnl=add(position.realized_pnl, pnl),
        fees=add(position.fees, fill.fee),
        grid_levels=() if closed else _take_from_levels(position, grid_level, fill.quantity),
        status=PositionStatus.CLOSED if closed else PositionStatus.OPEN,
        closed_at_ns=fill.time_ns if closed else 0,
        updated_at_ns=fill.time_ns,
    )


def _add_to_level(
    levels: tuple[GridLevel, ...], level: int, quantity: Decimal, price: Decimal
) -> tuple[GridLevel, ...]:
    current = next((g for g in levels if g.level == level), None)
    if current is None:
        added = GridLevel(level, quantity, price)
    else:
        total = add(current.quantity, quantity)
        cost = add(mul(current.entry_price, current.quantity), mul(price, quantity))
        added = GridLevel(level, total, div(cost, total))
    others = [g for g in levels if g.level != level]
    return tuple(sorted([*others, added], key=lambda g: g.level))


def _take_from_levels(
    position: Position, level: int | None, quantity: Decimal
) -> tuple[GridLevel, ...]:
    """A reduction takes from its own lot first (its grid level; for one without a level, what
    was opened without one), then from the grid levels in level order."""
    levels = position.grid_levels
    left = quantity
    if level is None:
        ungridded = sub(position.size, total(g.quantity for g in levels))
        left = sub(left, min(left, ungridded))
    order = sorted(levels, key=lambda g: (g.level != level, g.level))
    kept: list[GridLevel] = []
    for grid in order:
        taken = min(grid.quantity, left)
        left = sub(left, taken)
        if grid.quantity > taken:
            kept.append(replace(grid, quantity=sub(grid.quantity, taken)))
    return tuple(sorted(kept, key=lambda g: g.level))


@dataclass(frozen=True, slots=True)
class PortfolioSummary:
    total_positions: int
    open_positions: int
    closed_positions: int
    total_notional: Decimal
    total_unrealized_pnl: Decimal
    total_realized_pnl: Decimal
    total_fees: Decimal
    win_rate: Decimal | None
    """Percent of closed records with a positive realized PnL; None with none closed."""
    profit_factor: Decimal | None
    """Gross profit / gross loss of closed records; None with no loss."""
    largest_position_pct: Decimal | None
    """The largest open notional as a percent of the total; None with nothing open."""


def summarize(positions: list[Position]) -> PortfolioSummary:
    open_ = [p for p in positions if p.is_open]
    closed = [p for p in positions if not p.is_open]
    total_notional = total(p.notional for p in open_)
    # Judged as shown: an average entry that does not terminate leaves a residual far below
    # the displayed places where the PnL is exactly zero, which is no win and no loss.
    profit = total(p.realized_pnl for p in closed if display(p.realized_pnl) > 0)
    loss = -total(p.realized_pnl for p in closed if display(p.realized_pnl) < 0)
    wins = sum(1 for p in closed if display(p.realized_pnl) > 0)
    return PortfolioSummary(
        total_positions=len(positions),
        open_positions=len(open_),
        closed_positions=len(closed),
        total_notional=total_notional,
        total_unrealized_pnl=total(p.unrealized_pnl for p in open_),
        total_realized_pnl=total(p.realized_pnl for p in positions),
        total_fees=total(p.fees for p in positions),
        win_rate=div(Decimal(wins) * _HUNDRED, Decimal(len(closed))) if closed else None,
        profit_factor=div(profit, loss) if loss else None,
        largest_position_pct=(
            div(mul(max(p.notional for p in open_), _HUNDRED), total_notional)
            if total_notional
            else None
        ),
    )
