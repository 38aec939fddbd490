"""Per-tick cost of the trailing-stop engine with 100, 10,000 and 100,000 stops on one symbol.

Two ticks: one that moves none of the stops, one that triggers 1% of them (each trigger places
and fills a reduce-only market order and moves its position). Figures are microseconds of
engine work per tick, in memory (the desk's decision before its commit), with the cost of
the same tick on a desk with no stops as the baseline. Then the 1% tick once more through
the whole path, including its one commit to a private Redis.

Seeds the desk directly (its private state) because creating 100,000 stops through the RPC
would take minutes; the decisions measured are the production code's.
"""

from __future__ import annotations

import tempfile
import time
from decimal import Decimal
from pathlib import Path

import uvloop

from oms.adapters.redis_store.embedded import EmbeddedRedis
from oms.adapters.redis_store.store import RedisStore, connect
from oms.config import Settings
from oms.domain.identifiers import IdGenerator
from oms.domain.orders import PositionSide
from oms.domain.paper_matching import FeeSchedule
from oms.domain.positions import Position
from oms.domain.trailing_stops import TrailingStopSpec
from oms.engine.journal import Journal
from oms.engine.paper_exchange import PAPER, PaperExchange, _Batch, _Desk, _Tick
from oms.engine.ports import PriceUpdate
from oms.engine.subscriptions import EventHub

SYMBOL = "BTC/USDT:USDT"
USERS = 100
QUIET = Decimal("100")
TRIGGERING = Decimal("99.5")
RATE = Decimal("0.1")
LONG, SHORT = PositionSide.LONG, PositionSide.SHORT


def _exchange(store: RedisStore) -> PaperExchange:
    from oms.bootstrap import paper_catalog

    settings = Settings()
    ids = IdGenerator()
    fees = FeeSchedule(settings.paper.maker_fee_rate, settings.paper.taker_fee_rate)
    journal = Journal(store, EventHub(store, 15.0, 1000))
    return PaperExchange(paper_catalog(settings), fees, journal, ids.new_id, time.time_ns)


def _seed(exchange: PaperExchange, stops: int) -> _Desk:
    """`stops` working stops that a tick at QUIET leaves alone; 1% of them (LONG, stop 99.9)
    trigger at TRIGGERING. Each trigger closes 0.001 of a 1000-contract position."""
    desk = exchange._desk(SYMBOL)
    market = exchange.market(SYMBOL)
    now = time.time_ns()
    desk.last = PriceUpdate(PAPER, SYMBOL, QUIET, now)
    for user in range(USERS):
        for side in (LONG, SHORT):
            desk.positions[(f"u{user}", side)] = Position(
                position_id=exchange.new_id(),
                user_id=f"u{user}",
                exchange=PAPER,
                symbol=SYMBOL,
                position_side=side,
                contract_size=market.contract_size,
                settle_currency=market.settle,
                maintenance_margin_rate=market.maintenance_margin_rate,
                opened_at_ns=now,
                updated_at_ns=now,
                size=Decimal(1000),
                entry_price=QUIET,
                mark_price=QUIET,
            )
    triggering = stops // 100
    for index in range(stops):
        owner = f"u{index % USERS}"
        cents = Decimal(index % 900) / 100
        if index < triggering:
            side, last, activation = LONG, Decimal("111"), None  # stop 99.9
        elif index % 4 == 0:
            side, last, activation = LONG, QUIET, Decimal(120) + cents  # pending
        elif index % 4 == 1:
            side, last, activation = SHORT, Decimal(92) + cents * Decimal("0.7"), None
        else:
            side, last, activation = LONG, Decimal(101) + cents, None  # stop below 100
        spec = TrailingStopSpec(owner, market, side, RATE, None, activation, Decimal("0.001"), "")
        position = desk.positions[(owner, side)]
        desk.trailing.put(spec.new_stop(exchange.new_id(), position.position_id, last, now))
    return desk


def _per_tick_us(desk: _Desk, price: Decimal, rounds: int, whole_tick: bool) -> float:
    """Median microseconds of one tick's decision; memory is rolled back after each."""
    samples = []
    for _ in range(rounds):
        batch = _Batch()
        op = _Tick(price)
        start = time.perf_counter()
        if whole_tick:
            op.decide(desk, batch)
        else:
            desk.trail(op, batch, price, time.time_ns())
        samples.append(time.perf_counter() - start)
        batch.rollback(desk)
    samples.sort()
    return samples[len(samples) // 2] * 1e6


async def _run() -> None:
    with tempfile.TemporaryDirectory(prefix="oms-bench-trailing-") as data_dir:
        redis = EmbeddedRedis(Path(data_dir), appendonly=False)
        redis.start()
        store = RedisStore(connect(redis.url, 5.0), 100_000)
        try:
            print("trailing stops on one symbol: engine microseconds per tick (median)")
            print(
                f"{'stops':>8}{'quiet: trail':>14}{'whole tick':>12}"
                f"{'1%: trail':>12}{'whole tick':>12}{'per trigger':>13}{'committed':>13}"
            )
            for count in (0, 100, 10_000, 100_000):
                exchange = _exchange(store)
                desk = _seed(exchange, count)
                quiet = _per_tick_us(desk, QUIET, 2000, whole_tick=False)
                quiet_tick = _per_tick_us(desk, QUIET, 500, whole_tick=True)
                rounds = 200 if count <= 10_000 else 20
                busy = _per_tick_us(desk, TRIGGERING, rounds, whole_tick=False)
                busy_tick = _per_tick_us(desk, TRIGGERING, rounds, whole_tick=True)
                triggered = count // 100
                per_trigger = busy / triggered if triggered else 0.0
                start = time.perf_counter()
                await exchange.on_price(SYMBOL, TRIGGERING)
                committed_ms = (time.perf_counter() - start) * 1000
                print(
                    f"{count:>8}{quiet:>14.1f}{quiet_tick:>12.1f}{busy:>12.1f}{busy_tick:>12.1f}"
                    f"{per_trigger:>13.1f}{committed_ms:>10.2f} ms"
                )
            print(
                f"trail: the trailing-stop step of a tick; whole tick: matching, trailing and "
                f"marking the {2 * USERS} open positions; committed: the 1% tick end to end, "
                "one commit to a private Redis (every mark and trigger written)"
            )
            print(
                "target: a quiet tick's trail step under 50 us at 100,000 stops, and the 1% "
                "tick proportional to the triggered count (per trigger roughly constant)"
            )
        finally:
            await store.close()
            redis.stop()


def main() -> None:
    uvloop.run(_run())


if __name__ == "__main__":
    main()
