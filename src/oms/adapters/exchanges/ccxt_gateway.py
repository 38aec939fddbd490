"""Real exchanges through ccxt: one async ccxt instance per account, errors classified by
what they let the engine conclude (engine/gateway.py).

ccxt's unified structures carry floats; each is turned into a Decimal through its shortest
repr, which gives back the exchange's own decimal string.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt.async_support as ccxt_async  # type: ignore[import-untyped]
import ccxt.pro as ccxt_pro  # type: ignore[import-untyped]
from ccxt.base import errors as ccxt_errors  # type: ignore[import-untyped]
from ccxt.base.decimal_to_precision import TICK_SIZE  # type: ignore[import-untyped]

from oms.domain.fills import Liquidity
from oms.domain.markets import Market
from oms.domain.orders import Order, OrderType, PositionSide, Side, TimeInForce
from oms.domain.positions import reduces
from oms.domain.venue_reports import (
    FillReport,
    OrderReport,
    OrderTerms,
    PositionReport,
    VenueOrderStatus,
)
from oms.engine.gateway import (
    AccountAccess,
    CredentialsRefused,
    DuplicateClientId,
    GatewayError,
    NotSent,
    OrderUnknown,
    OutcomeUnknown,
    RateLimited,
    SubmitRefused,
)

log = logging.getLogger(__name__)

# Fills asked for at a time: what OKX gives at most (Binance gives up to 1000).
_FILLS_PAGE = 100
# ccxt logs every request's headers at DEBUG: API keys and passphrases included.
logging.getLogger("ccxt").setLevel(logging.INFO)

# Maintenance margin is not in ccxt's market structure; the estimate a position shows until
# the exchange's own liquidation price is read.
DEFAULT_MAINTENANCE_MARGIN_RATE = Decimal("0.005")

# Exchange error codes that settle what a submit did, whatever class ccxt maps them to.
_AMBIGUOUS_CODES = {"binanceusdm": {"-1007"}, "binance": {"-1007"}, "okx": {"50004"}}
_DUPLICATE_CODES = {"binanceusdm": {"-4116"}, "binance": {"-4116"}, "okx": {"51016"}}
_UNKNOWN_ORDER_CODES = {
    "binanceusdm": {"-2011", "-2013"},
    "binance": {"-2011", "-2013"},
    "okx": {"51400", "51401", "51402", "51603"},
}
_LEVERAGE_UNCHANGED_CODES = {"bybit": {"110043"}}
_BANNED = re.compile(r"\b418\b|banned", re.IGNORECASE)
_IP_LIMIT = re.compile(r"\bIP\b")
_MAX_RECV_WINDOW_MS = 60_000  # Binance refuses more
_ERROR_CODE = re.compile(r'"(?:sCode|code|retCode)"\s*:\s*"?(-?\d+)"?')

# What every instance of an exchange needs so that load_markets stays public and quick.
_CCXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "binanceusdm": {
        "options": {
            "fetchCurrencies": False,
            # Reconciliation lists every open order at once (heavier on the limit, and rare).
            "warnOnFetchOpenOrdersWithoutSymbol": False,
            # A new private socket would otherwise first read leverage brackets and positions.
            "watchPositions": {"fetchPositionsSnapshot": False},
        }
    },
    "okx": {"options": {"fetchMarkets": {"types": ["swap"]}}},
}
# Hedge mode: the parameter naming the position side, and its spelling.
_BINANCE_FAMILY = ("binanceusdm", "binance", "binancecoinm")

_STATUSES = {
    "open": VenueOrderStatus.OPEN,
    "closed": VenueOrderStatus.FILLED,
    "canceled": VenueOrderStatus.CANCELED,
    "expired": VenueOrderStatus.EXPIRED,
    "rejected": VenueOrderStatus.REJECTED,
}


@functools.cache
def exchange_ids() -> frozenset[str]:
    """Every exchange id ccxt knows."""
    return frozenset(ccxt_async.exchanges)


def _decimal(value: object) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def _step(value: object, precision_mode: int) -> Decimal:
    """ccxt's amount/price precision as a step: a tick size, or a count of decimals."""
    if precision_mode == TICK_SIZE:
        return _decimal(value)
    return Decimal(1).scaleb(-int(_decimal(value)))


@dataclass(frozen=True, slots=True)
class CcxtSettings:
    """How the OMS builds ccxt instances of one exchange."""

    rest_url: str | None = None
    """Replaces the scheme and host of every REST URL (a proxy, or a local test exchange)."""
    ws_url: str | None = None
    """Replaces the scheme and host of every websocket URL."""
    timeout_ms: int = 10_000
    rate_limit: bool = True
    """ccxt's own request throttle."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Merged into ccxt's `options` for the exchange."""


def _expire_trade_requests(client: Any, timeout_ms: int) -> None:
    """OKX takes a trade request only until the time its expTime header names: set to when
    the OMS stops waiting for it, a lookup past that finds whatever it ever took."""
    sign = client.sign

    def signed(
        path: str, api: Any = "public", method: str = "GET", params: Any = None
    ) -> dict[str, Any]:
        request: dict[str, Any] = sign(path, api, method, {} if params is None else params)
        if api[0] == "private" and method == "POST" and path.startswith("trade/"):
            request["headers"]["expTime"] = str(client.milliseconds() + timeout_ms)
        return request

    client.sign = signed


def classify(exchange: str, error: Exception) -> GatewayError:
    """What a ccxt error lets the engine conclude. The raw exchange code decides first:
    ccxt maps some codes to classes that would mislead (Binance -1007 "execution status
    unknown" is a BadResponse)."""
    message = f"{type(error).__name__}: {error}"
    codes = set(_ERROR_CODE.findall(str(error)))
    if codes & _DUPLICATE_CODES.get(exchange, set()):
        return DuplicateClientId(message)
    if codes & _AMBIGUOUS_CODES.get(exchange, set()):
        return OutcomeUnknown(message)
    if codes & _UNKNOWN_ORDER_CODES.get(exchange, set()):
        return OrderUnknown(message)
    match error:
        case ccxt_errors.RateLimitExceeded() | ccxt_errors.DDoSProtection():
            # ccxt raises DDoSProtection for Binance's 429 and 418 alike, with the status
            # in the message; only 418 means the address is banned for a while. A limit is
            # the account's (OKX's trading limits, Binance's order counts) unless it names
            # the IP (Binance's request weight).
            return RateLimited(
                message,
                banned=_BANNED.search(message) is not None,
                whole_address=_IP_LIMIT.search(message) is not None,
            )
        case ccxt_errors.AuthenticationError():
            return CredentialsRefused(message)
        case ccxt_errors.OrderNotFound():
            return OrderUnknown(message)
        case ccxt_errors.DuplicateOrderId():
            return DuplicateClientId(message)
        case (
            ccxt_errors.InsufficientFunds()
            | ccxt_errors.InvalidOrder()
            | ccxt_errors.BadRequest()
            | ccxt_errors.OperationRejected()
            | ccxt_errors.ArgumentsRequired()
            | ccxt_errors.NotSupported()
        ):
            return SubmitRefused(message)
    if isinstance(error, ccxt_errors.ExchangeNotAvailable) and isinstance(
        error.__cause__, aiohttp.ClientConnectorError | socket.gaierror
    ):
        return NotSent(message)
    # Timeouts, 5xx, dropped connections, unparseable replies and codes nobody mapped: the
    # request may have been carried out.
    return OutcomeUnknown(message)


def leverage_unchanged(exchange: str, error: GatewayError) -> bool:
    """Whether a refused set_leverage means it is at that leverage already (Bybit's
    "leverage not modified"): as good as set."""
    codes = set(_ERROR_CODE.findall(error.message))
    return bool(codes & _LEVERAGE_UNCHANGED_CODES.get(exchange, set()))


@dataclass
class _LeverageGate:
    """One symbol's leverage on the account, and the orders being sent at it."""

    leverage: int | None = None
    """What the exchange holds, as far as the OMS knows; None: not known."""
    sending: int = 0
    """Orders being sent at `leverage`."""
    waiting: list[list[int]] = field(default_factory=list)
    """The orders waiting for their turn, first come first, each as [its leverage]."""
    turn: asyncio.Condition = field(default_factory=asyncio.Condition)
    calls_ended: int = 0
    """set_leverage calls that have ended so far."""
    failed: tuple[int, int, GatewayError] | None = None
    """The last call that failed: its number among those ended, its leverage and why. Until
    another call ends, the orders that waited for it at that leverage (at any leverage, for
    a rate limit) fail with it, instead of each making a call of its own after it."""

    def may_go(self, turn: list[int]) -> bool:
        """No order at another leverage is ahead of `turn`, and the leverage is its own or
        nothing is in flight at another."""
        (leverage,) = turn
        ahead = itertools.takewhile(lambda other: other is not turn, self.waiting)
        if any(other[0] != leverage for other in ahead):
            return False
        return self.leverage == leverage or not self.sending

    def forget(self) -> None:
        """A new connection: a leverage changed by hand meanwhile is set again, unless
        orders are in flight or waiting."""
        if not self.sending and not self.waiting:
            self.leverage = None


def _reason(error: GatewayError) -> str:
    return error.message[:256]


class CcxtGateway:
    """One account on one exchange (engine.gateway.ExchangeGateway)."""

    def __init__(
        self, exchange: str, client: Any, leverage: dict[str, _LeverageGate] | None = None
    ) -> None:
        """`leverage`: the account's gates by symbol, shared by its connections (a new one
        replaces the old while orders are still in flight on it)."""
        self._exchange = exchange
        self._client = client
        self._leverage = {} if leverage is None else leverage

    async def verify(self) -> None:
        await self._call(self._client.fetch_balance)

    async def submit(self, order: Order, client_id: str) -> OrderReport:
        if order.leverage is None or reduces(order.side, order.position_side):
            return await self._send(order, client_id)
        async with self._at_leverage(order.symbol, order.leverage):
            return await self._send(order, client_id)

    async def _send(self, order: Order, client_id: str) -> OrderReport:
        params: dict[str, Any] = {"clientOrderId": client_id, **self._position_side(order)}
        if order.price is not None:
            if order.time_in_force is TimeInForce.POST_ONLY:
                params["postOnly"] = True
            elif order.time_in_force is not TimeInForce.GTC:
                params["timeInForce"] = order.time_in_force.value
        raw = await self._call(
            self._client.create_order,
            order.symbol,
            # A triggered stop-limit goes as a limit order, a stop-market as a market one.
            "market" if order.price is None else "limit",
            order.side.value.lower(),
            str(order.quantity),
            None if order.price is None else str(order.price),
            params,
        )
        report = self._report(raw, client_id)
        if report is not None:
            return report
        # A sparse acknowledgement (OKX): the order exists; read what it did.
        exchange_order_id = str(raw.get("id") or "")
        try:
            return await self._fetch(order, client_id, exchange_order_id)
        except GatewayError as error:
            if not exchange_order_id:
                raise OutcomeUnknown(f"acknowledged without an id, then: {error}") from error
            # Taken, whatever the read says (a 429, not found yet): the syncs read the rest.
            log.warning("order %s taken, but not read back: %s", exchange_order_id, error)
            return OrderReport(
                exchange_order_id, client_id, order.symbol, VenueOrderStatus.OPEN, Decimal(0)
            )

    @contextlib.asynccontextmanager
    async def _at_leverage(self, symbol: str, leverage: int) -> AsyncIterator[None]:
        """The account's leverage on `symbol` is `leverage` while the order goes (one per
        symbol for both sides on Binance, per instrument in OKX's cross margin, which its
        orders use). A change waits for the orders in flight at the old one; so an order
        is never sent at another order's leverage."""
        gate = self._leverage.setdefault(symbol, _LeverageGate())
        ended_before = gate.calls_ended  # (a call holds the lock: read before taking it)
        async with gate.turn:
            turn = [leverage]  # its place in the queue: a change is not overtaken by orders
            gate.waiting.append(turn)  # at the old leverage that came after it
            try:
                await gate.turn.wait_for(lambda: gate.may_go(turn))
                if gate.leverage != leverage:
                    failed = gate.failed
                    if (
                        failed is not None
                        and ended_before < failed[0] == gate.calls_ended  # the last call
                        and (failed[1] == leverage or isinstance(failed[2], RateLimited))
                    ):
                        # One instance for every waiter: each raise starts its traceback
                        # afresh, or it would grow by every waiter's frames.
                        raise failed[2].with_traceback(None)
                    gate.leverage = None  # unknown until the exchange confirms it
                    try:
                        await self._set_leverage(symbol, leverage)
                    except GatewayError as error:
                        gate.failed = (gate.calls_ended + 1, leverage, error)
                        raise
                    finally:
                        gate.calls_ended += 1
                    gate.leverage = leverage
                gate.sending += 1
            finally:
                gate.waiting.remove(turn)
                gate.turn.notify_all()
        try:
            yield
        finally:
            async with gate.turn:
                gate.sending -= 1
                gate.turn.notify_all()

    async def _set_leverage(self, symbol: str, leverage: int) -> None:
        """A refusal refuses the order; no answer (a timeout, a 5xx) leaves it unsent, to be
        sent once the exchange answers again (a fired stop, sent again), as a 429 or no
        connection does."""
        try:
            await self._call(self._client.set_leverage, leverage, symbol)
        except (RateLimited, CredentialsRefused, NotSent):
            raise
        except GatewayError as error:
            if leverage_unchanged(self._exchange, error):
                return
            if isinstance(error.__cause__, ccxt_errors.NetworkError | OSError):
                raise NotSent(f"leverage {leverage} not confirmed: {error.message}") from error
            raise SubmitRefused(f"leverage {leverage} not set: {error.message}") from error

    async def cancel(self, order: Order, client_id: str) -> OrderReport:
        raw = await self._call(self._client.cancel_order, order.exchange_order_id, order.symbol, {})
        report = self._report(raw, client_id)
        if report is None:
            return await self._fetch(order, client_id, order.exchange_order_id)
        return report

    async def fetch_order(self, order: Order, client_id: str) -> OrderReport | None:
        try:
            return await self._fetch(order, client_id, order.exchange_order_id)
        except OrderUnknown:
            return None

    async def order_by_id(self, symbol: str, exchange_order_id: str) -> OrderReport | None:
        try:
            raw = await self._call(self._client.fetch_order, exchange_order_id, symbol, {})
        except OrderUnknown:
            return None
        return self._report(raw, "")

    async def fetch_fills(self, symbol: str, exchange_order_id: str) -> list[FillReport]:
        """Every fill of one order, however many pages they take."""

        def page(since_ms: int | None, params: dict[str, Any]) -> Awaitable[list[Any]]:
            if self._exchange in _BINANCE_FAMILY:
                # ccxt's fetch_order_trades is spot-only on Binance; userTrades takes orderId.
                return self._call(
                    self._client.fetch_my_trades,
                    symbol,
                    since_ms,
                    _FILLS_PAGE,
                    {"orderId": exchange_order_id, **params},
                )
            return self._call(
                self._client.fetch_order_trades,
                exchange_order_id,
                symbol,
                since_ms,
                _FILLS_PAGE,
                params,
            )

        return await self._every_fill(page, None)

    async def recent_fills(self, symbol: str, since_ns: int) -> list[FillReport]:
        """Every fill of `symbol` from `since_ns` on, however many."""

        def page(since_ms: int | None, params: dict[str, Any]) -> Awaitable[list[Any]]:
            return self._call(self._client.fetch_my_trades, symbol, since_ms, _FILLS_PAGE, params)

        return await self._every_fill(page, since_ns // 1_000_000)

    async def _every_fill(
        self,
        page: Callable[[int | None, dict[str, Any]], Awaitable[list[Any]]],
        since_ms: int | None,
    ) -> list[FillReport]:
        """Every fill `page` lists from `since_ms` on. A venue answers one page of a window
        (Binance its oldest, OKX its newest), so past both ends of a full page the window is
        read again, until a read brings no fill not seen yet. (More than a page of fills
        within one millisecond would be cut short: no account trades so.)"""
        fills: dict[str, FillReport] = {}
        windows: list[tuple[int | None, int | None]] = [(since_ms, None)]
        while windows:
            start_ms, until_ms = windows.pop()
            trades = await page(start_ms, {} if until_ms is None else {"until": until_ms})
            new = [self._fill(trade) for trade in trades if str(trade["id"]) not in fills]
            fills.update((fill.trade_id, fill) for fill in new)
            if new and len(trades) >= _FILLS_PAGE:
                times = [int(trade.get("timestamp") or 0) for trade in trades]
                windows += [(start_ms, min(times)), (max(times), until_ms)]
        return sorted(fills.values(), key=lambda fill: (fill.time_ns, fill.trade_id))

    async def open_orders(self, symbol: str | None) -> list[OrderReport]:
        raws = await self._call(self._client.fetch_open_orders, symbol)
        reports = [self._report(raw, "") for raw in raws]
        return [report for report in reports if report is not None]

    @property
    def has_feed(self) -> bool:
        return bool(self._client.has.get("watchOrders"))

    async def watch_orders(self) -> list[OrderReport]:
        """The account's orders that changed since the last call, on every symbol; waits
        for the next change. Raises OutcomeUnknown when the socket dropped (the next call
        reconnects)."""
        raws = await self._call(self._client.watch_orders)
        reports = [self._report(raw, "") for raw in raws]
        return [report for report in reports if report is not None]

    async def positions(self) -> list[PositionReport]:
        raws = await self._call(self._client.fetch_positions)
        reports = []
        for raw in raws:
            size = _decimal(raw.get("contracts"))
            side = str(raw.get("side") or "").upper()
            if size and side in ("LONG", "SHORT"):
                reports.append(PositionReport(raw.get("symbol") or "", PositionSide(side), size))
        return reports

    async def close(self) -> None:
        await self._client.close()

    async def _fetch(self, order: Order, client_id: str, exchange_order_id: str) -> OrderReport:
        params = {} if exchange_order_id else {"clientOrderId": client_id}
        raw = await self._call(
            self._client.fetch_order, exchange_order_id or None, order.symbol, params
        )
        report = self._report(raw, client_id)
        if report is None:
            raise OutcomeUnknown(f"{self._exchange} returned order {raw.get('id')} without status")
        return report

    async def _call(self, method: Any, *args: Any) -> Any:
        try:
            return await method(*args)
        except ccxt_errors.BaseError as error:
            raise classify(self._exchange, error) from error
        except (ConnectionRefusedError, socket.gaierror) as error:
            raise NotSent(f"{type(error).__name__}: {error}") from error
        except OSError as error:
            raise OutcomeUnknown(f"{type(error).__name__}: {error}") from error

    def _position_side(self, order: Order) -> dict[str, str]:
        # Hedge mode: the position side says whether an order opens or reduces, so
        # reduce-only is not sent (Binance refuses it alongside a position side).
        if self._exchange in _BINANCE_FAMILY:
            return {"positionSide": order.position_side.value}
        side = "long" if order.position_side is PositionSide.LONG else "short"
        return {"posSide": side} if self._exchange == "okx" else {"positionSide": side}

    def _report(self, raw: Mapping[str, Any], client_id: str) -> OrderReport | None:
        status = _STATUSES.get(raw.get("status") or "")
        if status is None:
            return None
        filled = _decimal(raw.get("filled"))
        if status is VenueOrderStatus.OPEN and filled > 0:
            status = VenueOrderStatus.PARTIALLY_FILLED
        info = raw.get("info") or {}
        return OrderReport(
            exchange_order_id=str(raw.get("id") or ""),
            client_id=raw.get("clientOrderId") or client_id,
            symbol=raw.get("symbol") or "",
            status=status,
            filled_quantity=filled,
            reason=str(info.get("sMsg") or "") if status is VenueOrderStatus.REJECTED else "",
            terms=_terms(raw),
        )

    def _fill(self, trade: Mapping[str, Any]) -> FillReport:
        fee = trade.get("fee") or {}
        return FillReport(
            trade_id=str(trade["id"]),
            exchange_order_id=str(trade.get("order") or ""),
            symbol=trade.get("symbol") or "",
            price=_decimal(trade.get("price")),
            quantity=_decimal(trade.get("amount")),
            fee=_decimal(fee.get("cost")),
            fee_currency=fee.get("currency") or "",
            liquidity=Liquidity.MAKER if trade.get("takerOrMaker") == "maker" else Liquidity.TAKER,
            time_ns=int(trade.get("timestamp") or 0) * 1_000_000,
        )


def _ticker_price(ticker: Mapping[str, Any]) -> Decimal | None:
    price = ticker.get("markPrice") or ticker.get("last")
    return _decimal(price) if price else None


_TYPES = {
    "limit": OrderType.LIMIT,
    "market": OrderType.MARKET,
    "stop_market": OrderType.STOP_MARKET,
    "take_profit_market": OrderType.TAKE_PROFIT_MARKET,
    "stop_limit": OrderType.STOP_LIMIT,
    # OKX lists the time in force as the order type.
    "post_only": OrderType.LIMIT,
    "ioc": OrderType.LIMIT,
    "fok": OrderType.LIMIT,
}
_TIME_IN_FORCE = {
    "GTC": TimeInForce.GTC,
    "IOC": TimeInForce.IOC,
    "FOK": TimeInForce.FOK,
    "PO": TimeInForce.POST_ONLY,
}


def _terms(raw: Mapping[str, Any]) -> OrderTerms | None:
    """What the order asks for, from ccxt's unified order; None for a kind the OMS does not
    model (trailing, iceberg, ...) or a reply without amounts (OKX create and cancel)."""
    kind = str(raw.get("type") or "").lower()
    side = {"buy": Side.BUY, "sell": Side.SELL}.get(raw.get("side") or "")
    amount = raw.get("amount")
    if side is None or amount is None or kind not in _TYPES:
        return None
    trigger = raw.get("triggerPrice") or raw.get("stopPrice")
    price = raw.get("price")
    order_type = _TYPES[kind]
    if kind == "stop" or (order_type is OrderType.STOP_MARKET and price):
        order_type = OrderType.STOP_LIMIT
    reduce_only = bool(raw.get("reduceOnly"))
    info = raw.get("info") or {}
    hedge_side = str(info.get("positionSide") or info.get("posSide") or "").upper()
    if hedge_side in ("LONG", "SHORT"):
        position_side = PositionSide(hedge_side)
    else:
        # One-way mode: a buy opens long unless it only reduces (a short).
        opens_long = (side is Side.BUY) != reduce_only
        position_side = PositionSide.LONG if opens_long else PositionSide.SHORT
    if raw.get("postOnly"):
        time_in_force = TimeInForce.POST_ONLY
    else:
        time_in_force = _TIME_IN_FORCE.get(str(raw.get("timeInForce") or "GTC"), TimeInForce.GTC)
    needs_price = order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
    return OrderTerms(
        side=side,
        type=order_type,
        quantity=_decimal(amount),
        price=_decimal(price) if needs_price and price else None,
        stop_price=_decimal(trigger) if trigger else None,
        position_side=position_side,
        reduce_only=reduce_only,
        time_in_force=time_in_force if order_type is OrderType.LIMIT else TimeInForce.GTC,
        created_at_ns=int(raw.get("timestamp") or 0) * 1_000_000,
    )


class CcxtConnector:
    """Builds gateways and loads markets; one public instance per exchange holds them."""

    def __init__(self, settings: Mapping[str, CcxtSettings]) -> None:
        self._settings = settings
        self._public: dict[str, Any] = {}
        self._leverage: dict[tuple[str, str], dict[str, _LeverageGate]] = {}
        """Each account's leverage gates, by (exchange, API key)."""

    @property
    def exchanges(self) -> frozenset[str]:
        return exchange_ids()

    def connect(self, access: AccountAccess) -> CcxtGateway:
        credentials = access.credentials
        client = self._client(
            access.exchange,
            access.sandbox,
            {
                "apiKey": credentials.api_key,
                "secret": credentials.secret,
                "password": credentials.password or "",
            },
        )
        public = self._public.get(access.exchange)
        if public is not None:
            client.set_markets_from_exchange(public)
        gates = self._leverage.setdefault((access.exchange, credentials.api_key), {})
        for gate in gates.values():
            gate.forget()
        return CcxtGateway(access.exchange, client, gates)

    async def load_markets(self, exchange: str) -> Sequence[Market]:
        public = self._public.get(exchange)
        if public is None:
            public = self._public[exchange] = self._client(exchange, False, {})
        try:
            raw = await public.load_markets()
        except ccxt_errors.BaseError as error:
            raise classify(exchange, error) from error
        except OSError as error:
            raise OutcomeUnknown(f"{type(error).__name__}: {error}") from error
        return [
            self._market(exchange, market, public.precisionMode)
            for market in raw.values()
            if market.get("active") is not False
        ]

    async def mark_prices(self, exchange: str, symbols: Sequence[str]) -> dict[str, Decimal]:
        public = self._public[exchange]  # load_markets made it
        try:
            tickers = await asyncio.gather(*(public.fetch_ticker(symbol) for symbol in symbols))
        except ccxt_errors.BaseError as error:
            raise classify(exchange, error) from error
        except OSError as error:
            raise OutcomeUnknown(f"{type(error).__name__}: {error}") from error
        marks = {}
        for symbol, ticker in zip(symbols, tickers, strict=True):
            price = _ticker_price(ticker)
            if price is not None:
                marks[symbol] = price
        return marks

    def has_price_feed(self, exchange: str) -> bool:
        return bool(self._public[exchange].has.get("watchTicker"))

    async def watch_mark_price(self, exchange: str, symbol: str) -> Decimal:
        while True:
            try:
                ticker = await self._public[exchange].watch_ticker(symbol)
            except ccxt_errors.BaseError as error:
                raise classify(exchange, error) from error
            price = _ticker_price(ticker)
            if price is not None:
                return price

    async def close(self) -> None:
        # (A start cut short may still add one.) All at once: each close sleeps 250 ms, for
        # aiohttp's transports to finish closing.
        await asyncio.gather(*(public.close() for public in list(self._public.values())))
        self._public.clear()

    def _client(self, exchange: str, sandbox: bool, credentials: Mapping[str, str]) -> Any:
        settings = self._settings.get(exchange, CcxtSettings())
        defaults = _CCXT_DEFAULTS.get(exchange, {})
        options = {**defaults.get("options", {}), **settings.options}
        if exchange in _BINANCE_FAMILY:
            # The exchange takes a request only within recvWindow of its timestamp: as
            # long as the OMS waits for it, so a lookup past that finds what it ever took.
            options.setdefault("recvWindow", min(settings.timeout_ms, _MAX_RECV_WINDOW_MS))
        # ccxt.pro's classes add the websocket feeds to the REST calls, where it has them.
        module = ccxt_pro if hasattr(ccxt_pro, exchange) else ccxt_async
        client = getattr(module, exchange)(
            {
                **credentials,
                "enableRateLimit": settings.rate_limit,
                "timeout": settings.timeout_ms,
                "options": options,
            }
        )
        if exchange == "okx":
            # Currencies come from a private endpoint; markets are enough to trade.
            client.has["fetchCurrencies"] = False
            _expire_trade_requests(client, settings.timeout_ms)
        if sandbox:
            client.set_sandbox_mode(True)
        if settings.ws_url:
            client.urls["api"] = _rehost(client.urls["api"], _WS_HOST, settings.ws_url)
        if settings.rest_url:
            client.urls["api"] = _rehost(client.urls["api"], _HOST, settings.rest_url)
            if exchange in _BINANCE_FAMILY:
                # ccxt picks its futures error table by the fapi.binance.com host, which the
                # new host hides: without it a refused order would read as "outcome unknown".
                exceptions = client.exceptions
                for table in ("linear", "inverse"):
                    exceptions["exact"] |= exceptions.get(table, {}).get("exact", {})
        return client

    @staticmethod
    def _market(exchange: str, market: Mapping[str, Any], precision_mode: int) -> Market:
        precision = market.get("precision") or {}
        amount_step = _step(precision.get("amount"), precision_mode)
        minimum = ((market.get("limits") or {}).get("amount") or {}).get("min")
        return Market(
            exchange=exchange,
            symbol=market["symbol"],
            market_id=str(market["id"]),
            settle=market.get("settle") or market.get("quote") or "",
            contract_size=_decimal(market.get("contractSize") or 1),
            amount_step=amount_step,
            min_amount=_decimal(minimum) if minimum else amount_step,
            price_tick=_step(precision.get("price"), precision_mode),
            maintenance_margin_rate=DEFAULT_MAINTENANCE_MARGIN_RATE,
        )


_HOST = re.compile(r"^https?://[^/]+")


_WS_HOST = re.compile(r"^wss?://[^/]+")


def _rehost(urls: Any, host: re.Pattern[str], base: str) -> Any:
    if isinstance(urls, str):
        return host.sub(base.rstrip("/"), urls)
    if isinstance(urls, dict):
        return {key: _rehost(value, host, base) for key, value in urls.items()}
    if isinstance(urls, list):
        return [_rehost(value, host, base) for value in urls]
    return urls
