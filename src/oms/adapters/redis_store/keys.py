"""Redis key layout. Per-user keys share a hash tag so one user's state lives in one slot.

Per-user key names are cached: a commit names about ten of them, each built by an f-string
on the hot path.
"""

from __future__ import annotations

from functools import lru_cache

PREFIX = "oms"


@lru_cache(maxsize=16384)
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
    """Hash trade_field(...) -> fill_id: each fill is applied once."""
    return user_key(user_id, "trade_ids")


def trade_field(exchange: str, symbol: str, trade_id: str) -> str:
    """A fill's field in trade_ids. Exchanges number trades per symbol (Binance, OKX): the
    same id on two symbols is two fills."""
    return f"{exchange}|{symbol}|{trade_id}"


def legacy_trade_field(exchange: str, trade_id: str) -> str:
    """The field fills applied before trade_field had; still read as applied, so that such a
    fill listed again (a reconciliation's lookback) is not applied twice."""
    return f"{exchange}|{trade_id}"


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


def trailing_stops(user_id: str) -> str:
    """Hash trailing_stop_id -> trailing stop document."""
    return user_key(user_id, "trailing_stops")


def trailing_client_ids(user_id: str) -> str:
    """Hash client_id -> trailing_stop_id: idempotency of CreateTrailingStop."""
    return user_key(user_id, "trailing_client_ids")


def trailing_index(user_id: str) -> str:
    """Zset trailing_stop_id scored by the sequence of its first event: newest-first listing."""
    return user_key(user_id, "trailing_index")


def working_trailing_stops(user_id: str) -> str:
    """Set of PENDING_ACTIVATION or ACTIVE trailing_stop_ids."""
    return user_key(user_id, "working_trailing_stops")


def rules(user_id: str) -> str:
    """Hash rule_id -> conditional rule document."""
    return user_key(user_id, "rules")


def rule_client_ids(user_id: str) -> str:
    """Hash client_id -> rule_id: idempotency of CreateConditionalRule."""
    return user_key(user_id, "rule_client_ids")


def rule_index(user_id: str) -> str:
    """Zset rule_id scored by the sequence of its first event: newest-first listing."""
    return user_key(user_id, "rule_index")


def exchange_trailing_stops(exchange: str) -> str:
    """Set '<user_id>|<trailing_stop_id>' of working trailing stops (start-up recovery)."""
    return f"{PREFIX}:x:{exchange}:trailing_stops"


def exchange_active_rules(exchange: str) -> str:
    """Set '<user_id>|<rule_id>' of ACTIVE rules by their trigger's exchange (recovery)."""
    return f"{PREFIX}:x:{exchange}:active_rules"


def pending_rules() -> str:
    """Set '<user_id>|<rule_id>' of fired rules whose cancels are not finished (recovery)."""
    return f"{PREFIX}:pending_rules"


def exchange_positions(exchange: str) -> str:
    """Set '<user_id>|<exchange>|<symbol>|<side>' of sides with an open record (recovery)."""
    return f"{PREFIX}:x:{exchange}:positions"


def exchange_open_orders(exchange: str) -> str:
    """Set '<user_id>|<order_id>' of open orders on one exchange (start-up recovery)."""
    return f"{PREFIX}:x:{exchange}:open_orders"


def prices() -> str:
    """Hash '<exchange>|<symbol>' -> '<price>|<time_ns>'."""
    return f"{PREFIX}:prices"


def accounts() -> str:
    """Hash '<user_id> <exchange>' -> account document (never the credentials)."""
    return f"{PREFIX}:accounts"


def account_credentials() -> str:
    """Hash '<user_id> <exchange>' -> credentials sealed under the master key."""
    return f"{PREFIX}:account_credentials"


def active_accounts() -> str:
    """Zset (all scores 0) of '<user_id> <exchange>' members of ACTIVE accounts, by lex."""
    return f"{PREFIX}:active_accounts"


def vault_check() -> str:
    """A constant sealed under the master key: a start with another key fails on it."""
    return f"{PREFIX}:vault_check"


def store_identity() -> str:
    """A random id made on the store's first use: a store without it lost its data."""
    return f"{PREFIX}:store_identity"


def writer_lease() -> str:
    """Which OMS process writes this store now, for a while (see RedisStore.hold_lease)."""
    return f"{PREFIX}:writer_lease"


def commit_count() -> str:
    """How many times the commit script ran against this store (script_pipe.py)."""
    return f"{PREFIX}:commit_count"


def landing_marks() -> str:
    """Prefix of the commit pipe's per-connection landing marks (script_pipe.py)."""
    return f"{PREFIX}:landed:"
