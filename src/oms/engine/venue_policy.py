"""How the OMS treats one real exchange: its polling, lookup and back-off timings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VenuePolicy:
    """How the OMS treats one real exchange."""

    poll_interval_s: float = 1.0
    """How often an account's open orders are read back from the exchange."""
    lookup_grace_s: float = 15.0
    """After a submit, how long the exchange may still take an order it does not show yet
    (at least its own window for the request: Binance's recvWindow, OKX's expTime)."""
    lookup_backoff_s: float = 0.2
    """First wait between lookups of an ambiguous order; doubles up to max_backoff_s."""
    max_backoff_s: float = 5.0
    mark_interval_s: float = 1.0
    """How often the marks of the symbols in use are read over REST (under the ticker feed)."""
    position_mark_interval_s: float = 0.0
    """A mark move rewrites a position at most this often (0: at every mark)."""
    fill_lookback_s: float = 86_400.0
    """How far back reconciliation reads the exchange's fills of finished orders."""
    rate_limit_backoff_s: float = 1.0
    """After a 429, how long new orders are refused without being sent."""
    ban_backoff_s: float = 120.0
    """After a 418 (address banned), how long new orders are refused without being sent."""
