"""Which failures are worth another attempt, and how long to wait before it."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import grpc

from oms_client.errors import SHUTTING_DOWN_REASON, error_reasons

__all__ = [
    "NOT_TAKEN_CODES",
    "NO_RETRY",
    "RETRYABLE_CODES",
    "OutcomeUnknown",
    "RetryPolicy",
    "call_with_retry",
    "not_run",
]

T = TypeVar("T")

RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)
"""Transient by the contract: Redis or the exchange unreachable, a server shutting down, an
attempt that ran out of time, a rate limit; ABORTED, the state the call was decided on
changed under it before anything was written ("try again"). CANCELLED here is never the
caller's own cancel (grpc.aio raises asyncio.CancelledError for that): it is a server that
stopped with the call queued or still running, which, like a lost reply, an idempotent call
may repeat. Every other code (INVALID_ARGUMENT, ALREADY_EXISTS, NOT_FOUND,
FAILED_PRECONDITION, UNKNOWN, INTERNAL...) would fail the same way again, or means something
the caller must look at, so it is raised after the first attempt."""

# Up to 20% off each wait (gRPC's connection-backoff spec spreads by +/-20%; only below, so
# that the cap stays a cap and spreads clients at it too): clients that failed together do
# not retry in step, and the total wait stays predictable (full jitter can make a whole
# retry budget collapse to ~0 s).
_JITTER = 0.2

_DEFAULT_ATTEMPTS = 6

# Less than this is too short for an attempt to achieve anything but DEADLINE_EXCEEDED.
_FINAL_ATTEMPT_S = 0.1


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter.

    The wait before retry n (n = 1, 2, ...) is about
    `min(max_backoff_s, initial_backoff_s * multiplier ** (n - 1))`, +/-20%.
    """

    attempts: int | None = None
    """Attempts in all, the first one included; 1 means no retry. None: 6 without a
    `deadline_s`, and as many as fit in it with one."""
    initial_backoff_s: float = 0.05
    """Wait before the first retry."""
    max_backoff_s: float = 2.0
    """No wait is longer than this."""
    multiplier: float = 2.0
    """Growth of the wait from one retry to the next."""
    deadline_s: float | None = None
    """The whole call, attempts and waits included, ends within this many seconds: each
    attempt's deadline is cut to what is left, and a wait that would leave the next attempt
    less than 0.1 s is shortened to leave it that; the call gives up only when not even that
    is left. For a resuming stream it bounds one outage instead, the same way from when the
    connection was lost. None: only `attempts` bounds it."""

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if not 0 <= self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("need 0 <= initial_backoff_s <= max_backoff_s")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, not {self.multiplier}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be positive, not {self.deadline_s}")

    def backoff_s(self, retry: int) -> float:
        """The wait before retry number `retry` (1 for the first retry), jittered below its
        nominal value: clients at the cap do not retry in step."""
        # Below the cap or not is decided on logarithms: a deadline-only policy retries
        # without end, and the power itself would overflow a float after ~1,000 retries.
        nominal = self.max_backoff_s
        if self.initial_backoff_s == 0:
            nominal = 0.0
        elif (retry - 1) * math.log(self.multiplier) < math.log(
            self.max_backoff_s / self.initial_backoff_s
        ):
            nominal = self.initial_backoff_s * self.multiplier ** (retry - 1)
        return nominal * random.uniform(1 - _JITTER, 1)

    def gives_up_after(self, failures: int) -> bool:
        """Whether `failures` failed attempts in a row use up `attempts` (6 when neither
        `attempts` nor `deadline_s` is given; never when only `deadline_s` is)."""
        if self.attempts is not None:
            return failures >= self.attempts
        return self.deadline_s is None and failures >= _DEFAULT_ATTEMPTS

    def wait_before(self, retry: int, give_up_at: float | None, now: float) -> float | None:
        """The wait before retry number `retry`, shortened so that it starts 0.1 s before
        `give_up_at` at the latest (a loop time); None when it is not to be made."""
        if self.gives_up_after(retry):
            return None
        wait = self.backoff_s(retry)
        if give_up_at is not None:
            to_last_start = give_up_at - _FINAL_ATTEMPT_S - now
            if to_last_start < 0:
                return None
            wait = min(wait, to_last_start)
        return wait


NO_RETRY = RetryPolicy(attempts=1)
"""One attempt: for calls that must not be repeated blindly."""


async def call_with_retry(
    policy: RetryPolicy,
    attempt: Callable[[float | None], Awaitable[T]],
    attempt_timeout_s: float | None,
    failed: Callable[[grpc.aio.AioRpcError], None] | None = None,
    only: Callable[[grpc.aio.AioRpcError], bool] | None = None,
) -> T:
    """Runs `attempt(timeout_s)` until it succeeds, fails with a code outside RETRYABLE_CODES
    (or an error `only` refuses, when given), or `policy.attempts` or `policy.deadline_s` are
    used up; then raises the last grpc.aio.AioRpcError unchanged. Each attempt gets
    `attempt_timeout_s`, cut to what is left of the deadline; the wait before the last one is
    cut so that it still gets 0.1 s. `failed` is told each attempt's error."""
    loop = asyncio.get_running_loop()
    give_up_at = None if policy.deadline_s is None else loop.time() + policy.deadline_s
    retry = 0
    while True:
        timeout_s = attempt_timeout_s
        if give_up_at is not None:
            left = give_up_at - loop.time()
            timeout_s = left if timeout_s is None else min(timeout_s, left)
        try:
            return await attempt(timeout_s)
        except grpc.aio.AioRpcError as error:
            if failed is not None:
                failed(error)
            retry += 1
            if error.code() not in RETRYABLE_CODES or (only is not None and not only(error)):
                raise
            wait = policy.wait_before(retry, give_up_at, loop.time())
            if wait is None:
                raise
        await asyncio.sleep(wait)


NOT_TAKEN_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED})
"""Retryable codes of a call the server did not act on: a rate limit, a throttled account,
a decision whose state changed under it. Some UNAVAILABLE ones are too (`not_run`)."""

# gRPC's own words for a call that found no connection to go on (its pick_first and
# round_robin load balancing): it never left the client.
_NEVER_SENT = ("failed to connect to all addresses", "connections to all backends failing")


def not_run(error: grpc.aio.AioRpcError) -> bool:
    """Whether the call certainly did not run: refused by a server that was stopping
    (SHUTTING_DOWN_REASON), or never sent, no connection to the server being open."""
    if error.code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    never_sent = (error.details() or "").startswith(_NEVER_SENT)
    return never_sent or SHUTTING_DOWN_REASON in error_reasons(error)


class OutcomeUnknown(grpc.aio.AioRpcError):
    """A call that may have taken effect (an order placed, a stop started) ran out of attempts
    with a retryable code. It is idempotent on its `key_field`: send it again with that same
    `key` to learn what happened, never as a new request, which could act twice. The id is
    here because the client may have made it. When every attempt failed with a code of
    NOT_TAKEN_CODES, nothing was done: the last error is raised as it is instead."""

    def __init__(self, error: grpc.aio.AioRpcError, key_field: str, key: str) -> None:
        super().__init__(
            error.code(),
            error.initial_metadata(),
            # grpc.aio's own errors carry aio Metadata; grpc-stubs types it as the sync tuple.
            cast(grpc.aio.Metadata, error.trailing_metadata()),
            error.details(),
            error.debug_error_string(),
        )
        self.key_field = key_field
        self.key = key
