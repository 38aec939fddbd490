"""Which finished orders a retention period lets the state store forget."""

from __future__ import annotations

from collections.abc import Container

from oms.domain.orders import Order


def forgettable(
    order: Order, cutoff_ns: int, open_ids: Container[str], kept_ids: Container[str]
) -> bool:
    """Whether `order` ended before `cutoff_ns` and nothing still acts on it: none of its
    linked orders (the other leg of a one-cancels-other, an entry's exits) is open, and no
    conditional rule still to act lists it (`kept_ids`)."""
    if not order.status.is_terminal or order.updated_at_ns >= cutoff_ns:
        return False
    if order.order_id in kept_ids:
        return False
    related = [order.linked_order_id]
    if order.bracket is not None:
        related += [order.bracket.take_profit_order_id, order.bracket.stop_loss_order_id]
    return not any(order_id in open_ids for order_id in related if order_id)
