"""Reconciliation: what changed on a followed account while the OMS was not looking.

On activation, at every start and after the order feed dropped, the account's open orders
are listed at once: those the OMS did not place are tracked from then on (RECONCILED), the
exchange's fills of recently finished orders are applied when the OMS lacks them (a fill
reported after the cancel, or while the OMS was down), and each position side is compared
with the exchange's (drift is reported; the OMS keeps positions from its own fills).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

from oms.domain.decimals import ZERO
from oms.domain.errors import OmsError
from oms.domain.events import OrderEventType, OrderUpdated
from oms.domain.markets import MarketCatalog
from oms.domain.orders import Order, OrderStatus
from oms.domain.venue_reports import FillReport, OrderReport, external_order
from oms.engine.followed_accounts import FollowedAccount
from oms.engine.gateway import GatewayError
from oms.engine.journal import Journal
from oms.engine.ports import Conflict, OrderChange, OrderQuery, StateStore

log = logging.getLogger(__name__)

# Orders read at a time when looking for fills reported late.
_SWEEP_PAGE = 1000


class Settler(Protocol):
    async def settle(
        self,
        followed: FollowedAccount,
        order_id: str,
        report: OrderReport | None,
        fills: Sequence[FillReport] = (),
    ) -> Order:
        """Bring the order in line with a report and fills, under the account's lock."""
        ...

    async def known_order(self, followed: FollowedAccount, report: OrderReport) -> Order | None:
        """The OMS order an exchange report is about, if any."""
        ...


class Reconciliation:
    def __init__(
        self,
        store: StateStore,
        journal: Journal,
        catalog: MarketCatalog,
        settler: Settler,
        new_id: Callable[[], str],
        clock_ns: Callable[[], int],
        lookback_s: Callable[[str], float],
    ) -> None:
        """`lookback_s`: per exchange, how far back finished orders' fills are read."""
        self._store = store
        self._journal = journal
        self._catalog = catalog
        self._settler = settler
        self._new_id = new_id
        self._clock_ns = clock_ns
        self._lookback_s = lookback_s

    async def reconcile(self, followed: FollowedAccount, listed: list[OrderReport]) -> None:
        """`listed`: every open order of the account at the exchange, just read."""
        await self.track_external(followed, listed)
        await self._sweep_fills(followed)
        await self._compare_positions(followed)

    def _lookback_start_ns(self, followed: FollowedAccount) -> int:
        return self._clock_ns() - int(self._lookback_s(followed.exchange) * 1e9)

    async def recent_orders(self, followed: FollowedAccount) -> list[Order]:
        """The account's orders the OMS changed in the last `fill_lookback_s`, oldest first:
        every one created since then, and older ones among the page that reaches back past it."""
        since_ns = self._lookback_start_ns(followed)
        recent: list[Order] = []
        query = OrderQuery(
            user_id=followed.user_id, page_size=_SWEEP_PAGE, exchange=followed.exchange
        )
        while True:
            page = await self._store.list_orders(query)  # newest first
            recent += (order for order in page.items if order.updated_at_ns >= since_ns)
            if page.next_cursor is None or page.items[-1].created_at_ns < since_ns:
                return recent[::-1]
            query = dataclasses.replace(query, cursor=page.next_cursor)

    async def _sweep_fills(self, followed: FollowedAccount) -> None:
        """Apply the exchange's recent fills of orders the OMS holds finished: a fill reported
        after the cancel, while the OMS was down or its feed was. Recent: in the last
        `fill_lookback_s`, on the symbols of the orders changed then and of open positions."""
        since_ns = self._lookback_start_ns(followed)
        recent = await self.recent_orders(followed)
        finished = {
            order.exchange_order_id: order
            for order in recent
            if not order.is_open and order.exchange_order_id
        }
        symbols = {order.symbol for order in recent} | {
            position.symbol
            for position in await self._store.open_positions_on(followed.exchange)
            if position.user_id == followed.user_id
        }
        for symbol in sorted(symbols):
            by_order: defaultdict[str, list[FillReport]] = defaultdict(list)
            for fill in await followed.gateway.recent_fills(symbol, since_ns):
                by_order[fill.exchange_order_id].append(fill)
            for exchange_order_id, fills in by_order.items():
                try:
                    await self._sweep_order(followed, finished, symbol, exchange_order_id, fills)
                except (GatewayError, OmsError) as error:
                    # One order must not keep the account from being followed.
                    log.error(
                        "reconciliation: fills of %s order %s not swept: %s",
                        followed.exchange,
                        exchange_order_id,
                        error,
                    )

    async def _sweep_order(
        self,
        followed: FollowedAccount,
        finished: dict[str, Order],
        symbol: str,
        exchange_order_id: str,
        fills: list[FillReport],
    ) -> None:
        order = finished.get(exchange_order_id) or await self._finished_order(
            followed, symbol, exchange_order_id, fills
        )
        if order is None:
            return
        total = sum((fill.quantity for fill in fills), ZERO)
        if total != order.filled_quantity:
            log.warning(
                "reconciliation: order %s on %s filled %s at the exchange, %s in the OMS; "
                "applying the missing fills",
                order.order_id,
                order.exchange,
                total,
                order.filled_quantity,
            )
            await self._settler.settle(followed, order.order_id, None, fills)

    async def _finished_order(
        self,
        followed: FollowedAccount,
        symbol: str,
        exchange_order_id: str,
        fills: list[FillReport],
    ) -> Order | None:
        """The finished OMS order of fills not applied yet whose order was not among those
        listed as recently changed (it rested long before it ended): found through the
        exchange's record of it, once per order placed outside the OMS. None when every fill
        is applied, or the order is open (the syncs follow it) or not the OMS's."""
        if exchange_order_id in followed.foreign_orders:
            return None
        applied = await self._store.applied_trade_ids(
            followed.user_id, followed.exchange, symbol, [fill.trade_id for fill in fills]
        )
        if all(fill.trade_id in applied for fill in fills):
            return None
        report = await followed.gateway.order_by_id(symbol, exchange_order_id)
        order = None if report is None else await self._settler.known_order(followed, report)
        if order is None:
            followed.foreign_orders.add(exchange_order_id)
            return None
        if order.status is OrderStatus.REJECTED:
            # The OMS settled it as never taken, past the lookup grace; the exchange filled
            # it after all. A REJECTED order takes no fill: the position check reports drift.
            log.error(
                "reconciliation: order %s is REJECTED in the OMS but %s filled it (%s)",
                order.order_id,
                order.exchange,
                exchange_order_id,
            )
            return None
        return None if order.is_open else order

    async def _compare_positions(self, followed: FollowedAccount) -> None:
        """Report every side whose size at the exchange differs from the OMS's, which keeps
        positions from its own fills: fills of orders it never saw (closed before it could
        track them) show here. Reported, not repaired."""
        at_exchange = {
            (report.symbol, report.position_side): report.size
            for report in await followed.gateway.positions()
        }
        held = {
            (position.symbol, position.position_side): position.size
            for position in await self._store.open_positions_on(followed.exchange)
            if position.user_id == followed.user_id
        }
        for symbol, side in sorted(at_exchange.keys() | held.keys(), key=str):
            exchange_size = at_exchange.get((symbol, side), ZERO)
            oms_size = held.get((symbol, side), ZERO)
            if exchange_size != oms_size:
                log.warning(
                    "reconciliation: position drift for %s on %s %s %s: the exchange holds "
                    "%s, the OMS %s",
                    followed.user_id,
                    followed.exchange,
                    symbol,
                    side.value,
                    exchange_size,
                    oms_size,
                )

    async def track_external(self, followed: FollowedAccount, listed: list[OrderReport]) -> None:
        """Track the open orders the OMS did not place."""
        for report in listed:
            known = await self._settler.known_order(followed, report)
            if known is not None:
                if not known.is_open:
                    log.error(
                        "reconciliation: %s has order %s open, which the OMS holds %s",
                        followed.exchange,
                        known.order_id,
                        known.status.value,
                    )
                continue
            order = external_order(
                report, followed.user_id, followed.exchange, self._new_id(), self._clock_ns()
            )
            if order is None or (order.exchange, order.symbol) not in self._catalog:
                log.warning(
                    "reconciliation: %s order %s on %s of %s is of a kind the OMS does not "
                    "track; left alone",
                    followed.exchange,
                    report.exchange_order_id,
                    report.symbol,
                    followed.user_id,
                )
                continue
            created = OrderUpdated(OrderEventType.RECONCILED, order)
            outcome = await self._journal.record([OrderChange(order, None, [created])])
            if isinstance(outcome, Conflict):
                continue  # tracked before, under its "ext-" client order id
            log.warning(
                "reconciliation: %s has open order %s of %s that the OMS did not place; "
                "tracking it as %s",
                followed.exchange,
                report.exchange_order_id,
                followed.user_id,
                order.order_id,
            )
            await self._settler.settle(followed, order.order_id, report)
