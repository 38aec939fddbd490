"""One server writes a Redis at a time: each keeps its paper book (resting orders, last
prices) in memory, so a second one on the same store would decide ticks and cancels on a
book of its own. A server's claim on the store (its writer lease) is renewed while it runs
and outlives it for `writer_lease_s`."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.trading import USER, place, tick
from tradingboost.oms.v1 import order_pb2

from oms.adapters.redis_store import keys
from oms.bootstrap import Application, StartupError
from oms.config import Settings

LEASE: dict[str, Any] = {"writer_lease_s": 1.0, "store_check_interval_s": 0.1}


def second_server(redis_url: str) -> Application:
    settings = Settings(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        shutdown_grace_s=0.5,
        data_dir=Path(tempfile.mkdtemp(prefix="oms-test-data-")),
        **LEASE,
    )
    return Application(settings, redis_url)


async def test_a_second_server_on_the_same_redis_refuses_to_start(redis_url: str) -> None:
    first = await make_oms(redis_url, **LEASE)
    try:
        second = second_server(redis_url)
        started = time.monotonic()
        with pytest.raises(StartupError) as refused:
            await second.start()
        # It waited out one lease at most, to tell a live server from one that died.
        assert time.monotonic() - started < 3
        assert "another OMS writes this Redis" in str(refused.value)
        assert f"{socket.gethostname()} pid {os.getpid()}" in str(refused.value)
        await tick(first, "50000")  # the first serves on
    finally:
        await first.close()


async def test_a_server_that_stopped_gives_its_store_to_the_next_at_once(
    redis_url: str,
) -> None:
    first = await make_oms(redis_url, writer_lease_s=60.0)
    await first.close()
    second = second_server(redis_url)
    started = time.monotonic()
    await second.start()
    try:
        assert time.monotonic() - started < 5
    finally:
        await second.stop()


async def test_the_lease_of_a_server_that_died_is_waited_out(redis_url: str) -> None:
    first = await make_oms(redis_url, **LEASE)
    renewing: Any = first.app._renewing
    renewing.cancel()  # it renews no more, as if killed
    try:
        async with redis.Redis.from_url(redis_url) as client:
            held_by_first = await client.get(keys.writer_lease())
            left_s = await client.pttl(keys.writer_lease()) / 1000
            assert 0 < left_s <= LEASE["writer_lease_s"]
            second = second_server(redis_url)
            started = time.monotonic()
            await second.start()
            try:
                assert time.monotonic() - started >= left_s - 0.05
                assert await client.get(keys.writer_lease()) not in (None, held_by_first)
            finally:
                await second.stop()
    finally:
        await first.close()


async def test_a_server_whose_store_was_taken_over_stops(redis_url: str) -> None:
    oms: OmsHarness = await make_oms(redis_url, **LEASE)
    try:
        async with redis.Redis.from_url(redis_url) as client:
            await client.set(keys.writer_lease(), "elsewhere pid 1 0", px=60_000)
        await asyncio.wait_for(oms.app.wait_for_stop_request(), 5)
        assert oms.app.store_lost
    finally:
        await oms.close()


async def test_a_server_whose_lease_was_taken_writes_nothing_even_before_it_notices(
    redis_url: str,
) -> None:
    # A server stalled past its lease (SIGSTOP, a long pause) that another one then took:
    # its commits are refused before its next renewal tells it to stop.
    oms = await make_oms(redis_url, writer_lease_s=60.0, store_check_interval_s=30.0)
    try:
        await tick(oms, "50000")
        async with redis.Redis.from_url(redis_url) as client:
            await client.set(keys.writer_lease(), "elsewhere pid 1 0", px=60_000)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await place(
                    oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", client_order_id="x"
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "writer lease" in (refused.value.details() or "")
            assert not await client.hexists(keys.client_order_ids(USER), "x")
    finally:
        await oms.close()


async def test_the_lease_is_renewed_through_a_long_start(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = second_server(redis_url)
    recover = first.paper.recover

    async def slow_recover() -> None:  # a long recovery, or reconciliation
        await asyncio.sleep(2.0)
        await recover()

    monkeypatch.setattr(first.paper, "recover", slow_recover)
    starting = asyncio.create_task(first.start())
    try:
        await asyncio.sleep(1.5)  # past its 1 s lease, still starting
        with pytest.raises(StartupError, match="another OMS writes this Redis"):
            await second_server(redis_url).start()
        await starting
    finally:
        await first.stop()
