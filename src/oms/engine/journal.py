"""Commit, then publish: the one path by which state changes reach the store and the streams."""

from __future__ import annotations

from collections.abc import Sequence

from oms.domain.events import SequencedEvent, Update
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
            self._hub.publish(result)
        return result
