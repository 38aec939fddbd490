"""The paper exchange's matching rules (CONTRACT section 7), as pure functions.

Deterministic: an order fills completely, at one price, on the tick that reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from oms.domain.decimals import add, floor_to, mul, sub
from oms.domain.fills import Liquidity
from oms.domain.markets import Market
from oms.domain.orders import (
    Order,
    OrderAccepted,
    OrderAmended,
    OrderCanceled,
    OrderEvent,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    OrderTriggered,
    OrderType,
    Side,
    TimeInForce,
)


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    maker_rate: Decimal
    taker_rate: Decimal


@dataclass(frozen=True, slots=True)
class PaperContext:
    """Everything a matching decision depends on besides the order."""

    market: Market
    fees: FeeSchedule
    new_id: Callable[[], str]
    now_ns: int
    reducible: Decimal | None = None
    """For an order that reduces its position: the position's size, which caps the fill."""
    maker_fill_limit: Decimal | None = None
    """Most a resting order fills per tick; None: all of it."""


def _fill(
    order: Order,
    price: Decimal,
    liquidity: Liquidity,
    ctx: PaperContext,
    limit: Decimal | None = None,
) -> list[OrderEvent]:
    """Fill the rest of the order, or `limit` of it. A reduction stops at the position's size
    (hedge mode never flips a side) and what it cannot fill is canceled (an OpenPosition
    exit is brought down to it instead); a FOK order that cannot fill completely expires with
    nothing filled."""
    remaining = sub(order.quantity, order.filled_quantity)
    allowed = remaining if ctx.reducible is None else min(remaining, ctx.reducible)
    why = _why(order)
    if allowed < remaining and order.time_in_force is TimeInForce.FOK:
        return [OrderExpired(f"FOK order could not fill completely: {why}, capped at {allowed}")]
    if allowed <= 0:
        return [OrderCanceled(f"{why}: the position is flat")]
    quantity = allowed if limit is None else min(allowed, _whole_steps(limit, ctx.market))
    events: list[OrderEvent] = [_filled(order, quantity, price, liquidity, ctx)]
    if quantity == allowed < remaining:
        if order.parent_order_id:
            # An OpenPosition exit closes what is left of its position (a partial close came
            # first): it is done, FILLED for that, not cut short.
            events.insert(0, OrderAmended(add(order.filled_quantity, quantity)))
        else:
            events.append(OrderCanceled(f"{why}: capped at the position size"))
    return events


def _why(order: Order) -> str:
    """What caps a reduction: the order's reduce-only flag, or hedge mode never flipping."""
    return "reduce-only" if order.reduce_only else "hedge mode"


def _whole_steps(limit: Decimal, market: Market) -> Decimal:
    """A fill limit floored to the market's amount step, one step at least."""
    return max(market.amount_step, floor_to(limit, market.amount_step))


def _filled(
    order: Order, quantity: Decimal, price: Decimal, liquidity: Liquidity, ctx: PaperContext
) -> OrderFilled:
    rate = ctx.fees.maker_rate if liquidity is Liquidity.MAKER else ctx.fees.taker_rate
    fill_id = ctx.new_id()
    fee = mul(price, quantity, ctx.market.contract_size, rate)
    return OrderFilled(
        order.fill(
            fill_id,
            price,
            quantity,
            fee,
            ctx.market.settle,
            liquidity,
            ctx.now_ns,
            exchange_trade_id=fill_id,
        )
    )


def _crosses(side: Side, limit: Decimal, last: Decimal) -> bool:
    return limit >= last if side is Side.BUY else limit <= last


def stop_reached(order: Order, price: Decimal) -> bool:
    assert order.stop_price is not None
    return price >= order.stop_price if _stop_rises(order) else price <= order.stop_price


def _stop_rises(order: Order) -> bool:
    # A stop buys on a rise and sells on a fall; a take-profit is the opposite.
    return (order.side is Side.BUY) == (order.type is not OrderType.TAKE_PROFIT_MARKET)


def rests_as_limit(order: Order) -> bool:
    """A limit order, or a stop-limit that triggered: on the book at its limit price."""
    return order.type is OrderType.LIMIT or (order.type is OrderType.STOP_LIMIT and order.triggered)


def _limit_on_arrival(order: Order, last: Decimal | None, ctx: PaperContext) -> list[OrderEvent]:
    """A limit order meeting the book now: take at `last`, rest, or expire per its TIF."""
    assert order.price is not None
    if last is not None and _crosses(order.side, order.price, last):
        if order.time_in_force is TimeInForce.POST_ONLY:
            return [OrderRejected("post-only order would take liquidity")]
        return _fill(order, last, Liquidity.TAKER, ctx)
    if order.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
        return [OrderExpired(f"{order.time_in_force.value} order could not fill at once")]
    return []


_IMMEDIATE = frozenset({OrderType.MARKET, OrderType.LIMIT})


def on_submit(order: Order, last: Decimal | None, ctx: PaperContext) -> list[OrderEvent]:
    """What the paper exchange does with a new order, given the last price."""
    if ctx.reducible == 0 and order.type in _IMMEDIATE and not order.parent_order_id:
        # A reduce-only order with nothing to reduce, refused as Binance does (-2022); a stop
        # is judged when it triggers. (A plain order that would flip a side never gets here.)
        return [OrderRejected(f"reduce-only: no {order.position_side} position to reduce")]
    match order.type:
        case OrderType.MARKET:
            if last is None:
                return [OrderRejected("no price")]
            return [OrderAccepted(order.order_id), *_fill(order, last, Liquidity.TAKER, ctx)]
        case OrderType.LIMIT:
            outcome = _limit_on_arrival(order, last, ctx)
            if outcome and isinstance(outcome[0], OrderRejected):
                return outcome  # refused outright, never accepted
            return [OrderAccepted(order.order_id), *outcome]
        case _:
            if last is not None and stop_reached(order, last):
                if order.parent_order_id:
                    # The exit of an entry that filled through it (a gap): exiting now beats
                    # leaving the position unprotected.
                    return [OrderAccepted(order.order_id), *on_tick(order, last, ctx)]
                # As Binance does (-2021): a stop that is already reached is refused.
                return [OrderRejected("order would trigger immediately")]
            return [OrderAccepted(order.order_id)]


def tick_reaches_at(order: Order) -> tuple[Decimal, bool]:
    """The price at which a tick reaches a resting order, and whether ticks at or above it do
    (else at or below): a tick that does not reach it does nothing to it."""
    if rests_as_limit(order):
        assert order.price is not None
        return order.price, order.side is Side.SELL
    assert order.stop_price is not None
    return order.stop_price, _stop_rises(order)


def on_tick(order: Order, price: Decimal, ctx: PaperContext) -> list[OrderEvent]:
    """What one price tick does to a resting order (empty: nothing)."""
    at, rising = tick_reaches_at(order)
    if not (price >= at if rising else price <= at):
        return []
    if rests_as_limit(order):
        assert order.price is not None
        return _fill(order, order.price, Liquidity.MAKER, ctx, ctx.maker_fill_limit)
    if order.type is OrderType.STOP_LIMIT:
        if ctx.reducible == 0:
            # Reduce-only with nothing to reduce: resting, it would take from the side's next
            # position (as a stop-market, _fill cancels it the same way).
            return [OrderTriggered(), OrderCanceled(f"{_why(order)}: the position is flat")]
        return [OrderTriggered(), *_limit_on_arrival(order, price, ctx)]
    return [OrderTriggered(), *_fill(order, price, Liquidity.TAKER, ctx)]
