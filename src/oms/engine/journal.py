"""Commit, then publish: the one path by which state changes reach the store and the streams."""

from __future__ import annotations

from collections.abc import Sequence

from oms.domain.events import SequencedEvent, Update, WatermarkMoved, event_user
from oms.engine.ports import Conflict, OrderChange, PriceUpdate, StateStore
from oms.engine.subscriptions import EventHub


class Journal:
    def __init__(self, store: StateStore, hub: EventHub) -> None:
        self.store = store
        self._hub = hub

    async def record(
        self,
        changes: Sequence[OrderChange],
        prices: Sequence[PriceUpdate] = (),
        updates: Sequence[Update] = (),
    ) -> list[SequencedEvent] | Conflict:
        result = await self.store.commit(changes, prices, updates)
        if isinstance(result, list):
            published = [u for u in updates if not isinstance(u, WatermarkMoved)]
            if result or not (published or any(c.events for c in changes)):
                self._hub.publish(result)
            else:
                # An earlier attempt landed, its reply lost: the events are in the store
                # under sequences unknown here.
                users = {c.order.user_id for c in changes} | {event_user(u) for u in published}
                await self._hub.catch_up(users)
        return result
