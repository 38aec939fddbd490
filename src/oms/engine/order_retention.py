"""Forgetting finished paper orders once they are older than the retention period.

The state store keeps every order and fill for good unless told otherwise: a grid bot at one
order a second adds ~100 MB a day to Redis. With a retention period, a finished paper order
(and its fills) goes from the store once it has been finished that long, unless something
still acts on it: an open order linked to it, or a conditional rule still to act. Its events
stay in the event stream (as retained) and in the history archive; positions stay, their
records not being orders (a position open for longer than the period, as a grid bot's may
be, keeps its record, while ListFills of it lists only the fills not forgotten).

Orders on real exchanges are kept for good: the OMS still acts on finished ones there, long
after they finished (a fill the exchange lists late, within its lookback; the exits of an
entry owed while its account was not followed; an exit re-made if missing), which a
retention for them must first allow for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from oms.domain.errors import Unavailable
from oms.domain.markets import PAPER
from oms.domain.retention import forgettable
from oms.engine.ports import RetainedOrders

log = logging.getLogger(__name__)

BATCH = 500


class OrderRetention:
    def __init__(
        self, store: RetainedOrders, retention_s: float, clock_ns: Callable[[], int]
    ) -> None:
        self._store = store
        self._retention_ns = int(retention_s * 1_000_000_000)
        self._clock_ns = clock_ns
        self.interval_s = min(max(retention_s / 4, 0.1), 3600.0)
        """How often `run` looks: a few times per retention period, at most hourly."""

    async def prune(self) -> int:
        """One pass over every user's orders, oldest first; returns how many were forgotten."""
        cutoff_ns = self._clock_ns() - self._retention_ns
        kept = await self._store.rule_order_ids()
        forgotten = 0
        for user in await self._store.users_with_orders():
            open_ids = {order.order_id for order in await self._store.open_orders(user)}
            kept_ids = {order_id for owner, order_id in kept if owner == user}
            after = 0
            while page := await self._store.orders_from_oldest(user, after, BATCH):
                orders = [order for _, order in page if order is not None]
                gone = [
                    o
                    for o in orders
                    if o.exchange == PAPER and forgettable(o, cutoff_ns, open_ids, kept_ids)
                ]
                if gone:
                    forgotten += await self._store.forget_orders(user, gone)
                # Placed in this order: past one placed after the cutoff, none has ended
                # before it.
                if len(page) < BATCH or any(o.created_at_ns >= cutoff_ns for o in orders):
                    break
                after = page[-1][0]
        return forgotten

    async def run(self) -> None:
        """`prune` every `interval_s` until cancelled; a store that does not answer is tried
        again at the next."""
        while True:
            try:
                if forgotten := await self.prune():
                    log.info("order retention: forgot %d finished orders", forgotten)
            except Unavailable as error:
                log.warning("order retention: pass not finished (%s)", error)
            except Exception:  # a bug here must not end the retention, nor the server
                log.exception("order retention: pass failed")
            await asyncio.sleep(self.interval_s)
