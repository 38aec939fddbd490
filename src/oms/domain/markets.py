"""Markets: precision and contract specs, looked up by unified symbol or exchange id."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from oms.domain.decimals import is_multiple
from oms.domain.errors import InvalidArgument

PAPER = "paper"
"""The built-in deterministic exchange: always present, needs no account."""

MAX_LEVERAGE = 125
"""The highest leverage any order may set (the highest any exchange offers)."""


@dataclass(frozen=True, slots=True)
class Market:
    exchange: str
    symbol: str
    """ccxt unified symbol, e.g. BTC/USDT:USDT."""
    market_id: str
    """The exchange's own id, e.g. BTC-USDT-SWAP."""
    settle: str
    contract_size: Decimal
    amount_step: Decimal
    min_amount: Decimal
    price_tick: Decimal
    maintenance_margin_rate: Decimal
    max_leverage: int = MAX_LEVERAGE
    """The highest leverage an order may set here. A real exchange's own limit, often lower
    and tiered by size, is its to enforce: an order above it is REJECTED with its reason."""

    def check_leverage(self, field: str, leverage: int | None) -> None:
        if leverage is not None and leverage > self.max_leverage:
            raise InvalidArgument(
                field, f"{leverage} is above the maximum {self.max_leverage} for {self.symbol}"
            )

    def check_quantity(self, field: str, quantity: Decimal) -> None:
        if quantity < self.min_amount:
            raise InvalidArgument(
                field, f"{quantity} is below the minimum {self.min_amount} for {self.symbol}"
            )
        if not is_multiple(quantity, self.amount_step):
            raise InvalidArgument(
                field, f"{quantity} is not a multiple of the amount step {self.amount_step}"
            )

    def check_price(self, field: str, price: Decimal) -> None:
        if not is_multiple(price, self.price_tick):
            raise InvalidArgument(
                field, f"{price} is not a multiple of the price tick {self.price_tick}"
            )


def as_placed(exchange: str, symbol: str) -> Market:
    """A market that checks no precision: to judge a request again against an order placed
    on `symbol` before (whose quantities and prices were checked then), while the exchange's
    markets are not loaded."""
    any_size = Decimal("1E-30")
    return Market(
        exchange=exchange,
        symbol=symbol,
        market_id=symbol,
        settle="",
        contract_size=Decimal(1),
        amount_step=any_size,
        min_amount=any_size,
        price_tick=any_size,
        maintenance_margin_rate=Decimal(0),
    )


def highest_leverage(maintenance_margin_rate: Decimal) -> int:
    """The highest leverage whose initial margin (1/leverage of the notional) stays above the
    maintenance margin, at most MAX_LEVERAGE: at or past 1/rate a position opens already
    liquidatable, its liquidation price at or beyond its entry."""
    return min(MAX_LEVERAGE, math.ceil(1 / maintenance_margin_rate) - 1)


class MarketCatalog:
    """The markets of every configured exchange."""

    def __init__(self, markets: Iterable[Market]) -> None:
        self._by_key: dict[tuple[str, str], Market] = {}
        self._exchanges: set[str] = set()
        self.add(markets)

    def add(self, markets: Iterable[Market]) -> None:
        """Add an exchange's markets (real exchanges load theirs when first needed)."""
        for market in markets:
            self._exchanges.add(market.exchange)
            self._by_key[(market.exchange, market.symbol)] = market
            self._by_key[(market.exchange, market.market_id)] = market

    def __contains__(self, key: tuple[str, str]) -> bool:
        """(exchange, unified symbol or market id)."""
        return key in self._by_key

    def has_exchange(self, exchange: str) -> bool:
        """Whether the exchange's markets are loaded (no copy: PlaceOrder asks every time)."""
        return exchange in self._exchanges

    def check_exchange(self, exchange: str, field: str = "exchange") -> str:
        if not exchange:
            raise InvalidArgument(field, "is required")
        if exchange not in self._exchanges:
            # Real exchanges are known by their ccxt id before their markets are loaded.
            raise InvalidArgument(
                field,
                f"unknown exchange {exchange[:64]!r}: the built-in one is 'paper', real ones "
                "go by their ccxt id (e.g. 'binanceusdm', 'okx')",
            )
        return exchange

    def resolve(self, exchange: str, symbol: str, field: str = "symbol") -> Market:
        """A market by unified symbol or exchange market id."""
        self.check_exchange(exchange)
        if not symbol:
            raise InvalidArgument(field, "is required")
        market = self._by_key.get((exchange, symbol))
        if market is None:
            raise InvalidArgument(
                field, f"unknown symbol {symbol[:64]!r} on {exchange}{self._hint(exchange, symbol)}"
            )
        return market

    def _hint(self, exchange: str, symbol: str) -> str:
        """The symbol or market id meant, ignoring case: the shortest that begins with
        `symbol` ('BTC/USDT:USDT' for 'BTC/USDT'), else one a typo away."""
        names = {name.upper(): name for ex, name in self._by_key if ex == exchange}
        typed = symbol[:64].upper()
        longer = sorted((n for n in names if n.startswith(typed)), key=len)
        close = longer or difflib.get_close_matches(typed, names, n=1, cutoff=0.85)
        return f" (did you mean {names[close[0]]!r}?)" if close else ""

    def markets(self, exchange: str) -> list[Market]:
        return sorted(
            {m for (ex, _), m in self._by_key.items() if ex == exchange}, key=lambda m: m.symbol
        )
