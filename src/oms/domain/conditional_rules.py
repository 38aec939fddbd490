"""Conditional rules: when a trigger order reaches a state, cancel a list of other orders, once.

A rule fires in two steps so that a crash between them loses nothing: the trigger's transition
commits the rule as TRIGGERED with no results yet (pending), then the cancels are sent and the
results committed. A pending rule found at start-up is finished then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from oms.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from oms.domain.identifiers import check_client_order_id, check_id, check_user_id
from oms.domain.orders import Order, OrderStatus

MAX_CANCEL_ORDERS = 100
DELETED = "deleted"
TRIGGER_ORDER_TERMINAL = "trigger_order_terminal"


class RuleCondition(StrEnum):
    FILLED = "FILLED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    """The first fill, whether it leaves the order partially or completely filled."""
    CANCELED = "CANCELED"

    def met_by(self, order: Order) -> bool:
        match self:
            case RuleCondition.FILLED:
                return order.status is OrderStatus.FILLED
            case RuleCondition.PARTIALLY_FILLED:
                return order.filled_quantity > 0
            case RuleCondition.CANCELED:
                return order.status is OrderStatus.CANCELED

    def never_met_by(self, order: Order) -> bool:
        """The order is terminal without meeting the condition: it never will."""
        return order.status.is_terminal and not self.met_by(order)


class RuleStatus(StrEnum):
    ACTIVE = "ACTIVE"
    TRIGGERED = "TRIGGERED"
    CANCELED = "CANCELED"


class CancelOutcome(StrEnum):
    CANCELED = "CANCELED"
    ALREADY_TERMINAL = "ALREADY_TERMINAL"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class RuleCancelResult:
    order_id: str
    outcome: CancelOutcome
    order_status: OrderStatus | None
    """None: the order was no longer stored (finished past the retention period)."""
    error: str = ""


@dataclass(frozen=True, slots=True)
class ConditionalRule:
    rule_id: str
    user_id: str
    trigger_order_id: str
    trigger_exchange: str
    trigger_symbol: str
    """Where the trigger order trades: the rule is decided where that order's changes are."""
    condition: RuleCondition
    cancel_order_ids: tuple[str, ...]
    created_at_ns: int
    updated_at_ns: int
    status: RuleStatus = RuleStatus.ACTIVE
    status_reason: str = ""
    results: tuple[RuleCancelResult, ...] = ()
    triggered_at_ns: int | None = None
    client_id: str = ""

    @property
    def pending(self) -> bool:
        """Fired, with its cancels still to send."""
        return self.status is RuleStatus.TRIGGERED and not self.results

    @property
    def cancel_reason(self) -> str:
        """The reason on the orders this rule cancels: it tells a retry what it already did."""
        return f"conditional rule {self.rule_id}"

    def on_trigger_change(self, trigger: Order, now_ns: int) -> ConditionalRule | None:
        """The rule after its trigger order changed: fired, cancelled, or None (unchanged)."""
        if self.condition.met_by(trigger):
            return replace(
                self, status=RuleStatus.TRIGGERED, triggered_at_ns=now_ns, updated_at_ns=now_ns
            )
        if self.condition.never_met_by(trigger):
            return replace(
                self,
                status=RuleStatus.CANCELED,
                status_reason=TRIGGER_ORDER_TERMINAL,
                updated_at_ns=now_ns,
            )
        return None

    def finish(self, results: Sequence[RuleCancelResult], now_ns: int) -> ConditionalRule:
        assert self.pending
        return replace(self, results=tuple(results), updated_at_ns=now_ns)

    def delete(self, now_ns: int) -> ConditionalRule:
        if self.status is RuleStatus.TRIGGERED:
            raise FailedPrecondition(f"rule {self.rule_id} has already TRIGGERED")
        if self.status is RuleStatus.CANCELED:
            return self
        return replace(
            self, status=RuleStatus.CANCELED, status_reason=DELETED, updated_at_ns=now_ns
        )

    def result_for(self, order: Order) -> RuleCancelResult:
        """What a terminal listed order means for this rule: cancelled by it (an earlier
        attempt, before a crash) or terminal before the rule acted."""
        assert order.status.is_terminal
        outcome = (
            CancelOutcome.CANCELED
            if order.status is OrderStatus.CANCELED and order.cancel_reason == self.cancel_reason
            else CancelOutcome.ALREADY_TERMINAL
        )
        return RuleCancelResult(order.order_id, outcome, order.status)

    def same_as(self, trigger_order_id: str, condition: RuleCondition, ids: Sequence[str]) -> None:
        """A retry under this rule's client_id must ask for this rule, or it is refused."""
        if (self.trigger_order_id, self.condition, self.cancel_order_ids) != (
            trigger_order_id,
            condition,
            tuple(ids),
        ):
            raise AlreadyExists(
                f"client_id {self.client_id!r} already names rule {self.rule_id} with "
                "different parameters"
            )


@dataclass(frozen=True, slots=True)
class CreateRule:
    user_id: str
    trigger_order_id: str
    condition: RuleCondition | None
    cancel_order_ids: Sequence[str]
    client_id: str = ""


def validate_create_rule(command: CreateRule) -> tuple[str, RuleCondition, tuple[str, ...]]:
    """(trigger order id, condition, cancel order ids) of a well-formed request."""
    check_user_id(command.user_id)
    check_order_id(command.trigger_order_id, "trigger_order_id")
    if command.condition is None:
        raise InvalidArgument("condition", "is required: FILLED, PARTIALLY_FILLED or CANCELED")
    ids = tuple(command.cancel_order_ids)
    if not ids:
        raise InvalidArgument("cancel_order_ids", "must list at least one order")
    if len(ids) > MAX_CANCEL_ORDERS:
        raise InvalidArgument("cancel_order_ids", f"lists more than {MAX_CANCEL_ORDERS} orders")
    for index, order_id in enumerate(ids):
        check_order_id(order_id, f"cancel_order_ids[{index}]")
    if len(set(ids)) != len(ids):
        raise InvalidArgument("cancel_order_ids", "lists an order more than once")
    if command.trigger_order_id in ids:
        raise InvalidArgument("cancel_order_ids", "must not list the trigger order")
    if command.client_id:
        check_client_order_id(command.client_id, "client_id")
    return command.trigger_order_id, command.condition, ids


def check_order_id(raw: str, field: str) -> None:
    if not raw:
        raise InvalidArgument(field, "is required")
    check_id(raw, field)
