"""Commit, then publish: the one path by which state changes reach the store and the streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from oms.domain.errors import Unavailable
from oms.domain.events import SequencedEvent, Update, WatermarkMoved, event_user
from oms.engine.ports import Conflict, OrderChange, PriceUpdate, StateStore
from oms.engine.subscriptions import EventHub


class Journal:
    def __init__(self, store: StateStore, hub: EventHub) -> None:
        self.store = store
        self._hub = hub
        self._unsure: set[str] = set()
        """Users of commits that failed UNAVAILABLE: they may have landed all the same."""

    async def record(
        self,
        changes: Sequence[OrderChange],
        prices: Sequence[PriceUpdate] = (),
        updates: Sequence[Update] = (),
    ) -> list[SequencedEvent] | Conflict:
        try:
            result = await self.store.commit(changes, prices, updates)
        except (Unavailable, asyncio.CancelledError):
            # A reply lost past every retry, or a caller gone while it waited: the commit may
            # have landed. Its events reach streams from the store at the next store check
            # (catch_up_unsure), if no later event of its user brings them first.
            self._unsure |= _users(changes, updates)
            raise
        if isinstance(result, list):
            if result:
                self._hub.publish(result)
            elif users := _users(changes, updates):
                # Events were due, yet none came: an earlier attempt landed, its reply lost.
                # They are in the store under sequences unknown here. The commit stands even
                # if reading them back fails: the next store check reads them then.
                with contextlib.suppress(Unavailable):
                    await self._catch_up(users)
        return result

    async def catch_up_unsure(self) -> None:
        """Streams get whatever failed commits left in the store; call once it answers."""
        users, self._unsure = self._unsure, set()
        await self._catch_up(users)

    async def _catch_up(self, users: set[str]) -> None:
        try:
            await self._hub.catch_up(users)
        except BaseException:
            # Unavailable, or a caller's timeout cancelling it: catch_up_unsure tries again.
            self._unsure |= users
            raise


def _users(changes: Sequence[OrderChange], updates: Sequence[Update]) -> set[str]:
    """The users a commit gives events to."""
    users = {change.order.user_id for change in changes if change.events}
    return users | {event_user(u) for u in updates if not isinstance(u, WatermarkMoved)}
