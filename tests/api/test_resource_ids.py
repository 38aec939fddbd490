"""An id of the OMS's own (order, rule, trailing stop, position) that no OMS could have made is
a malformed field: INVALID_ARGUMENT naming it, and the raw value is not echoed into the
message (or a log) where a control character could forge a line. A well-formed id that names
nothing is NOT_FOUND."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from fixtures.oms_server import OmsHarness
from fixtures.positions import expect_code
from tradingboost.oms.v1 import conditional_rule_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb
from tradingboost.oms.v1 import position_service_pb2 as ppb
from tradingboost.oms.v1 import trailing_stop_service_pb2 as tpb

USER = "alice"
WELL_FORMED = "01M8NVDR99D47JYSMJHJPDGTYA"
OTHER = "01M8NVDR99D47JYSMJHJPDGTYB"
FILLED = conditional_rule_pb2.RULE_CONDITION_FILLED


def create_rule(oms: OmsHarness, trigger: str, cancel: str) -> Awaitable[Any]:
    return oms.orders.CreateConditionalRule(
        pb.CreateConditionalRuleRequest(
            user_id=USER, trigger_order_id=trigger, condition=FILLED, cancel_order_ids=[cancel]
        )
    )


# (field, the call given that field's value)
CALLS: list[tuple[str, Callable[[OmsHarness, str], Awaitable[Any]]]] = [
    ("order_id", lambda o, v: o.orders.GetOrder(pb.GetOrderRequest(user_id=USER, order_id=v))),
    (
        "order_id",
        lambda o, v: o.orders.CancelOrder(pb.CancelOrderRequest(user_id=USER, order_id=v)),
    ),
    (
        "rule_id",
        lambda o, v: o.orders.GetConditionalRule(
            pb.GetConditionalRuleRequest(user_id=USER, rule_id=v)
        ),
    ),
    (
        "rule_id",
        lambda o, v: o.orders.DeleteConditionalRule(
            pb.DeleteConditionalRuleRequest(user_id=USER, rule_id=v)
        ),
    ),
    ("trigger_order_id", lambda o, v: create_rule(o, trigger=v, cancel=OTHER)),
    ("cancel_order_ids[0]", lambda o, v: create_rule(o, trigger=OTHER, cancel=v)),
    (
        "trailing_stop_id",
        lambda o, v: o.trailing_stops.GetTrailingStop(
            tpb.GetTrailingStopRequest(user_id=USER, trailing_stop_id=v)
        ),
    ),
    (
        "trailing_stop_id",
        lambda o, v: o.trailing_stops.CancelTrailingStop(
            tpb.CancelTrailingStopRequest(user_id=USER, trailing_stop_id=v)
        ),
    ),
    (
        "position_id",
        lambda o, v: o.positions.GetPosition(ppb.GetPositionRequest(user_id=USER, position_id=v)),
    ),
]


# Filters rather than lookups: an id that names nothing lists no fills.
LIST_FILLS = [
    (
        "order_id",
        lambda o, v: o.orders.ListFills(pb.ListFillsRequest(user_id=USER, order_id=v)),
    ),
    (
        "position_id",
        lambda o, v: o.orders.ListFills(pb.ListFillsRequest(user_id=USER, position_id=v)),
    ),
]


@pytest.mark.parametrize("raw", ["\x00", " ", "a\nb", WELL_FORMED + " ", "x" * 65])
@pytest.mark.parametrize(("field", "call"), [*CALLS, *LIST_FILLS])
async def test_a_malformed_id_is_invalid_argument_naming_the_field(
    oms: OmsHarness, field: str, call: Callable[[OmsHarness, str], Awaitable[Any]], raw: str
) -> None:
    message = await expect_code(call(oms, raw), grpc.StatusCode.INVALID_ARGUMENT)
    assert message.startswith(field)
    assert "\x00" not in message
    assert "\n" not in message


@pytest.mark.parametrize(("field", "call"), CALLS)
async def test_a_well_formed_id_that_names_nothing_is_not_found(
    oms: OmsHarness, field: str, call: Callable[[OmsHarness, str], Awaitable[Any]]
) -> None:
    await expect_code(call(oms, WELL_FORMED), grpc.StatusCode.NOT_FOUND)
