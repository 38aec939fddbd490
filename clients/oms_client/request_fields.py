"""Keyword forms of the request messages, so that `place_order(user_id=..., side=...)` is
checked by mypy field by field. Names and types are the generated messages' own; the proto
comments (and the .pyi stubs) document each field."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypedDict, TypeVar

from google.protobuf.message import Message
from tradingboost.oms.v1 import market_data_pb2, order_pb2, trailing_stop_pb2

__all__ = [
    "CancelAllOrdersFields",
    "ClosePositionFields",
    "FindOpenOrdersFields",
    "GetPortfolioSummaryFields",
    "GetPositionFields",
    "GetPriceFields",
    "ListFillsFields",
    "ListOrdersFields",
    "ListPositionsFields",
    "OpenPositionFields",
    "OrderRefFields",
    "PlaceOrderFields",
    "PublishPricesFields",
    "build_request",
]

M = TypeVar("M", bound=Message)


class PlaceOrderFields(TypedDict, total=False):
    user_id: str
    exchange: str
    symbol: str
    side: order_pb2.Side.ValueType
    type: order_pb2.OrderType.ValueType
    time_in_force: order_pb2.TimeInForce.ValueType
    quantity: str
    price: str
    stop_price: str
    reduce_only: bool
    position_side: order_pb2.PositionSide.ValueType
    leverage: int
    client_order_id: str
    strategy: str
    grid_level: int
    metadata: Mapping[str, str]


class OrderRefFields(TypedDict, total=False):
    """CancelOrder and GetOrder: `user_id` plus exactly one of the two ids."""

    user_id: str
    order_id: str
    client_order_id: str


class CancelAllOrdersFields(TypedDict, total=False):
    user_id: str
    exchange: str
    symbol: str


class ListOrdersFields(TypedDict, total=False):
    user_id: str
    exchange: str
    symbol: str
    open_only: bool
    statuses: Iterable[order_pb2.OrderStatus.ValueType]
    grid_level: int
    strategy: str
    page_size: int
    page_token: str


class FindOpenOrdersFields(TypedDict, total=False):
    """`grid_level`, or `price` with `price_tolerance`, or both."""

    user_id: str
    exchange: str
    symbol: str
    grid_level: int
    price: str
    price_tolerance: str
    side: order_pb2.Side.ValueType


class ListFillsFields(TypedDict, total=False):
    user_id: str
    order_id: str
    exchange: str
    symbol: str
    page_size: int
    page_token: str


class GetPositionFields(TypedDict, total=False):
    """`user_id` plus `position_id`, or all of `exchange`, `symbol` and `position_side`."""

    user_id: str
    exchange: str
    symbol: str
    position_side: order_pb2.PositionSide.ValueType
    position_id: str


class ListPositionsFields(TypedDict, total=False):
    user_id: str
    exchange: str
    symbol: str
    position_side: order_pb2.PositionSide.ValueType
    include_closed: bool
    page_size: int
    page_token: str


class OpenPositionFields(TypedDict, total=False):
    user_id: str
    exchange: str
    symbol: str
    position_side: order_pb2.PositionSide.ValueType
    type: order_pb2.OrderType.ValueType
    time_in_force: order_pb2.TimeInForce.ValueType
    quantity: str
    price: str
    leverage: int
    stop_loss_price: str
    take_profit_price: str
    trailing_stop: trailing_stop_pb2.TrailingStopConfig
    client_order_id: str
    strategy: str
    grid_level: int
    metadata: Mapping[str, str]


class ClosePositionFields(TypedDict, total=False):
    user_id: str
    exchange: str
    symbol: str
    position_side: order_pb2.PositionSide.ValueType
    quantity: str
    client_order_id: str


class GetPortfolioSummaryFields(TypedDict, total=False):
    user_id: str
    exchange: str


class PublishPricesFields(TypedDict, total=False):
    prices: Iterable[market_data_pb2.PriceTick]


class GetPriceFields(TypedDict, total=False):
    exchange: str
    symbol: str


def build_request(message_type: type[M], request: M | None, fields: Mapping[str, object]) -> M:
    """The request given, or one built from keyword fields; never a mix of the two, where a
    keyword could silently lose to (or override) a field already set in the message."""
    if request is None:
        return message_type(**fields)
    if fields:
        raise TypeError(
            f"pass a {message_type.__name__} or keyword fields, not both "
            f"(got {', '.join(sorted(fields))})"
        )
    return request
