"""Stop and take-profit orders on real exchanges are held by the OMS, not sent: when the
exchange's mark price reaches one, it is sent as a market order (a stop-limit as a limit
order), under the OMS's client id like any other. They behave the same on every exchange,
as trailing stops do, and need no exchange-specific conditional-order API; the price is the
one the OMS reads (`mark_interval_s`), and they work while the OMS follows the account."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from oms.domain.orders import Order
from oms.domain.paper_matching import stop_reached


def is_held(order: Order) -> bool:
    """A stop or take-profit order that is working and not triggered yet."""
    return order.type.needs_stop_price and order.is_open and not order.triggered


class HeldStops:
    def __init__(self) -> None:
        self._by_symbol: defaultdict[tuple[str, str], dict[str, Order]] = defaultdict(dict)

    def hold(self, order: Order) -> None:
        self._by_symbol[(order.exchange, order.symbol)][order.order_id] = order

    def release(self, order: Order) -> bool:
        """Stop holding it; False when it was not held (triggered already)."""
        return self._by_symbol[(order.exchange, order.symbol)].pop(order.order_id, None) is not None

    def release_user(self, user_id: str, exchange: str) -> None:
        for (held_exchange, _), orders in self._by_symbol.items():
            if held_exchange == exchange:
                for order_id in [i for i, o in orders.items() if o.user_id == user_id]:
                    del orders[order_id]

    def symbols(self, exchange: str) -> set[str]:
        return {
            symbol for (ex, symbol), orders in self._by_symbol.items() if ex == exchange and orders
        }

    def reached(self, exchange: str, symbol: str, price: Decimal) -> list[Order]:
        """The held orders `price` reaches, no longer held, oldest first."""
        orders = self._by_symbol[(exchange, symbol)]
        reached = [o for o in orders.values() if stop_reached(o, price)]
        for order in reached:
            del orders[order.order_id]
        return sorted(reached, key=lambda o: (o.created_at_ns, o.order_id))
