"""Copying every user's events from the state store into the history archive.

The store's per-user streams are the source: the archiver keeps, per user, the newest
sequence the archive holds and copies what follows, in order, in batches. Whatever was
committed while the archive was down, or while no OMS ran, is copied on the next pass, and a
batch copied twice is harmless (the archive ignores sequences it has). The archive may lag
the store; it never slows a commit. An archive that refuses one user's events (a value or
a rule of its own it will not take) holds that user back, with its own retries, not everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from dataclasses import dataclass

from oms.domain.errors import FailedPrecondition, Unavailable
from oms.engine.backoff import Backoff
from oms.engine.ports import EventArchive, EventSource

log = logging.getLogger(__name__)

BATCH_EVENTS = 500
_RETRIES_PER_PASS = 8
_NAMED = 10


@dataclass(slots=True)
class _Held:
    """A user whose events the archive refused: tried again at `due` (the loop's clock)."""

    due: float
    wait_s: float
    reason: str


class Archiver:
    def __init__(
        self,
        source: EventSource,
        archive: EventArchive,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
    ) -> None:
        """A failed pass is tried again after `retry_s`, doubling up to `max_retry_s`: an
        archive down for hours costs a log line a half-minute, not one a second. A user whose
        events the archive refuses is tried again on the same terms, alone."""
        self._source = source
        self._archive = archive
        self._backoff = Backoff(retry_s, max_retry_s)
        self._cursors: dict[str, int] | None = None
        # In the order they became pending (a dict): those a failed pass did not reach first.
        self._dirty: dict[str, None] = {}
        self._held: dict[str, _Held] = {}
        self._failed_at: str | None = None
        """The user the last pass failed at (not held): tried after everyone else next."""
        self._wake = asyncio.Event()
        self._batch = BATCH_EVENTS
        """Events a batch copies now: halved at each failed append, a quarter more at each
        that lands (a server too slow for a whole batch within its time takes smaller ones,
        and the size stays near what it takes)."""
        self.missed_events = 0
        """Events the store no longer held when their turn to be copied came (retention)."""

    def committed(self, user_id: str, newest: int) -> None:
        """`user_id` has events up to `newest` in the store (an EventHub listener)."""
        # Behind the archive too: a store that lost its last writes numbers anew from there.
        if self._cursors is None or self._cursors.get(user_id, 0) != newest:
            self._dirty[user_id] = None
            self._wake.set()

    async def run(self) -> None:
        """Copy until cancelled; an unreachable store or archive is retried."""
        failures = 0
        while True:
            self._wake.clear()
            try:
                copied = await self.copy_one_pass()
            except Exception as error:
                failures += 1
                again_s = self._backoff.next_s
                if isinstance(error, Unavailable):
                    log.warning("history archive: %s; again in %g s", error, again_s)
                else:
                    # Not a reason to stop archiving for good: say so loudly and go on.
                    log.exception("history archive: copy failed; again in %g s", again_s)
                await self._backoff.wait()
                continue
            if failures:
                log.info(
                    "history archive: caught up after %d failed attempts (users held back: %d)",
                    failures,
                    len(self._held),
                )
                failures = 0
                self._backoff.reset()
            if copied:
                continue  # what was committed meanwhile
            due = min((held.due for held in self._held.values()), default=None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(due):
                    await self._wake.wait()

    async def close(self) -> None:
        await self._archive.close()

    async def copy_pending(self) -> None:
        """Copy every event the archive lacks, as far as the store has them now, but those
        of users held back (as at a stop: their retries would take its time, in vain)."""
        while await self.copy_one_pass(retry_held=False):
            pass

    @property
    def held_users(self) -> int:
        """How many users' events the archive refuses now (each waiting for its retry)."""
        return len(self._held)

    async def copy_one_pass(self, retry_held: bool = True) -> bool:
        """One batch for each user pending now, and for a few held users whose retry is due;
        whether there was any. Passes stay short under steady commits, so that a held user's
        retry comes when due and a pass that went well is seen to."""
        if self._cursors is None:
            users = await self._source.users_with_events()
            self._cursors = await self._archive.last_sequences()
            self._dirty.update(dict.fromkeys(users))
        loop = asyncio.get_running_loop()
        now = loop.time()
        failed_at, self._failed_at = self._failed_at, None
        users = [user for user in self._dirty if user not in self._held and user != failed_at]
        # Earliest first, and only a few: many users held (a rule that refuses everyone's
        # events) must not make the others' wait grow with their number.
        if retry_held:
            users += heapq.nsmallest(
                _RETRIES_PER_PASS,
                (user for user, held in self._held.items() if held.due <= now),
                key=lambda user: self._held[user].due,
            )
        if failed_at is not None:  # never held: only a pass holds, and then it is not set
            users.append(failed_at)
        self._dirty.clear()  # a held user not due yet comes back when it is
        refused: dict[str, tuple[Exception, list[str]]] = {}
        done = 0
        try:
            for user_id in users:
                try:
                    more = await self._copy(user_id, self._cursors)
                except Unavailable:  # the store's or the archive's: everyone's
                    held = self._held.get(user_id)
                    if held is not None:  # not first again among the held (a row locked)
                        held.due = loop.time() + held.wait_s
                    raise
                except Exception as error:
                    if self._hold(user_id, error, loop.time()):
                        refused.setdefault(str(error), (error, []))[1].append(user_id)
                else:
                    if self._held.pop(user_id, None) is not None:
                        log.info("history archive: %s's events are archived again", user_id)
                    if more:
                        self._dirty[user_id] = None
                done += 1
        finally:
            # Those not reached first next time, the one it failed at after all others.
            self._dirty = dict.fromkeys(users[done + 1 :]) | self._dirty
            if done < len(users) and users[done] not in self._held:
                self._failed_at = users[done]
            self._say_held(refused)
        return bool(users)

    def _hold(self, user_id: str, error: Exception, now: float) -> bool:
        """Hold `user_id` back until its retry is due, from `now`; whether that is news (a
        user held anew, or for another reason)."""
        held = self._held.get(user_id)
        wait_s = self._backoff.first_s
        if held is not None:
            wait_s = min(held.wait_s * 2, self._backoff.max_s)
        reason = str(error)
        self._held[user_id] = _Held(now + wait_s, wait_s, reason)
        return held is None or held.reason != reason

    def _say_held(self, refused: dict[str, tuple[Exception, list[str]]]) -> None:
        """One line per reason, however many users it holds back."""
        for reason, (error, users) in refused.items():
            named = ", ".join(users[:_NAMED])
            if len(users) > _NAMED:
                named += f" and {len(users) - _NAMED} more"
            said = (
                f"history archive: {reason}; events held back: {named}; each tried again "
                f"after {self._backoff.first_s:g} s, then less and less often (up to every "
                f"{self._backoff.max_s:g} s), while the others' go on"
            )
            # A refusal is the archive's answer; anything else is ours: with its traceback.
            log.error("%s", said, exc_info=None if isinstance(error, FailedPrecondition) else error)

    async def _copy(self, user_id: str, cursors: dict[str, int]) -> bool:
        """One batch of `user_id`'s events; whether more may follow."""
        after = cursors.get(user_id, 0)
        limit = self._batch
        if after:
            # From the newest archived event on: the store must still hold it as archived.
            docs = await self._source.read_event_docs(user_id, after - 1, limit + 1)
            anchored = bool(docs) and docs[0][0] == after
            if not docs or (
                anchored and await self._archive.first_mismatch(user_id, docs[:1]) is not None
            ):
                await self._realign(user_id, after, cursors)
                return True
            docs = docs[1:] if anchored else docs[:limit]
        else:
            docs = await self._source.read_event_docs(user_id, 0, limit)
        if not docs:
            return False
        try:
            await self._archive.append(user_id, docs)
        except Unavailable:
            self._batch = max(1, limit // 2)
            raise
        self._batch = min(BATCH_EVENTS, limit + limit // 4 + 1)
        if docs[0][0] > after + 1:  # said once: after the append, which may be refused
            self.missed_events += docs[0][0] - after - 1
            log.error(
                "history archive: %s's events %d to %d left the store's retention before "
                "they were archived",
                user_id,
                after + 1,
                docs[0][0] - 1,
            )
        cursors[user_id] = docs[-1][0]
        return len(docs) == limit

    async def _realign(self, user_id: str, after: int, cursors: dict[str, int]) -> None:
        """The store no longer holds `user_id`'s events up to `after` as archived: it lost
        its last writes (an fsync that never came, a replaced data dir) and numbers new events
        from there. Set the archived events aside from the first that differs, loudly, and
        copy the store's own from there."""
        start = 0
        while True:
            docs = await self._source.read_event_docs(user_id, start, BATCH_EVENTS)
            held = [doc for doc in docs if doc[0] <= after]
            diverged = await self._archive.first_mismatch(user_id, held) if held else None
            if diverged is None and held and len(held) == BATCH_EVENTS:
                start = held[-1][0]
                continue
            if diverged is None:
                diverged = (held[-1][0] if held else start) + 1
            break
        moved = await self._archive.set_aside(user_id, diverged)
        log.error(
            "history archive: the store no longer holds %s's events from %d on as they were "
            "archived (Redis lost acknowledged writes or its data was replaced, or the database "
            "was restored from an older backup or holds another deployment's events); the %d "
            "archived ones were moved to oms_events_superseded and the store's are copied",
            user_id,
            diverged,
            moved,
        )
        cursors[user_id] = diverged - 1
