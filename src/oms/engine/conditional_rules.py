"""Conditional rule use cases: create, look up, list and delete rules, and finish fired ones.

A rule is decided on the desk of its trigger order, in the same commit as the change that
fires it, which leaves it TRIGGERED and pending. `finish` then cancels the listed orders and
commits the results; a rule still pending at start-up is finished before the server serves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from oms.domain.conditional_rules import (
    CancelOutcome,
    ConditionalRule,
    CreateRule,
    RuleCancelResult,
    RuleCondition,
    RuleStatus,
    check_order_id,
    validate_create_rule,
)
from oms.domain.errors import (
    ConcurrentModification,
    FailedPrecondition,
    NotFound,
    OmsError,
    Unavailable,
)
from oms.domain.events import Heartbeat, RuleUpdated, SequencedEvent
from oms.domain.identifiers import check_one_ref, check_user_id
from oms.domain.orders import Order
from oms.domain.paging import page_size
from oms.engine.journal import Journal
from oms.engine.keyed_locks import ClientIdTurns, KeyedLocks
from oms.engine.paper_exchange import PAPER, PaperExchange
from oms.engine.ports import Page, RuleQuery, StateStore, fetch_page
from oms.engine.run_to_end import run_to_end
from oms.engine.subscriptions import EventHub
from oms.failpoints import crash_point

log = logging.getLogger(__name__)


class RuleVenue(Protocol):
    """Where a rule's trigger order lives: the paper desks or a real exchange's account."""

    def run_rules_with(
        self,
        runner: Callable[[ConditionalRule], Awaitable[object]],
        unsure: Callable[[ConditionalRule], None] | None = None,
    ) -> None: ...

    async def add_rule(self, rule: ConditionalRule) -> ConditionalRule | None: ...

    async def delete_rule(self, rule: ConditionalRule) -> ConditionalRule | None: ...

    async def cancel(self, order: Order, reason: str) -> Order: ...


class ConditionalRules:
    def __init__(
        self,
        store: StateStore,
        journal: Journal,
        paper: PaperExchange,
        live: RuleVenue,
        hub: EventHub,
        new_id: Callable[[], str],
        clock_ns: Callable[[], int],
    ) -> None:
        self._store = store
        self._journal = journal
        self._hub = hub
        self._paper = paper
        self._live = live
        self._new_id = new_id
        self._clock_ns = clock_ns
        self._unfinished: dict[str, tuple[ConditionalRule, int | None]] = {}
        """Rules whose cancels or results a store failure cut short, or whose firing it left
        unknown, by rule id, each with the hold on its orders then: read back and finished
        once the store answers."""
        self._creating = ClientIdTurns()
        self._finishing: KeyedLocks[str] = KeyedLocks()
        paper.run_rules_with(self.finish, unsure=self._finish_later)
        live.run_rules_with(self.finish, unsure=self._finish_later)

    def _venue(self, exchange: str) -> RuleVenue:
        return self._paper if exchange == PAPER else self._live

    @run_to_end
    async def create(self, command: CreateRule) -> ConditionalRule:
        trigger_id, condition, cancel_ids = validate_create_rule(command)
        if not command.client_id:
            return await self._create(command, trigger_id, condition, cancel_ids)
        async with self._creating(command.user_id, command.client_id):
            existing = await self._store.get_rule_by_client_id(command.user_id, command.client_id)
            if existing is not None:
                existing.same_as(trigger_id, condition, cancel_ids)
                # Fired by a first attempt whose reply was lost: its cancels are owed.
                return await self.finish(existing) if existing.pending else existing
            return await self._create(command, trigger_id, condition, cancel_ids)

    async def _create(
        self,
        command: CreateRule,
        trigger_id: str,
        condition: RuleCondition,
        cancel_ids: tuple[str, ...],
    ) -> ConditionalRule:
        user = command.user_id
        trigger, *listed = await self._store.get_orders(user, [trigger_id, *cancel_ids])
        if trigger is None:
            raise NotFound(f"trigger_order_id: order {trigger_id} not found for user {user}")
        missing = [oid for oid, order in zip(cancel_ids, listed, strict=True) if order is None]
        if missing:
            raise NotFound(f"cancel_order_ids: order {missing[0]} not found for user {user}")
        now = self._clock_ns()
        rule = ConditionalRule(
            rule_id=self._new_id(),
            user_id=user,
            trigger_order_id=trigger.order_id,
            trigger_exchange=trigger.exchange,
            trigger_symbol=trigger.symbol,
            condition=condition,
            cancel_order_ids=cancel_ids,
            created_at_ns=now,
            updated_at_ns=now,
            client_id=command.client_id,
        )
        try:
            if trigger.is_open:
                added = await self._venue(trigger.exchange).add_rule(rule)
                if added is not None:
                    # Fired at once: the desk's caller has waited for the cancels too.
                    return await self._reread(added) if added.pending else added
                # The trigger ended meanwhile; a terminal order never changes again.
                trigger = await self._order(user, trigger_id)
            return await self._fire_on_terminal(rule, trigger)
        except Unavailable:
            # Its commit may have landed, fired: then it is finished once the store answers.
            self._finish_later(rule)
            raise

    async def _fire_on_terminal(self, rule: ConditionalRule, trigger: Order) -> ConditionalRule:
        fired = rule.on_trigger_change(trigger, self._clock_ns())
        if fired is None or not fired.pending:
            raise FailedPrecondition(
                f"trigger order {trigger.order_id} is {trigger.status.value}: it can never "
                f"become {rule.condition.value}, so the rule could never fire"
            )
        # Not through a desk: no tick may fill a listed paper order from the firing on.
        self._paper.hold_back(fired)
        try:
            await self._journal.record([], (), [RuleUpdated(fired)])
        except Unavailable:
            raise  # may have landed: _create leaves it to finish_unfinished
        except BaseException:
            self._paper.stop_holding(fired)
            raise
        return await self.finish(fired)

    def _finish_later(self, rule: ConditionalRule) -> None:
        """A rule whose firing commit failed, landed or not: finish_unfinished finds out."""
        self._unfinished[rule.rule_id] = (rule, self._paper.hold_number(rule))

    async def finish(self, rule: ConditionalRule) -> ConditionalRule:
        """Cancel the listed orders of a fired rule and commit what happened to each.

        Safe to repeat after a crash: an order this rule already cancelled reads as CANCELED
        with the rule's reason, and is reported as cancelled by it. One at a time per rule
        (the desk's follow-up and a create's retry may both finish it): a rule the store
        holds finished already is returned as it is, not finished twice.
        """
        crash_point("rule-fired")
        async with self._finishing(rule.rule_id):
            try:
                stored = await self._store.get_rule(rule.user_id, rule.rule_id)
                if stored is not None and not stored.pending:
                    self._done(rule)
                    return stored
                orders = await self._store.get_orders(rule.user_id, rule.cancel_order_ids)
                results = await asyncio.gather(
                    *(
                        self._cancel(rule, order) if order is not None else _forgotten(order_id)
                        for order_id, order in zip(rule.cancel_order_ids, orders, strict=True)
                    )
                )
                finished = rule.finish(results, self._clock_ns())
                await self._journal.record([], (), [RuleUpdated(finished)])
                self._done(rule)
                return finished
            except OmsError:
                # Left pending in the store: finished once the store answers again (or,
                # should this process end first, at the next start).
                log.exception("conditional rule %s: cancels not finished", rule.rule_id)
                self._finish_later(rule)
                return rule

    async def finish_unfinished(self) -> None:
        """Finish the fired rules a store failure cut short; call once it answers."""
        for rule, hold in list(self._unfinished.values()):
            try:
                stored = await self._store.get_rule(rule.user_id, rule.rule_id)
            except OmsError:
                return  # gone again: at the next check that finds it answering
            if stored is not None and stored.pending:
                await self.finish(stored)
            else:
                # Finished meanwhile (released then), or its firing never landed: a firing
                # decided since holds its orders by marks of its own (a desk's) or by a hold
                # of its own (a live trigger judged again), which stay.
                self._unfinished.pop(rule.rule_id, None)
                self._paper.stop_holding(rule, hold)

    def _done(self, rule: ConditionalRule) -> None:
        """Finished: nothing more is owed, and its orders are not held back any longer."""
        self._unfinished.pop(rule.rule_id, None)
        self._paper.release(rule)

    async def _cancel(self, rule: ConditionalRule, order: Order) -> RuleCancelResult:
        if order.is_open:
            try:
                canceled = await self._venue(order.exchange).cancel(order, rule.cancel_reason)
                return RuleCancelResult(order.order_id, CancelOutcome.CANCELED, canceled.status)
            except FailedPrecondition as error:
                order = await self._order(order.user_id, order.order_id)  # ended meanwhile?
                if order.is_open:  # no: it cannot be cancelled (its account is not active)
                    return RuleCancelResult(
                        order.order_id, CancelOutcome.FAILED, order.status, error.message
                    )
            except OmsError as error:
                return RuleCancelResult(
                    order.order_id, CancelOutcome.FAILED, order.status, error.message
                )
        return rule.result_for(order)

    async def finish_pending(self, *, paper_only: bool = False) -> None:
        """Start-up: finish the rules that fired before a crash. `paper_only`: before the
        real exchanges' accounts are followed (which may take a while), so that no tick
        meanwhile fills what a rule cancels, only paper orders are cancelled; a rule with
        open orders elsewhere too is finished once those accounts are followed."""
        for rule in await self._store.pending_rules():
            if paper_only:
                orders = await self._store.get_orders(rule.user_id, rule.cancel_order_ids)
                listed = [order for order in orders if order is not None]
                if any(order.is_open and order.exchange != PAPER for order in listed):
                    on_paper = [order for order in listed if order.exchange == PAPER]
                    await asyncio.gather(*(self._cancel(rule, order) for order in on_paper))
                    continue
            log.info("finishing conditional rule %s fired before the restart", rule.rule_id)
            await self.finish(rule)

    async def get(self, user_id: str, rule_id: str, client_id: str = "") -> ConditionalRule:
        """By `rule_id` or by `client_id`: exactly one of them."""
        check_user_id(user_id)
        check_one_ref("rule_id", rule_id, "client_id", client_id)
        if rule_id:
            rule = await self._store.get_rule(user_id, rule_id)
            name = f"rule {rule_id}"
        else:
            rule = await self._store.get_rule_by_client_id(user_id, client_id)
            name = f"rule with client_id {client_id!r}"
        if rule is None:
            raise NotFound(f"{name} not found for user {user_id}")
        return rule

    async def delete(self, user_id: str, rule_id: str, client_id: str = "") -> ConditionalRule:
        rule = await self.get(user_id, rule_id, client_id)
        rule_id = rule.rule_id
        deleted = rule.delete(self._clock_ns())
        if deleted is rule:
            return rule  # already CANCELED: a safe retry
        outcome = await self._venue(rule.trigger_exchange).delete_rule(rule)
        if outcome is not None:
            return outcome
        # It fired or was retired meanwhile: answer as for the rule as it is now.
        current = await self.get(user_id, rule_id)
        if current.status is RuleStatus.ACTIVE:
            raise ConcurrentModification(f"rule {rule_id} is not on its trigger's desk")
        return current.delete(self._clock_ns())

    async def list(
        self,
        user_id: str,
        *,
        trigger_order_id: str = "",
        statuses: frozenset[RuleStatus] = frozenset(),
        size: int = 0,
        page_token: str = "",
    ) -> Page[ConditionalRule]:
        check_user_id(user_id)
        if trigger_order_id:
            check_order_id(trigger_order_id, "trigger_order_id")
        return await fetch_page(
            self._store.list_rules,
            RuleQuery(
                user_id=user_id,
                page_size=page_size(size),
                trigger_order_id=trigger_order_id,
                statuses=statuses,
            ),
            page_token,
        )

    def follow(
        self, user_id: str, after_sequence: int, from_oldest: bool = False
    ) -> AsyncIterator[SequencedEvent | Heartbeat]:
        check_user_id(user_id)
        return self._hub.follow(
            user_id, after_sequence, lambda event: isinstance(event, RuleUpdated), from_oldest
        )

    async def _order(self, user_id: str, order_id: str) -> Order:
        order = await self._store.get_order(user_id, order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found for user {user_id}")
        return order

    async def _reread(self, rule: ConditionalRule) -> ConditionalRule:
        return await self.get(rule.user_id, rule.rule_id)


async def _forgotten(order_id: str) -> RuleCancelResult:
    """The result for a listed order no longer stored: only finished orders are forgotten
    (OrderRetention), so it had ended before the rule acted."""
    return RuleCancelResult(
        order_id, CancelOutcome.ALREADY_TERMINAL, None, "no longer stored (retention)"
    )
