"""One Lua script over a connection of its own, packed and parsed by hiredis.

Every state transition is one EVALSHA of commit.lua, so this call is the store's hot path.
redis-py's asyncio client spends most of its time around the round trip, not in it: the
pool checkout, the retry wrapper and a pure-Python packer that encodes each of the ~40
arguments one by one. On the bench (PlaceOrder + CancelOrder, concurrency 1) this pipe took
the server's main thread from ~605 to ~523 us of CPU per RPC and raised throughput by 7%.

Callers share the connection: each writes its packed command at once and Redis answers in
order, so concurrent desks pipeline instead of queueing for a pooled connection. A dropped
connection fails what was in flight; each caller then re-sends on a new connection, with
the backoff redis-py uses, as redis-py's own retry would. A connection that stops answering
without closing (a network partition, a stalled Redis) is dropped once its oldest request
has waited `reply_timeout_s`, and handled the same way.

A re-sent command may have run already, its reply lost. So that it never runs twice, every
command carries landing marks, which the script honours (commit.lua): its KEYS end with the
marks of its earlier attempts, the store's commit count and its own connection's mark, its
ARGV with those attempts' numbers, its own number, the highest number on its connection
already answered, how many earlier attempts there are and the count floor (below). The
script sets its connection's mark to its number (commands on one connection run in order,
so a mark at or past n means command n ran) and answers {'landed'}, doing nothing, when an
earlier attempt ran. A new connection to the same Redis run first kills the old one, so
that nothing still buffered there can run after that check.

Every run of the script also counts itself in the store's commit count, a key without an
expiry, and answers {count, its reply}. The highest count answered is a floor Redis must
stay at: at or below it, Redis lost commands it had acknowledged (restarted from an
append-only file that missed its last second, failed over to a replica that lagged), and
the script takes its count back, writes nothing and answers 'rewound', raised as
`Rewound`. Each command carries the floor, so no command lands in such a store.

Where to connect, the credentials, the database and the TLS context (the URL's ssl_*
parameters) come from the connection redis-py itself would open for the same URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

__all__ = ["Rewound", "ScriptPipe"]


class Rewound(RedisError):
    """Redis no longer holds commands it acknowledged: it restarted from an older state."""

    def __init__(self, count: int, floor: int) -> None:
        super().__init__(
            f"Redis lost commits it had acknowledged (its commit count is {count}, it had "
            f"answered {floor}): it came back from an older state"
        )


class _Protocol(asyncio.Protocol):
    def __init__(self, reply_timeout_s: float, mark: str) -> None:
        self.mark = mark
        """The key of this connection's landing mark."""
        self.numbered = 0
        """Commands numbered on this connection so far."""
        self.answered = 0
        """The highest number whose reply has been read (replies come in order: every lower
        one's too). Those are never sent again: Redis may forget what it noted of them."""
        self.client_id: int | None = None
        self.run_id = ""
        """The Redis server run it is connected to (client ids restart with each run)."""
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._sent_at: deque[float] = deque()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._reply_timeout_s = reply_timeout_s
        self._watchdog: asyncio.TimerHandle | None = None
        self._silent = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            waiter = self._waiting.popleft()
            self._sent_at.popleft()
            if not waiter.done():  # its caller went away; the reply still had to be read
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        reason = (
            f"no reply from Redis within {self._reply_timeout_s:g} s"
            if self._silent
            else f"connection to Redis lost: {exc or 'closed by peer'}"
        )
        error = RedisConnectionError(reason)
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        self._sent_at.clear()

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """The reply to `command` (a hiredis.ReplyError for an error reply)."""
        assert self._transport is not None
        waiter = self._loop.create_future()
        self._waiting.append(waiter)
        self._sent_at.append(self._loop.time())
        self._transport.write(command)
        return waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _watch(self) -> None:
        # A connection a partition left open never fails by itself: one whose oldest
        # request has waited too long is dropped, so its callers fail over and send again.
        # A timer a few times per timeout keeps the per-call cost at a timestamp.
        if self._sent_at and self._loop.time() - self._sent_at[0] > self._reply_timeout_s:
            self._silent = True
            assert self._transport is not None
            self._transport.abort()
            return
        self._watchdog = self._loop.call_later(self._reply_timeout_s / 4, self._watch)


class ScriptPipe:
    """Calls one Lua script on the server `redis` talks to, over a connection of its own."""

    def __init__(
        self,
        redis: Redis,
        script: str,
        retries: int = 3,
        reply_timeout_s: float = 5.0,
        marks_prefix: str = "script_pipe:landed:",
        count_key: str = "script_pipe:count",
    ) -> None:
        """`reply_timeout_s`: how long Redis may take to answer before the connection is
        presumed dead (a Lua call takes well under a millisecond). `marks_prefix`: of the
        landing marks' keys (one per connection, kept an hour). `count_key`: the store's
        commit count."""
        # A connection redis-py would open, never opened: where to connect, the credentials
        # and database, and the TLS context it builds from the URL's ssl_* parameters.
        pool = redis.connection_pool
        self._like = pool.connection_class(**pool.connection_kwargs)
        source = script.encode()
        self._load = _pack(b"SCRIPT", b"LOAD", source)
        self._sha = hashlib.sha1(source).hexdigest().encode()
        self._retries = retries
        self._reply_timeout_s = reply_timeout_s
        # redis-py's own default backoff for the same retries (see store.connect).
        self._backoff = ExponentialWithJitterBackoff(cap=0.2, base=0.02)
        self._marks_prefix = marks_prefix
        self._protocol: _Protocol | None = None
        self._opening = asyncio.Lock()
        self._count_key = count_key
        self.floor = 0
        """The highest commit count answered: Redis must hold at least that count."""

    async def __call__(self, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        earlier_marks: list[str] = []
        earlier_numbers: list[int] = []
        failures = 0
        while True:
            try:
                protocol = self._protocol
                if protocol is None or protocol.lost:
                    protocol = await self._connected()
                protocol.numbered += 1
                number = protocol.numbered
                command = _pack(
                    b"EVALSHA",
                    self._sha,
                    len(keys) + len(earlier_marks) + 2,
                    *keys,
                    *earlier_marks,
                    self._count_key,
                    protocol.mark,
                    *args,
                    *earlier_numbers,
                    number,
                    protocol.answered,
                    len(earlier_numbers),
                    self.floor,
                )
                # From here on it may run, whatever becomes of its reply.
                earlier_marks.append(protocol.mark)
                earlier_numbers.append(number)
                reply = await protocol.send(command)
                if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
                    # Scripts were flushed while connected: load it and send again (it did
                    # not run, so it goes as it was).
                    _check(await protocol.send(self._load))
                    reply = await protocol.send(command)
                protocol.answered = max(protocol.answered, number)
                if _not_ready(reply):
                    # It did not run: no earlier attempt that may have landed.
                    earlier_marks.pop()
                    earlier_numbers.pop()
                    raise RedisConnectionError(str(reply))
            except (OSError, RedisConnectionError) as error:
                failures += 1
                if failures > self._retries:
                    # Each attempt waited up to reply_timeout_s: the message says so, lest
                    # "within 1 s" read as the whole wait.
                    reason = (
                        error
                        if isinstance(error, RedisConnectionError)
                        else f"cannot reach Redis: {error}"
                    )
                    raise RedisConnectionError(f"{reason} (tried {failures} times)") from error
                await asyncio.sleep(self._backoff.compute(failures))
                continue
            count, answer = _check(reply)
            if answer[:1] == [b"rewound"]:
                raise Rewound(int(count), self.floor)
            self.floor = max(self.floor, int(count))
            return answer

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None

    async def _connected(self) -> _Protocol:
        async with self._opening:
            if self._protocol is None or self._protocol.lost:
                self._protocol = await self._open()
            return self._protocol

    def _new_protocol(self) -> _Protocol:
        return _Protocol(self._reply_timeout_s, f"{self._marks_prefix}{uuid.uuid4().hex}")

    async def _open(self) -> _Protocol:
        old = self._protocol
        loop = asyncio.get_running_loop()
        like = self._like
        protocol: _Protocol
        if isinstance(like, UnixDomainSocketConnection):
            _, protocol = await loop.create_unix_connection(self._new_protocol, like.path)
        else:
            assert isinstance(like, Connection)
            context = like.ssl_context.get() if isinstance(like, SSLConnection) else None
            _, protocol = await loop.create_connection(
                self._new_protocol, like.host, like.port, ssl=context
            )
        setup = []
        if like.password:
            credentials = (like.username or "default", like.password)
            setup.append(protocol.send(_pack(b"AUTH", *credentials)))
        if like.db:
            setup.append(protocol.send(_pack(b"SELECT", like.db)))
        setup.append(protocol.send(self._load))
        setup.append(protocol.send(_pack(b"CLIENT", b"ID")))
        setup.append(protocol.send(_pack(b"INFO", b"SERVER")))
        try:
            *_, client_id, info = [_check(reply) for reply in await asyncio.gather(*setup)]
            protocol.client_id = int(client_id)
            protocol.run_id = _run_id(info)
            if old is not None and old.client_id is not None and old.run_id == protocol.run_id:
                # Ends the old connection in Redis if it is still there (a stalled Redis, or
                # one behind a partition): a command still buffered on it could run after its
                # re-sent copy checked that it had not. An error answer: it was gone already.
                await protocol.send(_pack(b"CLIENT", b"KILL", b"ID", old.client_id))
        except BaseException:
            protocol.close()
            raise
        return protocol


def _pack(*parts: str | bytes | int) -> bytes:
    # hiredis's stub types the tuple as one element long; any length is packed.
    packed: bytes = hiredis.pack_command(parts)  # type: ignore[arg-type]
    return packed


def _run_id(info: bytes) -> str:
    for line in info.decode().splitlines():
        if line.startswith("run_id:"):
            return line.removeprefix("run_id:")
    return ""


# Error replies of a Redis that refused to run a command for now: sent again after a while.
_NOT_READY = ("LOADING ", "BUSY ", "MASTERDOWN ", "TRYAGAIN ")


def _not_ready(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(_NOT_READY)


def _check(reply: Any) -> Any:
    if _not_ready(reply):
        raise RedisConnectionError(str(reply))
    if isinstance(reply, hiredis.ReplyError):
        raise ResponseError(str(reply))
    return reply
