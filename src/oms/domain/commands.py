"""Commands: what a caller asks for, as received (decimals still strings), and their checks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import NamedTuple

import orjson

from oms.domain.decimals import fmt, parse_positive
from oms.domain.errors import InvalidArgument
from oms.domain.identifiers import check_new_client_order_id, check_user_id
from oms.domain.markets import MAX_LEVERAGE, Market, MarketCatalog
from oms.domain.orders import (
    OrderType,
    PositionSide,
    Side,
    TimeInForce,
    TrailingExit,
    default_position_side,
)
from oms.domain.positions import reduces
from oms.domain.trailing_stops import (
    parse_activation,
    parse_callback,
    refuse_reached_activation,
    refuse_spread_past_zero,
)

MAX_STRATEGY_CHARS = 64
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 256
MAX_GRID_LEVEL = 20


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    """A PlaceOrder request. `None` means the caller left the field unset."""

    user_id: str
    exchange: str
    symbol: str
    side: Side | None
    type: OrderType | None
    time_in_force: TimeInForce | None
    quantity: str
    price: str
    stop_price: str
    reduce_only: bool
    position_side: PositionSide | None
    leverage: int | None
    client_order_id: str
    strategy: str
    grid_level: int | None
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class OrderSpec:
    """A validated PlaceOrder: every field parsed and checked against the market."""

    user_id: str
    market: Market
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    reduce_only: bool
    position_side: PositionSide
    leverage: int | None
    client_order_id: str | None
    strategy: str
    grid_level: int | None
    metadata: dict[str, str]
    take_profit_price: Decimal | None = None
    stop_loss_price: Decimal | None = None
    trailing: TrailingExit | None = None
    """An OpenPosition's trailing stop; its id is reserved when the entry is placed."""
    partial_close: bool = False
    """A ClosePosition that named its quantity, told apart from a close of the whole
    position (which takes the size of the moment) by its digest."""

    def fingerprint(self) -> str:
        """Digest of every parameter but the client order id, in normalised form."""
        # orjson writes an enum member as its value.
        canonical = orjson.dumps(
            [
                self.market.exchange,
                self.market.symbol,
                self.side,
                self.type,
                self.time_in_force,
                fmt(self.quantity),
                _opt_fmt(self.price),
                _opt_fmt(self.stop_price),
                self.reduce_only,
                self.position_side,
                self.leverage,
                self.strategy,
                self.grid_level,
                sorted(self.metadata.items()),
                # Only OpenPosition entries have exits; plain orders keep their digest.
                *(
                    [_opt_fmt(self.take_profit_price), _opt_fmt(self.stop_loss_price)]
                    if self.take_profit_price is not None or self.stop_loss_price is not None
                    else []
                ),
                *(
                    [
                        _opt_fmt(self.trailing.callback_rate),
                        _opt_fmt(self.trailing.callback_spread),
                        _opt_fmt(self.trailing.activation_price),
                    ]
                    if self.trailing is not None
                    else []
                ),
                *(["partial close"] if self.partial_close else []),
            ]
        )
        return hashlib.blake2b(canonical, digest_size=12).hexdigest()


def _opt_fmt(value: Decimal | None) -> str | None:
    return None if value is None else fmt(value)


def _required(field: str, value: object) -> None:
    if value is None:
        raise InvalidArgument(field, "is required")


def _optional_price(
    field: str, raw: str, market: Market, needed: bool, kind: str
) -> Decimal | None:
    if not needed:
        if raw:
            raise InvalidArgument(field, f"must be empty for {kind} orders")
        return None
    if not raw:
        raise InvalidArgument(field, f"is required for {kind} orders")
    value = parse_positive(field, raw)
    market.check_price(field, value)
    return value


def check_metadata(metadata: dict[str, str], field: str = "metadata") -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(field, f"has more than {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            raise InvalidArgument(field, f"keys must be 1 to {MAX_METADATA_KEY_CHARS} characters")
        _check_text(field, key)
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidArgument(
                f"{field}[{key}]", f"is longer than {MAX_METADATA_VALUE_CHARS} characters"
            )
        _check_text(f"{field}[{key}]", value)


def check_strategy(strategy: str) -> None:
    if len(strategy) > MAX_STRATEGY_CHARS:
        raise InvalidArgument("strategy", f"is longer than {MAX_STRATEGY_CHARS} characters")
    _check_text("strategy", strategy)


def _check_text(field: str, text: str) -> None:
    # NUL ends C strings and is the one character PostgreSQL's text and jsonb refuse.
    if "\x00" in text:
        raise InvalidArgument(field, "must not contain NUL (U+0000)")


def check_grid_level(level: int | None) -> None:
    if level is not None and not 0 <= level <= MAX_GRID_LEVEL:
        raise InvalidArgument("grid_level", f"must be 0 to {MAX_GRID_LEVEL}")


class _Checked(NamedTuple):
    side: Side
    type: OrderType
    quantity: Decimal
    time_in_force: TimeInForce
    position_side: PositionSide


def check_order_fields(command: PlaceOrder) -> _Checked:
    """Every check that needs no market, so that a malformed order is INVALID_ARGUMENT even on
    a real exchange whose markets are not loaded; returns what it parsed."""
    check_user_id(command.user_id)
    _required("side", command.side)
    _required("type", command.type)
    assert command.side is not None and command.type is not None
    quantity = parse_positive("quantity", command.quantity)
    time_in_force = command.time_in_force or TimeInForce.GTC
    if time_in_force is TimeInForce.POST_ONLY and command.type is not OrderType.LIMIT:
        raise InvalidArgument("time_in_force", "POST_ONLY is only valid for LIMIT orders")
    if command.leverage is not None and not 1 <= command.leverage <= MAX_LEVERAGE:
        raise InvalidArgument("leverage", f"must be 1 to {MAX_LEVERAGE}")
    check_grid_level(command.grid_level)
    if command.client_order_id:
        check_new_client_order_id(command.client_order_id)
    check_strategy(command.strategy)
    check_metadata(command.metadata)
    position_side = command.position_side or default_position_side(
        command.side, command.reduce_only
    )
    if command.reduce_only and not reduces(command.side, position_side):
        # Honoured, it would open that side: the opposite of what reduce-only promises.
        raise InvalidArgument(
            "position_side",
            f"a reduce-only {command.side} reduces the "
            f"{default_position_side(command.side, True)} side, not {position_side}",
        )
    return _Checked(command.side, command.type, quantity, time_in_force, position_side)


def validate_place_order(command: PlaceOrder, catalog: MarketCatalog) -> OrderSpec:
    checked = check_order_fields(command)
    market = catalog.resolve(command.exchange, command.symbol)
    order_type, quantity = checked.type, checked.quantity
    market.check_quantity("quantity", quantity)
    market.check_leverage("leverage", command.leverage)
    kind = order_type.value
    price = _optional_price("price", command.price, market, order_type.needs_price, kind)
    stop_price = _optional_price(
        "stop_price", command.stop_price, market, order_type.needs_stop_price, kind
    )
    return OrderSpec(
        user_id=command.user_id,
        market=market,
        side=checked.side,
        type=order_type,
        time_in_force=checked.time_in_force,
        quantity=quantity,
        price=price,
        stop_price=stop_price,
        reduce_only=command.reduce_only,
        position_side=checked.position_side,
        leverage=command.leverage,
        client_order_id=command.client_order_id or None,
        strategy=command.strategy,
        grid_level=command.grid_level,
        metadata=dict(command.metadata),
    )


@dataclass(frozen=True, slots=True)
class OpenPosition:
    """An OpenPosition request: an entry order plus the exits to place once it fills."""

    user_id: str
    exchange: str
    symbol: str
    position_side: PositionSide | None
    type: OrderType | None
    time_in_force: TimeInForce | None
    quantity: str
    price: str
    leverage: int | None
    stop_loss_price: str
    take_profit_price: str
    client_order_id: str
    strategy: str
    grid_level: int | None
    metadata: dict[str, str]
    trailing_stop: TrailingStopConfig | None = None


@dataclass(frozen=True, slots=True)
class TrailingStopConfig:
    """OpenPosition's trailing stop on the whole position. `None`: the field is unset."""

    callback_rate: str | None
    callback_spread: str | None
    activation_price: str


def validate_open_position(
    command: OpenPosition, catalog: MarketCatalog, last_price: Decimal | None
) -> OrderSpec:
    """The entry as an OrderSpec carrying its exits. The exits must lie on the profitable
    and the losing side of the entry (its limit price, or the last price for MARKET)."""
    _required("position_side", command.position_side)
    assert command.position_side is not None
    if command.type not in (OrderType.MARKET, OrderType.LIMIT):
        raise InvalidArgument("type", "must be ORDER_TYPE_MARKET or ORDER_TYPE_LIMIT")
    long = command.position_side is PositionSide.LONG
    spec = validate_place_order(
        PlaceOrder(
            user_id=command.user_id,
            exchange=command.exchange,
            symbol=command.symbol,
            side=Side.BUY if long else Side.SELL,
            type=command.type,
            time_in_force=command.time_in_force,
            quantity=command.quantity,
            price=command.price,
            stop_price="",
            reduce_only=False,
            position_side=command.position_side,
            leverage=command.leverage,
            client_order_id=command.client_order_id,
            strategy=command.strategy,
            grid_level=command.grid_level,
            metadata=command.metadata,
        ),
        catalog,
    )
    exits = {}
    for field, raw in (
        ("take_profit_price", command.take_profit_price),
        ("stop_loss_price", command.stop_loss_price),
    ):
        exits[field] = _optional_price(field, raw, spec.market, bool(raw), "these")
    take_profit, stop_loss = exits["take_profit_price"], exits["stop_loss_price"]
    # Where the entry is expected to fill: a limit that crosses at placement takes the market.
    resting = spec.price is not None and (
        last_price is None or (spec.price < last_price if long else spec.price > last_price)
    )
    entry = spec.price if resting else last_price
    if entry is not None:
        if take_profit is not None and (take_profit <= entry if long else take_profit >= entry):
            raise InvalidArgument(
                "take_profit_price",
                f"must be {'above' if long else 'below'} the entry price {fmt(entry)} "
                f"for a {command.position_side.value} position",
            )
        if stop_loss is not None and (stop_loss >= entry if long else stop_loss <= entry):
            raise InvalidArgument(
                "stop_loss_price",
                f"must be {'below' if long else 'above'} the entry price {fmt(entry)} "
                f"for a {command.position_side.value} position",
            )
    trailing = None
    if command.trailing_stop is not None:
        config = command.trailing_stop
        rate, spread = parse_callback(
            config.callback_rate, config.callback_spread, "trailing_stop."
        )
        activation = parse_activation(
            config.activation_price, spec.market, "trailing_stop.activation_price"
        )
        if entry is not None:
            refuse_spread_past_zero(
                command.position_side, spread, activation or entry, "trailing_stop."
            )
        if activation is not None and entry is not None:
            # The stop starts when the entry fills: judged against the entry's price.
            what = "the entry price" if resting else "the last price"
            refuse_reached_activation(
                command.position_side, activation, entry, what, "trailing_stop.activation_price"
            )
        trailing = TrailingExit("", rate, spread, activation)
    return replace(
        spec, take_profit_price=take_profit, stop_loss_price=stop_loss, trailing=trailing
    )
