"""Events published on a user's sequence: what the streams carry and the store retains."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from oms.domain.conditional_rules import ConditionalRule
from oms.domain.fills import Fill
from oms.domain.orders import (
    Order,
    OrderAccepted,
    OrderAmended,
    OrderCanceled,
    OrderEvent,
    OrderExpired,
    OrderFilled,
    OrderPendingCancel,
    OrderRejected,
    OrderSentAgain,
    OrderTriggered,
)
from oms.domain.positions import Position
from oms.domain.trailing_stops import TrailingStop, TrailingStopEventType


class OrderEventType(StrEnum):
    CREATED = "CREATED"
    ACCEPTED = "ACCEPTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    PENDING_CANCEL = "PENDING_CANCEL"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    TRIGGERED = "TRIGGERED"
    AMENDED = "AMENDED"
    RECONCILED = "RECONCILED"
    SENT_AGAIN = "SENT_AGAIN"


@dataclass(frozen=True, slots=True)
class OrderUpdated:
    """An order changed; carries the whole order as it is after the change."""

    event_type: OrderEventType
    order: Order


@dataclass(frozen=True, slots=True)
class FillRecorded:
    fill: Fill


@dataclass(frozen=True, slots=True)
class PositionUpdated:
    """A position record changed (fills or mark price); carries it as it is after."""

    position: Position


@dataclass(frozen=True, slots=True)
class TrailingStopUpdated:
    """A trailing stop changed state or stop price; carries it as it is after."""

    event_type: TrailingStopEventType
    trailing_stop: TrailingStop


@dataclass(frozen=True, slots=True)
class RuleUpdated:
    """A conditional rule was created, fired, finished or cancelled."""

    rule: ConditionalRule


UserEvent = OrderUpdated | FillRecorded | PositionUpdated | TrailingStopUpdated | RuleUpdated


@dataclass(frozen=True, slots=True)
class WatermarkMoved:
    """A trailing stop's watermark moved and its rounded stop price did not: the state is
    written (a restart resumes from the exact watermark) but no event is published."""

    trailing_stop: TrailingStop


Update = PositionUpdated | TrailingStopUpdated | RuleUpdated | WatermarkMoved
"""What a commit writes besides order changes and prices."""


@dataclass(frozen=True, slots=True)
class SequencedEvent:
    sequence: int
    event: UserEvent


def order_event_type(event: OrderEvent, after: Order) -> OrderEventType:
    match event:
        case OrderAccepted():
            return OrderEventType.ACCEPTED
        case OrderRejected():
            return OrderEventType.REJECTED
        case OrderTriggered():
            return OrderEventType.TRIGGERED
        case OrderSentAgain():
            return OrderEventType.SENT_AGAIN
        case OrderFilled():
            # By quantity, not status: a fill after a cancel keeps the CANCELED status.
            if after.filled_quantity == after.quantity:
                return OrderEventType.FILLED
            return OrderEventType.PARTIALLY_FILLED
        case OrderAmended():
            return OrderEventType.AMENDED
        case OrderPendingCancel():
            return OrderEventType.PENDING_CANCEL
        case OrderCanceled():
            return OrderEventType.CANCELED
        case OrderExpired():
            return OrderEventType.EXPIRED


def apply_all(order: Order, events: list[OrderEvent], now_ns: int) -> tuple[Order, list[UserEvent]]:
    """Apply venue events in order; returns the final order and what to publish.

    A fill publishes the fill, then the order as it is after it.
    """
    published: list[UserEvent] = []
    for event in events:
        order = order.apply(event, now_ns)
        if isinstance(event, OrderFilled):
            published.append(FillRecorded(event.fill))
        published.append(OrderUpdated(order_event_type(event, order), order))
    return order, published


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent on an idle stream: the user's newest sequence, so quiet is told from dead, and
    the stream's own: every event up to it that the stream carries was sent before."""

    latest_sequence: int
    time_ns: int
    resume_after_sequence: int


def event_user(event: UserEvent) -> str:
    match event:
        case OrderUpdated(order=order):
            return order.user_id
        case FillRecorded(fill=fill):
            return fill.user_id
        case PositionUpdated(position=position):
            return position.user_id
        case TrailingStopUpdated(trailing_stop=stop):
            return stop.user_id
        case RuleUpdated(rule=rule):
            return rule.user_id
