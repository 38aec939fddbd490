"""One Lua script over a connection of its own, packed and parsed by hiredis.

Every state transition is one EVALSHA of commit.lua, so this call is the store's hot path.
redis-py's asyncio client spends most of its time around the round trip, not in it: the
pool checkout, the retry wrapper and a pure-Python packer that encodes each of the ~40
arguments one by one. On the bench (PlaceOrder + CancelOrder, concurrency 1) this pipe took
the server's main thread from ~605 to ~523 us of CPU per RPC and raised throughput by 7%.

Callers share the connection: each writes its packed command at once and Redis answers in
order, so concurrent desks pipeline instead of queueing for a pooled connection. A dropped
connection fails what was in flight; each caller then re-sends on a new connection, with
the backoff redis-py uses, as redis-py's own retry would. A re-sent commit whose first
attempt landed is refused by its guards (see store.commit), so a lost reply is never applied
twice. A connection that stops answering without closing (a network partition) is dropped
once its oldest request has waited `reply_timeout_s`, and handled the same way.

Where to connect, the credentials, the database and the TLS context (the URL's ssl_*
parameters) come from the connection redis-py itself would open for the same URL.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["ScriptPipe"]


class _Protocol(asyncio.Protocol):
    def __init__(self, reply_timeout_s: float) -> None:
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
        self, redis: Redis, script: str, retries: int = 3, reply_timeout_s: float = 5.0
    ) -> None:
        """`reply_timeout_s`: how long Redis may take to answer before the connection is
        presumed dead (a Lua call takes well under a millisecond)."""
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
        self._protocol: _Protocol | None = None
        self._opening = asyncio.Lock()

    async def __call__(self, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        command = _pack(b"EVALSHA", self._sha, len(keys), *keys, *args)
        failures = 0
        while True:
            try:
                protocol = self._protocol
                if protocol is None or protocol.lost:
                    protocol = await self._connected()
                reply = await protocol.send(command)
                if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
                    # Scripts were flushed while connected: load it and send again.
                    _check(await protocol.send(self._load))
                    reply = await protocol.send(command)
            except (OSError, RedisConnectionError) as error:
                failures += 1
                if failures > self._retries:
                    if isinstance(error, RedisConnectionError):
                        raise
                    raise RedisConnectionError(f"cannot reach Redis: {error}") from error
                await asyncio.sleep(self._backoff.compute(failures))
                continue
            return _check(reply)

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
        return _Protocol(self._reply_timeout_s)

    async def _open(self) -> _Protocol:
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
        try:
            for reply in await asyncio.gather(*setup):
                _check(reply)
        except BaseException:
            protocol.close()
            raise
        return protocol


def _pack(*parts: str | bytes | int) -> bytes:
    # hiredis's stub types the tuple as one element long; any length is packed.
    packed: bytes = hiredis.pack_command(parts)  # type: ignore[arg-type]
    return packed


def _check(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        raise ResponseError(str(reply))
    return reply
