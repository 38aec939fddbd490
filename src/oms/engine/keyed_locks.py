"""One asyncio.Lock per key, kept only while a caller holds or awaits it; and the turns of
attempts that share a client id, built on them."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Hashable
from contextlib import AbstractAsyncContextManager, nullcontext
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


class ClientIdTurns:
    """Runs the attempts of a request that share a client id one after the other.

    A retry sent while its first attempt is in flight would otherwise look the client id up
    before that attempt's record lands, miss it, and be judged on the state that attempt left
    (a flat position, a moved price, a stop that has triggered since). This process is its
    store's only writer, so a lock here orders every attempt; callers run to their end
    (run_to_end), so a caller that gives up does not end its turn early."""

    def __init__(self) -> None:
        self._locks: KeyedLocks[tuple[str, str]] = KeyedLocks()

    def __call__(self, user_id: str, client_id: str) -> AbstractAsyncContextManager[object]:
        """No client id: nothing to wait for (the OMS makes a new one)."""
        if not client_id:
            return nullcontext()
        return self._locks((user_id, client_id))
