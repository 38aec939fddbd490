"""The load generator: its own process, `concurrency` callers in a closed loop for a while."""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tradingboost.oms.v1 import (
    market_data_pb2,
    market_data_service_pb2_grpc,
    order_pb2,
    order_service_pb2_grpc,
)
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_service_pb2 as pb

from bench.server import NOOP_METHOD


@dataclass
class Result:
    name: str
    concurrency: int
    calls: int
    seconds: float
    latencies_s: dict[str, list[float]]
    round_rates: list[float]
    """calls/s in each measured window, in order."""
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds the server process and its Redis spent in this scenario's windows."""

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds

    def p(self, rpc: str, q: float) -> float:
        """Latency quantile `q` of one RPC, in ms."""
        values = sorted(self.latencies_s[rpc])
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    def p50(self, rpc: str) -> float:
        return statistics.median(self.latencies_s[rpc]) * 1000


Step = Callable[[int, dict[str, list[float]]], Awaitable[None]]


class CpuMeter:
    """CPU seconds (user + system) used so far by the server process and by its children
    (the embedded redis-server), read from /proc: what a window cost, not only how long."""

    def __init__(self, server_pid: int) -> None:
        self._pids = {"server": server_pid}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[1]) == server_pid:
                self._pids["redis"] = int(stat.parent.name)
        self._tick_s = 1 / os.sysconf("SC_CLK_TCK")

    def sample(self) -> dict[str, float]:
        used = {}
        for name, pid in self._pids.items():
            # After the command name: state, ppid, ... utime and stime are fields 14 and 15.
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            used[name] = (int(fields[11]) + int(fields[12])) * self._tick_s
        return used


async def _window(
    concurrency: int, seconds: float, step: Step, latencies: dict[str, list[float]]
) -> tuple[int, float]:
    """`concurrency` callers in a closed loop for `seconds`: (calls made, seconds taken)."""
    counter = itertools.count()
    before = sum(len(v) for v in latencies.values())
    started = time.perf_counter()
    deadline = started + seconds

    async def caller() -> None:
        while time.perf_counter() < deadline:
            await step(next(counter), latencies)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return sum(len(v) for v in latencies.values()) - before, time.perf_counter() - started


async def compare(
    concurrency: int,
    seconds: float,
    rounds: int,
    steps: dict[str, Step],
    meter: CpuMeter | None = None,
) -> list[Result]:
    """Each scenario for `seconds` in all, in `rounds` windows that alternate between the
    scenarios, so a noisy neighbour or a frequency change lands on all of them alike."""
    for step in steps.values():  # warm up: connections, caches, allocator
        await _window(concurrency, min(1.0, seconds / 3), step, {})
    results = {name: Result(name, concurrency, 0, 0.0, {}, []) for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            result = results[name]
            before = meter.sample() if meter else {}
            calls, taken = await _window(concurrency, seconds / rounds, step, result.latencies_s)
            if meter:
                for process, used in meter.sample().items():
                    result.cpu_s[process] = result.cpu_s.get(process, 0.0) + used - before[process]
            result.calls += calls
            result.seconds += taken
            result.round_rates.append(calls / taken)
    return list(results.values())


def _timed(latencies: dict[str, list[float]], rpc: str, started: float) -> None:
    latencies.setdefault(rpc, []).append(time.perf_counter() - started)


@asynccontextmanager
async def scenarios(address: str) -> AsyncIterator[dict[str, Step]]:
    """The two scenarios' steps on one channel, after a first price tick on the symbol."""
    async with grpc.aio.insecure_channel(address) as channel:
        orders = order_service_pb2_grpc.OrderServiceStub(channel)
        market = market_data_service_pb2_grpc.MarketDataServiceStub(channel)
        noop = channel.unary_unary(
            NOOP_METHOD,
            request_serializer=pb.PlaceOrderRequest.SerializeToString,
            response_deserializer=pb.PlaceOrderResponse.FromString,
        )
        await market.PublishPrices(
            md.PublishPricesRequest(
                prices=[
                    market_data_pb2.PriceTick(
                        exchange="paper", symbol="BTC/USDT:USDT", price="50000"
                    )
                ]
            )
        )

        def request(n: int) -> pb.PlaceOrderRequest:
            # A resting limit (below the market) under a fresh client order id each time.
            return pb.PlaceOrderRequest(
                user_id=f"bench{n % 8}",
                exchange="paper",
                symbol="BTC/USDT:USDT",
                side=order_pb2.SIDE_BUY,
                type=order_pb2.ORDER_TYPE_LIMIT,
                quantity="0.01",
                price="40000",
                client_order_id=f"bench-{time.monotonic_ns()}-{n}",
            )

        async def noop_step(n: int, latencies: dict[str, list[float]]) -> None:
            started = time.perf_counter()
            await noop(request(n))
            _timed(latencies, "Noop", started)

        async def place_cancel_step(n: int, latencies: dict[str, list[float]]) -> None:
            started = time.perf_counter()
            placed = await orders.PlaceOrder(request(n))
            _timed(latencies, "PlaceOrder", started)
            started = time.perf_counter()
            await orders.CancelOrder(
                pb.CancelOrderRequest(user_id=placed.order.user_id, order_id=placed.order.order_id)
            )
            _timed(latencies, "CancelOrder", started)

        yield {"no-op": noop_step, "place+cancel": place_cancel_step}


async def measure(
    address: str, seconds: float, rounds: int, server_pid: int | None = None
) -> list[Result]:
    """`server_pid`: also meter the CPU of that process and its Redis (same machine only)."""
    meter = CpuMeter(server_pid) if server_pid else None
    async with scenarios(address) as steps:
        results = []
        for concurrency in (1, 32):
            results += await compare(concurrency, seconds, rounds, steps, meter)
        return results
