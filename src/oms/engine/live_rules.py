"""Conditional rules whose trigger order is on a real exchange.

On paper a rule fires in its trigger change's commit. Here the trigger's change is committed
first and the rule is judged right after, under the trigger account's lock; a crash in
between is caught up when the account is followed again, since every loaded rule is judged
against its trigger as it stands. The fired rule's cancels then run as on paper
(engine.conditional_rules.ConditionalRules.finish), and the call that caused them waits.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Protocol

from oms.domain.conditional_rules import ConditionalRule, RuleStatus
from oms.domain.errors import Unavailable
from oms.domain.events import RuleUpdated
from oms.domain.orders import Order
from oms.engine.journal import Journal
from oms.engine.ports import StateStore

RuleRunner = Callable[[ConditionalRule], Awaitable[object]]


class Venue(Protocol):
    def account_lock(self, user_id: str, exchange: str) -> asyncio.Lock: ...


class RuleHolds(Protocol):
    """Where a fired rule's listed orders are kept from filling until its cancels: the paper
    desks, whose ticks would fill them meanwhile (a real exchange's fill is its own)."""

    def hold_back(self, rule: ConditionalRule) -> None: ...

    def stop_holding(self, rule: ConditionalRule) -> None: ...


class LiveRules:
    def __init__(
        self,
        store: StateStore,
        journal: Journal,
        venue: Venue,
        clock_ns: Callable[[], int],
        holds: RuleHolds,
    ) -> None:
        self._store = store
        self._journal = journal
        self._venue = venue
        self._holds = holds
        self._clock_ns = clock_ns
        self._by_trigger: defaultdict[str, dict[str, ConditionalRule]] = defaultdict(dict)
        self._unsure: defaultdict[str, set[tuple[str, str]]] = defaultdict(set)
        """By trigger order id: the (user_id, rule id) of rules whose creation's outcome is
        unknown (its replies lost): read back from the store when their trigger changes."""
        self._runner: RuleRunner | None = None
        self._settle_later: Callable[[ConditionalRule], None] | None = None
        self._maybe_fired: dict[str, ConditionalRule] = {}
        """By rule id: rules whose firing commit failed, landed or not, still watched here
        (their trigger is judged again until they are settled)."""

    def run_rules_with(
        self, runner: RuleRunner, unsure: Callable[[ConditionalRule], None] | None = None
    ) -> None:
        """Who sends a fired rule's cancels (the engine's ConditionalRules), and who settles
        a rule whose firing commit failed once it is no longer watched here."""
        self._runner = runner
        self._settle_later = unsure

    async def add(self, rule: ConditionalRule) -> ConditionalRule | None:
        """The rule as committed with its trigger's current state (ACTIVE, or fired and
        finished); None when the trigger order is no longer open."""
        async with self._venue.account_lock(rule.user_id, rule.trigger_exchange):
            trigger = await self._store.get_order(rule.user_id, rule.trigger_order_id)
            if trigger is None or not trigger.is_open:
                return None
            # A trigger past the condition already (a partial fill) fires it: never ACTIVE first.
            fired = rule.on_trigger_change(trigger, self._clock_ns())
            try:
                await self._commit(fired or rule)
            except Unavailable:
                self._unsure[rule.trigger_order_id].add((rule.user_id, rule.rule_id))
                # Its creator settles it (ConditionalRules._create), not this trigger.
                self._maybe_fired.pop(rule.rule_id, None)
                raise
            if fired is None:
                self._by_trigger[rule.trigger_order_id][rule.rule_id] = rule
                return rule
        return await self._finish(fired)

    async def delete(self, rule: ConditionalRule) -> ConditionalRule | None:
        """The rule, CANCELED "deleted"; None when it is no longer ACTIVE here."""
        async with self._venue.account_lock(rule.user_id, rule.trigger_exchange):
            current = self._by_trigger.get(rule.trigger_order_id, {}).get(rule.rule_id)
            if current is None:
                return None
            if (maybe := self._maybe_fired.get(current.rule_id)) is not None:
                # Its firing failed unanswered: deleted only if that never landed.
                stored = await self._store.get_rule(current.user_id, current.rule_id)
                if stored is None or stored.status is not RuleStatus.ACTIVE:
                    self._forget(current)
                    del self._maybe_fired[current.rule_id]
                    if self._settle_later is not None:
                        self._settle_later(maybe)  # finished once the store check runs
                    return None
            deleted = current.delete(self._clock_ns())
            await self._journal.record([], (), [RuleUpdated(deleted)])
            self._forget(current)
            # Deleted, it never fires: a firing of it that failed never landed.
            self._maybe_fired.pop(current.rule_id, None)
            self._holds.stop_holding(current)
            return deleted

    async def judge(self, trigger: Order) -> None:
        """Fire or retire the rules a committed change of their trigger order meets."""
        await self._read_back(trigger)
        fired = []
        try:
            for rule in list(self._by_trigger.get(trigger.order_id, {}).values()):
                async with self._venue.account_lock(rule.user_id, rule.trigger_exchange):
                    if (now := await self._judged(rule, trigger)) is not None:
                        fired.append(now)
        finally:
            # Those fired before a later rule's commit failed are finished all the same: the
            # trigger judged again finds them fired no longer.
            for rule in fired:
                await self._finish(rule)

    async def _judged(self, rule: ConditionalRule, trigger: Order) -> ConditionalRule | None:
        """`rule` judged against `trigger` and committed so, under its account's lock; the
        rule when it has fired (its cancels owed), None otherwise."""
        if self._by_trigger.get(rule.trigger_order_id, {}).get(rule.rule_id) is not rule:
            return None  # deleted or judged meanwhile
        after = rule.on_trigger_change(trigger, self._clock_ns())
        if after is None:
            return None
        stored = await self._store.get_rule(rule.user_id, rule.rule_id)
        if stored is None or stored.status is not RuleStatus.ACTIVE:
            # Changed by a write that landed unanswered: the store is right, the copy here is
            # not. Deleted, it does nothing; fired, its cancels are owed.
            self._forget(rule)
            self._maybe_fired.pop(rule.rule_id, None)
            if stored is not None and stored.pending:
                return stored
            self._holds.stop_holding(rule)  # a firing of this copy, if any, never landed
            return None
        await self._commit(after)
        self._forget(rule)
        return after if after.pending else None

    async def _read_back(self, trigger: Order) -> None:
        """Watch the rules on `trigger` whose creation landed unanswered."""
        unsure = self._unsure.get(trigger.order_id)
        while unsure:
            user_id, rule_id = key = next(iter(unsure))
            stored = await self._store.get_rule(user_id, rule_id)
            if stored is not None and stored.status is RuleStatus.ACTIVE:
                self._by_trigger[trigger.order_id].setdefault(rule_id, stored)
            unsure.discard(key)
        self._unsure.pop(trigger.order_id, None)

    async def load(self, user_id: str, exchange: str) -> None:
        """The user's ACTIVE rules on `exchange`, judged against their triggers as they are
        now: a trigger change committed just before a crash fires its rules here."""
        for rule in await self._store.active_rules_on(exchange):
            if rule.user_id == user_id and rule.status is RuleStatus.ACTIVE:
                self._by_trigger[rule.trigger_order_id][rule.rule_id] = rule
                trigger = await self._store.get_order(user_id, rule.trigger_order_id)
                if trigger is not None:
                    await self.judge(trigger)

    async def judge_unsettled(self, user_id: str, exchange: str) -> None:
        """Judge again the triggers of the user's rules on `exchange` whose firing failed,
        landed or not: a new connection takes over from the one whose retries would have."""
        for rule in list(self._maybe_fired.values()):
            if (rule.user_id, rule.trigger_exchange) == (user_id, exchange):
                trigger = await self._store.get_order(user_id, rule.trigger_order_id)
                if trigger is not None:
                    await self.judge(trigger)

    def forget_user(self, user_id: str, exchange: str) -> None:
        for rules in list(self._by_trigger.values()):
            for rule in list(rules.values()):
                if (rule.user_id, rule.trigger_exchange) == (user_id, exchange):
                    self._forget(rule)
                    # Its trigger is not judged again here: whether a failed firing landed
                    # is settled once the store answers (its orders held back until then).
                    maybe = self._maybe_fired.pop(rule.rule_id, None)
                    if maybe is not None and self._settle_later is not None:
                        self._settle_later(maybe)

    async def _commit(self, rule: ConditionalRule) -> None:
        """Commit `rule` as judged. A firing holds back its listed paper orders from before
        its commit until it is finished, as a paper desk's firing does: a tick meanwhile
        would fill an order its cancels are on their way to."""
        if rule.pending:
            self._holds.hold_back(rule)
        try:
            await self._journal.record([], (), [RuleUpdated(rule)])
        except (Unavailable, asyncio.CancelledError):
            # It may have landed: held until the rule is finished, or settled as never
            # fired (this trigger judged again, or ConditionalRules.finish_unfinished).
            if rule.pending:
                self._maybe_fired[rule.rule_id] = rule
            raise
        except BaseException:
            if rule.pending:
                self._holds.stop_holding(rule)
            raise
        self._maybe_fired.pop(rule.rule_id, None)

    def _forget(self, rule: ConditionalRule) -> None:
        rules = self._by_trigger[rule.trigger_order_id]
        rules.pop(rule.rule_id, None)
        if not rules:
            del self._by_trigger[rule.trigger_order_id]

    async def _finish(self, rule: ConditionalRule) -> ConditionalRule:
        if not rule.pending:
            return rule
        assert self._runner is not None, "run_rules_with was not called"
        finished = await self._runner(rule)
        assert isinstance(finished, ConditionalRule)
        return finished
