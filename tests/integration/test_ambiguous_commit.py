"""A commit whose reply is lost after Redis applied it: the commit pipe sends it again, the
repeat finds its earlier attempt landed and writes nothing, and the caller gets the result
of the one that landed. And a Redis that answers it cannot run a command for now (loading
its data, a replica without its master): sent again, or UNAVAILABLE, never UNKNOWN."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import grpc
import pytest
import redis
from fixtures.domain import new_order
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.positions import position
from fixtures.redis_proxy import LOADING, RedisFaultProxy
from fixtures.redis_server import go_back_to, snapshot
from fixtures.rules import (
    FILLED,
    all_cancelled,
    assert_triggered,
    create_rule,
    fresh_user,
    get_rule,
    order_of,
    publish,
    resting,
)
from fixtures.streams import StreamReader
from fixtures.trading import USER, fills_of, get, place, tick
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.adapters.redis_store.embedded import EmbeddedRedis
from oms.domain.events import OrderEventType, OrderUpdated, PositionUpdated
from oms.domain.orders import Order, OrderStatus
from oms.engine.ports import OrderChange
from oms.engine.prerender import Prerender

COMMIT = b"EVALSHA"
OOM = "OOM command not allowed when used memory > 'maxmemory'."


@pytest.fixture
async def oms_via_proxy(proxy: RedisFaultProxy) -> AsyncIterator[OmsHarness]:
    harness = await make_oms(await proxy.start())
    try:
        yield harness
    finally:
        await harness.close()


async def test_a_place_whose_reply_was_lost_is_the_one_order_and_still_rests(
    oms_via_proxy: OmsHarness, proxy: RedisFaultProxy
) -> None:
    oms = oms_via_proxy
    await tick(oms, "50000")
    proxy.lose_reply_to(COMMIT)
    order = await place(oms, client_order_id="dip", type=S.ORDER_TYPE_LIMIT, price="49000")
    assert proxy.lost_replies == 1
    assert order.status == S.ORDER_STATUS_OPEN
    listing = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    assert [o.order_id for o in listing.orders] == [order.order_id]
    assert listing.as_of_sequence == 1
    # Memory was reloaded from the store: the order is on the book and fills on its tick.
    await tick(oms, "48000")
    assert (await get(oms, order.order_id)).status == S.ORDER_STATUS_FILLED


async def test_a_tick_whose_reply_was_lost_fills_each_order_once(
    oms_via_proxy: OmsHarness, proxy: RedisFaultProxy
) -> None:
    oms = oms_via_proxy
    await tick(oms, "50000")
    resting = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000")
    proxy.lose_reply_to(COMMIT)
    await tick(oms, "48000")
    assert proxy.lost_replies == 1
    assert (await get(oms, resting.order_id)).status == S.ORDER_STATUS_FILLED
    assert len(await fills_of(oms, resting.order_id)) == 1
    assert (await position(oms)).size == "0.01"
    await tick(oms, "47000")
    assert (await position(oms)).mark_price == "47000"


async def test_a_refusal_whose_reply_was_lost_is_still_a_refusal(
    oms_via_proxy: OmsHarness, proxy: RedisFaultProxy
) -> None:
    # The repeat's earlier attempt ran but its guard refused it: that is no landing.
    oms = oms_via_proxy
    await tick(oms, "50000")
    first = await place(oms, client_order_id="taken", type=S.ORDER_TYPE_LIMIT, price="49000")
    proxy.lose_reply_to(COMMIT)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await place(oms, client_order_id="taken", type=S.ORDER_TYPE_LIMIT, price="48000")
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert proxy.lost_replies == 1
    listing = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    assert [o.order_id for o in listing.orders] == [first.order_id]


async def test_a_mark_whose_reply_was_lost_is_recorded_once(
    oms_via_proxy: OmsHarness, proxy: RedisFaultProxy
) -> None:
    # A tick that only marks a position has no guard to refuse its re-sent commit: the
    # landing marks of the commit pipe must.
    oms = oms_via_proxy
    await tick(oms, "50000")
    await place(oms)  # a market buy: a long position
    proxy.lose_reply_to(COMMIT)
    await tick(oms, "51000")
    assert proxy.lost_replies == 1
    events = await oms.app.store.read_events(USER, 0, 100)
    marks = [
        e.sequence
        for e in events
        if isinstance(e.event, PositionUpdated) and e.event.position.mark_price == Decimal(51000)
    ]
    assert len(marks) == 1
    assert (await position(oms)).mark_price == "51000"
    await tick(oms, "52000")  # memory and store agree: the next mark follows on
    assert (await position(oms)).mark_price == "52000"


async def test_a_cancel_whose_reply_was_lost_leaves_the_order_canceled(
    oms_via_proxy: OmsHarness, proxy: RedisFaultProxy
) -> None:
    oms = oms_via_proxy
    await tick(oms, "50000")
    resting = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000")
    updates: StreamReader[S.OrderUpdate] = StreamReader(
        oms.orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(user_id=USER)), "order_update"
    )
    await updates.until_live()
    proxy.lose_reply_to(COMMIT)
    canceled = await oms.orders.CancelOrder(
        pb.CancelOrderRequest(user_id=USER, order_id=resting.order_id)
    )
    # Its event reaches the stream although this process never learnt its sequence.
    [update] = await updates.events(1)
    assert update.order == canceled.order
    updates.cancel()
    # The repeat found its earlier attempt landed: the cancel succeeded, once.
    assert canceled.order.status == S.ORDER_STATUS_CANCELED
    assert proxy.lost_replies == 1
    assert await get(oms, resting.order_id) == canceled.order
    events = await oms.app.store.read_events(USER, 0, 100)
    assert len(events) == 2  # ACCEPTED, CANCELED
    await tick(oms, "48000")
    assert (await get(oms, resting.order_id)).status == S.ORDER_STATUS_CANCELED
    assert await fills_of(oms, resting.order_id) == []


async def test_a_paper_reply_is_rendered_while_its_commit_is_in_flight(
    oms_via_proxy: OmsHarness, proxy: RedisFaultProxy
) -> None:
    oms = oms_via_proxy
    await tick(oms, "50000")
    rendered: list[Order] = []
    was_rendered = asyncio.Event()

    def render(order: Order) -> OrderStatus:
        rendered.append(order)
        was_rendered.set()
        return order.status

    prerender = Prerender(render)
    proxy.lose_reply_to(COMMIT)
    placing = asyncio.create_task(oms.app.paper.place(new_order(), prerender))
    await asyncio.wait_for(was_rendered.wait(), 5)
    assert not placing.done()  # rendered before the commit was answered
    assert rendered[0].status is OrderStatus.OPEN
    placed, created = await placing
    # The reply was lost and the repeat found its earlier attempt landed: the rendering
    # made while it was in flight stands.
    assert proxy.lost_replies == 1
    assert created
    assert placed == rendered[0]
    assert prerender(placed) is OrderStatus.OPEN
    assert rendered == [placed]

    rendered.clear()
    canceled = await oms.app.paper.cancel(placed, "test", prerender)
    assert prerender(canceled) is OrderStatus.CANCELED
    assert rendered == [canceled]  # once, while its commit was in flight


async def test_a_place_repeated_while_it_commits_then_a_tick_fills_the_one_order(
    redis_server: EmbeddedRedis, proxy: RedisFaultProxy
) -> None:
    # The first place's commit is held (a stalled Redis) until the pipe gives up and sends
    # it again; meanwhile the client's retry and a crossing tick queue on the desk, and are
    # decided together once it lands.
    oms = await make_oms(await proxy.start(), redis_timeout_s=0.3)
    try:
        await tick(oms, "50000")
        proxy.hold_request(b"same-coid")
        resting = {"client_order_id": "same-coid", "type": S.ORDER_TYPE_LIMIT, "price": "49000"}
        first = asyncio.create_task(place(oms, **resting))
        await asyncio.sleep(0.1)
        again = asyncio.create_task(place(oms, **resting))
        crossing = asyncio.create_task(tick(oms, "48000"))
        placed, repeated, _ = await asyncio.gather(first, again, crossing)
        assert repeated.order_id == placed.order_id
        assert (await get(oms, placed.order_id)).status == S.ORDER_STATUS_FILLED
        assert len(await fills_of(oms, placed.order_id)) == 1
        await proxy.release_held()
    finally:
        await oms.close()


async def test_landing_marks_keep_only_refusals_not_answered_yet(redis_url: str) -> None:
    # Every retry of a place that was acknowledged is refused by its guard: were each
    # refusal kept for good, a client's retries would grow Redis without bound.
    oms = await make_oms(redis_url)
    try:
        await tick(oms, "50000")
        first = await place(oms, client_order_id="again")  # filled: off the book
        for _ in range(30):
            assert (await place(oms, client_order_id="again")).order_id == first.order_id
        with redis.Redis.from_url(redis_url) as client:
            kept = [client.zcard(key) for key in client.scan_iter("oms:landed:*:refused")]
        assert sum(kept) <= 1
    finally:
        await oms.close()


async def cancel_with_replies_swallowed(
    oms: OmsHarness, proxy: RedisFaultProxy
) -> StreamReader[S.OrderUpdate]:
    """A resting order's cancel that Redis runs while no reply comes back: UNAVAILABLE to
    the caller. Returns a live stream of USER's order updates opened before; the proxy
    still swallows replies."""
    await tick(oms, "50000")
    resting = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000")
    updates: StreamReader[S.OrderUpdate] = StreamReader(
        oms.orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(user_id=USER)),
        "order_update",
    )
    await updates.until_live()
    proxy.swallow_replies(True)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await oms.orders.CancelOrder(pb.CancelOrderRequest(user_id=USER, order_id=resting.order_id))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    return updates


async def test_a_commit_that_failed_but_landed_still_reaches_the_streams(
    redis_server: EmbeddedRedis, proxy: RedisFaultProxy
) -> None:
    # Replies lost past every retry: the caller is told UNAVAILABLE though Redis ran the
    # cancel. Once Redis answers again, its event reaches live streams without waiting for
    # the user's next one.
    oms = await make_oms(await proxy.start(), redis_timeout_s=0.2, store_check_interval_s=0.05)
    try:
        updates = await cancel_with_replies_swallowed(oms, proxy)
        proxy.swallow_replies(False)
        [update] = await updates.events(1)
        assert update.order.status == S.ORDER_STATUS_CANCELED
        updates.cancel()
    finally:
        await oms.close()


async def test_a_commit_that_landed_is_answered_though_reading_its_events_back_failed(
    redis_server: EmbeddedRedis, proxy: RedisFaultProxy
) -> None:
    # Its reply lost, the re-sent commit answers 'landed', and its events are read back for
    # the streams. That read failing does not fail the call (on a real exchange the order
    # would then never be sent): the order stands, and the events reach the streams at the
    # next store check.
    oms = await make_oms(await proxy.start(), redis_timeout_s=0.2, store_check_interval_s=0.05)
    try:
        await tick(oms, "50000")
        updates: StreamReader[S.OrderUpdate] = StreamReader(
            oms.orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(user_id=USER)),
            "order_update",
        )
        await updates.until_live()
        proxy.lose_reply_to(COMMIT)
        proxy.hold_request(b"XRANGE")
        # No client order id: the store cannot find it for the call either.
        order = await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000")
        assert proxy.lost_replies == 1
        assert order.status == S.ORDER_STATUS_OPEN
        [update] = await updates.events(1)
        assert (update.order.order_id, update.order.status) == (
            order.order_id,
            S.ORDER_STATUS_OPEN,
        )
        updates.cancel()
    finally:
        await oms.close()


async def test_a_catch_up_cut_short_is_tried_again(
    redis_server: EmbeddedRedis, proxy: RedisFaultProxy
) -> None:
    # The health watcher bounds each check by redis_timeout_s: a catch-up it cancels (a slow
    # reply) leaves the failed commit's users for the next check. The watcher itself is
    # kept out of the way here (an hour between checks) so that the test takes its steps.
    oms = await make_oms(await proxy.start(), redis_timeout_s=0.2, store_check_interval_s=3600)
    try:
        updates = await cancel_with_replies_swallowed(oms, proxy)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):  # before the store's own 0.2 s
                await oms.app.journal.catch_up_unsure()
        proxy.swallow_replies(False)
        await oms.app.journal.catch_up_unsure()
        [update] = await updates.events(1)
        assert update.order.status == S.ORDER_STATUS_CANCELED
        updates.cancel()
    finally:
        await oms.close()


async def test_a_commit_whose_caller_went_away_still_reaches_the_streams(
    redis_server: EmbeddedRedis, proxy: RedisFaultProxy
) -> None:
    # Its caller cancelled while the commit waits on a stalled Redis, which then runs it:
    # its event reaches live streams at the next store check, without waiting for the
    # user's next event. (The engine's handlers run such commits to their end: this is the
    # journal's own net, for a background task stopped mid-commit.)
    oms = await make_oms(await proxy.start(), redis_timeout_s=1.0, store_check_interval_s=0.05)
    try:
        order = new_order()
        updates: StreamReader[S.OrderUpdate] = StreamReader(
            oms.orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(user_id=order.user_id)),
            "order_update",
        )
        await updates.until_live()
        proxy.hold_request(COMMIT)
        created = OrderUpdated(OrderEventType.CREATED, order)
        recording = asyncio.create_task(
            oms.app.journal.record([OrderChange(order, None, [created])])
        )
        await asyncio.sleep(0.1)
        recording.cancel()
        with pytest.raises(asyncio.CancelledError):
            await recording
        await proxy.release_held()
        [update] = await updates.events(1)
        assert update.order.order_id == order.order_id
        updates.cancel()
    finally:
        await oms.close()


async def test_a_commit_that_meets_a_redis_still_loading_is_sent_again_once_it_is_ready(
    oms_via_proxy: OmsHarness, proxy: RedisFaultProxy
) -> None:
    oms = oms_via_proxy
    await tick(oms, "50000")
    proxy.refuse(COMMIT, LOADING, times=2)
    order = await place(oms, client_order_id="after-loading", type=S.ORDER_TYPE_LIMIT, price="1")
    assert order.status == S.ORDER_STATUS_OPEN
    # Written, not answered 'landed' for a refused attempt that never ran.
    listing = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    assert [o.order_id for o in listing.orders] == [order.order_id]


@pytest.mark.parametrize(
    "error",
    [
        LOADING,  # for longer than the commit's retries
        f"ERR Error running script (call to f_0): @user_script:34: @user_script: 34: -{OOM}",
        "ERR Error running script (call to f_0): @user_script:34: @user_script: 34: -MISCONF "
        "Redis is configured to save RDB snapshots, but it's currently unable to persist to disk",
    ],
)
async def test_a_commit_redis_refuses_for_now_is_unavailable_not_unknown(
    oms_via_proxy: OmsHarness, proxy: RedisFaultProxy, error: str
) -> None:
    # Redis refuses the writes (loading, maxmemory reached, snapshots failing): nothing is
    # written, and the same order goes in once it takes them.
    oms = oms_via_proxy
    await tick(oms, "50000")
    proxy.refuse(COMMIT, error, times=100)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await place(oms, client_order_id="refused", type=S.ORDER_TYPE_LIMIT, price="1")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    said = error.split(": -")[-1].split(" ", 1)[1]  # what Redis said, past its reason word
    assert said in (raised.value.details() or "")
    proxy.refuse(COMMIT, error, times=0)
    order = await place(oms, client_order_id="refused", type=S.ORDER_TYPE_LIMIT, price="1")
    assert order.status == S.ORDER_STATUS_OPEN


async def test_a_fired_rule_whose_results_met_a_redis_loading_is_finished_once_it_is_ready(
    proxy: RedisFaultProxy,
) -> None:
    # The tick fills the trigger and the rule cancels B, but Redis refuses the rule's
    # results past every retry: the rule is finished at a store check once Redis takes them,
    # not left pending until the next start.
    oms = await make_oms(await proxy.start(), store_check_interval_s=0.05)
    try:
        user = fresh_user()
        await publish(oms.market, "50000")
        a = await resting(oms.orders, user, "49500")
        b = await resting(oms.orders, user, "49000")
        rule = await create_rule(oms.orders, user, a.order_id, FILLED, [b.order_id])
        results = b'"results":[['  # only in a rule's document once it is finished
        proxy.refuse(results, LOADING, times=1000)
        await publish(oms.market, "49500")
        assert (await order_of(oms.orders, user, b.order_id)).status == S.ORDER_STATUS_CANCELED
        assert not (await get_rule(oms.orders, user, rule.rule_id)).results
        proxy.refuse(results, LOADING, times=0)
        async with asyncio.timeout(5):
            while True:
                fired = await get_rule(oms.orders, user, rule.rule_id)
                if fired.results:
                    break
                await asyncio.sleep(0.02)
        assert_triggered(fired, all_cancelled(b.order_id))
    finally:
        await oms.close()


@pytest.mark.parametrize(
    "error",
    [
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "READONLY You can't write against a read only replica.",
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        OOM,
    ],
)
async def test_a_read_from_a_redis_that_cannot_serve_it_now_is_unavailable(
    oms_via_proxy: OmsHarness, proxy: RedisFaultProxy, error: str
) -> None:
    oms = oms_via_proxy
    proxy.refuse(b"HGET", error, times=1)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await oms.orders.GetOrder(pb.GetOrderRequest(user_id=USER, order_id="any"))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_store_gone_back_before_an_acknowledged_commit_is_told_after_lost_replies(
    oms_via_proxy: OmsHarness, proxy: RedisFaultProxy, redis_url: str
) -> None:
    # A lost reply's re-send runs the script a second time: Redis's commit count moves ahead
    # of what was answered, and must not hide a later loss of an acknowledged commit.
    oms = oms_via_proxy
    await tick(oms, "50000")
    proxy.lose_reply_to(COMMIT)
    await place(oms, client_order_id="reply-lost", type=S.ORDER_TYPE_LIMIT, price="49000")
    with redis.Redis.from_url(redis_url) as client:
        older = snapshot(client)
        await place(oms, client_order_id="acknowledged", type=S.ORDER_TYPE_LIMIT, price="49000")
        go_back_to(client, older)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await place(oms, client_order_id="into-the-past", type=S.ORDER_TYPE_LIMIT, price="1")
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "lost commits it had acknowledged" in (error.value.details() or "")
