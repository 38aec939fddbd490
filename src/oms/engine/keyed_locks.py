"""One asyncio.Lock per key, kept only while a caller holds or awaits it."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class KeyedLocks(Generic[K]):
    """Weak: a key's lock lives while a task holds or awaits it, not once per key ever asked
    (waiters keep it alive, so a newcomer never gets a second lock for a busy key)."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[K, asyncio.Lock] = weakref.WeakValueDictionary()

    def __call__(self, key: K) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def __len__(self) -> int:
        """Keys with a lock now."""
        return len(self._locks)
