"""Server streams that reconnect by themselves, and resume where they left off.

Resume point. Each event carries the user's `sequence`; a stream remembers the last one it
delivered and reconnects with `after_sequence` set to it, so the server replays exactly what
the consumer has not seen yet: no gap, no duplicate.

A heartbeat's `latest_sequence` is no resume point, as heartbeat.proto says, and the server
shows why: it is `max(stream cursor, user's newest sequence)`, and when it goes out, events
above the stream's cursor can still sit in the stream's buffer, unsent (at the going-live
heartbeat: events committed during the replay; at an idle one: a push that raced the idle
timer). Its `resume_after_sequence`, the stream's cursor, is: every event up to it that the
stream carries came before it. A reconnect resumes from the later of that and the last event
read, so a quiet filtered stream (fills of one symbol on a busy account) does not fall out of
the retained history while the user's other events go by. A user who had no events at all
gives no such point (0 asks for live-only): such a stream reconnects `from_oldest`, which
replays whatever came meanwhile.

A consumer that stops waiting for a message (asyncio.wait_for) leaves the call open: the read
goes on, and its message is the next one delivered. A consumer that leaves its loop (break,
return) and drops the stream ends its call, as `aclose()` does.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, Self, TypeVar

import grpc
from tradingboost.oms.v1 import (
    conditional_rule_pb2,
    heartbeat_pb2,
    market_data_pb2,
    order_pb2,
    position_pb2,
    trailing_stop_pb2,
)
from tradingboost.oms.v1 import market_data_service_pb2 as md

from oms_client.errors import STREAM_LIMIT_REASON, error_reasons
from oms_client.retry import RetryPolicy

__all__ = [
    "RESUMABLE_CODES",
    "EventStream",
    "PriceStream",
    "fill_payload",
    "order_update_payload",
    "position_update_payload",
    "resumable",
    "rule_update_payload",
    "sequenced_payload",
    "trailing_stop_event_payload",
]

RESUMABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
)
"""How a stream ends when resuming is the cure: server shutting down or connection lost
(UNAVAILABLE, or CANCELLED by a server that stopped as the stream reconnected: the caller's
own cancel is asyncio.CancelledError in grpc.aio), or the consumer fell behind its bounded
buffer (RESOURCE_EXHAUSTED). OUT_OF_RANGE and every other code are raised: reconnecting
would fail the same way; so is a RESOURCE_EXHAUSTED whose google.rpc.ErrorInfo reason is
STREAM_LIMIT (as many streams open as the server allows: close one first)."""


def resumable(error: grpc.aio.AioRpcError) -> bool:
    """Whether opening the stream again may cure what ended it (RESUMABLE_CODES)."""
    if error.code() not in RESUMABLE_CODES:
        return False
    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return True
    return STREAM_LIMIT_REASON not in error_reasons(error)


class Sequenced(Protocol):
    @property
    def sequence(self) -> int: ...


R = TypeVar("R")
T = TypeVar("T")
E = TypeVar("E", bound=Sequenced)


class _ReconnectingStream(ABC, Generic[R, T]):
    """An async iterator over a server stream that opens a new call whenever the current
    one ends with a RESUMABLE_CODES status, after a backoff.

    `retry.attempts` bounds the connection attempts in a row that receive nothing at all
    (no bound with only a `deadline_s`), and `retry.deadline_s` the time from the first of
    them; any message received (for a price stream, the headers of a call taken) starts both
    again, so a long-lived stream survives any number of separate outages.
    """

    def __init__(self, retry: RetryPolicy, idle_timeout_s: float | None) -> None:
        self._retry = retry
        self._idle_timeout_s = idle_timeout_s
        self._call: grpc.aio.UnaryStreamCall[Any, R] | None = None
        self._responses: AsyncIterator[R] | None = None
        self._reading: asyncio.Future[R] | None = None
        self._failures = 0
        self._give_up_at: float | None = None
        self._closed = False

    @abstractmethod
    def _open(self) -> grpc.aio.UnaryStreamCall[Any, R]: ...

    @abstractmethod
    def _accept(self, response: R) -> T | None:
        """The item to deliver, or None for a message the stream consumes itself."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        while True:
            item = await self._read_one()
            if item is not None:
                return item

    async def _read_one(self) -> T | None:
        """The next message's item; None for a message the stream consumed itself, or for a
        call that ended and is opened again."""
        if self._closed:
            raise StopAsyncIteration
        if self._responses is None:
            self._call = self._open()
            self._responses = aiter(self._call)
        if self._reading is None:
            # Read in a task of its own: grpc.aio cancels the call when a read is cancelled,
            # so a consumer that stops waiting (asyncio.wait_for) would drop the connection,
            # and a live-only stream's start with it.
            self._reading = asyncio.ensure_future(anext(self._responses))
        try:
            async with asyncio.timeout(self._idle_timeout_s):
                response = await asyncio.shield(self._reading)
        except StopAsyncIteration:
            # An OK status: the server says the stream is complete, not interrupted.
            self._closed = True
            self._reading = None
            raise
        except grpc.aio.AioRpcError as error:
            self._drop_call()
            if not resumable(error):
                raise
            await self._back_off(error)
            return None
        except TimeoutError:
            # Not even a heartbeat for idle_timeout_s: a silently dead connection, one where
            # no RST ever arrives.
            self._drop_call()
            await self._back_off(
                _client_error(
                    grpc.StatusCode.UNAVAILABLE,
                    f"no message on the stream for {self._idle_timeout_s} s",
                )
            )
            return None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the consumer's own cancel: the read goes on, for its next call
            # The read was cancelled under it, by aclose() or by the channel closing.
            self._closed = True
            self._drop_call()
            raise StopAsyncIteration from None
        self._reading = None
        self._failures = 0
        return self._accept(response)

    async def _back_off(self, error: Exception) -> None:
        now = asyncio.get_running_loop().time()
        if self._failures == 0 and self._retry.deadline_s is not None:
            self._give_up_at = now + self._retry.deadline_s
        self._failures += 1
        wait = self._retry.wait_before(self._failures, self._give_up_at, now)
        if wait is None:
            raise error
        await asyncio.sleep(wait)

    def _drop_call(self) -> None:
        if self._reading is not None:
            if self._reading.done() and not self._reading.cancelled():
                self._reading.exception()  # retrieved: it is what ended the call
            self._reading.cancel()
        if self._call is not None:
            self._call.cancel()
        self._call = self._responses = self._reading = None

    async def aclose(self) -> None:
        """Ends the stream: cancels the current call; iteration then stops."""
        self._closed = True
        self._drop_call()

    def __del__(self) -> None:
        # Dropped unclosed (a consumer that left its loop): the call would stay open on the
        # server, which allows each user a bounded number of streams. (At interpreter exit
        # the loop may be closed already, and the call with it.)
        if not getattr(self, "_closed", True):  # (False once __init__ ran)
            with contextlib.suppress(RuntimeError):
                self._drop_call()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class EventStream(_ReconnectingStream[R, E]):
    """Events of one user's sequenced stream (OrderUpdate, Fill, PositionUpdate,
    TrailingStopEvent), each exactly once and in sequence order across reconnects.
    Heartbeats are consumed here.

    Persist `last_sequence` after handling an event to continue from it in a later process
    (`after_sequence=`). Not for concurrent readers: one consumer per stream.
    """

    def __init__(
        self,
        open_call: Callable[[int, bool], grpc.aio.UnaryStreamCall[Any, R]],
        unwrap: Callable[[R], E | heartbeat_pb2.Heartbeat | None],
        after_sequence: int,
        retry: RetryPolicy,
        idle_timeout_s: float | None,
        from_oldest: bool = False,
    ) -> None:
        """`open_call(after_sequence, from_oldest)` opens the call."""
        if from_oldest and after_sequence:
            raise ValueError("from_oldest replays every retained event: give no after_sequence")
        super().__init__(retry, idle_timeout_s)
        self._open_call = open_call
        self._unwrap = unwrap
        self._from_oldest = from_oldest
        self._last_sequence = after_sequence
        self._read_through = after_sequence
        """Where a reconnect resumes: the last event read from the server, or a later
        heartbeat's resume point. Ahead of `_last_sequence` while wait_live holds events read
        ahead."""
        self._live_before_any_event = False
        """Went live (after_sequence 0) for a user who had no events at all."""
        self._live_at: int | None = None
        """The user's latest sequence when the stream first went live (the server's first
        heartbeat); None before."""
        self._read_ahead: deque[E] = deque()
        """Events wait_live read on its way, for iteration to deliver first."""

    @property
    def last_sequence(self) -> int:
        """The sequence of the last event delivered; `after_sequence` until the first one."""
        return self._last_sequence

    async def wait_live(self) -> int:
        """Waits until the stream is live: its replay done, everything committed from then on
        on its way. Returns the user's latest sequence at that moment. Events read meanwhile
        stay for iteration, which delivers them first.

        Call it before iterating, or from the iterating task.
        """
        while self._live_at is None:
            item = await self._read_one()
            if item is not None:
                self._read_ahead.append(item)
        return self._live_at

    async def __anext__(self) -> E:
        item = self._read_ahead.popleft() if self._read_ahead else await super().__anext__()
        self._last_sequence = item.sequence
        return item

    def _open(self) -> grpc.aio.UnaryStreamCall[Any, R]:
        after_sequence = self._read_through
        from_oldest = not after_sequence and (self._from_oldest or self._live_before_any_event)
        return self._open_call(after_sequence, from_oldest)

    def _accept(self, response: R) -> E | None:
        item = self._unwrap(response)
        if item is None:
            return None
        if isinstance(item, heartbeat_pb2.Heartbeat):
            if item.latest_sequence == 0 and self._read_through == 0:
                self._live_before_any_event = True
            self._read_through = max(self._read_through, item.resume_after_sequence)
            if self._live_at is None:
                self._live_at = item.latest_sequence
            return None
        self._read_through = item.sequence
        return item


class PriceStream(_ReconnectingStream[md.StreamPricesResponse, market_data_pb2.Price]):
    """Price ticks. Prices carry no sequence and the server keeps no history of them: ticks
    during an outage are not replayed. A price is a last value, so a stream opened with
    `with_last_prices` starts each connection with every instrument's last price instead
    (once more the one seen before, when none came meanwhile); without, a reconnect goes on
    with the next tick."""

    def __init__(
        self,
        open_call: Callable[[], grpc.aio.UnaryStreamCall[Any, md.StreamPricesResponse]],
        retry: RetryPolicy,
    ) -> None:
        # No idle limit: a quiet market sends nothing, and this stream has no heartbeat.
        super().__init__(retry, idle_timeout_s=None)
        self._open_call = open_call
        self._connecting: asyncio.Future[None] | None = None
        """Watches the current call's headers (held here: the loop keeps tasks weakly)."""

    def _open(self) -> grpc.aio.UnaryStreamCall[Any, md.StreamPricesResponse]:
        call = self._open_call()
        self._connecting = asyncio.ensure_future(self._connected(call))
        return call

    async def _connected(self, call: grpc.aio.UnaryStreamCall[Any, Any]) -> None:
        """An outage ends once a new call is taken (the server sends every stream's headers
        at once), not at the next tick, which a quiet instrument may not see for long: separate
        outages are not counted as one."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await call.initial_metadata()
            if not call.done():
                self._failures = 0

    def _accept(self, response: md.StreamPricesResponse) -> market_data_pb2.Price:
        return response.price


class _PayloadResponse(Protocol):
    """A sequenced stream's response: a `payload` oneof of one event kind or a heartbeat."""

    @property
    def heartbeat(self) -> heartbeat_pb2.Heartbeat: ...

    def WhichOneof(self, oneof_group: Literal["payload"]) -> str | None: ...


def sequenced_payload(
    event_field: str, event_type: type[E]
) -> Callable[[_PayloadResponse], E | heartbeat_pb2.Heartbeat | None]:
    """The `unwrap` of an EventStream whose responses carry `event_field` (an `event_type`)
    or `heartbeat` in their `payload` oneof."""

    def unwrap(response: _PayloadResponse) -> E | heartbeat_pb2.Heartbeat | None:
        kind = response.WhichOneof("payload")
        if kind == event_field:
            event: E = getattr(response, event_field)
            return event
        if kind == "heartbeat":
            return response.heartbeat
        return None  # a payload kind newer than this client: skipped

    return unwrap


order_update_payload = sequenced_payload("order_update", order_pb2.OrderUpdate)
fill_payload = sequenced_payload("fill", order_pb2.Fill)
position_update_payload = sequenced_payload("position_update", position_pb2.PositionUpdate)
rule_update_payload = sequenced_payload("rule_update", conditional_rule_pb2.RuleUpdate)
trailing_stop_event_payload = sequenced_payload(
    "trailing_stop_event", trailing_stop_pb2.TrailingStopEvent
)


def _client_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error of the client's own making, raised as the server's would be."""
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details, debug_error_string=""
    )
