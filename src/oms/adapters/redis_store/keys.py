"""Redis key layout. Per-user keys share a hash tag so one user's state lives in one slot."""

from __future__ import annotations

PREFIX = "oms"


def user_key(user_id: str, name: str) -> str:
    return f"{PREFIX}:u:{{{user_id}}}:{name}"


def sequence(user_id: str) -> str:
    return user_key(user_id, "seq")


def events(user_id: str) -> str:
    return user_key(user_id, "events")


def orders(user_id: str) -> str:
    """Hash order_id -> order document."""
    return user_key(user_id, "orders")


def order_versions(user_id: str) -> str:
    """Hash order_id -> version: the optimistic-concurrency guard."""
    return user_key(user_id, "order_versions")


def client_order_ids(user_id: str) -> str:
    """Hash client_order_id -> order_id: idempotency of PlaceOrder."""
    return user_key(user_id, "client_order_ids")


def order_index(user_id: str) -> str:
    """Zset order_id scored by the sequence of its first event: newest-first listing."""
    return user_key(user_id, "order_index")


def open_orders(user_id: str) -> str:
    return user_key(user_id, "open_orders")


def fills(user_id: str) -> str:
    return user_key(user_id, "fills")


def fill_index(user_id: str) -> str:
    return user_key(user_id, "fill_index")


def trade_ids(user_id: str) -> str:
    """Hash '<exchange>|<exchange_trade_id>' -> fill_id: each fill is applied once."""
    return user_key(user_id, "trade_ids")


def positions(user_id: str) -> str:
    """Hash position_id -> position document (open and closed records)."""
    return user_key(user_id, "positions")


def current_positions(user_id: str) -> str:
    """Hash '<exchange>|<symbol>|<side>' -> position_id of the side's current record."""
    return user_key(user_id, "current_positions")


def position_index(user_id: str) -> str:
    """Zset position_id scored by the sequence of its first event: newest-first listing."""
    return user_key(user_id, "position_index")


def open_positions(user_id: str) -> str:
    return user_key(user_id, "open_positions")


def exchange_positions(exchange: str) -> str:
    """Set '<user_id>|<exchange>|<symbol>|<side>' of sides with a record (start-up recovery)."""
    return f"{PREFIX}:x:{exchange}:positions"


def exchange_open_orders(exchange: str) -> str:
    """Set '<user_id>|<order_id>' of open orders on one exchange (start-up recovery)."""
    return f"{PREFIX}:x:{exchange}:open_orders"


def prices() -> str:
    """Hash '<exchange>|<symbol>' -> '<price>|<time_ns>'."""
    return f"{PREFIX}:prices"
