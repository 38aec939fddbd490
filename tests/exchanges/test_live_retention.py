"""Retention of finished orders leaves those on real exchanges alone: the OMS still acts on
them after they finished (late fills within the lookback, owed exits, exits re-made)."""

from __future__ import annotations

import time

from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import LiveTrading
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.engine.order_retention import OrderRetention

DAY_NS = 86_400 * 1_000_000_000


async def test_finished_orders_on_a_real_exchange_are_kept(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    filled = await live.place(type=S.ORDER_TYPE_MARKET, price="")
    canceled = await live.place(price="40000")
    await live.oms.orders.CancelOrder(
        pb.CancelOrderRequest(user_id=canceled.user_id, order_id=canceled.order_id)
    )
    await live.until(filled.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    await live.until(canceled.order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)

    much_later = OrderRetention(live.oms.app.store, 60, lambda: time.time_ns() + 30 * DAY_NS)
    assert await much_later.prune() == 0
    for kept in (filled, canceled):
        assert (await live.get(kept.order_id)).order_id == kept.order_id
