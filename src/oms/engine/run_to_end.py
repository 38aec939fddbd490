"""Engine calls that must not stop halfway when their caller does.

grpc.aio cancels a handler's task when its client's deadline passes or the client goes away.
A call that commits, then acts on what it committed (sends the order it stored, asks the
exchange for the cancel it recorded, puts the stop or rule it stored where marks and fills
reach it, follows the account it stored as active), would leave the store saying one thing
and the OMS doing another if cut between the two. Such calls run in a task of their own,
which the caller's cancellation does not reach; the caller still ends at once. The paper
exchange needs none of this: each desk's worker makes the whole change, whoever waits, and
the rules a change fires finish in tasks of their own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

__all__ = ["finish_running", "run_to_end"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_running: set[asyncio.Task[Any]] = set()
"""Every call running here: the event loop keeps only weak references to tasks."""


def run_to_end(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """`method`, run to its end whatever becomes of its caller."""
    what = method.__qualname__

    @functools.wraps(method)
    async def carried(*args: P.args, **kwargs: P.kwargs) -> R:
        task = asyncio.get_running_loop().create_task(method(*args, **kwargs))
        _running.add(task)
        task.add_done_callback(_running.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(functools.partial(_log_failure, what))
            raise

    return carried


async def finish_running(timeout_s: float) -> None:
    """Wait up to `timeout_s` for the calls still running on this loop (at shutdown, those
    whose callers went away: before the connections they use close)."""
    loop = asyncio.get_running_loop()
    running = {task for task in _running if task.get_loop() is loop and not task.done()}
    if running:
        await asyncio.wait(running, timeout=timeout_s)


def _log_failure(what: str, task: asyncio.Future[Any]) -> None:
    """What a call whose caller went away raised: no one else hears of it."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("%s failed after its caller went away", what, exc_info=error)
