"""Trailing stops: the stop price that follows the best price since activation, and its states.

LONG protects a long and sells: the watermark is the highest price since activation, the stop
sits `callback` below it, rounded up to the price tick but at least a tick below, and the first
price at or below it triggers. SHORT is the mirror. Pure functions of (stop, price): the engine
keeps the stops of a symbol ordered so that a tick only visits the stops it changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import StrEnum

import orjson

from oms.domain.decimals import add, div, fmt, mul, parse_positive, sub
from oms.domain.errors import FailedPrecondition, InvalidArgument
from oms.domain.identifiers import check_client_order_id, check_user_id, derived_client_order_id
from oms.domain.markets import Market, MarketCatalog
from oms.domain.orders import Order, OrderType, PositionSide, reducing_order

_ONE = Decimal(1)
MIN_CALLBACK_RATE = Decimal("0.001")
MAX_CALLBACK_RATE = Decimal("0.1")
CANCELED_BY_USER = "canceled_by_user"
POSITION_CLOSED = "position_closed"


class TrailingStopStatus(StrEnum):
    PENDING_ACTIVATION = "PENDING_ACTIVATION"
    ACTIVE = "ACTIVE"
    TRIGGERED = "TRIGGERED"
    CANCELED = "CANCELED"
    FAILED = "FAILED"

    @property
    def is_working(self) -> bool:
        return self in (TrailingStopStatus.PENDING_ACTIVATION, TrailingStopStatus.ACTIVE)


class TrailingStopEventType(StrEnum):
    CREATED = "CREATED"
    ACTIVATED = "ACTIVATED"
    STOP_PRICE_UPDATED = "STOP_PRICE_UPDATED"
    TRIGGERED = "TRIGGERED"
    CANCELED = "CANCELED"
    FAILED = "FAILED"


def reaches_activation(side: PositionSide, activation: Decimal, price: Decimal) -> bool:
    """LONG activates on the first price >= activation, SHORT on the first price <= it."""
    return price >= activation if side is PositionSide.LONG else price <= activation


def refuse_reached_activation(
    side: PositionSide,
    activation: Decimal,
    price: Decimal,
    what: str = "the last price",
    field: str = "activation_price",
) -> None:
    """As an exchange refuses a trailing order that would trigger at once: `price` is where
    the stop starts (`what` names it)."""
    if reaches_activation(side, activation, price):
        relation = "at or below" if side is PositionSide.LONG else "at or above"
        raise FailedPrecondition(
            f"{field} {fmt(activation)} is {relation} {what} {fmt(price)}: "
            "the stop would activate at once (leave it empty for that)"
        )


def parse_activation(raw: str, market: Market, field: str = "activation_price") -> Decimal | None:
    if not raw:
        return None
    value = parse_positive(field, raw)
    market.check_price(field, value)
    return value


@dataclass(frozen=True, slots=True)
class TrailingStop:
    trailing_stop_id: str
    client_id: str
    user_id: str
    exchange: str
    symbol: str
    position_side: PositionSide
    callback_rate: Decimal | None
    callback_spread: Decimal | None
    activation_price: Decimal | None
    quantity: Decimal | None
    """None: the whole position at trigger time."""
    price_tick: Decimal
    position_id: str
    fingerprint: str
    status: TrailingStopStatus
    created_at_ns: int
    updated_at_ns: int
    status_reason: str = ""
    watermark_price: Decimal | None = None
    stop_price: Decimal | None = None
    triggered_price: Decimal | None = None
    order_id: str = ""
    activated_at_ns: int | None = None
    triggered_at_ns: int | None = None

    @property
    def is_long(self) -> bool:
        return self.position_side is PositionSide.LONG

    def reaches_activation(self, price: Decimal) -> bool:
        assert self.activation_price is not None
        return reaches_activation(self.position_side, self.activation_price, price)

    def improves(self, price: Decimal) -> bool:
        """A better watermark: LONG higher, SHORT lower."""
        assert self.watermark_price is not None
        return price > self.watermark_price if self.is_long else price < self.watermark_price

    def crossed_by(self, price: Decimal) -> bool:
        assert self.stop_price is not None
        return price <= self.stop_price if self.is_long else price >= self.stop_price

    def stop_for(self, watermark: Decimal) -> Decimal:
        """The stop price of a watermark, on the tick, rounded toward the market, and at
        least a tick away from the watermark: a callback under a tick would otherwise round
        to the watermark itself, and a LONG stop would sell on the price of a new high."""
        if self.callback_rate is not None:
            factor = (
                sub(_ONE, self.callback_rate) if self.is_long else add(_ONE, self.callback_rate)
            )
            raw = mul(watermark, factor)
        else:
            assert self.callback_spread is not None
            spread = self.callback_spread
            raw = sub(watermark, spread) if self.is_long else add(watermark, spread)
        tick = self.price_tick
        if self.is_long:
            steps = div(raw, tick).to_integral_value(rounding=ROUND_CEILING)
            below = sub(div(watermark, tick).to_integral_value(rounding=ROUND_CEILING), _ONE)
            return mul(min(steps, below), tick)
        steps = div(raw, tick).to_integral_value(rounding=ROUND_FLOOR)
        above = add(div(watermark, tick).to_integral_value(rounding=ROUND_FLOOR), _ONE)
        return mul(max(steps, above), tick)

    def follow(self, watermark: Decimal, now_ns: int) -> TrailingStop:
        """ACTIVE at `watermark`: the activating price, or a better one than before (the stop
        is monotone in the watermark, so it never loosens)."""
        activated = self.status is TrailingStopStatus.PENDING_ACTIVATION
        return replace(
            self,
            status=TrailingStopStatus.ACTIVE,
            watermark_price=watermark,
            stop_price=self.stop_for(watermark),
            activated_at_ns=now_ns if activated else self.activated_at_ns,
            updated_at_ns=now_ns,
        )

    def trigger(self, price: Decimal, order_id: str, now_ns: int) -> TrailingStop:
        return replace(
            self,
            status=TrailingStopStatus.TRIGGERED,
            triggered_price=price,
            order_id=order_id,
            triggered_at_ns=now_ns,
            updated_at_ns=now_ns,
        )

    def cancel(self, reason: str, now_ns: int) -> TrailingStop:
        if not self.status.is_working:
            raise self.not_working()
        return replace(
            self, status=TrailingStopStatus.CANCELED, status_reason=reason, updated_at_ns=now_ns
        )

    def not_working(self) -> FailedPrecondition:
        return FailedPrecondition(
            f"trailing stop {self.trailing_stop_id} is {self.status.value}: only a "
            "PENDING_ACTIVATION or ACTIVE stop can be cancelled"
        )

    def close_order(self, order_id: str, position_size: Decimal, now_ns: int) -> Order:
        """The reduce-only market order of a trigger, capped at the position size.

        Its client order id derives from the stop's id: the store refuses a second one.
        """
        quantity = position_size if self.quantity is None else min(self.quantity, position_size)
        return reducing_order(
            order_id=order_id,
            client_order_id=derived_client_order_id("ts", self.trailing_stop_id),
            user_id=self.user_id,
            exchange=self.exchange,
            symbol=self.symbol,
            position_side=self.position_side,
            type=OrderType.MARKET,
            quantity=quantity,
            now_ns=now_ns,
            metadata={"trailing_stop_id": self.trailing_stop_id},
            triggered=True,
            position_id=self.position_id,
        )


@dataclass(frozen=True, slots=True)
class CreateTrailingStop:
    """A CreateTrailingStop request as received. `None`: the caller left the field unset."""

    user_id: str
    exchange: str
    symbol: str
    position_side: PositionSide | None
    callback_rate: str | None
    callback_spread: str | None
    activation_price: str
    quantity: str
    client_id: str


@dataclass(frozen=True, slots=True)
class TrailingStopSpec:
    """A validated CreateTrailingStop."""

    user_id: str
    market: Market
    position_side: PositionSide
    callback_rate: Decimal | None
    callback_spread: Decimal | None
    activation_price: Decimal | None
    quantity: Decimal | None
    client_id: str

    def fingerprint(self) -> str:
        canonical = orjson.dumps(
            [
                self.market.exchange,
                self.market.symbol,
                self.position_side.value,
                *(
                    None if value is None else fmt(value)
                    for value in (
                        self.callback_rate,
                        self.callback_spread,
                        self.activation_price,
                        self.quantity,
                    )
                ),
            ]
        )
        return hashlib.blake2b(canonical, digest_size=12).hexdigest()

    def new_stop(
        self,
        trailing_stop_id: str,
        position_id: str,
        last: Decimal,
        now_ns: int,
        refuse_reached: bool = True,
    ) -> TrailingStop:
        """PENDING_ACTIVATION, or ACTIVE at `last` when there is no activation price.

        An activation price the last price already reached is refused, as an exchange refuses
        a trailing order that would trigger at once; or, with `refuse_reached` False (the stop
        of an OpenPosition whose entry just filled), it activates at once.
        """
        stop = TrailingStop(
            trailing_stop_id=trailing_stop_id,
            client_id=self.client_id,
            user_id=self.user_id,
            exchange=self.market.exchange,
            symbol=self.market.symbol,
            position_side=self.position_side,
            callback_rate=self.callback_rate,
            callback_spread=self.callback_spread,
            activation_price=self.activation_price,
            quantity=self.quantity,
            price_tick=self.market.price_tick,
            position_id=position_id,
            fingerprint=self.fingerprint(),
            status=TrailingStopStatus.PENDING_ACTIVATION,
            created_at_ns=now_ns,
            updated_at_ns=now_ns,
        )
        if refuse_reached:
            refuse_spread_past_zero(
                self.position_side, self.callback_spread, self.activation_price or last
            )
        if self.activation_price is None:
            return stop.follow(last, now_ns)
        if refuse_reached:
            refuse_reached_activation(self.position_side, self.activation_price, last)
        return stop.follow(last, now_ns) if stop.reaches_activation(last) else stop


def refuse_spread_past_zero(
    side: PositionSide, spread: Decimal | None, start: Decimal, prefix: str = ""
) -> None:
    """A LONG stop `spread` below a watermark that starts at `start` must be above zero, or
    it protects nothing until the price has risen past the spread."""
    if spread is not None and side is PositionSide.LONG and spread >= start:
        raise InvalidArgument(
            f"{prefix}callback_spread",
            f"{fmt(spread)} is not below the price the stop starts from ({fmt(start)}): "
            "its stop price would be zero or less",
        )


def parse_callback(
    rate_raw: str | None, spread_raw: str | None, prefix: str = ""
) -> tuple[Decimal | None, Decimal | None]:
    """(callback_rate, callback_spread): exactly one given, the rate within its bounds."""
    rate_field, spread_field = f"{prefix}callback_rate", f"{prefix}callback_spread"
    if rate_raw is not None and spread_raw is not None:
        raise InvalidArgument(rate_field, "set exactly one of callback_rate and callback_spread")
    if rate_raw is not None:
        rate = parse_positive(rate_field, rate_raw)
        if not MIN_CALLBACK_RATE <= rate <= MAX_CALLBACK_RATE:
            raise InvalidArgument(
                rate_field,
                f"must be a fraction from {MIN_CALLBACK_RATE} to {MAX_CALLBACK_RATE} "
                f'("0.02" is 2%), got {rate_raw!r}',
            )
        return rate, None
    if spread_raw is not None:
        return None, parse_positive(spread_field, spread_raw)
    raise InvalidArgument(
        rate_field, "is required: set exactly one of callback_rate and callback_spread"
    )


def validate_create_trailing_stop(
    command: CreateTrailingStop, catalog: MarketCatalog
) -> TrailingStopSpec:
    check_user_id(command.user_id)
    market = catalog.resolve(command.exchange, command.symbol)
    if command.position_side is None:
        raise InvalidArgument("position_side", "is required: POSITION_SIDE_LONG or _SHORT")
    rate, spread = parse_callback(command.callback_rate, command.callback_spread)
    activation = parse_activation(command.activation_price, market)
    quantity = None
    if command.quantity:
        quantity = parse_positive("quantity", command.quantity)
        market.check_quantity("quantity", quantity)
    if command.client_id:
        check_client_order_id(command.client_id, "client_id")
    return TrailingStopSpec(
        user_id=command.user_id,
        market=market,
        position_side=command.position_side,
        callback_rate=rate,
        callback_spread=spread,
        activation_price=activation,
        quantity=quantity,
        client_id=command.client_id,
    )
