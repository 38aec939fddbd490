"""Keyword forms of the request messages, so that `place_order(user_id=..., side=...)` is
checked by mypy field by field. Names and types are the generated messages' own; the proto
comments (and the .pyi stubs) document each field. A field the proto calls optional also
takes None, which leaves it unset, as leaving it out does: `price=maybe_price`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TypedDict, TypeVar

from google.protobuf.message import Message
from tradingboost.oms.v1 import conditional_rule_pb2, market_data_pb2, order_pb2, trailing_stop_pb2

__all__ = [
    "AccountRefFields",
    "CancelAllOrdersFields",
    "ClosePositionFields",
    "CreateConditionalRuleFields",
    "CreateTrailingStopFields",
    "FindOpenOrdersFields",
    "GetPortfolioSummaryFields",
    "GetPositionFields",
    "InstrumentFields",
    "ListActiveAccountsFields",
    "ListConditionalRulesFields",
    "ListFillsFields",
    "ListOrdersFields",
    "ListPositionsFields",
    "ListTrailingStopsFields",
    "OpenPositionFields",
    "OrderRefFields",
    "PlaceOrderFields",
    "PriceTickFields",
    "PublishPricesFields",
    "RegisterCredentialsFields",
    "RuleRefFields",
    "TrailingStopConfigFields",
    "TrailingStopRefFields",
    "build_request",
    "decimal_text",
]

M = TypeVar("M", bound=Message)


class PlaceOrderFields(TypedDict, total=False):
    user_id: str
    exchange: str
    symbol: str
    side: order_pb2.Side.ValueType
    type: order_pb2.OrderType.ValueType
    time_in_force: order_pb2.TimeInForce.ValueType
    quantity: Decimal | str
    price: Decimal | str | None
    stop_price: Decimal | str | None
    reduce_only: bool
    position_side: order_pb2.PositionSide.ValueType
    leverage: int | None
    client_order_id: str
    strategy: str
    grid_level: int | None
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
    strategy: str


class ListOrdersFields(TypedDict, total=False):
    user_id: str
    exchange: str
    symbol: str
    open_only: bool
    statuses: Iterable[order_pb2.OrderStatus.ValueType]
    grid_level: int | None
    strategy: str
    page_size: int
    page_token: str


class FindOpenOrdersFields(TypedDict, total=False):
    """`grid_level`, or `price` with `price_tolerance`, or both."""

    user_id: str
    exchange: str
    symbol: str
    grid_level: int | None
    price: Decimal | str | None
    price_tolerance: Decimal | str | None
    side: order_pb2.Side.ValueType


class ListFillsFields(TypedDict, total=False):
    user_id: str
    order_id: str
    exchange: str
    symbol: str
    position_id: str
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


class PriceTickFields(TypedDict):
    """A `market_data_pb2.PriceTick` as a dict, its price a `Decimal` or a string."""

    exchange: str
    symbol: str
    price: Decimal | str


class TrailingStopConfigFields(TypedDict, total=False):
    """A `trailing_stop_pb2.TrailingStopConfig` as a dict, its decimals `Decimal`s or
    strings: exactly one of `callback_rate` and `callback_spread`."""

    callback_rate: Decimal | str | None
    callback_spread: Decimal | str | None
    activation_price: Decimal | str | None


class OpenPositionFields(TypedDict, total=False):
    user_id: str
    exchange: str
    symbol: str
    position_side: order_pb2.PositionSide.ValueType
    type: order_pb2.OrderType.ValueType
    time_in_force: order_pb2.TimeInForce.ValueType
    quantity: Decimal | str
    price: Decimal | str | None
    leverage: int | None
    stop_loss_price: Decimal | str | None
    take_profit_price: Decimal | str | None
    trailing_stop: trailing_stop_pb2.TrailingStopConfig | TrailingStopConfigFields | None
    client_order_id: str
    strategy: str
    grid_level: int | None
    metadata: Mapping[str, str]


class ClosePositionFields(TypedDict, total=False):
    user_id: str
    exchange: str
    symbol: str
    position_side: order_pb2.PositionSide.ValueType
    quantity: Decimal | str | None
    client_order_id: str


class GetPortfolioSummaryFields(TypedDict, total=False):
    user_id: str
    exchange: str


class PublishPricesFields(TypedDict, total=False):
    prices: Iterable[market_data_pb2.PriceTick | PriceTickFields]


class InstrumentFields(TypedDict, total=False):
    """One instrument: GetPrice and GetMarket."""

    exchange: str
    symbol: str


class CreateTrailingStopFields(TypedDict, total=False):
    """Exactly one of `callback_rate` and `callback_spread`. The decimals may be given as
    `Decimal` too (never float): they travel as plain decimal strings."""

    user_id: str
    exchange: str
    symbol: str
    position_side: order_pb2.PositionSide.ValueType
    callback_rate: Decimal | str | None
    callback_spread: Decimal | str | None
    activation_price: Decimal | str | None
    quantity: Decimal | str | None
    client_id: str


class TrailingStopRefFields(TypedDict, total=False):
    """GetTrailingStop and CancelTrailingStop: `user_id` plus exactly one of the two ids."""

    user_id: str
    trailing_stop_id: str
    client_id: str


class ListTrailingStopsFields(TypedDict, total=False):
    user_id: str
    exchange: str
    symbol: str
    position_side: order_pb2.PositionSide.ValueType
    active_only: bool
    statuses: Iterable[trailing_stop_pb2.TrailingStopStatus.ValueType]
    page_size: int
    page_token: str


class CreateConditionalRuleFields(TypedDict, total=False):
    user_id: str
    trigger_order_id: str
    condition: conditional_rule_pb2.RuleCondition.ValueType
    cancel_order_ids: Iterable[str]
    client_id: str


class RuleRefFields(TypedDict, total=False):
    """GetConditionalRule and DeleteConditionalRule: `rule_id` or `client_id`."""

    user_id: str
    rule_id: str
    client_id: str


class ListConditionalRulesFields(TypedDict, total=False):
    user_id: str
    trigger_order_id: str
    statuses: Iterable[conditional_rule_pb2.RuleStatus.ValueType]
    page_size: int
    page_token: str


class RegisterCredentialsFields(TypedDict, total=False):
    """`password` None (or absent) sends none: the field is proto3 `optional`."""

    user_id: str
    exchange: str
    api_key: str
    secret: str
    password: str | None
    sandbox: bool


class AccountRefFields(TypedDict, total=False):
    """ActivateAccount and DeactivateAccount: the account is (`user_id`, `exchange`)."""

    user_id: str
    exchange: str


class ListActiveAccountsFields(TypedDict, total=False):
    user_id: str
    exchange: str
    page_size: int
    page_token: str


def decimal_text(value: Decimal | str | float, name: str) -> str:
    """A decimal field as the wire carries it. A string goes as it is (the server judges it
    and names the field when it is not a finite decimal); a Decimal is written out in full,
    without exponent ("1E-3" is sent as "0.001"). A float is refused: it has already lost the
    decimal the caller meant."""
    if isinstance(value, str):
        return value
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a Decimal or a decimal string, not {type(value).__name__}")
    if not value.is_finite():
        raise ValueError(f"{name} must be a finite decimal, not {value}")
    return f"{value:f}"


def _wire(value: object, name: str) -> object:
    """A keyword field's value as protobuf takes it: decimals as text, also inside a nested
    message given as a dict (protobuf builds the message from it) or a list of them."""
    if isinstance(value, Decimal | float):
        return decimal_text(value, name)
    if isinstance(value, Mapping):
        return {key: _wire(item, f"{name}.{key}") for key, item in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return [_wire(item, f"{name}[{index}]") for index, item in enumerate(value)]
    return value


def build_request(message_type: type[M], request: M | None, fields: Mapping[str, object]) -> M:
    """The request given, or one built from keyword fields; never a mix of the two, where a
    keyword could silently lose to (or override) a field already set in the message."""
    if request is None:
        return message_type(**{name: _wire(value, name) for name, value in fields.items()})
    if fields:
        raise TypeError(
            f"pass a {message_type.__name__} or keyword fields, not both "
            f"(got {', '.join(sorted(fields))})"
        )
    return request
