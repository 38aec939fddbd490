"""An account the OMS follows on a real exchange: its gateway, its lock and its background
work, which stop with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any

from oms.domain.accounts import Account
from oms.engine.gateway import ExchangeGateway
from oms.engine.keyed_locks import KeyedLocks


class FollowedAccount:
    def __init__(self, account: Account, gateway: ExchangeGateway) -> None:
        self.user_id = account.user_id
        self.exchange = account.exchange
        self.gateway = gateway
        self.lock = asyncio.Lock()
        """Held by every change to one of the account's orders."""
        self.tasks: dict[str, asyncio.Task[None]] = {}
        """Background work by name: the poller and one lookup per unsettled order."""
        self.refused_sends: set[str] = set()
        """Orders that fired (held stops, trailing stops' closes) whose last send met a 429
        or 418: not at the exchange, to send again once the back-off has passed."""
        self.unsent: dict[str, str] = {}
        """New orders that never left (no connection to the exchange, say), with why: their
        lookup sends them once the exchange answers again, within their grace."""
        self.sending: set[str] = set()
        """Orders whose submit has not returned yet: no lookup gives up on them meanwhile."""
        self.foreign_orders: set[str] = set()
        """Exchange order ids of fills that belong to no OMS order (placed outside it)."""
        self.follow_ups: KeyedLocks[str] = KeyedLocks()
        """By order id: held while what the order's fills set off runs, so that two runs
        (a client's retry, one run again in the background) each find what the other did."""
        self._stopped = False

    @contextlib.contextmanager
    def submitting(self, order_id: str) -> Iterator[None]:
        self.sending.add(order_id)
        try:
            yield
        finally:
            self.sending.discard(order_id)

    def start(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background until it ends or the account stops; nothing once
        it has stopped (a call in flight at deactivation: what it would have followed up is
        settled when the account is followed again)."""
        if name in self.tasks or self._stopped:
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work, name=f"{self.exchange}:{name}")
        self.tasks[name] = task
        task.add_done_callback(lambda _: self.tasks.pop(name, None))

    async def stop(self) -> None:
        self._stopped = True
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.gateway.close()
