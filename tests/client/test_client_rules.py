"""OmsClient's conditional rules against the real server: a rule that fires, reads and pages,
its stream, the idempotent delete and create under lost responses.

Paper exchange: a BUY LIMIT below the last price rests OPEN and fills, completely, on the
first tick at or below its limit. A rule fires in the commit of its trigger's change, and the
call that caused it (PublishPrices, CancelOrder) returns after the rule's cancels are done.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from fixtures.client_streams import free_loopback_address
from fixtures.lossy_network import LoseResponses, client_with
from fixtures.oms_server import OmsHarness
from oms_client import NO_RETRY, OmsClient, RetryPolicy
from tradingboost.oms.v1 import conditional_rule_pb2, market_data_pb2, order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.bootstrap import Application
from oms.config import Settings

S = order_pb2
R = conditional_rule_pb2
BTC = "BTC/USDT:USDT"
USER = "alice"
FILLED = R.RULE_CONDITION_FILLED
CANCELED = R.RULE_CONDITION_CANCELED
ACTIVE = R.RULE_STATUS_ACTIVE
TRIGGERED = R.RULE_STATUS_TRIGGERED
RULE_CANCELED = R.RULE_STATUS_CANCELED
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01)
# The reconnect backoff OmsClient.connect sets, for clients made on their own channel here.
QUICK_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


async def tick(client: OmsClient, price: str) -> None:
    await client.publish_prices(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price=price)]
    )


async def resting_buy(client: OmsClient, price: str) -> S.Order:
    order = await client.place_order(
        user_id=USER,
        exchange="paper",
        symbol=BTC,
        side=S.SIDE_BUY,
        type=S.ORDER_TYPE_LIMIT,
        quantity="0.01",
        price=price,
    )
    assert order.status == S.ORDER_STATUS_OPEN, order
    return order


async def status(client: OmsClient, order: S.Order) -> int:
    return (await client.get_order(user_id=USER, order_id=order.order_id)).status


def results(rule: R.ConditionalRule) -> list[tuple[str, int, int]]:
    return [(r.order_id, r.outcome, r.order_status) for r in rule.results]


@pytest.fixture
async def client(oms: OmsHarness) -> AsyncIterator[OmsClient]:
    async with OmsClient.connect(oms.address) as client:
        await tick(client, "100")
        yield client


async def test_when_the_trigger_fills_the_rule_cancels_the_listed_orders_once(
    client: OmsClient,
) -> None:
    grid_a, grid_b, grid_c, other = [
        await resting_buy(client, price) for price in ("99", "98", "97", "96")
    ]
    listed = [grid_c.order_id, grid_b.order_id]
    rule = await client.create_rule(
        user_id=USER, trigger_order_id=grid_a.order_id, condition=FILLED, cancel_order_ids=listed
    )
    assert (rule.status, rule.trigger_order_id, rule.condition) == (
        ACTIVE,
        grid_a.order_id,
        FILLED,
    )
    assert (list(rule.cancel_order_ids), list(rule.results)) == (listed, [])
    assert await client.get_rule(user_id=USER, rule_id=rule.rule_id) == rule

    await tick(client, "99")  # fills A; returns after the rule's cancels

    fired = await client.get_rule(user_id=USER, rule_id=rule.rule_id)
    assert fired.status == TRIGGERED and fired.HasField("triggered_at")
    assert results(fired) == [
        (order_id, R.RULE_CANCEL_OUTCOME_CANCELED, S.ORDER_STATUS_CANCELED) for order_id in listed
    ]
    assert await status(client, grid_a) == S.ORDER_STATUS_FILLED
    for order in (grid_b, grid_c):
        canceled = await client.get_order(user_id=USER, order_id=order.order_id)
        assert canceled.status == S.ORDER_STATUS_CANCELED
        assert canceled.cancel_reason == f"conditional rule {rule.rule_id}"
    assert await status(client, other) == S.ORDER_STATUS_OPEN  # not listed
    await tick(client, "96")  # fills the other order; the rule fired once and stays as it was
    assert await status(client, other) == S.ORDER_STATUS_FILLED
    assert await client.get_rule(user_id=USER, rule_id=rule.rule_id) == fired

    with pytest.raises(grpc.aio.AioRpcError) as too_late:
        await client.delete_rule(user_id=USER, rule_id=rule.rule_id)
    assert too_late.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_stream_rules_follows_a_rule_from_creation_to_its_results(client: OmsClient) -> None:
    grid_a, grid_b = [await resting_buy(client, price) for price in ("99", "98")]
    snapshot = await client.list_rules_page(user_id=USER)
    stream = client.stream_rules(USER, after_sequence=snapshot.as_of_sequence)
    rule = await client.create_rule(
        user_id=USER,
        trigger_order_id=grid_a.order_id,
        condition=FILLED,
        cancel_order_ids=[grid_b.order_id],
    )
    await tick(client, "99")
    async with asyncio.timeout(5):
        updates = [await anext(stream) for _ in range(3)]
    assert [(u.rule.status, len(u.rule.results)) for u in updates] == [
        (ACTIVE, 0),
        (TRIGGERED, 0),
        (TRIGGERED, 1),
    ]
    assert updates[0].rule == rule
    assert stream.last_sequence == updates[-1].sequence
    await stream.aclose()


async def test_a_trigger_already_past_the_condition_fires_at_creation(client: OmsClient) -> None:
    grid_a, grid_b = [await resting_buy(client, price) for price in ("99", "98")]
    await client.cancel_order(user_id=USER, order_id=grid_a.order_id)
    rule = await client.create_rule(
        pb.CreateConditionalRuleRequest(
            user_id=USER,
            trigger_order_id=grid_a.order_id,
            condition=CANCELED,
            cancel_order_ids=[grid_b.order_id],
        )
    )
    assert rule.status == TRIGGERED
    assert results(rule) == [
        (grid_b.order_id, R.RULE_CANCEL_OUTCOME_CANCELED, S.ORDER_STATUS_CANCELED)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as never:  # A can never fill now
        await client.create_rule(
            user_id=USER,
            trigger_order_id=grid_a.order_id,
            condition=FILLED,
            cancel_order_ids=[grid_b.order_id],
        )
    assert never.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_list_rules_pages_and_filters_and_a_deleted_rule_never_fires(
    client: OmsClient,
) -> None:
    a, b, c, d = [await resting_buy(client, price) for price in ("99", "98", "97", "96")]

    async def rule(trigger: S.Order, *cancel: S.Order) -> R.ConditionalRule:
        return await client.create_rule(
            user_id=USER,
            trigger_order_id=trigger.order_id,
            condition=FILLED,
            cancel_order_ids=[o.order_id for o in cancel],
        )

    on_a, on_b, also_on_a = await rule(a, d), await rule(b, c), await rule(a, c)
    deleted = await client.delete_rule(user_id=USER, rule_id=also_on_a.rule_id)
    assert (deleted.status, deleted.status_reason) == (RULE_CANCELED, "deleted")
    assert await client.delete_rule(user_id=USER, rule_id=also_on_a.rule_id) == deleted

    def ids(rules: list[R.ConditionalRule]) -> list[str]:
        return [r.rule_id for r in rules]

    page = await client.list_rules_page(user_id=USER, page_size=2)
    assert ids(list(page.rules)) == ids([also_on_a, on_b])  # newest first
    assert page.next_page_token and page.as_of_sequence > 0
    listed = [r async for r in client.list_rules(user_id=USER, page_size=1)]
    assert listed == [deleted, on_b, on_a]
    by_trigger = [r async for r in client.list_rules(user_id=USER, trigger_order_id=a.order_id)]
    assert ids(by_trigger) == ids([also_on_a, on_a])
    active = [r async for r in client.list_rules(user_id=USER, statuses=[ACTIVE], page_size=1)]
    assert ids(active) == ids([on_b, on_a])

    await tick(client, "99")  # fills A: on_a fires, the deleted rule does not
    assert await status(client, d) == S.ORDER_STATUS_CANCELED
    assert await status(client, c) == S.ORDER_STATUS_OPEN
    assert await client.get_rule(user_id=USER, rule_id=also_on_a.rule_id) == deleted
    fired = [r async for r in client.list_rules(user_id=USER, statuses=[TRIGGERED])]
    assert ids(fired) == ids([on_a])
    assert [r async for r in client.list_rules(user_id="bob")] == []


# Retries


async def test_a_lost_delete_response_is_retried_and_returns_the_deleted_rule(
    client: OmsClient, oms: OmsHarness
) -> None:
    a, b = [await resting_buy(client, price) for price in ("99", "98")]
    rule = await client.create_rule(
        user_id=USER, trigger_order_id=a.order_id, condition=FILLED, cancel_order_ids=[b.order_id]
    )
    lose = LoseResponses("DeleteConditionalRule", times=1)
    async with client_with(oms.address, lose, retry=FAST_RETRY) as losing:
        deleted = await losing.delete_rule(user_id=USER, rule_id=rule.rule_id)
    assert len(lose.requests) == 2  # the retry found it CANCELED and returned it
    assert (deleted.rule_id, deleted.status, deleted.status_reason) == (
        rule.rule_id,
        RULE_CANCELED,
        "deleted",
    )


async def test_a_lost_create_rule_response_is_retried_and_arms_one_rule(
    client: OmsClient, oms: OmsHarness
) -> None:
    a, b = [await resting_buy(client, price) for price in ("99", "98")]
    lose = LoseResponses("CreateConditionalRule", times=2)
    async with client_with(oms.address, lose, retry=FAST_RETRY) as losing:
        rule = await losing.create_rule(
            user_id=USER,
            trigger_order_id=a.order_id,
            condition=FILLED,
            cancel_order_ids=[b.order_id],
        )
    assert len(lose.requests) == 3
    assert len({r.client_id for r in lose.requests}) == 1  # made once, sent three times
    assert rule.client_id == lose.requests[0].client_id
    rules = [r async for r in client.list_rules(user_id=USER, trigger_order_id=a.order_id)]
    assert rules == [rule]


class SeeCalls(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Sets `started` once a call of `rpc` has been handed to the channel."""

    def __init__(self, rpc: str) -> None:
        self.rpc = rpc
        self.started = asyncio.Event()

    async def intercept_unary_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(details, request)
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if method.endswith(f"/{self.rpc}"):
            self.started.set()
        return call


async def test_create_rule_rides_a_server_restart_within_its_retry_deadline(
    redis_url: str,
) -> None:
    settings = Settings(listen=free_loopback_address(), redis_url=redis_url, shutdown_grace_s=0.5)
    first = Application(settings, redis_url)
    await first.start()
    second = Application(settings, redis_url)
    seen = SeeCalls("CreateConditionalRule")
    try:
        async with client_with(settings.listen, seen, options=QUICK_RECONNECT) as client:
            await tick(client, "100")
            a, b = [await resting_buy(client, price) for price in ("99", "98")]
            await first.stop()
            with pytest.raises(grpc.aio.AioRpcError) as down:  # an ordinary call fails at once
                await client.get_order(user_id=USER, order_id=a.order_id, retry=NO_RETRY)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE

            creating = asyncio.create_task(
                client.create_rule(
                    user_id=USER,
                    trigger_order_id=a.order_id,
                    condition=FILLED,
                    cancel_order_ids=[b.order_id],
                    retry=RetryPolicy(deadline_s=30),
                )
            )
            await seen.started.wait()  # issued while nothing listens
            await second.start()
            rule = await creating
            assert rule.status == ACTIVE
            assert [r async for r in client.list_rules(user_id=USER)] == [rule]
    finally:
        await second.stop()
