"""Take-profit and stop-loss exits of an entry order, linked one-cancels-other."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from oms.domain.fills import Fill
from oms.domain.identifiers import derived_client_order_id
from oms.domain.orders import Order, OrderType, reducing_order


def bracket_legs(entry: Order, now_ns: int) -> list[Order]:
    """The exits of a filled entry, sized to what filled, reduce-only on the position its
    fills went into (`entry.position_id`, when known).

    Their ids were reserved when the entry was placed; their client order ids derive from the
    entry's order id, so placing them again can never make a second pair.
    """
    bracket = entry.bracket
    assert bracket is not None
    legs = []
    wanted = [
        (OrderType.TAKE_PROFIT_MARKET, bracket.take_profit_price, bracket.take_profit_order_id),
        (OrderType.STOP_MARKET, bracket.stop_loss_price, bracket.stop_loss_order_id),
    ]
    for order_type, trigger, order_id in wanted:
        if trigger is not None:
            legs.append(_leg(entry, order_type, trigger, order_id, now_ns))
    if len(legs) == 2:
        take_profit, stop_loss = legs
        legs = [
            replace(take_profit, linked_order_id=stop_loss.order_id),
            replace(stop_loss, linked_order_id=take_profit.order_id),
        ]
    return legs


def _leg(
    entry: Order,
    order_type: OrderType,
    trigger: Decimal,
    order_id: str,
    now_ns: int,
) -> Order:
    prefix = "tp" if order_type is OrderType.TAKE_PROFIT_MARKET else "sl"
    return _exit(
        entry,
        order_id,
        derived_client_order_id(prefix, entry.order_id),
        order_type,
        entry.filled_quantity,
        now_ns,
        stop_price=trigger,
        position_id=entry.position_id,
    )


def late_fill_close(
    entry: Order, fill: Fill, quantity: Decimal, order_id: str, now_ns: int
) -> Order:
    """The reduce-only market order that takes back a fill of `entry` that came after its
    trade had ended (the cancel of its rest had not landed, or failed): that fill opened,
    or added to, a trade its exits do not protect. For `quantity` (the fill's, capped at
    that position's size); its client order id derives from the fill's id, so each such
    fill is taken back once."""
    return _exit(
        entry,
        order_id,
        derived_client_order_id("fl", fill.fill_id),
        OrderType.MARKET,
        quantity,
        now_ns,
        metadata={"late_fill_id": fill.fill_id},
        # Owed once stored: a crash before its send leaves it to the lookup, which sends it.
        triggered=True,
        position_id=fill.position_id,
    )


def _exit(
    entry: Order,
    order_id: str,
    client_order_id: str,
    order_type: OrderType,
    quantity: Decimal,
    now_ns: int,
    *,
    stop_price: Decimal | None = None,
    metadata: dict[str, str] | None = None,
    triggered: bool = False,
    position_id: str = "",
) -> Order:
    """An order the OMS places for `entry` on its position, tagged as the entry is."""
    return reducing_order(
        order_id=order_id,
        client_order_id=client_order_id,
        user_id=entry.user_id,
        exchange=entry.exchange,
        symbol=entry.symbol,
        position_side=entry.position_side,
        type=order_type,
        quantity=quantity,
        now_ns=now_ns,
        strategy=entry.strategy,
        grid_level=entry.grid_level,
        stop_price=stop_price,
        metadata=metadata,
        triggered=triggered,
        parent_order_id=entry.order_id,
        position_id=position_id,
    )


def late_fills(fills: list[Fill]) -> list[Fill]:
    """Of an OpenPosition entry's fills (in the order they came), those that went into
    another trade than its first fill's: they came after the trade its exits protect had
    ended."""
    first = next((fill.position_id for fill in fills if fill.position_id), "")
    return [fill for fill in fills if fill.position_id not in ("", first)]


def moot_when_flat(order: Order) -> bool:
    """Whether an open order loses its purpose when its position goes flat: an exit, or an
    entry that has begun to fill (its exits go with the position, so its further fills would
    reopen it unprotected). An entry with nothing filled yet stays: it opens a new trade,
    with exits of its own."""
    return bool(order.parent_order_id) or (order.bracket is not None and order.filled_quantity > 0)
