"""What the engine needs from a real exchange: one gateway per (user, exchange) account.

| method        | what it does                                                            |
|---------------|-------------------------------------------------------------------------|
| verify        | check the credentials (a private read); CredentialsRefused if refused    |
| submit        | send a new order under the OMS's client id (at its leverage, set first  |
|               | when it opens and asks for one); the exchange's first report             |
| cancel        | cancel an order; its report after the cancel                             |
| fetch_order   | one order by exchange id, else by client id; None: the exchange has none |
| fetch_fills   | the executions of one order                                              |
| recent_fills  | the account's executions on one symbol since a time                      |
| open_orders   | the account's open orders on one symbol, or on all (None)                |
| positions     | the account's open positions, per hedge-mode side                        |
| has_feed      | whether watch_orders works (a websocket order feed)                      |
| watch_orders  | the orders that changed since the last call; waits for the next change   |
| close         | release connections                                                      |

`GatewayConnector` opens gateways, loads an exchange's markets and reads its mark prices
(public, no account).
The paper exchange answers the same needs in-process (engine/paper_exchange.py): it is the
venue, so it commits its own matching instead of reporting it.

Errors say what the engine may conclude, not which library raised them:

| error               | on submit, the order...                                    |
|---------------------|------------------------------------------------------------|
| SubmitRefused       | was refused: REJECTED with the exchange's reason            |
| OutcomeUnknown      | may or may not exist: PENDING_NEW, looked up by client id   |
| DuplicateClientId   | exists (an earlier attempt landed): looked up, never re-sent |
| RateLimited         | was not taken: the caller is told to slow down              |
| NotSent             | never left: no connection to the exchange could be opened   |
| CredentialsRefused  | was not taken: the account's credentials were refused       |
| OrderUnknown        | (cancel, lookup) the exchange has no such open order        |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from oms.domain.accounts import Credentials
from oms.domain.markets import Market
from oms.domain.orders import Order
from oms.domain.venue_reports import FillReport, OrderReport, PositionReport


class GatewayError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SubmitRefused(GatewayError):
    pass


class OutcomeUnknown(GatewayError):
    pass


class DuplicateClientId(GatewayError):
    pass


class NotSent(GatewayError):
    """No connection to the exchange could be opened (refused, no such host, a failed TLS
    handshake): the request never reached it, so sending it again cannot make a twin."""


class RateLimited(GatewayError):
    def __init__(self, message: str, *, banned: bool, whole_address: bool = False) -> None:
        super().__init__(message)
        self.banned = banned
        """HTTP 418: the address is banned for a while, not just throttled."""
        self.whole_address = banned or whole_address
        """The limit is the address's (every account on it backs off), not one account's."""


class CredentialsRefused(GatewayError):
    pass


class OrderUnknown(GatewayError):
    pass


class ExchangeGateway(Protocol):
    async def verify(self) -> None: ...

    async def submit(self, order: Order, client_id: str) -> OrderReport: ...

    async def cancel(self, order: Order, client_id: str) -> OrderReport: ...

    async def fetch_order(self, order: Order, client_id: str) -> OrderReport | None: ...

    async def order_by_id(self, symbol: str, exchange_order_id: str) -> OrderReport | None:
        """An order by the exchange's own id, whoever placed it; None if it has none such."""
        ...

    async def fetch_fills(self, symbol: str, exchange_order_id: str) -> list[FillReport]: ...

    async def recent_fills(self, symbol: str, since_ns: int) -> list[FillReport]: ...

    async def open_orders(self, symbol: str | None) -> list[OrderReport]: ...

    async def positions(self) -> list[PositionReport]: ...

    @property
    def has_feed(self) -> bool: ...

    async def watch_orders(self) -> list[OrderReport]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class AccountAccess:
    exchange: str
    credentials: Credentials
    sandbox: bool


class GatewayConnector(Protocol):
    @property
    def exchanges(self) -> frozenset[str]:
        """Every exchange id it can connect to."""
        ...

    def connect(self, access: AccountAccess) -> ExchangeGateway: ...

    async def load_markets(self, exchange: str) -> Sequence[Market]: ...

    async def mark_prices(self, exchange: str, symbols: Sequence[str]) -> dict[str, Decimal]:
        """The mark price of each symbol (public, no account); a symbol without one is left
        out."""
        ...

    def has_price_feed(self, exchange: str) -> bool:
        """Whether watch_mark_price works (a websocket ticker feed)."""
        ...

    async def watch_mark_price(self, exchange: str, symbol: str) -> Decimal:
        """The symbol's next mark price from the exchange's ticker feed."""
        ...
