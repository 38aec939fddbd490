"""The paper exchange's holds on the orders a rule that may have fired lists."""

from __future__ import annotations

from oms.domain.conditional_rules import ConditionalRule, RuleCondition
from oms.engine.paper_exchange import _Cancelling

RULE = ConditionalRule(
    rule_id="r1",
    user_id="u1",
    trigger_order_id="a",
    trigger_exchange="binanceusdm",
    trigger_symbol="BTC/USDT:USDT",
    condition=RuleCondition.FILLED,
    cancel_order_ids=("b",),
    created_at_ns=1,
    updated_at_ns=1,
)


def test_settling_a_failed_firing_leaves_the_hold_of_a_later_firing_of_the_same_rule() -> None:
    # A firing failed (held, handed to the store check with its hold's number); the rule's
    # trigger judged again fired it anew (held again) before the check found the first had
    # never landed: that finding must not lift the new firing's hold.
    holds = _Cancelling()
    holds.hold(RULE)
    first = holds.hold_number(RULE)
    holds.hold(RULE)
    holds.unhold(RULE, first)
    assert holds.order_ids() == {"b"}
    holds.unhold(RULE, holds.hold_number(RULE))
    assert holds.order_ids() == frozenset()
    assert holds.hold_number(RULE) is None


def test_a_hold_without_a_number_is_lifted_whichever_firing_held_it() -> None:
    holds = _Cancelling()
    holds.hold(RULE)
    holds.hold(RULE)
    holds.unhold(RULE)
    assert holds.order_ids() == frozenset()
