"""kill -9 and restart of `oms serve` in the middle of a trailing stop's life.

Watermark, state and stop price survive (CONTRACT section 5): after the restart GetTrailingStop
answers exactly what it answered before the kill, and the rest of the path plays out tick for
tick as it does for an identical stop that was never interrupted, which ran on the same
process before the kill (on ETH, so its ticks never reach the interrupted ones), triggering
at the same tick with the same close order, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures.oms_process import OmsProcess
from fixtures.positions import ETH, LONG, SHORT, SOL, assert_position_invariants
from fixtures.trading import BTC
from fixtures.trailing import (
    ACTIVE,
    CLOSED,
    PENDING,
    TRIGGERED,
    Services,
    Stubs,
    assert_close_order,
    create_stop,
    current_position,
    figures,
    get_stop,
    list_stops,
    open_side,
    orders_of,
    publish,
)
from tradingboost.oms.v1 import trailing_stop_pb2

T = trailing_stop_pb2


@pytest.fixture
def oms_process(tmp_path: Path) -> Iterator[OmsProcess]:
    process = OmsProcess(tmp_path / "data")
    yield process
    process.stop()


@dataclass
class Scenario:
    """One stop and its path; the kill comes after `split` ticks."""

    side: int
    start: str
    quantity: str
    stop_fields: dict[str, Any]
    path: list[str]
    split: int
    # What the contract's arithmetic says after each tick (independent of both runs).
    expected: list[tuple[int, str, str]]


# LONG 1%, activation 52000, last 50000: activation and a new high before the kill; after it,
# a lower price that would move a watermark reset to the last price, then the crossing.
LONG_1PCT = Scenario(
    side=LONG,
    start="50000",
    quantity="0.01",
    stop_fields={"callback_rate": "0.01", "activation_price": "52000"},
    path=["51000", "52000", "53500", "53000", "53200", "52965.01", "52965", "50000"],
    split=4,
    expected=[
        (PENDING, "", ""),
        (ACTIVE, "52000", "51480"),
        (ACTIVE, "53500", "52965"),
        (ACTIVE, "53500", "52965"),
        (ACTIVE, "53500", "52965"),
        (ACTIVE, "53500", "52965"),
        (TRIGGERED, "53500", "52965"),
        (TRIGGERED, "53500", "52965"),
    ],
)

# SHORT spread 25, activation 2900, last 2950: the mirror (2865 after the kill would move a
# watermark reset to the last price, 2870).
SHORT_SPREAD = Scenario(
    side=SHORT,
    start="2950",
    quantity="1",
    stop_fields={"callback_spread": "25", "activation_price": "2900"},
    path=["2920", "2900", "2860", "2870", "2865", "2884.99", "2885", "2950"],
    split=4,
    expected=[
        (PENDING, "", ""),
        (ACTIVE, "2900", "2925"),
        (ACTIVE, "2860", "2885"),
        (ACTIVE, "2860", "2885"),
        (ACTIVE, "2860", "2885"),
        (ACTIVE, "2860", "2885"),
        (TRIGGERED, "2860", "2885"),
        (TRIGGERED, "2860", "2885"),
    ],
)


async def start_stop(svc: Services, user: str, scenario: Scenario, symbol: str) -> T.TrailingStop:
    await publish(svc, scenario.start, symbol)
    await open_side(svc, user, scenario.side, symbol, quantity=scenario.quantity)
    return await create_stop(
        svc, user, symbol=symbol, position_side=scenario.side, **scenario.stop_fields
    )


async def play(
    svc: Services, user: str, stop_id: str, prices: list[str], symbol: str
) -> list[T.TrailingStop]:
    """Publishes each price; the stop as GetTrailingStop shows it after each."""
    seen = []
    for price in prices:
        await publish(svc, price, symbol)
        seen.append(await get_stop(svc, user, stop_id))
    return seen


async def check_fired(
    svc: Services, user: str, stop: T.TrailingStop, scenario: Scenario, symbol: str
) -> None:
    assert stop.status == TRIGGERED
    await assert_close_order(svc, stop, quantity=scenario.quantity)
    assert (await current_position(svc, user, scenario.side, symbol)).status == CLOSED
    assert len(await orders_of(svc, user)) == 2  # the entry and exactly one close
    await assert_position_invariants(svc.orders, svc.positions, user)


CASES = [("long", LONG_1PCT, BTC), ("short", SHORT_SPREAD, SOL)]


async def test_kill_9_keeps_watermark_status_and_stop_price_and_the_stop_fires_on_time(
    oms_process: OmsProcess,
) -> None:
    oms_process.start()
    async with oms_process.channel() as channel:
        svc = Stubs.on(channel)
        # The uninterrupted twins, one after the other on ETH.
        reference: dict[str, list[T.TrailingStop]] = {}
        for name, scenario, _ in CASES:
            user = f"{name}-ref"
            stop = await start_stop(svc, user, scenario, ETH)
            reference[name] = await play(svc, user, stop.trailing_stop_id, scenario.path, ETH)
            assert [figures(s) for s in reference[name]] == scenario.expected
            await check_fired(svc, user, reference[name][-1], scenario, ETH)

        # The interrupted ones: LONG on BTC, SHORT on SOL, up to the split.
        before_kill: dict[str, T.TrailingStop] = {}
        listed: dict[str, list[T.TrailingStop]] = {}
        for name, scenario, symbol in CASES:
            user = f"{name}-cut"
            stop = await start_stop(svc, user, scenario, symbol)
            first = scenario.path[: scenario.split]
            seen = await play(svc, user, stop.trailing_stop_id, first, symbol)
            assert [figures(s) for s in seen] == scenario.expected[: scenario.split]
            before_kill[name] = seen[-1]
            assert before_kill[name].status == ACTIVE  # activated, with a new high since
            listed[name] = await list_stops(svc, user)
    oms_process.kill9()

    oms_process.start()
    async with oms_process.channel() as channel:
        svc = Stubs.on(channel)
        for name, _, _ in CASES:
            user = f"{name}-cut"
            stop = before_kill[name]
            assert await get_stop(svc, user, stop.trailing_stop_id) == stop
            assert await list_stops(svc, user) == listed[name]
        for name, scenario, symbol in CASES:
            user = f"{name}-cut"
            rest = scenario.path[scenario.split :]
            seen = await play(svc, user, before_kill[name].trailing_stop_id, rest, symbol)
            twin = reference[name][scenario.split :]
            assert [figures(s) for s in seen] == [figures(s) for s in twin]
            # Triggered at the same tick, at the same price, as the uninterrupted twin.
            assert [s.status == TRIGGERED for s in seen] == [s.status == TRIGGERED for s in twin]
            assert [s.triggered_price for s in seen] == [s.triggered_price for s in twin]
            await check_fired(svc, user, seen[-1], scenario, symbol)
