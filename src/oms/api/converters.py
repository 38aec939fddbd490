"""Protobuf <-> domain mapping. The only module that knows both vocabularies."""

from __future__ import annotations

from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from tradingboost.oms.v1 import (
    heartbeat_pb2,
    market_data_pb2,
    order_pb2,
    order_service_pb2,
)

from oms.domain.commands import PlaceOrder
from oms.domain.decimals import fmt
from oms.domain.errors import InvalidArgument
from oms.domain.events import Heartbeat, OrderEventType, OrderUpdated, SequencedEvent
from oms.domain.fills import Fill, Liquidity
from oms.domain.orders import Order, OrderStatus, OrderType, PositionSide, Side, TimeInForce
from oms.engine.ports import PriceUpdate

E = TypeVar("E", bound=Enum)


class _EnumMap:
    """Domain enum <-> proto enum by name: `Side.BUY` <-> `SIDE_BUY`."""

    def __init__(self, domain: type[Enum], proto: object, prefix: str) -> None:
        # Any: each proto enum has its own ValueType NewType.
        self.to_proto: dict[Enum, Any] = {
            member: getattr(proto, f"{prefix}_{member.value}") for member in domain
        }
        self.from_proto: dict[int, Enum] = {v: k for k, v in self.to_proto.items()}

    def parse(self, field: str, value: int, domain: type[E]) -> E | None:
        """None for UNSPECIFIED (0); INVALID_ARGUMENT for a number the enum does not have."""
        if value == 0:
            return None
        member = self.from_proto.get(value)
        if member is None:
            raise InvalidArgument(field, f"unknown enum value {value}")
        assert isinstance(member, domain)
        return member


SIDES = _EnumMap(Side, order_pb2, "SIDE")
ORDER_TYPES = _EnumMap(OrderType, order_pb2, "ORDER_TYPE")
TIME_IN_FORCES = _EnumMap(TimeInForce, order_pb2, "TIME_IN_FORCE")
POSITION_SIDES = _EnumMap(PositionSide, order_pb2, "POSITION_SIDE")
ORDER_STATUSES = _EnumMap(OrderStatus, order_pb2, "ORDER_STATUS")
LIQUIDITIES = _EnumMap(Liquidity, order_pb2, "LIQUIDITY")
ORDER_EVENT_TYPES = _EnumMap(OrderEventType, order_pb2, "ORDER_EVENT_TYPE")


def timestamp(time_ns: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(time_ns)
    return stamp


def _opt(value: Decimal | None) -> str:
    return "" if value is None else fmt(value)


def place_order_command(request: order_service_pb2.PlaceOrderRequest) -> PlaceOrder:
    return PlaceOrder(
        user_id=request.user_id,
        exchange=request.exchange,
        symbol=request.symbol,
        side=SIDES.parse("side", request.side, Side),
        type=ORDER_TYPES.parse("type", request.type, OrderType),
        time_in_force=TIME_IN_FORCES.parse("time_in_force", request.time_in_force, TimeInForce),
        quantity=request.quantity,
        price=request.price,
        stop_price=request.stop_price,
        reduce_only=request.reduce_only,
        position_side=POSITION_SIDES.parse("position_side", request.position_side, PositionSide),
        leverage=request.leverage if request.HasField("leverage") else None,
        client_order_id=request.client_order_id,
        strategy=request.strategy,
        grid_level=request.grid_level if request.HasField("grid_level") else None,
        metadata=dict(request.metadata),
    )


def order_statuses(values: list[int]) -> frozenset[OrderStatus]:
    statuses = set()
    for index, value in enumerate(values):
        status = ORDER_STATUSES.parse(f"statuses[{index}]", value, OrderStatus)
        if status is None:
            raise InvalidArgument(f"statuses[{index}]", "must not be UNSPECIFIED")
        statuses.add(status)
    return frozenset(statuses)


def order_to_proto(order: Order) -> order_pb2.Order:
    message = order_pb2.Order(
        order_id=order.order_id,
        client_order_id=order.client_order_id,
        exchange_order_id=order.exchange_order_id,
        user_id=order.user_id,
        exchange=order.exchange,
        symbol=order.symbol,
        side=SIDES.to_proto[order.side],
        type=ORDER_TYPES.to_proto[order.type],
        time_in_force=TIME_IN_FORCES.to_proto[order.time_in_force],
        quantity=fmt(order.quantity),
        price=_opt(order.price),
        stop_price=_opt(order.stop_price),
        reduce_only=order.reduce_only,
        position_side=POSITION_SIDES.to_proto[order.position_side],
        status=ORDER_STATUSES.to_proto[order.status],
        filled_quantity=fmt(order.filled_quantity),
        remaining_quantity=fmt(order.remaining_quantity),
        average_fill_price=_opt(order.average_fill_price),
        fees=fmt(order.fees),
        fee_currency=order.fee_currency,
        reject_reason=order.reject_reason,
        strategy=order.strategy,
        metadata=order.metadata,
        created_at=timestamp(order.created_at_ns),
        updated_at=timestamp(order.updated_at_ns),
    )
    if order.leverage is not None:
        message.leverage = order.leverage
    if order.grid_level is not None:
        message.grid_level = order.grid_level
    return message


def fill_to_proto(fill: Fill, sequence: int) -> order_pb2.Fill:
    return order_pb2.Fill(
        sequence=sequence,
        fill_id=fill.fill_id,
        order_id=fill.order_id,
        client_order_id=fill.client_order_id,
        user_id=fill.user_id,
        exchange=fill.exchange,
        symbol=fill.symbol,
        side=SIDES.to_proto[fill.side],
        position_side=POSITION_SIDES.to_proto[fill.position_side],
        price=fmt(fill.price),
        quantity=fmt(fill.quantity),
        fee=fmt(fill.fee),
        fee_currency=fill.fee_currency,
        liquidity=LIQUIDITIES.to_proto[fill.liquidity],
        time=timestamp(fill.time_ns),
        exchange_trade_id=fill.exchange_trade_id,
    )


def order_update_to_proto(item: SequencedEvent) -> order_pb2.OrderUpdate:
    event = item.event
    assert isinstance(event, OrderUpdated)
    return order_pb2.OrderUpdate(
        sequence=item.sequence,
        event_type=ORDER_EVENT_TYPES.to_proto[event.event_type],
        order=order_to_proto(event.order),
    )


def heartbeat_to_proto(heartbeat: Heartbeat) -> heartbeat_pb2.Heartbeat:
    return heartbeat_pb2.Heartbeat(
        latest_sequence=heartbeat.latest_sequence, time=timestamp(heartbeat.time_ns)
    )


def price_to_proto(update: PriceUpdate) -> market_data_pb2.Price:
    return market_data_pb2.Price(
        exchange=update.exchange,
        symbol=update.symbol,
        price=fmt(update.price),
        time=timestamp(update.time_ns),
    )
