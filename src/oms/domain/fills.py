"""Fills: one execution of (part of) an order."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from oms.domain.orders import PositionSide, Side


class Liquidity(StrEnum):
    MAKER = "MAKER"
    TAKER = "TAKER"


@dataclass(frozen=True, slots=True)
class Fill:
    fill_id: str
    order_id: str
    client_order_id: str
    user_id: str
    exchange: str
    symbol: str
    side: Side
    position_side: PositionSide
    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_currency: str
    liquidity: Liquidity
    time_ns: int
    exchange_trade_id: str
    """The venue's trade id: a fill is applied once per (exchange, symbol, exchange_trade_id)."""
    strategy: str = ""
    """The order's, so that a grid bot knows a fill's level without reading its order."""
    grid_level: int | None = None
    position_id: str = ""
    """The position record the fill opened, added to or reduced ("" for a fill the OMS
    could not apply to one: a reduction of more than it holds on that side)."""
