"""Per-user event streams: replay from the store, then live from the in-process hub.

This process is the single writer of its keyspace, so every committed event passes through
`EventHub.publish`. Commits answered out of order (seq 7 before 6) are healed from the store:
when seq N is committed every seq below N already is.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from oms.domain.errors import (
    HISTORY_TRIMMED,
    SEQUENCE_AHEAD,
    InvalidArgument,
    OmsError,
    ResourceExhausted,
    ResumeOutOfRange,
    StreamLimit,
    Unavailable,
)
from oms.domain.events import Heartbeat, SequencedEvent, UserEvent, event_user
from oms.engine.ports import StateStore

_REPLAY_BATCH = 1000


_ENDED: weakref.WeakKeyDictionary[asyncio.Task[Any], OmsError] = weakref.WeakKeyDictionary()


def cut_off(stream: asyncio.Task[Any] | None, error: OmsError) -> None:
    """End the stream served by task `stream` with `error`, wherever it waits: one whose
    client stopped reading waits on a send that flow control holds, which nothing else wakes.
    The task is cancelled; the API layer answers the call with `ended_by(task)`."""
    if stream is None or stream.done() or stream in _ENDED:
        return
    _ENDED[stream] = error
    stream.cancel()


def ended_by(stream: asyncio.Task[Any] | None) -> OmsError | None:
    """The error a stream was cut off with; None if it was not (its client went away).
    Kept beside the task, not in the cancel's message: a second cancel landing in the same
    loop iteration (a timeout's) would replace that message."""
    return None if stream is None else _ENDED.get(stream)


class _Subscription:
    def __init__(self, capacity: int, after_sequence: int) -> None:
        self._capacity = capacity
        self._queue: deque[SequencedEvent] = deque()
        self._ready = asyncio.Event()
        self._stream = asyncio.current_task()
        self.sent = after_sequence
        """Where the client can resume: no event it has not been sent lies before it."""
        self.replaying = True
        self.newest = 0
        """The newest sequence published while replaying."""
        self._ended = False

    def push(self, events: list[SequencedEvent]) -> None:
        if self._ended:
            return
        if self.replaying:
            # The replay reads them from the store as fast as its client takes them: nothing
            # is held, so a client catching up on a busy user is not cut off for being slow.
            self.newest = max(self.newest, events[-1].sequence)
            return
        if len(self._queue) + len(events) > self._capacity:
            # Drop the backlog now so a stalled client cannot hold memory; the stream ends with
            # RESOURCE_EXHAUSTED and the client resumes from its last sequence.
            self._end(
                ResourceExhausted(
                    f"stream fell more than {self._capacity} events behind; {_resume(self.sent)}"
                )
            )
        else:
            self._queue.extend(events)
            self._ready.set()

    def close(self) -> None:
        self._end(Unavailable(f"server is shutting down; {_resume(self.sent)}"))

    def _end(self, error: OmsError) -> None:
        self._ended = True
        self._queue.clear()
        cut_off(self._stream, error)

    async def next_batch(self, timeout_s: float) -> list[SequencedEvent] | None:
        """Queued events; None when `timeout_s` passed with nothing to deliver."""
        if not self._queue:
            self._ready.clear()
            # A timer, not asyncio.timeout: a timeout cancels the task, and a cut-off landing
            # in the same loop iteration would be mistaken for it (or it for the cut-off).
            timer = asyncio.get_running_loop().call_later(timeout_s, self._ready.set)
            try:
                await self._ready.wait()
            finally:
                timer.cancel()
            if not self._queue:
                return None
        batch = list(self._queue)
        self._queue.clear()
        return batch


class EventHub:
    def __init__(
        self,
        store: StateStore,
        heartbeat_interval_s: float,
        buffer_events: int,
        max_streams_per_user: int = 100,
    ) -> None:
        """`max_streams_per_user`: every event costs a write to each of its user's streams, so
        one client that leaks streams would otherwise starve everyone else."""
        self._store = store
        self._heartbeat_s = heartbeat_interval_s
        self._capacity = buffer_events
        self._max_per_user = max_streams_per_user
        self._subscribers: dict[str, set[_Subscription]] = {}
        self._latest: dict[str, int] = {}
        """The newest sequence of each user a stream follows, for its heartbeats."""
        self._listeners: list[Callable[[str, int], None]] = []
        self._event_listeners: list[Callable[[list[SequencedEvent]], None]] = []
        self._closed = False

    def publish(self, events: list[SequencedEvent]) -> None:
        for observe in self._event_listeners:
            observe(events)
        by_user: dict[str, list[SequencedEvent]] = {}
        for event in events:
            by_user.setdefault(event_user(event.event), []).append(event)
        for user_id, user_events in by_user.items():
            newest = user_events[-1].sequence
            subscriptions = self._subscribers.get(user_id)
            if subscriptions:
                if newest > self._latest.get(user_id, 0):
                    self._latest[user_id] = newest
                for subscription in subscriptions:
                    subscription.push(user_events)
            for listener in self._listeners:
                listener(user_id, newest)

    async def catch_up(self, user_ids: set[str]) -> None:
        """Publish what the store holds past the newest event published for each followed
        user: events committed whose sequences this process never learnt. The listeners
        (the history archive) learn every user's newest sequence, followed or not."""
        for user_id in user_ids:
            if user_id in self._subscribers:
                after = self._latest.get(user_id, 0)
                self.publish(await self._store.read_events(user_id, after, _REPLAY_BATCH))
            elif self._listeners:
                _, newest = await self._store.sequence_bounds(user_id)
                for listener in self._listeners:
                    listener(user_id, newest)

    @property
    def streams(self) -> int:
        """How many streams are open now, all users'. Safe from another thread (metrics):
        the sets are copied in one step before they are counted."""
        return sum(map(len, list(self._subscribers.values())))

    def following(self, user_id: str) -> int:
        """How many streams follow the user now."""
        return len(self._subscribers.get(user_id, ()))

    def add_listener(self, listener: Callable[[str, int], None]) -> None:
        """Told (user_id, newest sequence) after every commit that gave that user events."""
        self._listeners.append(listener)

    def add_event_listener(self, listener: Callable[[list[SequencedEvent]], None]) -> None:
        """Told every batch of committed events, all users' (for metrics)."""
        self._event_listeners.append(listener)

    def close(self) -> None:
        """Shutting down: every stream ends with UNAVAILABLE, a stalled one too."""
        self._closed = True
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.close()

    async def follow(
        self,
        user_id: str,
        after_sequence: int,
        accept: Callable[[UserEvent], bool],
        from_oldest: bool = False,
    ) -> AsyncIterator[SequencedEvent | Heartbeat]:
        """Events of one user that `accept` admits: those after `after_sequence` (or every
        retained one, `from_oldest`), then live.

        `after_sequence` 0 means live only. A heartbeat marks the switch from replay to live;
        more are interleaved when idle.
        """
        if from_oldest and after_sequence:
            raise InvalidArgument(
                "from_oldest", "replays from the oldest retained event: give no after_sequence"
            )
        if self._closed:
            raise Unavailable("server is shutting down")
        if (open_now := self.following(user_id)) >= self._max_per_user:
            raise StreamLimit(
                f"user_id {user_id!r} already has {open_now} streams open, as many as "
                "max_streams_per_user allows: close one first"
            )
        subscription = _Subscription(self._capacity, after_sequence)
        self._subscribers.setdefault(user_id, set()).add(subscription)
        try:
            cursor = await self._start_cursor(user_id, after_sequence, from_oldest)
            subscription.sent = cursor
            read_again = False
            while True:
                batch = await self._store.read_events(user_id, cursor, _REPLAY_BATCH)
                if batch and from_oldest and cursor == subscription.sent:
                    # Nothing sent yet: the replay starts at the oldest event retained now.
                    cursor = batch[0].sequence - 1
                if batch:
                    _check_follows(cursor, batch[0].sequence)
                elif read_again:
                    # This read was sent after the events' commits were answered.
                    raise Unavailable(
                        f"events after sequence {cursor} were published but the state store "
                        f"does not hold them; {_resume(cursor)}"
                    )
                for event in batch:
                    cursor = event.sequence
                    if accept(event.event):
                        # Handed to gRPC once yielded: a cut-off from here on still sends it
                        # ahead of the status, so the resume point is past it.
                        subscription.sent = cursor
                        yield event
                if len(batch) == _REPLAY_BATCH:
                    read_again = False
                elif subscription.newest > cursor:
                    read_again = True  # published while this read was on its way
                else:
                    break
            subscription.replaying = False
            # Tells the client it is live: everything committed from here on reaches it.
            yield self._heartbeat(user_id, cursor)
            last_sent = time.monotonic()
            while True:
                wait_s = max(0.0, self._heartbeat_s - (time.monotonic() - last_sent))
                live = await subscription.next_batch(wait_s)
                if live is None:
                    yield self._heartbeat(user_id, cursor)
                    last_sent = time.monotonic()
                    continue
                for event in live:
                    if event.sequence <= cursor:
                        continue
                    if event.sequence > cursor + 1:
                        missed = await self._store.read_events(
                            user_id, cursor, event.sequence - cursor - 1
                        )
                    else:
                        missed = []
                    _check_follows(cursor, (missed or [event])[0].sequence)
                    for item in (*missed, event):
                        cursor = item.sequence
                        if accept(item.event):
                            subscription.sent = cursor
                            yield item
                            last_sent = time.monotonic()
        finally:
            subscribers = self._subscribers.get(user_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[user_id]
                    self._latest.pop(user_id, None)

    def _heartbeat(self, user_id: str, cursor: int) -> Heartbeat:
        """`cursor`: the stream has sent every event up to it that it carries (they were
        yielded before), while newer ones may still wait in its buffer."""
        return Heartbeat(max(cursor, self._latest.get(user_id, 0)), time.time_ns(), cursor)

    async def _start_cursor(self, user_id: str, after_sequence: int, from_oldest: bool) -> int:
        oldest, newest = await self._store.sequence_bounds(user_id)
        if newest > self._latest.get(user_id, 0):
            self._latest[user_id] = newest
        if from_oldest:
            return 0  # its first read finds the oldest retained (so does a resume from 0)
        if not after_sequence:
            return newest
        if after_sequence > newest:
            raise ResumeOutOfRange(
                f"after_sequence {after_sequence} is beyond the newest sequence {newest}",
                SEQUENCE_AHEAD,
                newest_sequence=newest,
            )
        if after_sequence < oldest - 1:
            raise ResumeOutOfRange(
                f"after_sequence {after_sequence} is older than the retained history; "
                f"the oldest available sequence is {oldest}",
                HISTORY_TRIMMED,
                oldest_sequence=oldest,
            )
        return after_sequence


def _check_follows(cursor: int, first: int) -> None:
    """Events read after `cursor` must start right after it: retention may trim the stream
    while a slow client catches up, and a stream never skips events silently."""
    if first != cursor + 1:
        raise ResumeOutOfRange(
            f"events after sequence {cursor} left the retained history while this stream "
            f"caught up; the oldest available sequence is {first}",
            HISTORY_TRIMMED,
            oldest_sequence=first,
        )


def _resume(cursor: int) -> str:
    if cursor:
        return f"resume with after_sequence={cursor}"
    # 0 asks for live only: what was committed meanwhile would be missed.
    return (
        "the user had no events when this stream began, so there is no sequence to resume "
        "after: resume with from_oldest"
    )
