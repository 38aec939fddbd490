"""Conditional rules on real exchanges (CONTRACT section 3): when the trigger order reaches
the condition at the exchange, the listed orders still open are cancelled there, once."""

from __future__ import annotations

import asyncio
import contextlib
from asyncio import Event
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import grpc
import pytest
from fixtures.client_streams import until
from fixtures.commits import Commit, fires_a_rule, hold_the_firing, intercept_commits
from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import (
    API_KEY,
    BTC,
    MASTER_KEY,
    USER,
    LiveTrading,
    exchange_settings,
)
from fixtures.oms_server import make_oms
from fixtures.redis_proxy import RedisFaultProxy, landed_unanswered
from fixtures.redis_server import free_port
from tradingboost.oms.v1 import account_service_pb2 as acc
from tradingboost.oms.v1 import conditional_rule_pb2 as R
from tradingboost.oms.v1 import market_data_pb2, order_service_pb2_grpc
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.domain.errors import Unavailable
from oms.engine import conditional_rules


async def create_rule(
    live: LiveTrading,
    trigger: str,
    *cancel: str,
    condition: R.RuleCondition.ValueType = R.RULE_CONDITION_FILLED,
) -> R.ConditionalRule:
    response = await live.oms.orders.CreateConditionalRule(
        pb.CreateConditionalRuleRequest(
            user_id=USER,
            trigger_order_id=trigger,
            condition=condition,
            cancel_order_ids=list(cancel),
        )
    )
    return response.rule


async def rule_until(
    live: LiveTrading, rule_id: str, done: Callable[[R.ConditionalRule], bool]
) -> R.ConditionalRule:
    async with asyncio.timeout(5):
        while True:
            response = await live.oms.orders.GetConditionalRule(
                pb.GetConditionalRuleRequest(user_id=USER, rule_id=rule_id)
            )
            if done(response.rule):
                return response.rule
            await asyncio.sleep(0.02)


def at_exchange(exchange: FakeExchange, order: S.Order) -> str:
    [found] = [o for o in exchange.orders(API_KEY) if o.client_id == f"oms{order.order_id}"]
    return found.status


async def test_when_a_fills_b_and_c_are_cancelled_at_the_exchange_and_d_is_not(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    a, b, c, d = [await live.place(price=p) for p in ("49000", "48000", "47000", "46000")]
    rule = await create_rule(live, a.order_id, b.order_id, c.order_id)
    assert rule.status == R.RULE_STATUS_ACTIVE
    exchange.set_price(BTC, Decimal("48900"))
    fired = await rule_until(live, rule.rule_id, lambda r: len(r.results) == 2)
    assert fired.status == R.RULE_STATUS_TRIGGERED
    assert {(r.order_id, r.outcome, r.order_status) for r in fired.results} == {
        (b.order_id, R.RULE_CANCEL_OUTCOME_CANCELED, S.ORDER_STATUS_CANCELED),
        (c.order_id, R.RULE_CANCEL_OUTCOME_CANCELED, S.ORDER_STATUS_CANCELED),
    }
    assert (at_exchange(exchange, b), at_exchange(exchange, c)) == ("canceled", "canceled")
    assert at_exchange(exchange, d) == "open"
    assert (await live.get(b.order_id)).cancel_reason == f"conditional rule {rule.rule_id}"


async def test_a_rule_on_a_trigger_filled_already_fires_at_once(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    a = await live.place(type=S.ORDER_TYPE_MARKET, price="")
    b = await live.place(price="48000")
    rule = await create_rule(live, a.order_id, b.order_id)
    assert rule.status == R.RULE_STATUS_TRIGGERED
    [result] = rule.results
    assert (result.order_id, result.outcome) == (b.order_id, R.RULE_CANCEL_OUTCOME_CANCELED)
    assert at_exchange(exchange, b) == "canceled"


async def test_a_rule_on_a_partly_filled_trigger_fires_at_once_and_is_never_active(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    a, b = [await live.place(price=p) for p in ("49000", "48000")]
    exchange.set_price(BTC, Decimal("48900"), max_fill=Decimal("0.005"))
    await live.until(a.order_id, lambda o: o.status == S.ORDER_STATUS_PARTIALLY_FILLED)
    before = await live.oms.orders.ListConditionalRules(
        pb.ListConditionalRulesRequest(user_id=USER)
    )
    rule = await create_rule(
        live, a.order_id, b.order_id, condition=R.RULE_CONDITION_PARTIALLY_FILLED
    )
    assert rule.status == R.RULE_STATUS_TRIGGERED
    assert [r.outcome for r in rule.results] == [R.RULE_CANCEL_OUTCOME_CANCELED]
    stream = live.oms.orders.StreamConditionalRules(
        pb.StreamConditionalRulesRequest(user_id=USER, after_sequence=before.as_of_sequence)
    )
    statuses = []
    async for message in stream:
        if message.HasField("rule_update"):
            statuses.append(
                (message.rule_update.rule.status, len(message.rule_update.rule.results))
            )
        elif statuses:  # the heartbeat after the replay: nothing more is retained
            break
    stream.cancel()
    assert statuses == [(R.RULE_STATUS_TRIGGERED, 0), (R.RULE_STATUS_TRIGGERED, 1)]


async def test_a_deleted_rule_cancels_nothing(live: LiveTrading, exchange: FakeExchange) -> None:
    a, b = [await live.place(price=p) for p in ("49000", "48000")]
    rule = await create_rule(live, a.order_id, b.order_id)
    deleted = await live.oms.orders.DeleteConditionalRule(
        pb.DeleteConditionalRuleRequest(user_id=USER, rule_id=rule.rule_id)
    )
    assert deleted.rule.status == R.RULE_STATUS_CANCELED
    exchange.set_price(BTC, Decimal("48900"))
    await live.until(a.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    assert (await live.get(b.order_id)).status == S.ORDER_STATUS_OPEN
    assert at_exchange(exchange, b) == "open"


class _Crash(Exception):
    """The process dies here (the rule-fired failpoint, without killing the test run)."""


def _crash(name: str) -> None:
    if name == "rule-fired":
        raise _Crash(name)


async def test_a_rule_a_crash_cut_short_is_finished_at_the_next_start(
    live: LiveTrading, exchange: FakeExchange, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = [await live.place(price=p) for p in ("49000", "48000")]
    rule = await create_rule(live, a.order_id, b.order_id)
    # The rule fires (committed, its cancels pending) and the process dies right there.
    monkeypatch.setattr(conditional_rules, "crash_point", _crash)
    exchange.set_price(BTC, Decimal("48900"))
    await live.until(a.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    await rule_until(live, rule.rule_id, lambda r: r.status == R.RULE_STATUS_TRIGGERED)
    await live.oms.close()
    monkeypatch.undo()
    assert at_exchange(exchange, b) == "open"
    # The next start finishes it once the account is followed: b can be cancelled there.
    await live.start_again(redis_url)
    fired = await rule_until(live, rule.rule_id, lambda r: len(r.results) == 1)
    [result] = fired.results
    assert (result.order_id, result.outcome) == (b.order_id, R.RULE_CANCEL_OUTCOME_CANCELED)
    assert at_exchange(exchange, b) == "canceled"


async def test_an_order_whose_account_is_not_active_is_reported_not_cancelled(
    live: LiveTrading, exchange: FakeExchange
) -> None:
    await live.oms.market.PublishPrices(
        md.PublishPricesRequest(
            prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="50000")]
        )
    )
    a = await live.place(exchange="paper", price="49000")
    b = await live.place(price="48000")
    rule = await create_rule(live, a.order_id, b.order_id)
    account = {"user_id": USER, "exchange": live.venue}
    await live.accounts.DeactivateAccount(acc.DeactivateAccountRequest(**account))
    await live.oms.market.PublishPrices(
        md.PublishPricesRequest(
            prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="48900")]
        )
    )
    fired = await rule_until(live, rule.rule_id, lambda r: len(r.results) == 1)
    [result] = fired.results
    assert (result.order_id, result.outcome) == (b.order_id, R.RULE_CANCEL_OUTCOME_FAILED)
    assert result.order_status == S.ORDER_STATUS_OPEN
    assert "no active account" in result.error
    assert at_exchange(exchange, b) == "open"


CANCELED = R.RULE_CANCEL_OUTCOME_CANCELED
ACCOUNT_READS = {
    "binanceusdm": [("GET", "/fapi/v2/account"), ("GET", "/fapi/v3/account")],
    "okx": [("GET", "/api/v5/account/balance")],
}


async def paper_tick(stub: Any, price: str) -> None:
    await stub.PublishPrices(
        md.PublishPricesRequest(
            prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price=price)]
        )
    )


async def test_paper_orders_of_rules_a_crash_cut_short_are_cancelled_before_the_exchanges_answer(
    live: LiveTrading, exchange: FakeExchange, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A trigger on paper fires two rules: one cancels a paper order, the other a paper and
    # a real-exchange order.
    await paper_tick(live.oms.market, "50000")
    a, b, c = [await live.place(exchange="paper", price=p) for p in ("49000", "48000", "47000")]
    d = await live.place(price="46000")
    paper_rule = await create_rule(live, a.order_id, b.order_id)
    mixed_rule = await create_rule(live, a.order_id, c.order_id, d.order_id)
    monkeypatch.setattr(conditional_rules, "crash_point", _crash)
    with pytest.raises(grpc.aio.AioRpcError):
        await paper_tick(live.oms.market, "48900")  # fills a, fires the rules, "crashes"
    await live.oms.close()
    monkeypatch.undo()
    # At the next start the exchange does not answer the account's check for a while; the
    # paper orders are cancelled meanwhile (the server takes calls: a tick could fill them).
    for method, path in ACCOUNT_READS[exchange.venue]:
        exchange.fail_requests(method, path, count=1000)
    address = f"127.0.0.1:{free_port()}"
    starting = asyncio.create_task(
        make_oms(
            redis_url,
            listen=address,
            master_key=MASTER_KEY,
            exchanges=exchange_settings(exchange),
        )
    )
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            orders = order_service_pb2_grpc.OrderServiceStub(channel)

            async def rule_now(rule_id: str) -> R.ConditionalRule:
                request = pb.GetConditionalRuleRequest(user_id=USER, rule_id=rule_id)
                rule: R.ConditionalRule = (await orders.GetConditionalRule(request)).rule
                return rule

            async with asyncio.timeout(2.5):
                while True:
                    with contextlib.suppress(grpc.aio.AioRpcError):  # not listening yet
                        if (await rule_now(paper_rule.rule_id)).results:
                            break
                    await asyncio.sleep(0.05)
            assert not starting.done()
            [result] = (await rule_now(paper_rule.rule_id)).results
            assert (result.order_id, result.outcome) == (b.order_id, CANCELED)
            still_open = pb.GetOrderRequest(user_id=USER, order_id=c.order_id)
            assert (await orders.GetOrder(still_open)).order.status == S.ORDER_STATUS_CANCELED
            assert not (await rule_now(mixed_rule.rule_id)).results  # finished once followed
    finally:
        for method, path in ACCOUNT_READS[exchange.venue]:
            exchange.fail_requests(method, path, count=0)
        live.oms = await starting
    fired = await rule_until(live, mixed_rule.rule_id, lambda r: len(r.results) == 2)
    assert {(r.order_id, r.outcome) for r in fired.results} == {
        (c.order_id, CANCELED),
        (d.order_id, CANCELED),
    }
    assert at_exchange(exchange, d) == "canceled"


async def test_a_rule_whose_delete_landed_unanswered_never_fires(
    live_via_proxy: LiveTrading, proxy: RedisFaultProxy
) -> None:
    # Redis stores the delete, but every reply to it is lost: UNAVAILABLE. The rule is
    # deleted in the store; its trigger filling later must cancel nothing.
    live, exchange = live_via_proxy, live_via_proxy.exchange
    a, b = [await live.place(price=p) for p in ("49000", "48000")]
    rule = await create_rule(live, a.order_id, b.order_id)
    request = pb.DeleteConditionalRuleRequest(user_id=USER, rule_id=rule.rule_id)
    deleting = live.oms.orders.DeleteConditionalRule(request)
    await landed_unanswered(proxy, b'"status_reason":"deleted"', deleting)
    exchange.set_price(BTC, Decimal("48900"))  # fills a, not b
    await live.until(a.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    await asyncio.sleep(0.3)  # a rule still at work would cancel b now
    assert (await live.get(b.order_id)).status == S.ORDER_STATUS_OPEN
    assert at_exchange(exchange, b) == "open"
    after = await rule_until(live, rule.rule_id, lambda r: True)
    assert (after.status, list(after.results)) == (R.RULE_STATUS_CANCELED, [])


async def test_a_rule_whose_firing_landed_unanswered_still_cancels(
    live_via_proxy: LiveTrading, proxy: RedisFaultProxy
) -> None:
    # The trigger fills; Redis stores the rule as fired, but every reply is lost for a
    # while. Once replies come again, its cancels are made, without waiting for a restart.
    live, exchange = live_via_proxy, live_via_proxy.exchange
    a, b = [await live.place(price=p) for p in ("49000", "48000")]
    rule = await create_rule(live, a.order_id, b.order_id)
    fired = b'"status":"TRIGGERED"'
    proxy.lose_reply_to(fired, times=1000)
    exchange.set_price(BTC, Decimal("48900"))  # fills a, not b
    await live.until(a.order_id, lambda o: o.status == S.ORDER_STATUS_FILLED)
    await asyncio.sleep(0.5)  # its firing meets the lost replies meanwhile
    proxy.lose_reply_to(fired, times=0)
    canceled = await live.until(b.order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
    assert canceled.cancel_reason == f"conditional rule {rule.rule_id}"
    finished = await rule_until(live, rule.rule_id, lambda r: len(r.results) == 1)
    assert finished.status == R.RULE_STATUS_TRIGGERED


async def test_a_rule_whose_creation_landed_unanswered_fires(
    live_via_proxy: LiveTrading, proxy: RedisFaultProxy
) -> None:
    live, exchange = live_via_proxy, live_via_proxy.exchange
    a, b = [await live.place(price=p) for p in ("49000", "48000")]
    creating = live.oms.orders.CreateConditionalRule(
        pb.CreateConditionalRuleRequest(
            user_id=USER,
            trigger_order_id=a.order_id,
            condition=R.RULE_CONDITION_FILLED,
            cancel_order_ids=[b.order_id],
            client_id="unanswered-rule",
        )
    )
    await landed_unanswered(proxy, b'"client_id":"unanswered-rule"', creating)
    exchange.set_price(BTC, Decimal("48900"))  # fills a, not b
    canceled = await live.until(b.order_id, lambda o: o.status == S.ORDER_STATUS_CANCELED)
    assert canceled.cancel_reason.startswith("conditional rule ")
    assert at_exchange(exchange, b) == "canceled"


async def a_rule_on_a_live_order(
    live: LiveTrading, b_price: str
) -> tuple[S.Order, R.ConditionalRule]:
    """B, a paper buy at `b_price` (paper at 50000), and the rule "when A (a buy at 49000 on
    the exchange, at 50000) fills, cancel B"."""
    await paper_tick(live.oms.market, "50000")
    a = await live.place(price="49000")
    b = await live.place(exchange="paper", price=b_price)
    return b, await create_rule(live, a.order_id, b.order_id)


async def test_a_paper_order_a_rule_fired_here_lists_is_not_filled_before_its_cancel(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    # When A (on the exchange) fills, cancel B (resting on paper): one-cancels-other across
    # venues. A paper tick that reaches B while the firing commit is on its way must not fill
    # it, as on paper alone.
    b, rule = await a_rule_on_a_live_order(live, b_price="49000")
    waiting, go_on = hold_the_firing(live.oms, monkeypatch)
    exchange.set_price(BTC, Decimal("48900"))
    async with asyncio.timeout(10):
        await waiting.wait()
    await paper_tick(live.oms.market, "48900")  # reaches B: held back
    go_on.set()
    fired = await rule_until(live, rule.rule_id, lambda r: len(r.results) == 1)
    assert [(r.order_id, r.outcome) for r in fired.results] == [(b.order_id, CANCELED)]
    b_now = await live.get(b.order_id)
    assert (b_now.status, b_now.filled_quantity) == (S.ORDER_STATUS_CANCELED, "0")
    assert live.oms.app.paper.cancelling.order_ids() == frozenset()  # finished: released


def refuse_firings(live: LiveTrading, monkeypatch: pytest.MonkeyPatch, skip: int = 0) -> Event:
    """From the `skip`+1-th commit that fires a rule on, each is refused (Redis down, nothing
    written) while the event returned is not set."""
    healed, firings = asyncio.Event(), 0

    async def before(commit: Commit) -> None:
        nonlocal firings
        if fires_a_rule(commit):
            firings += 1
            if firings > skip and not healed.is_set():
                raise Unavailable("state store unreachable (test)")

    intercept_commits(live.oms, monkeypatch, before)
    return healed


async def a_firing_refused(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> tuple[S.Order, R.ConditionalRule, Event]:
    """B (resting on paper), and a rule "when A (on the exchange) fills, cancel B" whose
    firing was refused as A filled (B held back since: it may have fired); the event lets the
    store take commits again."""
    b, rule = await a_rule_on_a_live_order(live, b_price="47000")
    healed = refuse_firings(live, monkeypatch)
    exchange.set_price(BTC, Decimal("48900"))
    await until(lambda: bool(live.oms.app.paper.cancelling.order_ids()))  # A filled
    return b, rule, healed


async def test_a_rule_deleted_after_its_firing_was_refused_holds_nothing_back(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    b, rule, healed = await a_firing_refused(live, exchange, monkeypatch)
    deleted = await live.oms.orders.DeleteConditionalRule(
        pb.DeleteConditionalRuleRequest(user_id=USER, rule_id=rule.rule_id)
    )
    assert deleted.rule.status == R.RULE_STATUS_CANCELED
    healed.set()
    assert live.oms.app.paper.cancelling.order_ids() == frozenset()
    await paper_tick(live.oms.market, "46900")  # B fills: the rule never fired
    assert (await live.get(b.order_id)).status == S.ORDER_STATUS_FILLED


async def test_rules_fired_before_another_s_firing_was_refused_are_finished(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two rules on A: the first fires, the second's firing is refused. The first's cancel is
    # sent all the same, and the second fires when A is judged again.
    await paper_tick(live.oms.market, "50000")
    a = await live.place(price="49000")
    b1, b2 = [await live.place(exchange="paper", price="47000") for _ in range(2)]
    rules = [await create_rule(live, a.order_id, b.order_id) for b in (b1, b2)]
    healed = refuse_firings(live, monkeypatch, skip=1)
    exchange.set_price(BTC, Decimal("48900"))
    first = await rule_until(live, rules[0].rule_id, lambda r: len(r.results) == 1)
    assert [(r.order_id, r.outcome) for r in first.results] == [(b1.order_id, CANCELED)]
    healed.set()
    second = await rule_until(live, rules[1].rule_id, lambda r: len(r.results) == 1)
    assert [(r.order_id, r.outcome) for r in second.results] == [(b2.order_id, CANCELED)]
    assert live.oms.app.paper.cancelling.order_ids() == frozenset()


async def test_a_refused_firing_of_an_account_no_longer_followed_is_settled_by_the_store(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The firing was refused, then the account deactivated: its trigger is judged here no
    # more. Once the store answers, the rule is found never to have fired, and B is let go.
    b, _, healed = await a_firing_refused(live, exchange, monkeypatch)
    account = {"user_id": USER, "exchange": live.venue}
    await live.accounts.DeactivateAccount(acc.DeactivateAccountRequest(**account))
    healed.set()
    await until(lambda: not live.oms.app.paper.cancelling.order_ids())
    await paper_tick(live.oms.market, "46900")
    assert (await live.get(b.order_id)).status == S.ORDER_STATUS_FILLED


def pause_the_firing(
    live: LiveTrading,
    monkeypatch: pytest.MonkeyPatch,
    *,
    landed: bool,
    then: BaseException | None = None,
) -> tuple[Event, Event]:
    """The next commit that fires a rule waits, before it lands or once it `landed`, until
    the second event is set (the first says it waits); then it lands, if it had not, and
    answers by raising `then` (a reply lost), if given."""
    waiting, go_on = asyncio.Event(), asyncio.Event()
    record = live.oms.app.journal.record

    async def intercepted(changes: Any, prices: Any = (), updates: Any = ()) -> Any:
        if not fires_a_rule((changes, updates)) or waiting.is_set():
            return await record(changes, prices, updates)
        done = await record(changes, prices, updates) if landed else None
        waiting.set()
        await go_on.wait()
        if not landed:
            done = await record(changes, prices, updates)
        if then is not None:
            raise then
        return done

    monkeypatch.setattr(live.oms.app.journal, "record", intercepted)
    return waiting, go_on


async def test_a_delete_that_waited_for_a_firing_landed_unanswered_leaves_it_fired(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The delete read the rule ACTIVE, then waited for the account while the firing landed
    # unanswered: the rule stays fired, and its cancel is still sent.
    b, rule = await a_rule_on_a_live_order(live, b_price="47000")
    lost = Unavailable("reply lost (test)")
    waiting, go_on = pause_the_firing(live, monkeypatch, landed=False, then=lost)
    exchange.set_price(BTC, Decimal("48900"))
    async with asyncio.timeout(10):
        await waiting.wait()
    deleting = asyncio.ensure_future(
        live.oms.orders.DeleteConditionalRule(
            pb.DeleteConditionalRuleRequest(user_id=USER, rule_id=rule.rule_id)
        )
    )
    await asyncio.sleep(0.5)  # it has read the rule and waits for the account's lock
    go_on.set()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await deleting
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    fired = await rule_until(live, rule.rule_id, lambda r: len(r.results) == 1)
    assert [(r.order_id, r.outcome) for r in fired.results] == [(b.order_id, CANCELED)]
    await until(lambda: not live.oms.app.paper.cancelling.order_ids())


async def test_a_firing_cut_short_by_a_deactivation_once_landed_is_finished(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The account is deactivated while the firing commit, landed, waits for its reply: the
    # rule is finished all the same (its paper order cancelled), not left owing its cancels.
    b, rule = await a_rule_on_a_live_order(live, b_price="47000")
    waiting, _ = pause_the_firing(live, monkeypatch, landed=True)
    exchange.set_price(BTC, Decimal("48900"))
    async with asyncio.timeout(10):
        await waiting.wait()
    account = {"user_id": USER, "exchange": live.venue}
    await live.accounts.DeactivateAccount(acc.DeactivateAccountRequest(**account))
    fired = await rule_until(live, rule.rule_id, lambda r: len(r.results) == 1)
    assert [(r.order_id, r.outcome) for r in fired.results] == [(b.order_id, CANCELED)]
    await until(lambda: not live.oms.app.paper.cancelling.order_ids())


async def test_a_refused_firing_is_retried_by_the_connection_new_keys_open(
    live: LiveTrading, exchange: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The firing was refused; the keys registered anew replace the connection whose retry
    # would have fired it: the new one judges the trigger again.
    b, rule, healed = await a_firing_refused(live, exchange, monkeypatch)
    await live.register_keys_again()
    healed.set()
    fired = await rule_until(live, rule.rule_id, lambda r: len(r.results) == 1)
    assert [(r.order_id, r.outcome) for r in fired.results] == [(b.order_id, CANCELED)]
    await until(lambda: not live.oms.app.paper.cancelling.order_ids())
