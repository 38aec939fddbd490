"""JSON documents in Redis (orjson, decimals as strings): orders, fills, positions, trailing
stops, rules and events.

Enum members go to orjson as they are: the domain's enums are StrEnums, which orjson
writes as the strings they are, where `.value` would cost a Python-level property call per
field on the hot path.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from oms.domain.conditional_rules import (
    CancelOutcome,
    ConditionalRule,
    RuleCancelResult,
    RuleCondition,
    RuleStatus,
)
from oms.domain.events import (
    FillRecorded,
    OrderEventType,
    OrderUpdated,
    PositionUpdated,
    RuleUpdated,
    TrailingStopUpdated,
    UserEvent,
)
from oms.domain.fills import Fill, Liquidity
from oms.domain.orders import (
    Bracket,
    Order,
    OrderStatus,
    OrderType,
    PositionSide,
    Side,
    TimeInForce,
    TrailingExit,
)
from oms.domain.positions import GridLevel, Position, PositionStatus
from oms.domain.trailing_stops import TrailingStop, TrailingStopEventType, TrailingStopStatus


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _undec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def order_to_dict(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "client_order_id": order.client_order_id,
        "user_id": order.user_id,
        "exchange": order.exchange,
        "symbol": order.symbol,
        "side": order.side,
        "type": order.type,
        "time_in_force": order.time_in_force,
        "quantity": str(order.quantity),
        "price": _dec(order.price),
        "stop_price": _dec(order.stop_price),
        "reduce_only": order.reduce_only,
        "position_side": order.position_side,
        "leverage": order.leverage,
        "strategy": order.strategy,
        "grid_level": order.grid_level,
        "metadata": order.metadata,
        "fingerprint": order.fingerprint,
        "created_at_ns": order.created_at_ns,
        "updated_at_ns": order.updated_at_ns,
        "status": order.status,
        "exchange_order_id": order.exchange_order_id,
        "filled_quantity": str(order.filled_quantity),
        "filled_notional": str(order.filled_notional),
        "fees": str(order.fees),
        "fee_currency": order.fee_currency,
        "reject_reason": order.reject_reason,
        "triggered": order.triggered,
        "version": order.version,
        "fill_ids": list(order.fill_ids),
        "cancel_reason": order.cancel_reason,
        "bracket": None if order.bracket is None else _bracket_to_dict(order.bracket),
        "parent_order_id": order.parent_order_id,
        "position_id": order.position_id,
        "linked_order_id": order.linked_order_id,
    }


def _bracket_to_dict(bracket: Bracket) -> dict[str, Any]:
    return {
        "take_profit_price": _dec(bracket.take_profit_price),
        "stop_loss_price": _dec(bracket.stop_loss_price),
        "take_profit_order_id": bracket.take_profit_order_id,
        "stop_loss_order_id": bracket.stop_loss_order_id,
        "trailing": None
        if bracket.trailing is None
        else {
            "trailing_stop_id": bracket.trailing.trailing_stop_id,
            "callback_rate": _dec(bracket.trailing.callback_rate),
            "callback_spread": _dec(bracket.trailing.callback_spread),
            "activation_price": _dec(bracket.trailing.activation_price),
        },
    }


def _bracket_from_dict(doc: dict[str, Any] | None) -> Bracket | None:
    if doc is None:
        return None
    return Bracket(
        take_profit_price=_undec(doc["take_profit_price"]),
        stop_loss_price=_undec(doc["stop_loss_price"]),
        take_profit_order_id=doc["take_profit_order_id"],
        stop_loss_order_id=doc["stop_loss_order_id"],
        trailing=_trailing_exit_from_dict(doc.get("trailing")),
    )


def _trailing_exit_from_dict(doc: dict[str, Any] | None) -> TrailingExit | None:
    if doc is None:
        return None
    return TrailingExit(
        trailing_stop_id=doc["trailing_stop_id"],
        callback_rate=_undec(doc["callback_rate"]),
        callback_spread=_undec(doc["callback_spread"]),
        activation_price=_undec(doc["activation_price"]),
    )


def order_from_dict(doc: dict[str, Any]) -> Order:
    return Order(
        order_id=doc["order_id"],
        client_order_id=doc["client_order_id"],
        user_id=doc["user_id"],
        exchange=doc["exchange"],
        symbol=doc["symbol"],
        side=Side(doc["side"]),
        type=OrderType(doc["type"]),
        time_in_force=TimeInForce(doc["time_in_force"]),
        quantity=Decimal(doc["quantity"]),
        price=_undec(doc["price"]),
        stop_price=_undec(doc["stop_price"]),
        reduce_only=doc["reduce_only"],
        position_side=PositionSide(doc["position_side"]),
        leverage=doc["leverage"],
        strategy=doc["strategy"],
        grid_level=doc["grid_level"],
        metadata=doc["metadata"],
        fingerprint=doc["fingerprint"],
        created_at_ns=doc["created_at_ns"],
        updated_at_ns=doc["updated_at_ns"],
        status=OrderStatus(doc["status"]),
        exchange_order_id=doc["exchange_order_id"],
        filled_quantity=Decimal(doc["filled_quantity"]),
        filled_notional=Decimal(doc["filled_notional"]),
        fees=Decimal(doc["fees"]),
        fee_currency=doc["fee_currency"],
        reject_reason=doc["reject_reason"],
        triggered=doc["triggered"],
        version=doc["version"],
        fill_ids=tuple(doc["fill_ids"]),
        cancel_reason=doc.get("cancel_reason", ""),
        bracket=_bracket_from_dict(doc.get("bracket")),
        parent_order_id=doc.get("parent_order_id", ""),
        position_id=doc.get("position_id", ""),
        linked_order_id=doc.get("linked_order_id", ""),
    )


def fill_to_dict(fill: Fill) -> dict[str, Any]:
    return {
        "fill_id": fill.fill_id,
        "order_id": fill.order_id,
        "client_order_id": fill.client_order_id,
        "user_id": fill.user_id,
        "exchange": fill.exchange,
        "symbol": fill.symbol,
        "side": fill.side,
        "position_side": fill.position_side,
        "price": str(fill.price),
        "quantity": str(fill.quantity),
        "fee": str(fill.fee),
        "fee_currency": fill.fee_currency,
        "liquidity": fill.liquidity,
        "time_ns": fill.time_ns,
        "exchange_trade_id": fill.exchange_trade_id,
        "strategy": fill.strategy,
        "grid_level": fill.grid_level,
        "position_id": fill.position_id,
    }


def fill_from_dict(doc: dict[str, Any]) -> Fill:
    return Fill(
        fill_id=doc["fill_id"],
        order_id=doc["order_id"],
        client_order_id=doc["client_order_id"],
        user_id=doc["user_id"],
        exchange=doc["exchange"],
        symbol=doc["symbol"],
        side=Side(doc["side"]),
        position_side=PositionSide(doc["position_side"]),
        price=Decimal(doc["price"]),
        quantity=Decimal(doc["quantity"]),
        fee=Decimal(doc["fee"]),
        fee_currency=doc["fee_currency"],
        liquidity=Liquidity(doc["liquidity"]),
        time_ns=doc["time_ns"],
        exchange_trade_id=doc["exchange_trade_id"],
        # Absent from fills stored before they were kept.
        strategy=doc.get("strategy", ""),
        grid_level=doc.get("grid_level"),
        position_id=doc.get("position_id", ""),
    )


def position_to_dict(position: Position) -> dict[str, Any]:
    return {
        "position_id": position.position_id,
        "user_id": position.user_id,
        "exchange": position.exchange,
        "symbol": position.symbol,
        "position_side": position.position_side,
        "contract_size": str(position.contract_size),
        "settle_currency": position.settle_currency,
        "maintenance_margin_rate": str(position.maintenance_margin_rate),
        "opened_at_ns": position.opened_at_ns,
        "updated_at_ns": position.updated_at_ns,
        "status": position.status,
        "size": str(position.size),
        "entry_price": str(position.entry_price),
        "mark_price": str(position.mark_price),
        "realized_pnl": str(position.realized_pnl),
        "fees": str(position.fees),
        "leverage": position.leverage,
        "grid_levels": [
            [grid.level, str(grid.quantity), str(grid.entry_price)] for grid in position.grid_levels
        ],
        "closed_at_ns": position.closed_at_ns,
    }


def position_from_dict(doc: dict[str, Any]) -> Position:
    return Position(
        position_id=doc["position_id"],
        user_id=doc["user_id"],
        exchange=doc["exchange"],
        symbol=doc["symbol"],
        position_side=PositionSide(doc["position_side"]),
        contract_size=Decimal(doc["contract_size"]),
        settle_currency=doc["settle_currency"],
        maintenance_margin_rate=Decimal(doc["maintenance_margin_rate"]),
        opened_at_ns=doc["opened_at_ns"],
        updated_at_ns=doc["updated_at_ns"],
        status=PositionStatus(doc["status"]),
        size=Decimal(doc["size"]),
        entry_price=Decimal(doc["entry_price"]),
        mark_price=Decimal(doc["mark_price"]),
        realized_pnl=Decimal(doc["realized_pnl"]),
        fees=Decimal(doc["fees"]),
        leverage=doc["leverage"],
        grid_levels=tuple(
            GridLevel(level, Decimal(quantity), Decimal(entry))
            for level, quantity, entry in doc["grid_levels"]
        ),
        closed_at_ns=doc["closed_at_ns"],
    )


def trailing_stop_to_dict(stop: TrailingStop) -> dict[str, Any]:
    return {
        "trailing_stop_id": stop.trailing_stop_id,
        "client_id": stop.client_id,
        "user_id": stop.user_id,
        "exchange": stop.exchange,
        "symbol": stop.symbol,
        "position_side": stop.position_side,
        "callback_rate": _dec(stop.callback_rate),
        "callback_spread": _dec(stop.callback_spread),
        "activation_price": _dec(stop.activation_price),
        "quantity": _dec(stop.quantity),
        "price_tick": str(stop.price_tick),
        "position_id": stop.position_id,
        "fingerprint": stop.fingerprint,
        "status": stop.status,
        "created_at_ns": stop.created_at_ns,
        "updated_at_ns": stop.updated_at_ns,
        "status_reason": stop.status_reason,
        "watermark_price": _dec(stop.watermark_price),
        "stop_price": _dec(stop.stop_price),
        "triggered_price": _dec(stop.triggered_price),
        "order_id": stop.order_id,
        "activated_at_ns": stop.activated_at_ns,
        "triggered_at_ns": stop.triggered_at_ns,
    }


def trailing_stop_from_dict(doc: dict[str, Any]) -> TrailingStop:
    return TrailingStop(
        trailing_stop_id=doc["trailing_stop_id"],
        client_id=doc["client_id"],
        user_id=doc["user_id"],
        exchange=doc["exchange"],
        symbol=doc["symbol"],
        position_side=PositionSide(doc["position_side"]),
        callback_rate=_undec(doc["callback_rate"]),
        callback_spread=_undec(doc["callback_spread"]),
        activation_price=_undec(doc["activation_price"]),
        quantity=_undec(doc["quantity"]),
        price_tick=Decimal(doc["price_tick"]),
        position_id=doc["position_id"],
        fingerprint=doc["fingerprint"],
        status=TrailingStopStatus(doc["status"]),
        created_at_ns=doc["created_at_ns"],
        updated_at_ns=doc["updated_at_ns"],
        status_reason=doc["status_reason"],
        watermark_price=_undec(doc["watermark_price"]),
        stop_price=_undec(doc["stop_price"]),
        triggered_price=_undec(doc["triggered_price"]),
        order_id=doc["order_id"],
        activated_at_ns=doc["activated_at_ns"],
        triggered_at_ns=doc["triggered_at_ns"],
    )


def rule_to_dict(rule: ConditionalRule) -> dict[str, Any]:
    return {
        "rule_id": rule.rule_id,
        "user_id": rule.user_id,
        "trigger_order_id": rule.trigger_order_id,
        "trigger_exchange": rule.trigger_exchange,
        "trigger_symbol": rule.trigger_symbol,
        "condition": rule.condition,
        "cancel_order_ids": list(rule.cancel_order_ids),
        "created_at_ns": rule.created_at_ns,
        "updated_at_ns": rule.updated_at_ns,
        "status": rule.status,
        "status_reason": rule.status_reason,
        "results": [
            [result.order_id, result.outcome, result.order_status, result.error]
            for result in rule.results
        ],
        "triggered_at_ns": rule.triggered_at_ns,
        "client_id": rule.client_id,
    }


def rule_from_dict(doc: dict[str, Any]) -> ConditionalRule:
    return ConditionalRule(
        rule_id=doc["rule_id"],
        user_id=doc["user_id"],
        trigger_order_id=doc["trigger_order_id"],
        trigger_exchange=doc["trigger_exchange"],
        trigger_symbol=doc["trigger_symbol"],
        condition=RuleCondition(doc["condition"]),
        cancel_order_ids=tuple(doc["cancel_order_ids"]),
        created_at_ns=doc["created_at_ns"],
        updated_at_ns=doc["updated_at_ns"],
        status=RuleStatus(doc["status"]),
        status_reason=doc["status_reason"],
        results=tuple(
            RuleCancelResult(
                order_id,
                CancelOutcome(outcome),
                None if status is None else OrderStatus(status),
                error,
            )
            for order_id, outcome, status, error in doc["results"]
        ),
        triggered_at_ns=doc["triggered_at_ns"],
        client_id=doc.get("client_id", ""),
    )


def encode_trailing_stop(stop: TrailingStop) -> bytes:
    return orjson.dumps(trailing_stop_to_dict(stop))


def decode_trailing_stop(raw: bytes) -> TrailingStop:
    return trailing_stop_from_dict(orjson.loads(raw))


def encode_rule(rule: ConditionalRule) -> bytes:
    return orjson.dumps(rule_to_dict(rule))


def decode_rule(raw: bytes) -> ConditionalRule:
    return rule_from_dict(orjson.loads(raw))


def encode_position(position: Position) -> bytes:
    return orjson.dumps(position_to_dict(position))


def decode_position(raw: bytes) -> Position:
    return position_from_dict(orjson.loads(raw))


def encode_order(order: Order) -> bytes:
    return orjson.dumps(order_to_dict(order))


def decode_order(raw: bytes) -> Order:
    return order_from_dict(orjson.loads(raw))


def encode_fill(fill: Fill) -> bytes:
    return orjson.dumps(fill_to_dict(fill))


def decode_fill(raw: bytes) -> Fill:
    return fill_from_dict(orjson.loads(raw))


def encode_event(event: UserEvent, order_doc: bytes | None = None) -> bytes:
    """`order_doc`: the event's order already encoded (encode_order), not encoded again."""
    match event:
        case OrderUpdated(event_type=event_type, order=order):
            body = order_to_dict(order) if order_doc is None else orjson.Fragment(order_doc)
            return orjson.dumps({"kind": "order", "type": event_type, "order": body})
        case FillRecorded(fill=fill):
            return orjson.dumps({"kind": "fill", "fill": fill_to_dict(fill)})
        case PositionUpdated(position=position):
            return orjson.dumps({"kind": "position", "position": position_to_dict(position)})
        case TrailingStopUpdated(event_type=event_type, trailing_stop=stop):
            return orjson.dumps(
                {
                    "kind": "trailing_stop",
                    "type": event_type,
                    "trailing_stop": trailing_stop_to_dict(stop),
                }
            )
        case RuleUpdated(rule=rule):
            return orjson.dumps({"kind": "rule", "rule": rule_to_dict(rule)})


def decode_event(raw: bytes) -> UserEvent:
    doc = orjson.loads(raw)
    kind = doc["kind"]
    if kind == "order":
        return OrderUpdated(OrderEventType(doc["type"]), order_from_dict(doc["order"]))
    if kind == "fill":
        return FillRecorded(fill_from_dict(doc["fill"]))
    if kind == "position":
        return PositionUpdated(position_from_dict(doc["position"]))
    if kind == "trailing_stop":
        return TrailingStopUpdated(
            TrailingStopEventType(doc["type"]), trailing_stop_from_dict(doc["trailing_stop"])
        )
    if kind == "rule":
        return RuleUpdated(rule_from_dict(doc["rule"]))
    raise ValueError(f"unknown event kind {kind!r} in the event stream")
