"""Conditional (one-cancels-others) rules: CreateConditionalRule, GetConditionalRule,
ListConditionalRules, DeleteConditionalRule.

Paper exchange, last BTC price 50000: a limit buy below it rests OPEN and fills completely at
its limit on the first tick at or below it. PublishPrices (the tick that fills a trigger) and
CancelOrder (that cancels one) return after the rule's cancels are committed, so every check
below runs right after the call, with no waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from fixtures.commits import Commit, ends, fires_a_rule, hold_the_firing, intercept_commits
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.positions import ETH, SOL, expect_code, expect_invalid, redis_snapshot
from fixtures.redis_proxy import RedisFaultProxy, landed_unanswered
from fixtures.rules import (
    ACTIVE,
    CANCELED,
    FILLED,
    OUT_ALREADY_TERMINAL,
    OUT_CANCELED,
    PARTIALLY_FILLED,
    RULE_CANCEL_PREFIX,
    RULE_CANCELED,
    TRIGGERED,
    UNKNOWN_ID,
    UNKNOWN_ID_2,
    Condition,
    all_cancelled,
    all_rules,
    assert_active,
    assert_cancelled_by_rule,
    assert_rule_canceled,
    assert_triggered,
    cancel_order,
    create_request,
    create_rule,
    delete_rule,
    fill_count,
    fresh_user,
    get_rule,
    list_rules,
    order_of,
    place_order,
    publish,
    resting,
)
from fixtures.streams import StreamReader
from fixtures.trading import BTC
from tradingboost.oms.v1 import conditional_rule_pb2, market_data_pb2, order_pb2
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_service_pb2 as opb

from oms.domain.errors import Unavailable

S = order_pb2
R = conditional_rule_pb2
OPEN = S.ORDER_STATUS_OPEN

# Limit buy prices with the last price at 50000: a tick at A's price fills A and nothing below.
A_PRICE, B_PRICE, C_PRICE, D_PRICE = "49500", "49000", "48500", "48000"


@dataclass
class Book:
    """Four resting limit buys of one fresh user: A (the trigger), B, C, D."""

    user: str
    a: order_pb2.Order
    b: order_pb2.Order
    c: order_pb2.Order
    d: order_pb2.Order


async def book(oms: OmsHarness) -> Book:
    user = fresh_user()
    await publish(oms.market, "50000")
    return Book(
        user=user,
        a=await resting(oms.orders, user, A_PRICE),
        b=await resting(oms.orders, user, B_PRICE),
        c=await resting(oms.orders, user, C_PRICE),
        d=await resting(oms.orders, user, D_PRICE),
    )


async def fill_a(oms: OmsHarness, bk: Book) -> None:
    await publish(oms.market, A_PRICE)
    assert (await order_of(oms.orders, bk.user, bk.a.order_id)).status == S.ORDER_STATUS_FILLED


async def status_of(oms: OmsHarness, user: str, order_id: str) -> int:
    return (await order_of(oms.orders, user, order_id)).status


# --- firing ---------------------------------------------------------------------------------


async def test_filled_trigger_cancels_the_listed_orders_and_nothing_else(
    oms: OmsHarness,
) -> None:
    bk = await book(oms)
    listed = [bk.c.order_id, bk.b.order_id]  # not in placement order: results follow this list
    rule = await create_rule(oms.orders, bk.user, bk.a.order_id, FILLED, listed)
    assert_active(rule, bk.user, bk.a.order_id, FILLED, listed)
    assert await get_rule(oms.orders, bk.user, rule.rule_id) == rule
    d_before = await order_of(oms.orders, bk.user, bk.d.order_id)

    await fill_a(oms, bk)

    await assert_cancelled_by_rule(oms.orders, bk.user, bk.b.order_id, bk.c.order_id)
    assert await order_of(oms.orders, bk.user, bk.d.order_id) == d_before
    fired = await get_rule(oms.orders, bk.user, rule.rule_id)
    assert_triggered(fired, all_cancelled(bk.c.order_id, bk.b.order_id))
    assert (fired.rule_id, fired.user_id, fired.trigger_order_id, fired.condition) == (
        rule.rule_id,
        bk.user,
        bk.a.order_id,
        FILLED,
    )
    assert fired.created_at == rule.created_at

    # The cancels reached the exchange: ticks at B's and C's limits fill neither; D fills.
    await publish(oms.market, C_PRICE)
    await publish(oms.market, D_PRICE)
    for order_id in (bk.b.order_id, bk.c.order_id):
        assert await status_of(oms, bk.user, order_id) == S.ORDER_STATUS_CANCELED
        assert await fill_count(oms.orders, bk.user, order_id) == 0
    assert await status_of(oms, bk.user, bk.d.order_id) == S.ORDER_STATUS_FILLED
    # Fired once: later events leave the rule as it was.
    assert await get_rule(oms.orders, bk.user, rule.rule_id) == fired


async def finished_in_background(
    oms: OmsHarness, user: str, rule_id: str
) -> conditional_rule_pb2.ConditionalRule:
    """The rule once its results are in (within 5 s)."""
    async with asyncio.timeout(5):
        while True:
            rule = await get_rule(oms.orders, user, rule_id)
            if rule.results:
                return rule
            await asyncio.sleep(0.02)


async def test_a_rule_fired_by_a_tick_whose_caller_goes_away_is_still_finished(
    proxy: RedisFaultProxy,
) -> None:
    # The tick commits its fill and fires the rule, and waits for the rule's cancels. Its
    # caller's deadline passes meanwhile (B's cancel held by a stalled Redis): the cancel
    # and the rule's results are committed all the same, not left for the next start.
    oms = await make_oms(await proxy.start())
    try:
        user = fresh_user()
        await publish(oms.market, "50000")
        a = await resting(oms.orders, user, A_PRICE)
        b = await resting(oms.orders, user, B_PRICE, client_order_id="listed-b")
        rule = await create_rule(oms.orders, user, a.order_id, FILLED, [b.order_id])
        proxy.hold_request(b"listed-b")  # B's cancel commit, the first request to name it
        tick = md.PublishPricesRequest(
            prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price=A_PRICE)]
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await oms.market.PublishPrices(tick, timeout=0.3)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await proxy.release_held()
        fired = await finished_in_background(oms, user, rule.rule_id)  # the cancel runs on
        assert_triggered(fired, all_cancelled(b.order_id))
        await assert_cancelled_by_rule(oms.orders, user, b.order_id)
    finally:
        await oms.close()


@pytest.mark.parametrize("retried", [False, True], ids=["store-check", "client-retry"])
async def test_a_rule_whose_firing_at_creation_landed_unanswered_is_finished(
    proxy: RedisFaultProxy, retried: bool
) -> None:
    # Its trigger has filled: the rule fires as it is created, and every reply to that
    # commit is lost (UNAVAILABLE). Its cancels are owed all the same: the retry under its
    # client_id makes them, or, with no retry, the next store check that finds Redis
    # answering (not the next start).
    oms = await make_oms(await proxy.start())
    try:
        user = fresh_user()
        await publish(oms.market, "50000")
        b = await resting(oms.orders, user, B_PRICE)
        trigger = await _filled(oms, user)
        request = create_request(user, trigger.order_id, FILLED, [b.order_id])
        request.client_id = "fired-unanswered"
        creating = oms.orders.CreateConditionalRule(request)
        await landed_unanswered(proxy, b'"client_id":"fired-unanswered"', creating)
        if retried:
            rule = (await oms.orders.CreateConditionalRule(request)).rule
        else:
            async with asyncio.timeout(5):
                while True:  # finished by the store check, in the background
                    [rule] = await all_rules(oms.orders, user)
                    if rule.results:
                        break
                    await asyncio.sleep(0.05)
        assert_triggered(rule, all_cancelled(b.order_id))
        await assert_cancelled_by_rule(oms.orders, user, b.order_id)
    finally:
        await oms.close()


async def test_partially_filled_rule_fires_on_a_fill_that_completes_the_trigger(
    oms: OmsHarness,
) -> None:
    bk = await book(oms)
    listed = [bk.b.order_id, bk.c.order_id]
    rule = await create_rule(oms.orders, bk.user, bk.a.order_id, PARTIALLY_FILLED, listed)
    assert_active(rule, bk.user, bk.a.order_id, PARTIALLY_FILLED, listed)

    await fill_a(oms, bk)

    await assert_cancelled_by_rule(oms.orders, bk.user, *listed)
    assert await status_of(oms, bk.user, bk.d.order_id) == OPEN
    assert_triggered(await get_rule(oms.orders, bk.user, rule.rule_id), all_cancelled(*listed))


async def test_canceled_rule_fires_when_the_trigger_is_cancelled(oms: OmsHarness) -> None:
    bk = await book(oms)
    listed = [bk.b.order_id, bk.c.order_id]
    rule = await create_rule(oms.orders, bk.user, bk.a.order_id, CANCELED, listed)
    assert_active(rule, bk.user, bk.a.order_id, CANCELED, listed)

    cancelled = await cancel_order(oms.orders, bk.user, bk.a.order_id)
    assert cancelled.status == S.ORDER_STATUS_CANCELED

    await assert_cancelled_by_rule(oms.orders, bk.user, *listed)
    assert await status_of(oms, bk.user, bk.d.order_id) == OPEN
    assert_triggered(await get_rule(oms.orders, bk.user, rule.rule_id), all_cancelled(*listed))


async def test_canceled_rule_whose_trigger_fills_instead_is_cancelled_and_never_fires(
    oms: OmsHarness,
) -> None:
    bk = await book(oms)
    rule = await create_rule(oms.orders, bk.user, bk.a.order_id, CANCELED, [bk.b.order_id])
    b_before = await order_of(oms.orders, bk.user, bk.b.order_id)

    await fill_a(oms, bk)

    assert await order_of(oms.orders, bk.user, bk.b.order_id) == b_before
    after = await get_rule(oms.orders, bk.user, rule.rule_id)
    assert_rule_canceled(after, "trigger_order_terminal")
    assert list(after.cancel_order_ids) == [bk.b.order_id]


async def test_fill_rules_whose_trigger_is_cancelled_are_cancelled_and_never_fire(
    oms: OmsHarness,
) -> None:
    bk = await book(oms)
    on_fill = await create_rule(oms.orders, bk.user, bk.a.order_id, FILLED, [bk.b.order_id])
    on_first_fill = await create_rule(
        oms.orders, bk.user, bk.a.order_id, PARTIALLY_FILLED, [bk.c.order_id]
    )

    await cancel_order(oms.orders, bk.user, bk.a.order_id)

    for rule in (on_fill, on_first_fill):
        assert_rule_canceled(
            await get_rule(oms.orders, bk.user, rule.rule_id), "trigger_order_terminal"
        )
    for order in (bk.b, bk.c, bk.d):
        assert await status_of(oms, bk.user, order.order_id) == OPEN


async def _filled(oms: OmsHarness, user: str) -> order_pb2.Order:
    order = await place_order(oms.orders, user)  # market: fills at once
    assert order.status == S.ORDER_STATUS_FILLED, order
    return order


async def _cancelled(oms: OmsHarness, user: str) -> order_pb2.Order:
    order = await resting(oms.orders, user, "47000")
    order = await cancel_order(oms.orders, user, order.order_id)
    assert order.status == S.ORDER_STATUS_CANCELED, order
    return order


async def _rejected(oms: OmsHarness, user: str) -> order_pb2.Order:
    order = await place_order(oms.orders, user, symbol=SOL)  # no SOL price yet: "no price"
    assert order.status == S.ORDER_STATUS_REJECTED, order
    return order


async def _expired(oms: OmsHarness, user: str) -> order_pb2.Order:
    order = await place_order(
        oms.orders,
        user,
        type=S.ORDER_TYPE_LIMIT,
        price="47000",
        time_in_force=S.TIME_IN_FORCE_IOC,
    )
    assert order.status == S.ORDER_STATUS_EXPIRED, order
    return order


MakeTrigger = Callable[[OmsHarness, str], Awaitable[order_pb2.Order]]

PAST_THE_CONDITION: list[tuple[Condition, MakeTrigger]] = [
    (FILLED, _filled),
    (PARTIALLY_FILLED, _filled),
    (CANCELED, _cancelled),
]


@pytest.mark.parametrize(
    ("condition", "make_trigger"),
    PAST_THE_CONDITION,
    ids=["filled", "partially_filled-on-filled", "canceled"],
)
async def test_trigger_already_past_the_condition_fires_at_creation(
    oms: OmsHarness, condition: Condition, make_trigger: MakeTrigger
) -> None:
    bk = await book(oms)
    trigger = await make_trigger(oms, bk.user)
    d_before = await order_of(oms.orders, bk.user, bk.d.order_id)
    listed = [bk.c.order_id, bk.b.order_id]

    rule = await create_rule(oms.orders, bk.user, trigger.order_id, condition, listed)

    assert len(rule.rule_id) == 26
    assert (rule.user_id, rule.trigger_order_id, rule.condition) == (
        bk.user,
        trigger.order_id,
        condition,
    )
    assert_triggered(rule, all_cancelled(*listed))
    await assert_cancelled_by_rule(oms.orders, bk.user, *listed)
    assert await order_of(oms.orders, bk.user, bk.d.order_id) == d_before
    assert await get_rule(oms.orders, bk.user, rule.rule_id) == rule


NEVER_MEETS_THE_CONDITION: list[tuple[Condition, MakeTrigger]] = [
    (FILLED, _cancelled),
    (PARTIALLY_FILLED, _cancelled),  # cancelled with no fill
    (CANCELED, _filled),
    (FILLED, _rejected),
    (PARTIALLY_FILLED, _rejected),
    (CANCELED, _rejected),
    (FILLED, _expired),
    (PARTIALLY_FILLED, _expired),
    (CANCELED, _expired),
]


@pytest.mark.parametrize(
    ("condition", "make_trigger"),
    NEVER_MEETS_THE_CONDITION,
    ids=[
        f"{R.RuleCondition.Name(c).removeprefix('RULE_CONDITION_').lower()}-on-"
        f"{m.__name__.strip('_')}"
        for c, m in NEVER_MEETS_THE_CONDITION
    ],
)
async def test_trigger_terminal_without_the_condition_is_failed_precondition(
    oms: OmsHarness, redis_url: str, condition: Condition, make_trigger: MakeTrigger
) -> None:
    bk = await book(oms)
    trigger = await make_trigger(oms, bk.user)
    before = await redis_snapshot(redis_url)

    await expect_code(
        oms.orders.CreateConditionalRule(
            create_request(bk.user, trigger.order_id, condition, [bk.b.order_id])
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert await redis_snapshot(redis_url) == before
    assert await all_rules(oms.orders, bk.user) == []
    assert await status_of(oms, bk.user, bk.b.order_id) == OPEN


async def test_listed_orders_already_terminal_when_the_rule_fires_are_already_terminal(
    oms: OmsHarness,
) -> None:
    bk = await book(oms)
    fills_first = await resting(oms.orders, bk.user, "49800")  # above A: fills on its own tick
    listed = [fills_first.order_id, bk.b.order_id, bk.c.order_id]
    rule = await create_rule(oms.orders, bk.user, bk.a.order_id, FILLED, listed)
    assert_active(rule, bk.user, bk.a.order_id, FILLED, listed)

    await publish(oms.market, "49800")
    assert await status_of(oms, bk.user, fills_first.order_id) == S.ORDER_STATUS_FILLED
    assert await status_of(oms, bk.user, bk.a.order_id) == OPEN
    user_cancelled = await cancel_order(oms.orders, bk.user, bk.b.order_id)
    assert user_cancelled.status == S.ORDER_STATUS_CANCELED
    assert (await get_rule(oms.orders, bk.user, rule.rule_id)).status == ACTIVE

    await fill_a(oms, bk)

    assert_triggered(
        await get_rule(oms.orders, bk.user, rule.rule_id),
        [
            (fills_first.order_id, OUT_ALREADY_TERMINAL, S.ORDER_STATUS_FILLED),
            (bk.b.order_id, OUT_ALREADY_TERMINAL, S.ORDER_STATUS_CANCELED),
            (bk.c.order_id, OUT_CANCELED, S.ORDER_STATUS_CANCELED),
        ],
    )
    # Nothing was sent for the terminal ones: they are as they were.
    assert await fill_count(oms.orders, bk.user, fills_first.order_id) == 1
    b_now = await order_of(oms.orders, bk.user, bk.b.order_id)
    assert b_now == user_cancelled
    assert not b_now.cancel_reason.startswith(RULE_CANCEL_PREFIX)
    await assert_cancelled_by_rule(oms.orders, bk.user, bk.c.order_id)
    assert await status_of(oms, bk.user, bk.d.order_id) == OPEN


async def test_a_price_that_gaps_through_trigger_and_listed_order_fills_both(
    oms: OmsHarness,
) -> None:
    # As on an exchange, one price fills every order it crosses before the rule can fire.
    gapped = await book(oms)
    rule = await create_rule(
        oms.orders, gapped.user, gapped.a.order_id, FILLED, [gapped.b.order_id]
    )
    await publish(oms.market, B_PRICE)
    assert_triggered(
        await get_rule(oms.orders, gapped.user, rule.rule_id),
        [(gapped.b.order_id, OUT_ALREADY_TERMINAL, S.ORDER_STATUS_FILLED)],
    )
    # The same prices as two ticks of one PublishPrices: the rule cancels B in between.
    stepped = await book(oms)
    rule = await create_rule(
        oms.orders, stepped.user, stepped.a.order_id, FILLED, [stepped.b.order_id]
    )
    await oms.market.PublishPrices(
        md.PublishPricesRequest(
            prices=[
                market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price=price)
                for price in (A_PRICE, B_PRICE)
            ]
        )
    )
    assert_triggered(
        await get_rule(oms.orders, stepped.user, rule.rule_id), all_cancelled(stepped.b.order_id)
    )
    assert await fill_count(oms.orders, stepped.user, stepped.b.order_id) == 0


async def test_a_rule_may_span_symbols(oms: OmsHarness) -> None:
    user = fresh_user()
    for symbol, price in ((BTC, "50000"), (ETH, "3000"), (SOL, "100")):
        await publish(oms.market, price, symbol)
    a = await resting(oms.orders, user, A_PRICE)
    b = await resting(oms.orders, user, "2900", ETH)
    c = await resting(oms.orders, user, "90", SOL)
    d = await resting(oms.orders, user, "2800", ETH)  # same symbol as B, not listed
    rule = await create_rule(oms.orders, user, a.order_id, FILLED, [b.order_id, c.order_id])
    assert_active(rule, user, a.order_id, FILLED, [b.order_id, c.order_id])

    await publish(oms.market, A_PRICE)

    assert await status_of(oms, user, a.order_id) == S.ORDER_STATUS_FILLED
    await assert_cancelled_by_rule(oms.orders, user, b.order_id, c.order_id)
    assert await status_of(oms, user, d.order_id) == OPEN
    assert_triggered(
        await get_rule(oms.orders, user, rule.rule_id), all_cancelled(b.order_id, c.order_id)
    )
    # Gone from the exchange: ticks at their limits fill nothing.
    await publish(oms.market, "2900", ETH)
    await publish(oms.market, "90", SOL)
    assert await fill_count(oms.orders, user, b.order_id) == 0
    assert await fill_count(oms.orders, user, c.order_id) == 0


async def test_two_rules_on_one_trigger_both_fire(oms: OmsHarness) -> None:
    bk = await book(oms)
    untouched = await resting(oms.orders, bk.user, "47000")
    first = await create_rule(
        oms.orders, bk.user, bk.a.order_id, FILLED, [bk.b.order_id, bk.c.order_id]
    )
    second = await create_rule(
        oms.orders, bk.user, bk.a.order_id, PARTIALLY_FILLED, [bk.d.order_id, bk.c.order_id]
    )
    assert first.rule_id != second.rule_id

    await fill_a(oms, bk)

    await assert_cancelled_by_rule(oms.orders, bk.user, bk.b.order_id, bk.c.order_id)
    await assert_cancelled_by_rule(oms.orders, bk.user, bk.d.order_id)
    assert await status_of(oms, bk.user, untouched.order_id) == OPEN
    first_now = await get_rule(oms.orders, bk.user, first.rule_id)
    second_now = await get_rule(oms.orders, bk.user, second.rule_id)
    assert first_now.status == TRIGGERED
    assert second_now.status == TRIGGERED
    assert first_now.HasField("triggered_at")
    assert second_now.HasField("triggered_at")
    assert [(r.order_id, r.order_status) for r in first_now.results] == [
        (bk.b.order_id, S.ORDER_STATUS_CANCELED),
        (bk.c.order_id, S.ORDER_STATUS_CANCELED),
    ]
    assert [(r.order_id, r.order_status) for r in second_now.results] == [
        (bk.d.order_id, S.ORDER_STATUS_CANCELED),
        (bk.c.order_id, S.ORDER_STATUS_CANCELED),
    ]
    assert first_now.results[0].outcome == OUT_CANCELED
    assert second_now.results[0].outcome == OUT_CANCELED
    # C is listed by both: one of them cancelled it; the other cancelled it or found it
    # already cancelled. Never a failed cancel.
    c_outcomes = {first_now.results[1].outcome, second_now.results[1].outcome}
    assert OUT_CANCELED in c_outcomes
    assert c_outcomes <= {OUT_CANCELED, OUT_ALREADY_TERMINAL}


async def test_a_rule_may_list_100_orders(oms: OmsHarness) -> None:
    user = fresh_user()
    await publish(oms.market, "50000")
    a = await resting(oms.orders, user, A_PRICE)
    listed = [(await resting(oms.orders, user, f"{40000 + i}")).order_id for i in range(100)]
    rule = await create_rule(oms.orders, user, a.order_id, FILLED, listed)
    assert_active(rule, user, a.order_id, FILLED, listed)

    await publish(oms.market, A_PRICE)

    assert_triggered(await get_rule(oms.orders, user, rule.rule_id), all_cancelled(*listed))
    await assert_cancelled_by_rule(oms.orders, user, *listed)


# --- refused creates ------------------------------------------------------------------------


@dataclass
class Ids:
    user: str
    a: str
    b: str
    c: str
    many: list[str]  # more open orders of the user (BadCreate.extra_orders of them)
    foreign: str  # an open order of another user


async def _ids(oms: OmsHarness, extra_orders: int) -> Ids:
    bk = await book(oms)
    many = [
        (await resting(oms.orders, bk.user, f"{40000 + i}")).order_id for i in range(extra_orders)
    ]
    other = fresh_user("other")
    foreign = await resting(oms.orders, other, A_PRICE)
    return Ids(bk.user, bk.a.order_id, bk.b.order_id, bk.c.order_id, many, foreign.order_id)


@dataclass
class BadCreate:
    name: str
    code: grpc.StatusCode
    # INVALID_ARGUMENT: the field the message starts with. NOT_FOUND: which id (an attribute
    # of the request, or "foreign"/"unknown") the message must name.
    names: str
    change: Callable[[Ids], dict[str, Any]]
    extra_orders: int = 0


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE

BAD_CREATES: list[BadCreate] = [
    BadCreate("user_id-empty", INVALID, "user_id", lambda i: {"user_id": ""}),
    BadCreate("user_id-chars", INVALID, "user_id", lambda i: {"user_id": "bad user!"}),
    BadCreate("user_id-65", INVALID, "user_id", lambda i: {"user_id": "u" * 65}),
    BadCreate(
        "trigger_order_id-empty", INVALID, "trigger_order_id", lambda i: {"trigger_order_id": ""}
    ),
    BadCreate(
        "condition-unspecified",
        INVALID,
        "condition",
        lambda i: {"condition": R.RULE_CONDITION_UNSPECIFIED},
    ),
    BadCreate("condition-99", INVALID, "condition", lambda i: {"condition": 99}),
    BadCreate(
        "cancel_order_ids-empty", INVALID, "cancel_order_ids", lambda i: {"cancel_order_ids": []}
    ),
    BadCreate(
        "cancel_order_ids-duplicate",
        INVALID,
        "cancel_order_ids",
        lambda i: {"cancel_order_ids": [i.b, i.c, i.b]},
    ),
    BadCreate(
        "cancel_order_ids-101",
        INVALID,
        "cancel_order_ids",
        lambda i: {"cancel_order_ids": i.many},
        extra_orders=101,
    ),
    BadCreate(
        "cancel_order_ids-has-trigger",
        INVALID,
        "cancel_order_ids",
        lambda i: {"cancel_order_ids": [i.b, i.a]},
    ),
    BadCreate("client_id-chars", INVALID, "client_id", lambda i: {"client_id": "bad id"}),
    BadCreate("client_id-65", INVALID, "client_id", lambda i: {"client_id": "c" * 65}),
    BadCreate("trigger-unknown", NOT_FOUND, "trigger", lambda i: {"trigger_order_id": UNKNOWN_ID}),
    BadCreate("trigger-garbage", NOT_FOUND, "trigger", lambda i: {"trigger_order_id": "NOPE"}),
    BadCreate(
        "trigger-of-another-user",
        NOT_FOUND,
        "trigger",
        lambda i: {"trigger_order_id": i.foreign},
    ),
    BadCreate(
        "cancel-unknown",
        NOT_FOUND,
        "unknown",
        lambda i: {"cancel_order_ids": [i.b, UNKNOWN_ID_2]},
    ),
    BadCreate(
        "cancel-of-another-user",
        NOT_FOUND,
        "foreign",
        lambda i: {"cancel_order_ids": [i.foreign, i.c]},
    ),
    BadCreate(
        "another-user-naming-these-orders",
        NOT_FOUND,
        "trigger",
        lambda i: {"user_id": fresh_user("stranger")},
    ),
]


@pytest.mark.parametrize("case", BAD_CREATES, ids=[case.name for case in BAD_CREATES])
async def test_refused_create_names_the_problem_and_changes_nothing(
    oms: OmsHarness, redis_url: str, case: BadCreate
) -> None:
    ids = await _ids(oms, case.extra_orders)
    values: dict[str, Any] = {
        "user_id": ids.user,
        "trigger_order_id": ids.a,
        "condition": FILLED,
        "cancel_order_ids": [ids.b, ids.c],
    }
    values.update(case.change(ids))
    before = await redis_snapshot(redis_url)

    call = oms.orders.CreateConditionalRule(opb.CreateConditionalRuleRequest(**values))
    if case.code == INVALID:
        await expect_invalid(call, case.names)
    else:
        details = await expect_code(call, case.code)
        named = {
            "trigger": values["trigger_order_id"],
            "unknown": UNKNOWN_ID_2,
            "foreign": ids.foreign,
        }[case.names]
        if case.names == "trigger":
            assert named in details or "trigger_order_id" in details, details
        else:
            assert named in details, details

    assert await redis_snapshot(redis_url) == before
    assert await all_rules(oms.orders, ids.user) == []
    # The same orders with a valid request make a rule: the refusal was about the change.
    rule = await create_rule(oms.orders, ids.user, ids.a, FILLED, [ids.b, ids.c])
    assert rule.status == ACTIVE


# --- idempotency ----------------------------------------------------------------------------


async def test_create_is_idempotent_on_client_id_before_and_after_the_rule_fires(
    oms: OmsHarness,
) -> None:
    bk = await book(oms)
    request = create_request(bk.user, bk.a.order_id, FILLED, [bk.b.order_id, bk.c.order_id])
    request.client_id = "oco-1"
    rule = (await oms.orders.CreateConditionalRule(request)).rule
    assert rule.client_id == "oco-1"
    assert (await oms.orders.CreateConditionalRule(request)).rule == rule
    await fill_a(oms, bk)
    fired = await get_rule(oms.orders, bk.user, rule.rule_id)
    assert fired.status == TRIGGERED
    assert (await oms.orders.CreateConditionalRule(request)).rule == fired
    assert await all_rules(oms.orders, bk.user) == [fired]

    request.cancel_order_ids.pop()
    details = await expect_code(
        oms.orders.CreateConditionalRule(request), grpc.StatusCode.ALREADY_EXISTS
    )
    assert "client_id 'oco-1'" in details and rule.rule_id in details
    # Keys are per user.
    other = await book(oms)
    theirs = create_request(other.user, other.a.order_id, FILLED, [other.b.order_id])
    theirs.client_id = "oco-1"
    assert (await oms.orders.CreateConditionalRule(theirs)).rule.rule_id != rule.rule_id


async def test_get_and_delete_by_client_id(oms: OmsHarness) -> None:
    bk = await book(oms)
    request = create_request(bk.user, bk.a.order_id, FILLED, [bk.b.order_id])
    request.client_id = "oco-3"
    rule = (await oms.orders.CreateConditionalRule(request)).rule
    by_key = opb.GetConditionalRuleRequest(user_id=bk.user, client_id="oco-3")
    assert (await oms.orders.GetConditionalRule(by_key)).rule == rule
    deleted = await oms.orders.DeleteConditionalRule(
        opb.DeleteConditionalRuleRequest(user_id=bk.user, client_id="oco-3")
    )
    assert (deleted.rule.rule_id, deleted.rule.status) == (rule.rule_id, RULE_CANCELED)
    assert (await oms.orders.GetConditionalRule(by_key)).rule == deleted.rule

    for bad, field in (
        ({"rule_id": rule.rule_id, "client_id": "oco-3"}, "rule_id"),
        ({}, "rule_id"),
        ({"client_id": "bad id"}, "client_id"),
    ):
        await expect_invalid(
            oms.orders.GetConditionalRule(opb.GetConditionalRuleRequest(user_id=bk.user, **bad)),
            field,
        )
        await expect_invalid(
            oms.orders.DeleteConditionalRule(
                opb.DeleteConditionalRuleRequest(user_id=bk.user, **bad)
            ),
            field,
        )
    for user in (bk.user, fresh_user("stranger")):
        unknown = opb.GetConditionalRuleRequest(user_id=user, client_id="oco-404")
        await expect_code(oms.orders.GetConditionalRule(unknown), NOT_FOUND)
    stranger = opb.GetConditionalRuleRequest(user_id=fresh_user("stranger"), client_id="oco-3")
    await expect_code(oms.orders.GetConditionalRule(stranger), NOT_FOUND)


async def test_one_cancels_other_holds_against_ticks_that_come_together(
    oms: OmsHarness,
) -> None:
    # A buy below the price and a sell above it, each one's fill cancelling the other; two
    # ticks, one through each, from two publishers at once (decided in one batch): the one
    # that fills first fires its rule, and the other order is never filled after that.
    user = fresh_user()
    await publish(oms.market, "100", symbol=SOL)
    for attempt in range(5):
        buy = await resting(oms.orders, user, "99", symbol=SOL)
        sell = await place_order(
            oms.orders,
            user,
            symbol=SOL,
            side=S.SIDE_SELL,
            position_side=S.POSITION_SIDE_SHORT,
            type=S.ORDER_TYPE_LIMIT,
            price="101",
        )
        for trigger, other in ((buy, sell), (sell, buy)):
            await create_rule(oms.orders, user, trigger.order_id, FILLED, [other.order_id])
        await asyncio.gather(
            publish(oms.market, "99", symbol=SOL), publish(oms.market, "101", symbol=SOL)
        )
        statuses = sorted([await status_of(oms, user, o.order_id) for o in (buy, sell)])
        assert statuses == sorted([S.ORDER_STATUS_FILLED, S.ORDER_STATUS_CANCELED]), attempt
        await publish(oms.market, "100", symbol=SOL)


async def cross_symbol_rule(
    oms: OmsHarness,
) -> tuple[str, order_pb2.Order, conditional_rule_pb2.ConditionalRule]:
    """A fresh user, B and the rule: when A (a BTC buy at A_PRICE) fills, cancel B (an ETH
    buy at 2900, ETH at 3000)."""
    user = fresh_user()
    await publish(oms.market, "50000")
    await publish(oms.market, "3000", symbol=ETH)
    a = await resting(oms.orders, user, A_PRICE)
    b = await resting(oms.orders, user, "2900", symbol=ETH)
    return user, b, await create_rule(oms.orders, user, a.order_id, FILLED, [b.order_id])


async def test_a_refused_firing_settled_as_never_fired_keeps_the_hold_of_a_firing_since(
    oms: OmsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first firing is refused (nothing written): A and the rule stay as they were, and
    # B is held until the store check settles it. The next tick fires the rule for good;
    # while that commit is on its way, the check finds the rule ACTIVE (never fired). That
    # must not lift the new firing's hold: an ETH tick reaching B then would fill both legs.
    user, b, rule = await cross_symbol_rule(oms)
    firings = 0
    waiting, go_on = asyncio.Event(), asyncio.Event()

    async def refuse_then_hold(commit: Commit) -> None:
        nonlocal firings
        if fires_a_rule(commit):
            firings += 1
            if firings == 1:
                raise Unavailable("refused")
            waiting.set()
            await go_on.wait()

    intercept_commits(oms, monkeypatch, refuse_then_hold)
    await expect_code(publish(oms.market, A_PRICE), grpc.StatusCode.UNAVAILABLE)
    firing = asyncio.ensure_future(publish(oms.market, A_PRICE))
    await waiting.wait()
    await oms.app.rules.finish_unfinished()  # the store check: ACTIVE, never fired
    await publish(oms.market, "2900", symbol=ETH)  # reaches B: held back still
    go_on.set()
    await firing
    assert_triggered(await get_rule(oms.orders, user, rule.rule_id), all_cancelled(b.order_id))
    assert await fill_count(oms.orders, user, b.order_id) == 0


async def test_a_hold_lifted_while_a_failing_commit_ends_the_order_is_not_put_back(
    oms: OmsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The firing is refused, so B is held. B's own cancel is decided (taking B off the book)
    # and its commit is on its way when the store check finds the rule never fired and lifts
    # the hold; then that commit fails too. B is open again, and must fill like any order.
    bk = await book(oms)
    user, b = bk.user, bk.b
    await create_rule(oms.orders, user, bk.a.order_id, FILLED, [b.order_id])
    waiting, go_on, refused = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def refuse(commit: Commit) -> None:
        if fires_a_rule(commit) and not refused.is_set():
            refused.set()
            raise Unavailable("refused")
        if ends(b.order_id)(commit) and not waiting.is_set():
            waiting.set()
            await go_on.wait()
            raise Unavailable("refused")

    intercept_commits(oms, monkeypatch, refuse)
    await expect_code(publish(oms.market, A_PRICE), grpc.StatusCode.UNAVAILABLE)
    cancelling = asyncio.ensure_future(cancel_order(oms.orders, user, b.order_id))
    await waiting.wait()
    await oms.app.rules.finish_unfinished()  # the store check: ACTIVE, never fired
    go_on.set()
    await expect_code(cancelling, grpc.StatusCode.UNAVAILABLE)
    await publish(oms.market, "48900")  # through A and B: one price fills both
    assert await status_of(oms, user, b.order_id) == S.ORDER_STATUS_FILLED


async def test_a_failing_commit_on_another_symbol_puts_back_no_mark_of_a_failed_firing(
    oms: OmsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis refuses every write for a moment. The firing (BTC) is decided, holding B, and so
    # is B's cancel (ETH); the firing fails first, and the store check finds the rule never
    # fired; then the cancel fails. Nothing may be left holding B: A and the rule stand as
    # before, and B fills like any order.
    user, b, _ = await cross_symbol_rule(oms)
    firing, cancel = (asyncio.Event(), asyncio.Event()), (asyncio.Event(), asyncio.Event())

    async def held_then_refused(commit: Commit) -> None:
        for (seen, go_on), matches in ((firing, fires_a_rule), (cancel, ends(b.order_id))):
            if matches(commit) and not seen.is_set():
                seen.set()
                await go_on.wait()
                raise Unavailable("refused")

    intercept_commits(oms, monkeypatch, held_then_refused)
    ticking = asyncio.ensure_future(publish(oms.market, A_PRICE))
    await firing[0].wait()
    cancelling = asyncio.ensure_future(cancel_order(oms.orders, user, b.order_id))
    await cancel[0].wait()
    firing[1].set()
    await expect_code(ticking, grpc.StatusCode.UNAVAILABLE)
    await oms.app.rules.finish_unfinished()  # the store check: ACTIVE, never fired
    cancel[1].set()
    await expect_code(cancelling, grpc.StatusCode.UNAVAILABLE)
    await publish(oms.market, "2900", symbol=ETH)
    assert await status_of(oms, user, b.order_id) == S.ORDER_STATUS_FILLED


async def test_a_fired_rule_holds_back_its_orders_on_other_symbols(
    oms: OmsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fills on BTC and fires the rule; B rests on ETH. An ETH tick that reaches B while the
    # firing commit is on its way must not fill B: the rule cancels it.
    user, b, rule = await cross_symbol_rule(oms)
    waiting, go_on = hold_the_firing(oms, monkeypatch)
    firing = asyncio.ensure_future(publish(oms.market, A_PRICE))
    await waiting.wait()
    await publish(oms.market, "2900", symbol=ETH)  # reaches B: held back
    go_on.set()
    await firing
    assert_triggered(await get_rule(oms.orders, user, rule.rule_id), all_cancelled(b.order_id))
    await assert_cancelled_by_rule(oms.orders, user, b.order_id)
    assert await fill_count(oms.orders, user, b.order_id) == 0


async def test_a_rule_firing_at_creation_holds_back_its_orders(
    oms: OmsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its trigger has filled: the rule fires as it is created, not through a tick. A tick
    # that reaches B while that commit is on its way must not fill B.
    user = fresh_user()
    await publish(oms.market, "50000")
    b = await resting(oms.orders, user, B_PRICE)
    trigger = await _filled(oms, user)
    waiting, go_on = hold_the_firing(oms, monkeypatch)
    creating = asyncio.ensure_future(
        create_rule(oms.orders, user, trigger.order_id, FILLED, [b.order_id])
    )
    await waiting.wait()
    await publish(oms.market, B_PRICE)  # reaches B: held back
    go_on.set()
    assert_triggered(await creating, all_cancelled(b.order_id))
    await assert_cancelled_by_rule(oms.orders, user, b.order_id)
    assert await fill_count(oms.orders, user, b.order_id) == 0


async def test_a_rule_fired_by_a_tick_whose_commit_landed_unanswered_is_finished(
    proxy: RedisFaultProxy,
) -> None:
    # The tick's commit fills A and fires the rule, and every reply to it is lost: the tick
    # is UNAVAILABLE. The server goes on running: the rule is finished once the store
    # answers (not at the next start), and no tick meanwhile fills B.
    oms = await make_oms(await proxy.start())
    try:
        user = fresh_user()
        await publish(oms.market, "50000")
        a = await resting(oms.orders, user, A_PRICE, client_order_id="trigger-a")
        b = await resting(oms.orders, user, B_PRICE)
        rule = await create_rule(oms.orders, user, a.order_id, FILLED, [b.order_id])
        await landed_unanswered(proxy, b"trigger-a", publish(oms.market, A_PRICE))
        await publish(oms.market, B_PRICE)  # reaches B
        fired = await finished_in_background(oms, user, rule.rule_id)  # by the store check
        assert_triggered(fired, all_cancelled(b.order_id))
        await assert_cancelled_by_rule(oms.orders, user, b.order_id)
        assert await fill_count(oms.orders, user, b.order_id) == 0
    finally:
        await oms.close()


async def test_concurrent_creates_under_one_client_id_arm_one_rule(
    oms: OmsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each lookup of the key answers late, so that every create has looked before any has
    # written: without one create per key at a time, each would arm a rule of its own.
    lookup = oms.app.store.get_rule_by_client_id

    async def slow_lookup(user_id: str, client_id: str) -> Any:
        found = await lookup(user_id, client_id)
        await asyncio.sleep(0.1)
        return found

    monkeypatch.setattr(oms.app.store, "get_rule_by_client_id", slow_lookup)
    bk = await book(oms)
    request = create_request(bk.user, bk.a.order_id, FILLED, [bk.b.order_id])
    request.client_id = "oco-2"
    created = await asyncio.gather(*(oms.orders.CreateConditionalRule(request) for _ in range(10)))
    assert len({response.rule.rule_id for response in created}) == 1
    assert len(await all_rules(oms.orders, bk.user)) == 1


async def test_a_rule_finished_by_its_firing_and_by_a_retry_at_once_finishes_once(
    oms: OmsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The firing tick's follow-up reads the listed orders slowly; meanwhile the create's retry
    # finds the rule fired, not finished, and finishes it too: one finish, one event of it.
    get_orders = oms.app.store.get_orders
    reading = asyncio.Event()
    go_on = asyncio.Event()

    async def first_read_held(user_id: str, order_ids: Any) -> Any:
        found = await get_orders(user_id, order_ids)
        if not reading.is_set():
            reading.set()
            await go_on.wait()
        return found

    bk = await book(oms)
    start = (await list_rules(oms.orders, bk.user)).as_of_sequence
    request = create_request(bk.user, bk.a.order_id, FILLED, [bk.b.order_id])
    request.client_id = "oco-9"
    rule = (await oms.orders.CreateConditionalRule(request)).rule
    monkeypatch.setattr(oms.app.store, "get_orders", first_read_held)
    firing = asyncio.ensure_future(publish(oms.market, A_PRICE))
    await reading.wait()
    retry = asyncio.ensure_future(oms.orders.CreateConditionalRule(request))
    await asyncio.sleep(0.1)  # for the retry to reach the rule's finish, unless it waits
    go_on.set()
    await firing
    retried = (await retry).rule
    assert retried.rule_id == rule.rule_id
    assert_triggered(retried, all_cancelled(bk.b.order_id))
    stream = rule_stream(oms, bk.user, start)
    updates = await stream.events(3)  # created, fired, finished
    assert [len(u.rule.results) for u in updates] == [0, 0, 1]
    assert await stream.no_event_within(0.2)
    stream.cancel()


# --- stream ---------------------------------------------------------------------------------


def rule_stream(oms: OmsHarness, user: str, after_sequence: int = 0) -> StreamReader[Any]:
    return StreamReader(
        oms.orders.StreamConditionalRules(
            opb.StreamConditionalRulesRequest(user_id=user, after_sequence=after_sequence)
        ),
        "rule_update",
    )


async def test_the_rule_stream_carries_every_rule_change_once_in_order(oms: OmsHarness) -> None:
    bk = await book(oms)
    snapshot = await list_rules(oms.orders, bk.user)
    stream = rule_stream(oms, bk.user, snapshot.as_of_sequence)
    await stream.until_live()
    fires = await create_rule(oms.orders, bk.user, bk.a.order_id, FILLED, [bk.b.order_id])
    deleted = await create_rule(oms.orders, bk.user, bk.c.order_id, FILLED, [bk.d.order_id])
    await delete_rule(oms.orders, bk.user, deleted.rule_id)
    await fill_a(oms, bk)
    fired = await get_rule(oms.orders, bk.user, fires.rule_id)

    updates = await stream.events(5)
    assert [(u.rule.rule_id, u.rule.status, len(u.rule.results)) for u in updates] == [
        (fires.rule_id, ACTIVE, 0),
        (deleted.rule_id, ACTIVE, 0),
        (deleted.rule_id, RULE_CANCELED, 0),
        (fires.rule_id, TRIGGERED, 0),  # fired in its trigger's commit, cancels still to send
        (fires.rule_id, TRIGGERED, 1),
    ]
    assert updates[0].rule == fires and updates[-1].rule == fired
    sequences = [u.sequence for u in updates]
    assert sequences == sorted(set(sequences)) and sequences[0] > snapshot.as_of_sequence
    assert await stream.no_event_within(0.3)
    stream.cancel()

    # A resume after the third replays the last two, then goes live.
    resumed = rule_stream(oms, bk.user, sequences[2])
    assert [u.sequence for u in await resumed.events(2)] == sequences[3:]
    resumed.cancel()


async def test_a_rule_on_a_partly_filled_trigger_fires_at_creation_and_is_never_active(
    thin_oms: OmsHarness,
) -> None:
    oms = thin_oms
    bk = await book(oms)
    await publish(oms.market, A_PRICE)
    trigger = await order_of(oms.orders, bk.user, bk.a.order_id)
    assert trigger.status == S.ORDER_STATUS_PARTIALLY_FILLED
    stream = rule_stream(oms, bk.user, (await list_rules(oms.orders, bk.user)).as_of_sequence)
    await stream.until_live()

    rule = await create_rule(oms.orders, bk.user, bk.a.order_id, PARTIALLY_FILLED, [bk.b.order_id])

    assert_triggered(rule, all_cancelled(bk.b.order_id))
    updates = await stream.events(2)
    assert [(u.rule.status, len(u.rule.results)) for u in updates] == [
        (TRIGGERED, 0),
        (TRIGGERED, 1),
    ]
    assert await stream.no_event_within(0.3)
    stream.cancel()


async def test_bad_rule_stream_requests_name_the_field(oms: OmsHarness) -> None:
    for request, code, field in (
        (opb.StreamConditionalRulesRequest(user_id=""), INVALID, "user_id"),
        (opb.StreamConditionalRulesRequest(user_id="u" * 65), INVALID, "user_id"),
        (opb.StreamConditionalRulesRequest(user_id="nobody", after_sequence=5), OUT_OF_RANGE, ""),
    ):
        stream = rule_stream(oms, request.user_id, request.after_sequence)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stream.next_message()
        assert error.value.code() == code
        assert (error.value.details() or "").startswith(field)


# --- get ------------------------------------------------------------------------------------


async def test_get_rule_returns_it_within_its_user_only(oms: OmsHarness) -> None:
    bk = await book(oms)
    rule = await create_rule(oms.orders, bk.user, bk.a.order_id, FILLED, [bk.b.order_id])
    assert await get_rule(oms.orders, bk.user, rule.rule_id) == rule

    stranger = fresh_user("stranger")
    for user, rule_id in ((stranger, rule.rule_id), (bk.user, UNKNOWN_ID), (bk.user, "NOPE")):
        await expect_code(
            oms.orders.GetConditionalRule(
                opb.GetConditionalRuleRequest(user_id=user, rule_id=rule_id)
            ),
            grpc.StatusCode.NOT_FOUND,
        )
    await expect_invalid(
        oms.orders.GetConditionalRule(opb.GetConditionalRuleRequest(user_id=bk.user)), "rule_id"
    )
    for bad_user in ("", "bad user!", "u" * 65):
        await expect_invalid(
            oms.orders.GetConditionalRule(
                opb.GetConditionalRuleRequest(user_id=bad_user, rule_id=rule.rule_id)
            ),
            "user_id",
        )


# --- list -----------------------------------------------------------------------------------


async def test_list_rules_newest_first_paged(oms: OmsHarness) -> None:
    bk = await book(oms)
    created = [
        await create_rule(oms.orders, bk.user, bk.a.order_id, FILLED, [order.order_id])
        for order in (bk.b, bk.c, bk.d, bk.b, bk.c)
    ]
    newest_first = [rule.rule_id for rule in reversed(created)]

    everything = await list_rules(oms.orders, bk.user)  # page_size 0: up to 100
    assert [rule.rule_id for rule in everything.rules] == newest_first
    assert list(everything.rules) == list(reversed(created))
    assert everything.next_page_token == ""
    assert everything.as_of_sequence > 0
    capped = await list_rules(oms.orders, bk.user, page_size=5000)
    assert [rule.rule_id for rule in capped.rules] == newest_first

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await list_rules(oms.orders, bk.user, page_size=2, page_token=token)
        pages.append([rule.rule_id for rule in page.rules])
        token = page.next_page_token
        if not token:
            break
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:5]]

    assert (await list_rules(oms.orders, fresh_user("stranger"))).rules == []


async def test_list_rules_filters_by_trigger_and_status(oms: OmsHarness) -> None:
    bk = await book(oms)
    other_trigger = await resting(oms.orders, bk.user, "49900")
    waiting = await create_rule(oms.orders, bk.user, bk.a.order_id, FILLED, [bk.b.order_id])
    fires = await create_rule(oms.orders, bk.user, other_trigger.order_id, FILLED, [bk.c.order_id])
    deleted = await create_rule(oms.orders, bk.user, bk.a.order_id, FILLED, [bk.d.order_id])
    await delete_rule(oms.orders, bk.user, deleted.rule_id)
    before_fire = await list_rules(oms.orders, bk.user)
    await publish(oms.market, "49900")  # fills other_trigger only
    assert (await get_rule(oms.orders, bk.user, fires.rule_id)).status == TRIGGERED

    async def ids(**filters: Any) -> list[str]:
        return [rule.rule_id for rule in (await list_rules(oms.orders, bk.user, **filters)).rules]

    assert await ids() == [deleted.rule_id, fires.rule_id, waiting.rule_id]
    assert await ids(trigger_order_id=bk.a.order_id) == [deleted.rule_id, waiting.rule_id]
    assert await ids(trigger_order_id=other_trigger.order_id) == [fires.rule_id]
    assert await ids(trigger_order_id=bk.b.order_id) == []
    assert await ids(statuses=[ACTIVE]) == [waiting.rule_id]
    assert await ids(statuses=[TRIGGERED]) == [fires.rule_id]
    assert await ids(statuses=[RULE_CANCELED]) == [deleted.rule_id]
    assert await ids(statuses=[TRIGGERED, RULE_CANCELED]) == [deleted.rule_id, fires.rule_id]
    assert await ids(trigger_order_id=bk.a.order_id, statuses=[TRIGGERED]) == []
    assert await ids(trigger_order_id=bk.a.order_id, statuses=[RULE_CANCELED, ACTIVE]) == [
        deleted.rule_id,
        waiting.rule_id,
    ]

    first = await list_rules(oms.orders, bk.user, statuses=[ACTIVE, RULE_CANCELED], page_size=1)
    assert [rule.rule_id for rule in first.rules] == [deleted.rule_id]
    assert first.next_page_token
    second = await list_rules(
        oms.orders,
        bk.user,
        statuses=[ACTIVE, RULE_CANCELED],
        page_size=1,
        page_token=first.next_page_token,
    )
    assert [rule.rule_id for rule in second.rules] == [waiting.rule_id]

    listed = await list_rules(oms.orders, bk.user)
    assert list(listed.rules) == [
        await get_rule(oms.orders, bk.user, rule_id)
        for rule_id in (deleted.rule_id, fires.rule_id, waiting.rule_id)
    ]
    assert listed.as_of_sequence >= before_fire.as_of_sequence > 0


BAD_LISTS: list[tuple[str, dict[str, Any]]] = [
    ("user_id", {"user_id": ""}),
    ("user_id", {"user_id": "bad user!"}),
    # The message names the offending element, as ListOrders does.
    ("statuses[0]", {"statuses": [R.RULE_STATUS_UNSPECIFIED]}),
    ("statuses[1]", {"statuses": [R.RULE_STATUS_ACTIVE, R.RULE_STATUS_UNSPECIFIED]}),
    ("statuses[0]", {"statuses": [99]}),
    ("page_size", {"page_size": -1}),
    ("page_token", {"page_token": "not-a-token"}),
]


@pytest.mark.parametrize(
    ("field", "change"), BAD_LISTS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_LISTS)]
)
async def test_bad_list_rules_names_the_field(
    oms: OmsHarness, field: str, change: dict[str, Any]
) -> None:
    values: dict[str, Any] = {"user_id": fresh_user()}
    values.update(change)
    await expect_invalid(
        oms.orders.ListConditionalRules(opb.ListConditionalRulesRequest(**values)), field
    )


# --- delete ---------------------------------------------------------------------------------


async def test_deleted_rule_is_cancelled_and_never_fires(oms: OmsHarness) -> None:
    bk = await book(oms)
    listed = [bk.b.order_id, bk.c.order_id]
    rule = await create_rule(oms.orders, bk.user, bk.a.order_id, FILLED, listed)

    deleted = await delete_rule(oms.orders, bk.user, rule.rule_id)

    assert_rule_canceled(deleted, "deleted")
    assert (deleted.rule_id, deleted.trigger_order_id, deleted.condition) == (
        rule.rule_id,
        bk.a.order_id,
        FILLED,
    )
    assert list(deleted.cancel_order_ids) == listed
    assert deleted.created_at == rule.created_at
    assert await get_rule(oms.orders, bk.user, rule.rule_id) == deleted

    await fill_a(oms, bk)

    for order in (bk.b, bk.c, bk.d):
        assert await status_of(oms, bk.user, order.order_id) == OPEN
    assert await get_rule(oms.orders, bk.user, rule.rule_id) == deleted
    # A safe retry: the same CANCELED rule, unchanged.
    assert await delete_rule(oms.orders, bk.user, rule.rule_id) == deleted


async def test_deleting_a_rule_cancelled_by_its_trigger_returns_it_unchanged(
    oms: OmsHarness,
) -> None:
    bk = await book(oms)
    rule = await create_rule(oms.orders, bk.user, bk.a.order_id, CANCELED, [bk.b.order_id])
    await fill_a(oms, bk)
    cancelled = await get_rule(oms.orders, bk.user, rule.rule_id)
    assert_rule_canceled(cancelled, "trigger_order_terminal")

    assert await delete_rule(oms.orders, bk.user, rule.rule_id) == cancelled
    assert await get_rule(oms.orders, bk.user, rule.rule_id) == cancelled


async def test_deleting_a_triggered_rule_is_failed_precondition(
    oms: OmsHarness, redis_url: str
) -> None:
    bk = await book(oms)
    rule = await create_rule(oms.orders, bk.user, bk.a.order_id, FILLED, [bk.b.order_id])
    await fill_a(oms, bk)
    fired = await get_rule(oms.orders, bk.user, rule.rule_id)
    assert_triggered(fired, all_cancelled(bk.b.order_id))
    before = await redis_snapshot(redis_url)

    await expect_code(
        oms.orders.DeleteConditionalRule(
            opb.DeleteConditionalRuleRequest(user_id=bk.user, rule_id=rule.rule_id)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert await redis_snapshot(redis_url) == before
    assert await get_rule(oms.orders, bk.user, rule.rule_id) == fired


async def test_refused_deletes_change_nothing(oms: OmsHarness, redis_url: str) -> None:
    bk = await book(oms)
    listed = [bk.b.order_id]
    rule = await create_rule(oms.orders, bk.user, bk.a.order_id, FILLED, listed)
    before = await redis_snapshot(redis_url)
    stranger = fresh_user("stranger")

    for user, rule_id in ((stranger, rule.rule_id), (bk.user, UNKNOWN_ID), (bk.user, "NOPE")):
        await expect_code(
            oms.orders.DeleteConditionalRule(
                opb.DeleteConditionalRuleRequest(user_id=user, rule_id=rule_id)
            ),
            grpc.StatusCode.NOT_FOUND,
        )
    await expect_invalid(
        oms.orders.DeleteConditionalRule(opb.DeleteConditionalRuleRequest(user_id=bk.user)),
        "rule_id",
    )
    for bad_user in ("", "bad user!"):
        await expect_invalid(
            oms.orders.DeleteConditionalRule(
                opb.DeleteConditionalRuleRequest(user_id=bad_user, rule_id=rule.rule_id)
            ),
            "user_id",
        )

    assert await redis_snapshot(redis_url) == before
    assert await get_rule(oms.orders, bk.user, rule.rule_id) == rule
    # Still ACTIVE, so it still fires.
    await fill_a(oms, bk)
    assert_triggered(await get_rule(oms.orders, bk.user, rule.rule_id), all_cancelled(*listed))
    await assert_cancelled_by_rule(oms.orders, bk.user, *listed)
