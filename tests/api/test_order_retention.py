"""Retention of finished orders (`finished_order_retention_s`): a finished order and its fills
go from the store once finished that long, unless something still acts on them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import grpc
import pytest
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.positions import expect_code, open_position
from fixtures.rules import FILLED, create_rule
from fixtures.trading import BTC, USER, fills_of, get, place, tick
from tradingboost.oms.v1 import conditional_rule_pb2, order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.adapters.redis_store import keys
from oms.engine.order_retention import OrderRetention

S = order_pb2
HOUR_NS = 3600 * 1_000_000_000


async def listed_ids(oms: OmsHarness) -> set[str]:
    listing = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER, page_size=1000))
    return {order.order_id for order in listing.orders}


async def forgotten(oms: OmsHarness, order_id: str) -> None:
    """Once the server's own retention passes have forgotten `order_id`."""
    async with asyncio.timeout(10):
        while True:
            if order_id not in await listed_ids(oms):
                return
            await asyncio.sleep(0.05)


async def test_finished_orders_go_with_their_fills_and_what_is_still_acted_on_stays(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    # A trade opened and closed: both orders finished, their position too.
    filled = await place(oms, client_order_id="filled-once")
    closed = await place(oms, side=S.SIDE_SELL, reduce_only=True)
    fill = await fills_of(oms, filled.order_id)
    [stored_fill] = await oms.app.store.get_fills(USER, [fill[0].fill_id])
    canceled = await place(oms, type=S.ORDER_TYPE_LIMIT, price="40000")
    await oms.orders.CancelOrder(pb.CancelOrderRequest(user_id=USER, order_id=canceled.order_id))
    resting = await place(oms, type=S.ORDER_TYPE_LIMIT, price="41000")
    # An entry whose exits are open; a filled order whose position is still open (it goes:
    # a grid bot's side may never be flat); a canceled order a rule on a resting one lists.
    opened = await open_position(oms, take_profit_price="52000", stop_loss_price="49000")
    added = await place(oms)
    listed = await place(oms, type=S.ORDER_TYPE_LIMIT, price="42000")
    await oms.orders.CancelOrder(pb.CancelOrderRequest(user_id=USER, order_id=listed.order_id))
    trigger = await place(oms, type=S.ORDER_TYPE_LIMIT, price="43000")
    await create_rule(oms.orders, USER, trigger.order_id, FILLED, [listed.order_id])
    everything = await listed_ids(oms)

    store = oms.app.store
    now = OrderRetention(store, 3600, time.time_ns)
    assert await now.prune() == 0  # nothing has been finished an hour
    later = OrderRetention(store, 3600, lambda: time.time_ns() + 2 * HOUR_NS)
    assert await later.prune() == 4

    gone_ids = {filled.order_id, closed.order_id, canceled.order_id, added.order_id}
    assert await listed_ids(oms) == everything - gone_ids
    for gone in (filled, closed, canceled, added):
        await expect_code(get(oms, gone.order_id), grpc.StatusCode.NOT_FOUND)
    assert await fills_of(oms, filled.order_id) == []
    assert await store.get_fills(USER, [stored_fill.fill_id]) == []
    # Its trade is still known as applied: reported again, it would not count twice.
    trade = stored_fill.exchange_trade_id
    assert await store.applied_trade_ids(USER, "paper", BTC, [trade]) == {trade}
    for kept in (resting, opened.entry_order, listed, trigger):
        assert (await get(oms, kept.order_id)).order_id == kept.order_id
    assert await later.prune() == 0

    # Its client order id is free again: the id names a new order from now on.
    again = await place(oms, client_order_id="filled-once")
    assert again.order_id != filled.order_id


async def test_an_order_changed_since_it_was_read_is_not_forgotten(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(oms)
    [stored] = await oms.app.store.get_orders(USER, [order.order_id])
    assert stored is not None
    stale = replace(stored, version=stored.version - 1)
    assert await oms.app.store.forget_orders(USER, [stale]) == 0
    assert (await get(oms, order.order_id)).order_id == order.order_id


async def test_a_server_with_a_retention_forgets_finished_orders_by_itself(
    redis_url: str,
) -> None:
    oms = await make_oms(redis_url, finished_order_retention_s=0.3)
    try:
        await tick(oms, "50000")
        canceled = await place(oms, type=S.ORDER_TYPE_LIMIT, price="40000")
        await oms.orders.CancelOrder(
            pb.CancelOrderRequest(user_id=USER, order_id=canceled.order_id)
        )
        resting = await place(oms, type=S.ORDER_TYPE_LIMIT, price="41000")
        await forgotten(oms, canceled.order_id)  # a pass every retention_s / 4 (>= 0.1 s)
        assert await listed_ids(oms) == {resting.order_id}
    finally:
        await oms.close()


async def test_a_pass_that_fails_is_logged_and_the_next_goes_on(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    oms = await make_oms(redis_url, finished_order_retention_s=0.3)
    rule_order_ids = oms.app.store.rule_order_ids
    calls = 0

    async def fails_once() -> set[tuple[str, str]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug in a pass")
        return await rule_order_ids()

    monkeypatch.setattr(oms.app.store, "rule_order_ids", fails_once)
    try:
        await tick(oms, "50000")
        canceled = await place(oms, type=S.ORDER_TYPE_LIMIT, price="40000")
        await oms.orders.CancelOrder(
            pb.CancelOrderRequest(user_id=USER, order_id=canceled.order_id)
        )
        await forgotten(oms, canceled.order_id)
        assert "order retention: pass failed" in caplog.text
    finally:
        await oms.close()  # the stop is not cut short by the failed pass


async def test_a_server_whose_writer_lease_was_taken_forgets_nothing(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    order = await place(oms)
    store = oms.app.store
    [stored] = await store.get_orders(USER, [order.order_id])
    assert stored is not None
    lease = await store.redis.get(keys.writer_lease())
    await store.redis.set(keys.writer_lease(), "another server")
    try:
        assert await store.forget_orders(USER, [stored]) == 0
    finally:
        await store.redis.set(keys.writer_lease(), lease)
    assert await store.forget_orders(USER, [stored]) == 1


async def test_a_rule_whose_listed_order_was_forgotten_meanwhile_still_finishes(
    oms: OmsHarness,
) -> None:
    # A rule made while a pass forgot the order it lists (the pass had read the rules
    # before): its firing reports that order ALREADY_TERMINAL, status unknown, and the rule
    # is finished, not left owing cancels for good.
    await tick(oms, "50000")
    listed = await place(oms, type=S.ORDER_TYPE_LIMIT, price="42000")
    await oms.orders.CancelOrder(pb.CancelOrderRequest(user_id=USER, order_id=listed.order_id))
    trigger = await place(oms, type=S.ORDER_TYPE_LIMIT, price="43000")
    rule = await create_rule(oms.orders, USER, trigger.order_id, FILLED, [listed.order_id])
    [stored] = await oms.app.store.get_orders(USER, [listed.order_id])
    assert stored is not None
    assert await oms.app.store.forget_orders(USER, [stored]) == 1
    await tick(oms, "42900")  # fills the trigger: the rule fires
    fired = (
        await oms.orders.GetConditionalRule(
            pb.GetConditionalRuleRequest(user_id=USER, rule_id=rule.rule_id)
        )
    ).rule
    [result] = fired.results
    assert (result.order_id, result.outcome, result.order_status) == (
        listed.order_id,
        conditional_rule_pb2.RULE_CANCEL_OUTCOME_ALREADY_TERMINAL,
        S.ORDER_STATUS_UNSPECIFIED,
    )
    assert await oms.app.store.pending_rules() == []
