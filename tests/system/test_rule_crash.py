"""A conditional rule survives a crash between its firing and its cancels.

The `rule-fired` failpoint (OMS_FAILPOINTS=rule-fired) makes `oms serve` SIGKILL itself right
after a rule's trigger transition is committed and before any of its cancels is sent. A
restarted server (without the failpoint) finishes the pending cancels before it reports
SERVING, i.e. before OmsProcess.start() returns.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from fixtures.oms_process import OmsProcess
from fixtures.rules import (
    ACTIVE,
    FILLED,
    all_cancelled,
    all_rules,
    assert_active,
    assert_cancelled_by_rule,
    assert_rule_canceled,
    assert_triggered,
    create_rule,
    delete_rule,
    fill_count,
    fresh_user,
    get_rule,
    order_of,
    resting,
)
from fixtures.trading import BTC
from tradingboost.oms.v1 import market_data_pb2, order_pb2
from tradingboost.oms.v1 import market_data_service_pb2 as md

S = order_pb2
FAILPOINT = {"OMS_FAILPOINTS": "rule-fired"}
CALL_TIMEOUT_S = 30.0

Spawn = Callable[[dict[str, str] | None], OmsProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Makes `oms serve` processes on one data dir; stops whichever still run at the end."""
    made: list[OmsProcess] = []

    def make(env: dict[str, str] | None = None) -> OmsProcess:
        process = OmsProcess(tmp_path / "data", env=env)
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()


def _tick(price: str) -> md.PublishPricesRequest:
    return md.PublishPricesRequest(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price=price)]
    )


async def test_rule_fired_then_killed_finishes_its_cancels_on_restart(spawn: Spawn) -> None:
    user = fresh_user()
    crashing = spawn(FAILPOINT)
    crashing.start()
    async with crashing.channel() as channel:
        orders, market = crashing.stubs(channel)
        await market.PublishPrices(_tick("50000"), timeout=CALL_TIMEOUT_S)
        a = await resting(orders, user, "49500")
        b = await resting(orders, user, "49000")
        c = await resting(orders, user, "48500")
        d = await resting(orders, user, "48000")
        listed = [b.order_id, c.order_id]
        rule = await create_rule(orders, user, a.order_id, FILLED, listed)
        assert_active(rule, user, a.order_id, FILLED, listed)

        # Fills A, fires the rule, and the server dies before cancelling B and C.
        with pytest.raises(grpc.aio.AioRpcError):
            await market.PublishPrices(_tick("49500"), timeout=CALL_TIMEOUT_S)
    assert crashing.wait_exit() == -signal.SIGKILL

    restarted = spawn(None)
    restarted.start()  # returns once SERVING: the pending cancels are done by then
    async with restarted.channel() as channel:
        orders, market = restarted.stubs(channel)
        a_now = await order_of(orders, user, a.order_id)
        assert a_now.status == S.ORDER_STATUS_FILLED
        assert a_now.filled_quantity == "0.01"
        assert await fill_count(orders, user, a.order_id) == 1
        await assert_cancelled_by_rule(orders, user, b.order_id, c.order_id)
        assert (await order_of(orders, user, d.order_id)).status == S.ORDER_STATUS_OPEN
        fired = await get_rule(orders, user, rule.rule_id)
        assert_triggered(fired, all_cancelled(b.order_id, c.order_id))
        assert fired.created_at == rule.created_at
        assert await all_rules(orders, user) == [fired]

        # The cancels reached the exchange and were done once: ticks at B's and C's limits
        # fill neither, D still fills, and the rule stays as it fired.
        await market.PublishPrices(_tick("48500"), timeout=CALL_TIMEOUT_S)
        await market.PublishPrices(_tick("48000"), timeout=CALL_TIMEOUT_S)
        for order_id in (b.order_id, c.order_id):
            assert (await order_of(orders, user, order_id)).status == S.ORDER_STATUS_CANCELED
            assert await fill_count(orders, user, order_id) == 0
        assert (await order_of(orders, user, d.order_id)).status == S.ORDER_STATUS_FILLED
        assert await get_rule(orders, user, rule.rule_id) == fired


async def test_failpoint_is_inert_while_no_rule_fires(spawn: Spawn) -> None:
    user = fresh_user()
    server = spawn(FAILPOINT)
    server.start()
    async with server.channel() as channel:
        orders, market = server.stubs(channel)
        await market.PublishPrices(_tick("50000"), timeout=CALL_TIMEOUT_S)
        a = await resting(orders, user, "49500")
        b = await resting(orders, user, "49000")
        rule = await create_rule(orders, user, a.order_id, FILLED, [b.order_id])
        assert rule.status == ACTIVE
        deleted = await delete_rule(orders, user, rule.rule_id)
        assert_rule_canceled(deleted, "deleted")

        await market.PublishPrices(_tick("49500"), timeout=CALL_TIMEOUT_S)  # fills A

        assert server.process is not None
        assert server.process.poll() is None, "the server died with no rule firing"
        assert (await order_of(orders, user, a.order_id)).status == S.ORDER_STATUS_FILLED
        assert (await order_of(orders, user, b.order_id)).status == S.ORDER_STATUS_OPEN
        assert await get_rule(orders, user, rule.rule_id) == deleted
        await market.PublishPrices(_tick("49000"), timeout=CALL_TIMEOUT_S)
        assert (await order_of(orders, user, b.order_id)).status == S.ORDER_STATUS_FILLED
        assert server.process.poll() is None
