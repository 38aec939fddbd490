"""OpenPosition with `trailing_stop`: the stop starts on the whole position when the entry
fills, in the same commit, under the id the response reserved."""

from __future__ import annotations

import grpc
from fixtures.oms_server import OmsHarness
from fixtures.positions import (
    LONG,
    SHORT,
    check_invariants,
    expect_code,
    expect_invalid,
    open_position,
    order_count,
    position,
    redis_snapshot,
)
from fixtures.trading import USER, get, tick
from fixtures.trailing import ACTIVE, CANCELED, PENDING, TRIGGERED, assert_close_order, get_stop
from tradingboost.oms.v1 import order_pb2, position_pb2, trailing_stop_pb2

S = order_pb2
P = position_pb2
T = trailing_stop_pb2


def rate(value: str, activation: str = "") -> T.TrailingStopConfig:
    return T.TrailingStopConfig(callback_rate=value, activation_price=activation)


async def test_a_market_entry_starts_its_trailing_stop_at_the_fill(oms: OmsHarness) -> None:
    await tick(oms, "100")
    opened = await open_position(oms, quantity="2", trailing_stop=rate("0.02"))
    assert opened.entry_order.status == S.ORDER_STATUS_FILLED
    stop = await get_stop(oms, USER, opened.trailing_stop_id)
    held = await position(oms)
    assert (stop.status, stop.watermark_price, stop.stop_price) == (ACTIVE, "100", "98")
    assert (stop.position_id, stop.quantity, stop.callback_rate) == (held.position_id, "", "0.02")

    await tick(oms, "105")
    await tick(oms, "102.9")
    stop = await get_stop(oms, USER, opened.trailing_stop_id)
    await assert_close_order(oms, stop, quantity="2")
    assert (await position(oms)).status == P.POSITION_STATUS_CLOSED
    await check_invariants(oms)


async def test_a_limit_entry_starts_its_stop_only_when_it_fills(oms: OmsHarness) -> None:
    await tick(oms, "3000")
    opened = await open_position(
        oms,
        position_side=SHORT,
        type=S.ORDER_TYPE_LIMIT,
        price="3010",
        quantity="1",
        trailing_stop=T.TrailingStopConfig(callback_spread="25", activation_price="2900"),
    )
    assert opened.trailing_stop_id
    await expect_code(get_stop(oms, USER, opened.trailing_stop_id), grpc.StatusCode.NOT_FOUND)

    await tick(oms, "3010")
    stop = await get_stop(oms, USER, opened.trailing_stop_id)
    assert (stop.status, stop.activation_price, stop.watermark_price) == (PENDING, "2900", "")
    await tick(oms, "2900")
    await tick(oms, "2885")
    stop = await get_stop(oms, USER, opened.trailing_stop_id)
    assert (stop.status, stop.stop_price) == (ACTIVE, "2910")
    await tick(oms, "2910")
    stop = await get_stop(oms, USER, opened.trailing_stop_id)
    await assert_close_order(oms, stop, quantity="1")
    await check_invariants(oms)


async def test_take_profit_and_trailing_stop_together_whichever_closes_cancels_the_rest(
    oms: OmsHarness,
) -> None:
    await tick(oms, "100")
    opened = await open_position(
        oms, quantity="1", take_profit_price="110", stop_loss_price="90", trailing_stop=rate("0.02")
    )
    await tick(oms, "97.5")
    stop = await get_stop(oms, USER, opened.trailing_stop_id)
    assert stop.status == TRIGGERED
    tp, sl = await get(oms, opened.take_profit_order_id), await get(oms, opened.stop_loss_order_id)
    assert (tp.status, sl.status) == (S.ORDER_STATUS_CANCELED, S.ORDER_STATUS_CANCELED)

    await tick(oms, "100")
    again = await open_position(
        oms, quantity="1", take_profit_price="101", trailing_stop=rate("0.02")
    )
    await tick(oms, "101")
    stop = await get_stop(oms, USER, again.trailing_stop_id)
    assert (stop.status, stop.status_reason) == (CANCELED, "position_closed")
    await check_invariants(oms)


async def test_an_entry_that_fills_through_its_stop_loss_still_has_its_trailing_stop(
    oms: OmsHarness,
) -> None:
    # One tick fills the entry and, below the stop-loss, the stop-loss: flat before the stop
    # could start. The id OpenPosition gave out must not stay NOT_FOUND forever.
    await tick(oms, "3000")
    opened = await open_position(
        oms,
        type=S.ORDER_TYPE_LIMIT,
        price="2950",
        quantity="1",
        stop_loss_price="2900",
        trailing_stop=rate("0.01"),
    )
    await tick(oms, "2890")
    assert (await position(oms)).status == P.POSITION_STATUS_CLOSED
    stop = await get_stop(oms, USER, opened.trailing_stop_id)
    assert (stop.status, stop.status_reason) == (CANCELED, "position_closed")
    await check_invariants(oms)


async def test_a_limit_entrys_activation_is_judged_against_its_limit_price(
    oms: OmsHarness,
) -> None:
    # The stop starts when the entry fills at 49000: an activation at 49500 is still ahead.
    await tick(oms, "50000")
    opened = await open_position(
        oms,
        type=S.ORDER_TYPE_LIMIT,
        price="49000",
        quantity="0.01",
        trailing_stop=rate("0.01", "49500"),
    )
    await tick(oms, "49000")
    stop = await get_stop(oms, USER, opened.trailing_stop_id)
    assert (stop.status, stop.activation_price) == (PENDING, "49500")
    await tick(oms, "49500")
    assert (await get_stop(oms, USER, opened.trailing_stop_id)).status == ACTIVE
    # At or below the limit price it would activate the moment the entry fills.
    await expect_code(
        open_position(
            oms,
            type=S.ORDER_TYPE_LIMIT,
            price="49000",
            quantity="0.01",
            trailing_stop=rate("0.01", "49000"),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


async def test_an_activation_already_reached_is_refused_and_places_nothing(
    oms: OmsHarness, redis_url: str
) -> None:
    await tick(oms, "100")
    before = await redis_snapshot(redis_url)
    for side, activation in ((LONG, "100"), (SHORT, "100.01")):
        message = await expect_code(
            open_position(oms, position_side=side, trailing_stop=rate("0.02", activation)),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert message.startswith("trailing_stop.activation_price ")
    assert await redis_snapshot(redis_url) == before
    assert await order_count(oms) == 0


async def test_bad_trailing_fields_name_the_field_and_place_nothing(
    oms: OmsHarness, redis_url: str
) -> None:
    await tick(oms, "100")
    before = await redis_snapshot(redis_url)
    cases = [
        ("trailing_stop.callback_rate", rate("0.5")),
        ("trailing_stop.callback_rate", rate("0.0009")),
        ("trailing_stop.callback_rate", T.TrailingStopConfig(activation_price="120")),
        ("trailing_stop.callback_spread", T.TrailingStopConfig(callback_spread="0")),
        ("trailing_stop.callback_spread", T.TrailingStopConfig(callback_spread="100")),
        ("trailing_stop.activation_price", rate("0.02", "120.001")),
        ("trailing_stop.activation_price", rate("0.02", "abc")),
    ]
    for field, config in cases:
        await expect_invalid(open_position(oms, trailing_stop=config), field)
    assert await redis_snapshot(redis_url) == before


async def test_a_retry_with_another_trailing_stop_is_already_exists(oms: OmsHarness) -> None:
    await tick(oms, "100")
    first = await open_position(oms, client_order_id="op-ts", trailing_stop=rate("0.02"))
    again = await open_position(oms, client_order_id="op-ts", trailing_stop=rate("0.02"))
    assert again.trailing_stop_id == first.trailing_stop_id
    await expect_code(
        open_position(oms, client_order_id="op-ts", trailing_stop=rate("0.03")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert await order_count(oms) == 1
    assert (await position(oms, LONG)).size == "0.01"
