"""Waits between attempts that double after each failure, up to a cap."""

from __future__ import annotations

import asyncio


class Backoff:
    """`first_s`, then twice the last wait, never more than `max_s`; `reset` after a
    success starts again from `first_s`."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.next_s = first_s
        """The next wait, for a log line that says when the next attempt comes."""

    def reset(self) -> None:
        self.next_s = self.first_s

    async def wait(self) -> None:
        await asyncio.sleep(self.next_s)
        self.next_s = min(self.next_s * 2, self.max_s)
