"""kill -9 and restart: positions, and an OpenPosition's linked take-profit / stop-loss, survive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.oms_process import OmsProcess
from fixtures.positions import LONG, assert_position_invariants, list_positions, open_request
from fixtures.trading import BTC, USER, order_request
from tradingboost.oms.v1 import market_data_pb2, order_pb2, position_pb2
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_service_pb2 as opb
from tradingboost.oms.v1 import position_service_pb2 as ppb

S = order_pb2
P = position_pb2


@pytest.fixture
def oms_process(tmp_path: Path) -> Iterator[OmsProcess]:
    process = OmsProcess(tmp_path / "data")
    yield process
    process.stop()


def _tick(price: str) -> md.PublishPricesRequest:
    return md.PublishPricesRequest(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price=price)]
    )


def _side() -> ppb.GetPositionRequest:
    return ppb.GetPositionRequest(user_id=USER, exchange="paper", symbol=BTC, position_side=LONG)


async def test_kill_9_keeps_positions_and_linked_exits_and_the_link_still_works(
    oms_process: OmsProcess,
) -> None:
    request = open_request(
        quantity="0.02",
        take_profit_price="52000",
        stop_loss_price="49000",
        leverage=10,
        client_order_id="op-restart",
    )
    oms_process.start()
    async with oms_process.channel() as channel:
        orders, market = oms_process.stubs(channel)
        positions = oms_process.positions(channel)
        await market.PublishPrices(_tick("50000"))
        opened = await positions.OpenPosition(request)
        assert opened.entry_order.status == S.ORDER_STATUS_FILLED
        held = (await positions.GetPosition(_side())).position
        tp = (
            await orders.GetOrder(
                opb.GetOrderRequest(user_id=USER, order_id=opened.take_profit_order_id)
            )
        ).order
        sl = (
            await orders.GetOrder(
                opb.GetOrderRequest(user_id=USER, order_id=opened.stop_loss_order_id)
            )
        ).order
        assert (tp.status, sl.status) == (S.ORDER_STATUS_OPEN, S.ORDER_STATUS_OPEN)
        assert (tp.linked_order_id, sl.linked_order_id) == (sl.order_id, tp.order_id)
        records_before = await list_positions(positions, include_closed=True)
    oms_process.kill9()

    oms_process.start()
    async with oms_process.channel() as channel:
        orders, market = oms_process.stubs(channel)
        positions = oms_process.positions(channel)
        assert (await positions.GetPosition(_side())).position == held
        assert await list_positions(positions, include_closed=True) == records_before
        for before in (tp, sl):
            after = await orders.GetOrder(
                opb.GetOrderRequest(user_id=USER, client_order_id=before.client_order_id)
            )
            assert after.order == before
        # OpenPosition stays idempotent across the restart: same entry, same exit ids.
        again = await positions.OpenPosition(request)
        assert again.entry_order.order_id == opened.entry_order.order_id
        assert again.take_profit_order_id == opened.take_profit_order_id
        assert again.stop_loss_order_id == opened.stop_loss_order_id
        await assert_position_invariants(orders, positions)

        await market.PublishPrices(_tick("52000"))
        tp_now = (
            await orders.GetOrder(opb.GetOrderRequest(user_id=USER, order_id=tp.order_id))
        ).order
        sl_now = (
            await orders.GetOrder(opb.GetOrderRequest(user_id=USER, order_id=sl.order_id))
        ).order
        assert tp_now.status == S.ORDER_STATUS_FILLED
        assert tp_now.average_fill_price == "52000"
        assert sl_now.status == S.ORDER_STATUS_CANCELED
        closed = (await positions.GetPosition(_side())).position
        assert closed.position_id == held.position_id
        assert closed.status == P.POSITION_STATUS_CLOSED
        assert closed.realized_pnl == "40"  # (52000 - 50000) x 0.02
        assert closed.fees == "1.02"  # 0.5 + 0.52
        await assert_position_invariants(orders, positions)


async def test_kill_9_before_the_entry_fills_keeps_the_pending_exits(
    oms_process: OmsProcess,
) -> None:
    oms_process.start()
    async with oms_process.channel() as channel:
        _, market = oms_process.stubs(channel)
        positions = oms_process.positions(channel)
        await market.PublishPrices(_tick("50000"))
        opened = await positions.OpenPosition(
            open_request(
                type=S.ORDER_TYPE_LIMIT,
                price="49500",
                quantity="0.01",
                take_profit_price="51000",
                stop_loss_price="48000",
            )
        )
        assert opened.entry_order.status == S.ORDER_STATUS_OPEN
    oms_process.kill9()

    oms_process.start()
    async with oms_process.channel() as channel:
        orders, market = oms_process.stubs(channel)
        positions = oms_process.positions(channel)
        await market.PublishPrices(_tick("49500"))  # the entry fills after the restart
        entry = (
            await orders.GetOrder(
                opb.GetOrderRequest(user_id=USER, order_id=opened.entry_order.order_id)
            )
        ).order
        assert entry.status == S.ORDER_STATUS_FILLED
        tp = (
            await orders.GetOrder(
                opb.GetOrderRequest(user_id=USER, order_id=opened.take_profit_order_id)
            )
        ).order
        sl = (
            await orders.GetOrder(
                opb.GetOrderRequest(user_id=USER, order_id=opened.stop_loss_order_id)
            )
        ).order
        assert (tp.type, tp.stop_price, tp.quantity) == (
            S.ORDER_TYPE_TAKE_PROFIT_MARKET,
            "51000",
            "0.01",
        )
        assert (sl.type, sl.stop_price, sl.quantity) == (S.ORDER_TYPE_STOP_MARKET, "48000", "0.01")
        assert (tp.status, sl.status) == (S.ORDER_STATUS_OPEN, S.ORDER_STATUS_OPEN)
        assert tp.reduce_only and sl.reduce_only

        await market.PublishPrices(_tick("47000"))
        sl_now = (
            await orders.GetOrder(opb.GetOrderRequest(user_id=USER, order_id=sl.order_id))
        ).order
        tp_now = (
            await orders.GetOrder(opb.GetOrderRequest(user_id=USER, order_id=tp.order_id))
        ).order
        assert sl_now.status == S.ORDER_STATUS_FILLED
        assert tp_now.status == S.ORDER_STATUS_CANCELED
        closed = (await positions.GetPosition(_side())).position
        assert closed.status == P.POSITION_STATUS_CLOSED
        assert closed.realized_pnl == "-25"  # (47000 - 49500) x 0.01
        await assert_position_invariants(orders, positions)


async def test_a_side_closed_before_a_restart_reopens_at_its_last_leverage(
    oms_process: OmsProcess,
) -> None:
    oms_process.start()
    async with oms_process.channel() as channel:
        orders, market = oms_process.stubs(channel)
        positions = oms_process.positions(channel)
        await market.PublishPrices(_tick("50000"))
        await orders.PlaceOrder(order_request(leverage=10))
        await orders.PlaceOrder(order_request(side=S.SIDE_SELL, reduce_only=True))
        closed = (await positions.GetPosition(_side())).position
        assert (closed.status, closed.leverage) == (P.POSITION_STATUS_CLOSED, 10)
    oms_process.kill9()

    oms_process.start()
    async with oms_process.channel() as channel:
        orders, _ = oms_process.stubs(channel)
        positions = oms_process.positions(channel)
        await orders.PlaceOrder(order_request())  # names no leverage
        reopened = (await positions.GetPosition(_side())).position
        assert reopened.position_id != closed.position_id
        assert (reopened.status, reopened.leverage) == (P.POSITION_STATUS_OPEN, 10)
