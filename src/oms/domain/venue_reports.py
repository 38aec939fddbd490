"""What a real exchange reports about an order, and the order events those reports mean.

A gateway returns reports; only the engine turns them into events (`settlement_events`), so
every path that learns about an order (the submit reply, a lookup, a poll, a feed) settles
it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from oms.domain.fills import Fill, Liquidity
from oms.domain.orders import (
    Order,
    OrderAccepted,
    OrderCanceled,
    OrderEvent,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    OrderStatus,
    OrderType,
    PositionSide,
    Side,
    TimeInForce,
)

CANCELED_AT_EXCHANGE = "canceled at the exchange"


class VenueOrderStatus(StrEnum):
    OPEN = "OPEN"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"

    @property
    def is_terminal(self) -> bool:
        return self in (
            VenueOrderStatus.FILLED,
            VenueOrderStatus.CANCELED,
            VenueOrderStatus.EXPIRED,
            VenueOrderStatus.REJECTED,
        )


@dataclass(frozen=True, slots=True)
class OrderTerms:
    """What an order asks for, as the exchange lists it: enough to track an order the OMS
    did not place."""

    side: Side
    type: OrderType
    quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    position_side: PositionSide
    reduce_only: bool
    time_in_force: TimeInForce
    created_at_ns: int


@dataclass(frozen=True, slots=True)
class OrderReport:
    """One order as the exchange sees it."""

    exchange_order_id: str
    client_id: str
    """The client order id the exchange holds: the OMS's own for orders it sent."""
    symbol: str
    status: VenueOrderStatus
    filled_quantity: Decimal
    reason: str = ""
    terms: OrderTerms | None = None
    """Absent when the exchange's reply does not list them (OKX create and cancel)."""


@dataclass(frozen=True, slots=True)
class PositionReport:
    """One hedge-mode side of a position as the exchange holds it, in contracts."""

    symbol: str
    position_side: PositionSide
    size: Decimal


@dataclass(frozen=True, slots=True)
class FillReport:
    """One execution as the exchange reports it; `trade_id` makes it unique per exchange and
    symbol (Binance and OKX number trades per symbol)."""

    trade_id: str
    exchange_order_id: str
    symbol: str
    price: Decimal
    quantity: Decimal
    fee: Decimal
    """A cost: positive when paid, negative for a rebate."""
    fee_currency: str
    liquidity: Liquidity
    time_ns: int


EXTERNAL_ORIGIN = "external"
EXTERNAL_CLIENT_ID_PREFIX = "ext-"


def external_order(
    report: OrderReport, user_id: str, exchange: str, order_id: str, now_ns: int
) -> Order | None:
    """The OMS's record of an order it found at the exchange but did not place, as it was
    when placed (its fills and status follow as settlement events); None when the report
    does not say what the order asks for."""
    terms = report.terms
    if terms is None or not report.exchange_order_id:
        return None
    return Order(
        order_id=order_id,
        client_order_id=f"{EXTERNAL_CLIENT_ID_PREFIX}{report.exchange_order_id}"[:64],
        user_id=user_id,
        exchange=exchange,
        symbol=report.symbol,
        side=terms.side,
        type=terms.type,
        time_in_force=terms.time_in_force,
        quantity=terms.quantity,
        price=terms.price,
        stop_price=terms.stop_price,
        reduce_only=terms.reduce_only,
        position_side=terms.position_side,
        leverage=None,
        strategy="",
        grid_level=None,
        metadata={"origin": EXTERNAL_ORIGIN, "exchange_client_id": report.client_id[:256]},
        fingerprint=EXTERNAL_ORIGIN,
        created_at_ns=terms.created_at_ns or now_ns,
        updated_at_ns=now_ns,
    )


def fill_of(order: Order, report: FillReport, fill_id: str) -> Fill:
    return order.fill(
        fill_id,
        report.price,
        report.quantity,
        report.fee,
        report.fee_currency,
        report.liquidity,
        report.time_ns,
        exchange_trade_id=report.trade_id,
    )


def unacknowledged(order: Order) -> bool:
    """Sent to the exchange (or being sent), and not acknowledged yet: a new order, a held
    stop once triggered, either possibly cancelled meanwhile."""
    return (
        order.is_open
        and not order.exchange_order_id
        and (order.triggered or not order.type.needs_stop_price)
    )


def unsent_trigger(order: Order) -> bool:
    """An order that fired (a held stop, a trailing stop's close) the exchange has not
    acknowledged: one it never took is still owed."""
    return order.triggered and unacknowledged(order)


def unsettled(order: Order) -> bool:
    """Sent, but what the exchange made of it is not known yet."""
    return (
        order.status is OrderStatus.PENDING_NEW
        or order.status is OrderStatus.PENDING_CANCEL
        or unsent_trigger(order)
    )


def refusal_events(order: Order, reason: str) -> list[OrderEvent]:
    """A send that the exchange did not take: a new order is REJECTED, a triggered stop
    EXPIRED (it was working until then), either one cancelled meanwhile CANCELED."""
    if order.status is OrderStatus.PENDING_NEW:
        return [OrderRejected(reason)]
    if order.status is OrderStatus.PENDING_CANCEL and unacknowledged(order):
        # Never taken, and a cancel was asked for: that is what it got.
        return [OrderCanceled(order.cancel_reason)]
    if unsent_trigger(order):
        return [OrderExpired(f"triggered, but not taken: {reason}")]
    return []


def settlement_events(
    order: Order, report: OrderReport | None, fills: list[Fill]
) -> list[OrderEvent]:
    """The events that bring `order` in line with the exchange: its acknowledgement, the
    fills not applied yet (oldest first), then a terminal status the exchange reached.

    FILLED comes only from fills, so `filled_quantity` always equals the sum of the fills;
    a report that is ahead of the fills the exchange has listed waits for them, whatever
    its status (a fill listed a moment after the cancel it met is still applied).
    """
    events: list[OrderEvent] = []
    status = order.status
    if (
        report is not None
        and unacknowledged(order)
        and report.status is not VenueOrderStatus.REJECTED
    ):
        events.append(OrderAccepted(report.exchange_order_id))
        if status is OrderStatus.PENDING_NEW:
            status = OrderStatus.OPEN
    filled = order.filled_quantity
    for fill in sorted(fills, key=lambda f: (f.time_ns, f.exchange_trade_id)):
        if filled + fill.quantity > order.quantity:
            # An exchange never overfills; a report that says so is not applied.
            continue
        events.append(OrderFilled(fill))
        filled += fill.quantity
    if filled == order.quantity or report is None or status.is_terminal:
        return events
    if filled < report.filled_quantity:
        return events
    match report.status:
        case VenueOrderStatus.REJECTED if status is OrderStatus.PENDING_NEW and not filled:
            events.append(OrderRejected(report.reason or "rejected by the exchange"))
        case VenueOrderStatus.CANCELED:
            events.append(
                OrderCanceled(order.cancel_reason or report.reason or CANCELED_AT_EXCHANGE)
            )
        case VenueOrderStatus.EXPIRED | VenueOrderStatus.REJECTED:
            events.append(OrderExpired(report.reason or "expired at the exchange"))
    return events
