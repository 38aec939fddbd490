"""How the Redis store reports Redis errors and silence: UNAVAILABLE, unless the task is being
cancelled, in which case the cancellation goes on (a loop that handles Unavailable would
otherwise carry on and keep shutdown waiting for it)."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from oms.adapters.redis_store.store import unavailable_when_down
from oms.domain.errors import Unavailable


class _Store:
    timeout_s = 0.05

    def __init__(self, cancel_first: bool = False) -> None:
        self.cancel_first = cancel_first

    @unavailable_when_down
    async def read(self) -> None:
        if self.cancel_first:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # what a shutdown does while redis-py times out a read
        raise RedisTimeoutError("Timeout reading from socket")

    @unavailable_when_down
    async def silent(self) -> None:
        await asyncio.Event().wait()


async def test_a_redis_error_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="state store unreachable"):
        await _Store(cancel_first=False).read()


async def test_a_redis_error_while_cancelling_is_the_cancellation() -> None:
    task = asyncio.ensure_future(_Store(cancel_first=True).read())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_no_answer_within_the_timeout_is_unavailable() -> None:
    with pytest.raises(Unavailable, match=r"did not answer within 0\.05 s"):
        await _Store().silent()


async def test_a_cancel_during_a_silent_call_is_the_cancellation() -> None:
    task = asyncio.ensure_future(_Store().silent())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
