"""TrailingStopService (CONTRACT section 5) through the real server.

The contract's four worked examples each run tick by tick, checking status, watermark and stop
price after every tick and, at the trigger, the reduce-only MARKET close order and the position
it leaves. Then: creation rules, quantity capping, the position closing another way, several
stops, idempotency, get/cancel, listing, the event stream and bad input.

PublishPrices returns only after everything its tick causes is committed (the stop's
evaluation, its close order and that order's paper fill), so every read after a tick is exact.
Every test uses its own user and publishes its own starting price.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import grpc
import pytest
from fixtures.domain import new_order
from fixtures.oms_server import OmsHarness
from fixtures.positions import (
    ETH,
    LONG,
    SHORT,
    SOL,
    check_invariants,
    expect_code,
    expect_invalid,
    open_position,
    redis_snapshot,
    ticks,
)
from fixtures.streams import BAD_STREAM_FILTERS, StreamReader
from fixtures.trading import BTC, place
from fixtures.trailing import (
    ACTIVATED,
    ACTIVE,
    CANCELED,
    CANCELED_EVENT,
    CLOSED,
    CREATED,
    OPEN,
    PENDING,
    STOP_PRICE_UPDATED,
    TRIGGERED,
    TRIGGERED_EVENT,
    UNKNOWN_ID,
    assert_close_order,
    cancel_stop,
    create_request,
    create_stop,
    current_position,
    figures,
    get_order,
    get_stop,
    list_stops,
    long_with_stop,
    new_user,
    open_side,
    orders_of,
    publish,
    stop_stream,
)
from tradingboost.oms.v1 import order_pb2, trailing_stop_pb2
from tradingboost.oms.v1 import position_service_pb2 as ppb
from tradingboost.oms.v1 import trailing_stop_service_pb2 as tpb

from oms.domain.events import (
    FillRecorded,
    OrderEventType,
    OrderUpdated,
    PositionUpdated,
    TrailingStopUpdated,
)
from oms.domain.orders import OrderStatus
from oms.engine.ports import OrderChange

S = order_pb2
T = trailing_stop_pb2
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND


async def walk(
    oms: OmsHarness,
    user: str,
    stop_id: str,
    steps: Sequence[tuple[str, int, str, str]],
    symbol: str = BTC,
) -> T.TrailingStop:
    """Publishes each (price, ...) and checks (status, watermark, stop) right after it."""
    stop = await get_stop(oms, user, stop_id)
    for price, *expected in steps:
        await publish(oms, price, symbol)
        stop = await get_stop(oms, user, stop_id)
        assert figures(stop) == tuple(expected), f"after {price}: {stop}"
    return stop


async def expect_fired_once(
    oms: OmsHarness, user: str, fired: T.TrailingStop, *prices: str
) -> None:
    """A stop triggers at most once: later ticks change neither it nor the user's orders."""
    before = await orders_of(oms, user)
    for price in prices:
        await publish(oms, price, fired.symbol)
    assert await get_stop(oms, user, fired.trailing_stop_id) == fired
    assert await orders_of(oms, user) == before


# --- the worked examples (CONTRACT section 5, paper tick 0.01) ----------------------------------


async def test_long_2pct_without_activation_from_100(oms: OmsHarness) -> None:
    user = new_user()
    await publish(oms, "100")
    held = await open_side(oms, user, quantity="0.01")
    stop = await create_stop(oms, user, callback_rate="0.02")
    assert len(stop.trailing_stop_id) == 26
    assert (stop.user_id, stop.exchange, stop.symbol, stop.position_side) == (
        user,
        "paper",
        BTC,
        LONG,
    )
    assert stop.WhichOneof("callback") == "callback_rate"
    assert stop.callback_rate == "0.02"
    assert (stop.activation_price, stop.quantity, stop.client_id) == ("", "", "")
    assert figures(stop) == (ACTIVE, "100", "98")  # ACTIVE at once, the last price as watermark
    assert stop.position_id == held.position_id
    assert stop.HasField("created_at")
    assert stop.HasField("activated_at")
    assert not stop.HasField("triggered_at")
    assert (stop.triggered_price, stop.order_id, stop.status_reason) == ("", "", "")
    assert await get_stop(oms, user, stop.trailing_stop_id) == stop

    await walk(
        oms,
        user,
        stop.trailing_stop_id,
        [
            ("105", ACTIVE, "105", "102.9"),
            ("102.91", ACTIVE, "105", "102.9"),  # above the stop: nothing
        ],
    )
    await publish(oms, "102.90")
    fired = await get_stop(oms, user, stop.trailing_stop_id)
    assert figures(fired) == (TRIGGERED, "105", "102.9")
    assert fired.triggered_price == "102.9"  # plain, no trailing zero
    await assert_close_order(oms, fired, quantity="0.01")
    closed = await current_position(oms, user)
    assert closed.position_id == held.position_id
    assert closed.status == CLOSED
    assert closed.realized_pnl == "0.029"  # (102.9 - 100) x 0.01
    await expect_fired_once(oms, user, fired, "90", "110", "80")
    await check_invariants(oms, user)


async def test_long_1pct_with_activation_52000_from_50000(oms: OmsHarness) -> None:
    user = new_user()
    await publish(oms, "50000")
    held = await open_side(oms, user, quantity="0.01")
    stop = await create_stop(oms, user, callback_rate="0.01", activation_price="52000")
    assert figures(stop) == (PENDING, "", "")
    assert stop.activation_price == "52000"
    assert not stop.HasField("activated_at")
    assert stop.position_id == held.position_id

    await walk(
        oms,
        user,
        stop.trailing_stop_id,
        [
            ("49000", PENDING, "", ""),  # before activation: ignored
            ("52000", ACTIVE, "52000", "51480"),  # activates (inclusive)
            ("53500", ACTIVE, "53500", "52965"),
            ("52965.01", ACTIVE, "53500", "52965"),
        ],
    )
    assert (await get_stop(oms, user, stop.trailing_stop_id)).HasField("activated_at")
    await publish(oms, "52965")
    fired = await get_stop(oms, user, stop.trailing_stop_id)
    assert figures(fired) == (TRIGGERED, "53500", "52965")
    assert fired.triggered_price == "52965"
    await assert_close_order(oms, fired, quantity="0.01")
    closed = await current_position(oms, user)
    assert (closed.position_id, closed.status) == (held.position_id, CLOSED)
    assert closed.realized_pnl == "29.65"  # (52965 - 50000) x 0.01
    await expect_fired_once(oms, user, fired, "52000", "60000")
    await check_invariants(oms, user)


async def test_short_spread_25_with_activation_2900_from_2950(oms: OmsHarness) -> None:
    user = new_user()
    await publish(oms, "2950", ETH)
    held = await open_side(oms, user, SHORT, ETH, quantity="1")
    stop = await create_stop(
        oms,
        user,
        symbol=ETH,
        position_side=SHORT,
        callback_spread="25",
        activation_price="2900",
    )
    assert stop.WhichOneof("callback") == "callback_spread"
    assert stop.callback_spread == "25"
    assert (stop.symbol, stop.position_side) == (ETH, SHORT)
    assert figures(stop) == (PENDING, "", "")

    await walk(
        oms,
        user,
        stop.trailing_stop_id,
        [
            ("2960", PENDING, "", ""),  # above activation: ignored
            ("2900", ACTIVE, "2900", "2925"),  # activates (inclusive)
            ("2860", ACTIVE, "2860", "2885"),
            ("2884.99", ACTIVE, "2860", "2885"),
        ],
        symbol=ETH,
    )
    await publish(oms, "2885", ETH)
    fired = await get_stop(oms, user, stop.trailing_stop_id)
    assert figures(fired) == (TRIGGERED, "2860", "2885")
    assert fired.triggered_price == "2885"
    order = await assert_close_order(oms, fired, quantity="1")
    assert order.side == S.SIDE_BUY
    closed = await current_position(oms, user, SHORT, ETH)
    assert (closed.position_id, closed.status) == (held.position_id, CLOSED)
    assert closed.realized_pnl == "65"  # (2950 - 2885) x 1
    await expect_fired_once(oms, user, fired, "3000", "2000")
    await check_invariants(oms, user)


async def test_long_1_5pct_stop_rounds_up_to_the_tick(oms: OmsHarness) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user, quantity="0.01")
    stop = await create_stop(oms, user, callback_rate="0.015")
    assert figures(stop) == (ACTIVE, "100", "98.5")
    await walk(
        oms,
        user,
        stop.trailing_stop_id,
        [
            ("101.37", ACTIVE, "101.37", "99.85"),  # exact 99.84945 rounds up
            ("99.86", ACTIVE, "101.37", "99.85"),
        ],
    )
    await publish(oms, "99.85")
    fired = await get_stop(oms, user, stop.trailing_stop_id)
    assert figures(fired) == (TRIGGERED, "101.37", "99.85")
    assert fired.triggered_price == "99.85"
    await assert_close_order(oms, fired, quantity="0.01")
    assert (await current_position(oms, user)).status == CLOSED
    await check_invariants(oms, user)


@pytest.mark.parametrize(
    ("side", "symbol", "callback", "first_stop", "steps", "fired"),
    [
        # 100 - 0.005 rounded up to the tick would be 100 itself: a new high would sell.
        (
            LONG,
            BTC,
            {"callback_spread": "0.005"},
            ("100", "99.99"),
            [("100.01", "100.01", "100"), ("100.02", "100.02", "100.01")],
            ("100.01", "100.02"),
        ),
        # 5 x 1.001 = 5.005 rounded down would be 5 itself.
        (
            SHORT,
            SOL,
            {"callback_rate": "0.001"},
            ("5", "5.01"),
            [("4.99", "4.99", "5")],
            ("5", "4.99"),
        ),
    ],
    ids=["long-spread", "short-rate"],
)
async def test_a_callback_under_a_tick_trails_a_tick_from_the_best_price(
    oms: OmsHarness,
    side: int,
    symbol: str,
    callback: dict[str, str],
    first_stop: tuple[str, str],
    steps: list[tuple[str, str, str]],
    fired: tuple[str, str],
) -> None:
    user = new_user()
    start, stop_price = first_stop
    await publish(oms, start, symbol)
    await open_side(oms, user, side, symbol, quantity="1")
    stop = await create_stop(oms, user, symbol=symbol, position_side=side, **callback)
    assert figures(stop) == (ACTIVE, start, stop_price)
    path = [(price, ACTIVE, watermark, stop) for price, watermark, stop in steps]
    await walk(oms, user, stop.trailing_stop_id, path, symbol)
    trigger, watermark = fired
    await publish(oms, trigger, symbol)
    done = await get_stop(oms, user, stop.trailing_stop_id)
    assert figures(done) == (TRIGGERED, watermark, trigger)
    await assert_close_order(oms, done, quantity="1")


async def test_a_watermark_that_does_not_improve_or_barely_moves_never_loosens_the_stop(
    oms: OmsHarness,
) -> None:
    user, stop = await long_with_stop(oms)
    await walk(
        oms,
        user,
        stop.trailing_stop_id,
        [
            ("100.49", ACTIVE, "100.49", "98.49"),  # 98.4802 rounds up
            ("100.5", ACTIVE, "100.5", "98.49"),  # exactly 98.49: same stop
            ("99", ACTIVE, "100.5", "98.49"),  # lower: the watermark stays
            ("100", ACTIVE, "100.5", "98.49"),
        ],
    )


# --- creation rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "activation"),
    [(LONG, "50000"), (LONG, "49999.99"), (SHORT, "50000"), (SHORT, "50000.01")],
    ids=["long-at-last", "long-below-last", "short-at-last", "short-above-last"],
)
async def test_an_activation_price_already_reached_is_failed_precondition(
    oms: OmsHarness, redis_url: str, side: int, activation: str
) -> None:
    user = new_user()
    await publish(oms, "50000")
    await open_side(oms, user, side)
    before = await redis_snapshot(redis_url)
    await expect_code(
        oms.trailing_stops.CreateTrailingStop(
            create_request(user, position_side=side, activation_price=activation)
        ),
        FAILED_PRECONDITION,
    )
    assert await redis_snapshot(redis_url) == before
    assert await list_stops(oms, user) == []


@pytest.mark.parametrize(
    ("side", "activation"), [(LONG, "50000.01"), (SHORT, "49999.99")], ids=["long", "short"]
)
async def test_an_activation_price_one_tick_away_is_accepted(
    oms: OmsHarness, side: int, activation: str
) -> None:
    user = new_user()
    await publish(oms, "50000")
    await open_side(oms, user, side)
    stop = await create_stop(oms, user, position_side=side, activation_price=activation)
    assert figures(stop) == (PENDING, "", "")
    assert stop.activation_price == activation


@pytest.mark.parametrize(("rate", "stop_price"), [("0.001", "99.9"), ("0.1", "90")])
async def test_callback_rate_bounds_are_inclusive(
    oms: OmsHarness, rate: str, stop_price: str
) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user)
    stop = await create_stop(oms, user, callback_rate=rate)
    assert stop.callback_rate == rate
    assert figures(stop) == (ACTIVE, "100", stop_price)


@pytest.mark.parametrize("rate", ["0.0009", "0.11", "1", "2"])
async def test_callback_rate_outside_the_bounds_is_invalid(
    oms: OmsHarness, redis_url: str, rate: str
) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user)
    before = await redis_snapshot(redis_url)
    await expect_invalid(
        oms.trailing_stops.CreateTrailingStop(create_request(user, callback_rate=rate)),
        "callback_rate",
    )
    assert await redis_snapshot(redis_url) == before


@pytest.mark.parametrize(
    "fields",
    [
        {"callback_spread": "100"},  # from the last price: a stop at 0
        {"callback_spread": "150"},
        {"callback_spread": "120", "activation_price": "110"},  # from the activation price
    ],
)
async def test_a_long_spread_that_puts_the_stop_at_zero_or_below_is_invalid(
    oms: OmsHarness, redis_url: str, fields: dict[str, str]
) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user)
    before = await redis_snapshot(redis_url)
    await expect_invalid(
        oms.trailing_stops.CreateTrailingStop(create_request(user, **fields)), "callback_spread"
    )
    assert await redis_snapshot(redis_url) == before
    # Just below the price, it is a (wide) stop.
    stop = await create_stop(oms, user, callback_spread="99.99")
    assert stop.stop_price == "0.01"


async def test_neither_callback_is_invalid_naming_callback_rate(
    oms: OmsHarness, redis_url: str
) -> None:
    # "Both set" cannot be sent with generated stubs: `callback_rate` and `callback_spread` are
    # one proto3 oneof, so setting one clears the other, and on the wire a parser keeps only
    # the last of the two (concatenating two serialized requests gives the second's callback).
    # The server can therefore only ever see neither or one; "neither" is what is testable.
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user)
    request = create_request(user, callback_rate=None)
    assert request.WhichOneof("callback") is None
    before = await redis_snapshot(redis_url)
    await expect_invalid(oms.trailing_stops.CreateTrailingStop(request), "callback_rate")
    assert await redis_snapshot(redis_url) == before


async def test_no_open_position_on_that_side_is_failed_precondition(
    oms: OmsHarness, redis_url: str
) -> None:
    user = new_user()
    await publish(oms, "100")

    async def refused(**fields: Any) -> None:
        before = await redis_snapshot(redis_url)
        await expect_code(
            oms.trailing_stops.CreateTrailingStop(create_request(user, **fields)),
            FAILED_PRECONDITION,
        )
        assert await redis_snapshot(redis_url) == before

    await refused()  # never had a position
    await open_side(oms, user, SHORT)
    await refused()  # only the other side is open
    await refused(position_side=LONG, callback_spread="1")
    await open_side(oms, user, LONG)
    await oms.positions.ClosePosition(
        ppb.ClosePositionRequest(user_id=user, exchange="paper", symbol=BTC, position_side=LONG)
    )
    assert (await current_position(oms, user)).status == CLOSED
    await refused()  # flat again
    await refused(symbol=SOL)  # no position and no price at all
    assert await list_stops(oms, user) == []


# --- quantity ------------------------------------------------------------------------------------


async def test_a_quantity_above_the_position_size_is_capped_at_trigger(oms: OmsHarness) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user, quantity="0.01")
    stop = await create_stop(oms, user, callback_rate="0.02", quantity="0.05")
    assert stop.quantity == "0.05"
    await publish(oms, "98")
    fired = await get_stop(oms, user, stop.trailing_stop_id)
    assert fired.quantity == "0.05"
    await assert_close_order(oms, fired, quantity="0.01")
    closed = await current_position(oms, user)
    assert (closed.status, closed.size) == (CLOSED, "0")
    await check_invariants(oms, user)


async def test_a_quantity_below_the_position_size_closes_part_of_it(oms: OmsHarness) -> None:
    user = new_user()
    await publish(oms, "100")
    held = await open_side(oms, user, quantity="0.03")
    stop = await create_stop(oms, user, callback_rate="0.02", quantity="0.01")
    await publish(oms, "98")
    fired = await get_stop(oms, user, stop.trailing_stop_id)
    await assert_close_order(oms, fired, quantity="0.01")
    rest = await current_position(oms, user)
    assert rest.position_id == held.position_id
    assert (rest.status, rest.size) == (OPEN, "0.02")
    assert rest.realized_pnl == "-0.02"  # (98 - 100) x 0.01
    await expect_fired_once(oms, user, fired, "90", "120", "80")
    assert (await current_position(oms, user)).size == "0.02"
    await check_invariants(oms, user)


async def test_without_a_quantity_the_whole_position_at_trigger_time_is_closed(
    oms: OmsHarness,
) -> None:
    user, stop = await long_with_stop(oms)
    await place(oms, user_id=user, quantity="0.02")  # the position grows to 0.03 after create
    await publish(oms, "98")
    fired = await get_stop(oms, user, stop.trailing_stop_id)
    await assert_close_order(oms, fired, quantity="0.03")
    assert (await current_position(oms, user)).status == CLOSED
    await check_invariants(oms, user)


# --- the position going flat another way ---------------------------------------------------------


async def test_close_position_cancels_the_working_stops_with_position_closed(
    oms: OmsHarness,
) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user, quantity="0.02")
    active = await create_stop(oms, user, callback_rate="0.02")
    pending = await create_stop(oms, user, callback_rate="0.01", activation_price="110")
    stream = stop_stream(oms, user)
    await stream.until_live()

    close = ppb.ClosePositionRequest(user_id=user, exchange="paper", symbol=BTC, position_side=LONG)
    partial = await oms.positions.ClosePosition(
        ppb.ClosePositionRequest(
            user_id=user, exchange="paper", symbol=BTC, position_side=LONG, quantity="0.01"
        )
    )
    assert partial.order.status == S.ORDER_STATUS_FILLED
    assert await get_stop(oms, user, active.trailing_stop_id) == active  # not flat yet
    assert await get_stop(oms, user, pending.trailing_stop_id) == pending

    await oms.positions.ClosePosition(close)
    assert (await current_position(oms, user)).status == CLOSED
    for before in (active, pending):
        after = await get_stop(oms, user, before.trailing_stop_id)
        assert after.status == CANCELED
        assert after.status_reason == "position_closed"
        assert (after.watermark_price, after.stop_price) == (
            before.watermark_price,
            before.stop_price,
        )
        assert after.order_id == ""
    events = await stream.events(2)
    assert {e.event_type for e in events} == {CANCELED_EVENT}
    assert {e.trailing_stop.trailing_stop_id for e in events} == {
        active.trailing_stop_id,
        pending.trailing_stop_id,
    }
    assert {e.trailing_stop.status_reason for e in events} == {"position_closed"}
    stream.cancel()

    orders = await orders_of(oms, user)
    await publish(oms, "111")  # would have activated the pending one
    await publish(oms, "90")  # would have triggered either
    assert await orders_of(oms, user) == orders
    for stop in (active, pending):
        assert (await get_stop(oms, user, stop.trailing_stop_id)).status == CANCELED
    await check_invariants(oms, user)


async def test_a_take_profit_filling_cancels_the_stop_with_position_closed(
    oms: OmsHarness,
) -> None:
    user = new_user()
    await publish(oms, "100")
    opened = await open_position(oms, user_id=user, quantity="0.01", take_profit_price="103")
    assert opened.entry_order.status == S.ORDER_STATUS_FILLED
    stop = await create_stop(oms, user, callback_rate="0.05")
    await publish(oms, "103")
    tp = await get_order(oms, user, opened.take_profit_order_id)
    assert tp.status == S.ORDER_STATUS_FILLED
    assert (await current_position(oms, user)).status == CLOSED
    after = await get_stop(oms, user, stop.trailing_stop_id)
    assert (after.status, after.status_reason, after.order_id) == (
        CANCELED,
        "position_closed",
        "",
    )
    await check_invariants(oms, user)


# --- several stops -------------------------------------------------------------------------------


async def test_a_long_and_a_short_stop_on_one_symbol_are_independent(oms: OmsHarness) -> None:
    user = new_user()
    await publish(oms, "100")
    long_position = await open_side(oms, user, LONG, quantity="0.01")
    short_position = await open_side(oms, user, SHORT, quantity="0.02")
    long = await create_stop(oms, user, position_side=LONG, callback_rate="0.02")
    short = await create_stop(oms, user, position_side=SHORT, callback_spread="2")
    assert figures(long) == (ACTIVE, "100", "98")
    assert figures(short) == (ACTIVE, "100", "102")
    assert long.position_id == long_position.position_id
    assert short.position_id == short_position.position_id

    await publish(oms, "101")
    assert figures(await get_stop(oms, user, long.trailing_stop_id)) == (ACTIVE, "101", "98.98")
    assert figures(await get_stop(oms, user, short.trailing_stop_id)) == (ACTIVE, "100", "102")

    await publish(oms, "102")  # the short's stop fires; the long only trails
    short_fired = await get_stop(oms, user, short.trailing_stop_id)
    assert figures(short_fired) == (TRIGGERED, "100", "102")
    await assert_close_order(oms, short_fired, quantity="0.02")
    assert (await current_position(oms, user, SHORT)).status == CLOSED
    long_now = await get_stop(oms, user, long.trailing_stop_id)
    assert figures(long_now) == (ACTIVE, "102", "99.96")
    assert (await current_position(oms, user, LONG)).status == OPEN

    await publish(oms, "99.96")
    long_fired = await get_stop(oms, user, long.trailing_stop_id)
    assert figures(long_fired) == (TRIGGERED, "102", "99.96")
    await assert_close_order(oms, long_fired, quantity="0.01")
    assert await get_stop(oms, user, short.trailing_stop_id) == short_fired
    await check_invariants(oms, user)


async def test_of_two_stops_on_one_side_the_first_to_trigger_closes_and_cancels_the_other(
    oms: OmsHarness,
) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user, quantity="0.02")
    tight = await create_stop(oms, user, callback_rate="0.01")  # stop 99
    loose = await create_stop(oms, user, callback_rate="0.05")  # stop 95
    await publish(oms, "99")
    fired = await get_stop(oms, user, tight.trailing_stop_id)
    await assert_close_order(oms, fired, quantity="0.02")
    other = await get_stop(oms, user, loose.trailing_stop_id)
    assert (other.status, other.status_reason, other.order_id) == (
        CANCELED,
        "position_closed",
        "",
    )
    assert (await current_position(oms, user)).status == CLOSED
    assert len(await orders_of(oms, user)) == 2  # the entry and one close
    await publish(oms, "90")
    assert len(await orders_of(oms, user)) == 2
    await check_invariants(oms, user)


async def test_two_stops_crossed_by_one_tick_close_the_position_once(oms: OmsHarness) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user, quantity="0.02")
    first = await create_stop(oms, user, callback_rate="0.01")  # stop 99
    second = await create_stop(oms, user, callback_spread="1.5")  # stop 98.5
    await publish(oms, "98")  # through both
    stops = [await get_stop(oms, user, s.trailing_stop_id) for s in (first, second)]
    fired = [s for s in stops if s.status == TRIGGERED]
    others = [s for s in stops if s.status != TRIGGERED]
    assert len(fired) == 1, stops
    await assert_close_order(oms, fired[0], quantity="0.02")
    assert [(s.status, s.status_reason, s.order_id) for s in others] == [
        (CANCELED, "position_closed", "")
    ]
    assert len(await orders_of(oms, user)) == 2
    assert (await current_position(oms, user)).status == CLOSED
    await check_invariants(oms, user)


@pytest.mark.parametrize(
    ("side", "near", "far", "gap"),
    [
        (LONG, {"callback_rate": "0.01"}, {"callback_rate": "0.05"}, "90"),  # stops 99, 95
        (SHORT, {"callback_rate": "0.01"}, {"callback_rate": "0.05"}, "110"),  # 101, 105
    ],
)
async def test_a_gap_through_two_stops_triggers_the_nearer_first(
    oms: OmsHarness, side: int, near: dict[str, str], far: dict[str, str], gap: str
) -> None:
    # The move passes the nearer stop first: it closes its part, the farther one the rest.
    # Created farther first, so that neither creation order nor id order decides.
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user, side=side, quantity="0.02")
    farther = await create_stop(oms, user, position_side=side, **far)
    nearer = await create_stop(oms, user, position_side=side, quantity="0.005", **near)
    await publish(oms, gap)
    nearer, farther = [await get_stop(oms, user, s.trailing_stop_id) for s in (nearer, farther)]
    await assert_close_order(oms, nearer, quantity="0.005")
    await assert_close_order(oms, farther, quantity="0.015")
    assert (await current_position(oms, user, side)).status == CLOSED
    await check_invariants(oms, user)


# --- idempotency, get and cancel -----------------------------------------------------------------


async def test_create_is_idempotent_on_client_id(oms: OmsHarness, redis_url: str) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user)
    request = create_request(
        user, callback_rate="0.02", activation_price="101", client_id="trail-1"
    )
    first = (await oms.trailing_stops.CreateTrailingStop(request)).trailing_stop
    assert first.client_id == "trail-1"
    again = (await oms.trailing_stops.CreateTrailingStop(request)).trailing_stop
    assert again == first
    assert [s.trailing_stop_id for s in await list_stops(oms, user)] == [first.trailing_stop_id]

    # A retry is answered by the key even after the price has reached the activation price
    # (the stop is ACTIVE now); it returns the stop as it stands, and creates nothing.
    await publish(oms, "101")
    now = await get_stop(oms, user, first.trailing_stop_id)
    assert figures(now) == (ACTIVE, "101", "98.98")
    retried = (await oms.trailing_stops.CreateTrailingStop(request)).trailing_stop
    assert retried == now

    before = await redis_snapshot(redis_url)
    for changed in (
        create_request(user, callback_rate="0.03", activation_price="101", client_id="trail-1"),
        create_request(user, callback_spread="2", activation_price="101", client_id="trail-1"),
        create_request(user, callback_rate="0.02", client_id="trail-1"),
        create_request(
            user,
            callback_rate="0.02",
            activation_price="101",
            quantity="0.01",
            client_id="trail-1",
        ),
    ):
        await expect_code(
            oms.trailing_stops.CreateTrailingStop(changed), grpc.StatusCode.ALREADY_EXISTS
        )
    assert await redis_snapshot(redis_url) == before
    assert len(await list_stops(oms, user)) == 1

    # The key is per user.
    other = new_user()
    await open_side(oms, other)
    theirs = await create_stop(oms, other, callback_rate="0.02", client_id="trail-1")
    assert theirs.trailing_stop_id != first.trailing_stop_id
    assert (await get_stop(oms, user, client_id="trail-1")).trailing_stop_id == (
        first.trailing_stop_id
    )


async def test_a_create_retried_while_the_first_is_in_flight_gets_its_stop(
    oms: OmsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The retry looks its client id up before the first attempt's stop lands, and that stop
    # triggers (closing the position) before the retry is decided: the retry must still be
    # answered with that stop, not refused for want of a position to protect.
    lookup = oms.app.store.get_trailing_stop_by_client_id
    looked = [asyncio.Event(), asyncio.Event()]
    answer = [asyncio.Event(), asyncio.Event()]

    async def held_lookup(user_id: str, client_id: str) -> Any:
        found = await lookup(user_id, client_id)
        turn = sum(event.is_set() for event in looked)
        looked[turn].set()
        await answer[turn].wait()
        return found

    monkeypatch.setattr(oms.app.store, "get_trailing_stop_by_client_id", held_lookup)
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user)
    request = create_request(user, callback_rate="0.02", client_id="trail-9")
    first = asyncio.ensure_future(oms.trailing_stops.CreateTrailingStop(request))
    await looked[0].wait()
    retry = asyncio.ensure_future(oms.trailing_stops.CreateTrailingStop(request))
    await asyncio.sleep(0.1)  # for the retry to look up, unless it waits for the first
    answer[0].set()
    stop = (await first).trailing_stop
    await publish(oms, "97")  # through its stop at 98
    answer[1].set()
    again = (await retry).trailing_stop
    assert again.trailing_stop_id == stop.trailing_stop_id
    assert (await get_stop(oms, user, stop.trailing_stop_id)).status == TRIGGERED
    assert len(await list_stops(oms, user)) == 1


async def test_get_and_cancel_by_client_id_and_cancel_twice(oms: OmsHarness) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user)
    stop = await create_stop(oms, user, callback_rate="0.02", client_id="my-stop.1")
    assert await get_stop(oms, user, client_id="my-stop.1") == stop
    assert await get_stop(oms, user, stop.trailing_stop_id) == stop

    canceled = await cancel_stop(oms, user, client_id="my-stop.1")
    assert canceled.trailing_stop_id == stop.trailing_stop_id
    assert (canceled.status, canceled.status_reason) == (CANCELED, "canceled_by_user")
    assert (canceled.watermark_price, canceled.stop_price) == ("100", "98")
    assert await get_stop(oms, user, stop.trailing_stop_id) == canceled
    assert await get_stop(oms, user, client_id="my-stop.1") == canceled

    await expect_code(
        oms.trailing_stops.CancelTrailingStop(
            tpb.CancelTrailingStopRequest(user_id=user, trailing_stop_id=stop.trailing_stop_id)
        ),
        FAILED_PRECONDITION,
    )
    await expect_code(
        oms.trailing_stops.CancelTrailingStop(
            tpb.CancelTrailingStopRequest(user_id=user, client_id="my-stop.1")
        ),
        FAILED_PRECONDITION,
    )
    assert await get_stop(oms, user, stop.trailing_stop_id) == canceled

    orders = await orders_of(oms, user)
    await publish(oms, "90")  # a cancelled stop never fires
    assert await orders_of(oms, user) == orders
    assert (await current_position(oms, user)).status == OPEN
    await check_invariants(oms, user)


async def test_cancel_a_pending_stop_and_a_triggered_one(oms: OmsHarness) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user, quantity="0.02")
    pending = await create_stop(oms, user, activation_price="120")
    canceled = await cancel_stop(oms, user, pending.trailing_stop_id)
    assert figures(canceled) == (CANCELED, "", "")
    assert canceled.status_reason == "canceled_by_user"

    stop = await create_stop(oms, user, callback_rate="0.02", quantity="0.01")
    await publish(oms, "98")
    fired = await get_stop(oms, user, stop.trailing_stop_id)
    assert fired.status == TRIGGERED
    await expect_code(
        oms.trailing_stops.CancelTrailingStop(
            tpb.CancelTrailingStopRequest(user_id=user, trailing_stop_id=fired.trailing_stop_id)
        ),
        FAILED_PRECONDITION,
    )
    assert await get_stop(oms, user, fired.trailing_stop_id) == fired


async def test_unknown_and_other_users_stops_are_not_found(oms: OmsHarness) -> None:
    owner, stranger = new_user(), new_user()
    await publish(oms, "100")
    await open_side(oms, owner)
    await open_side(oms, stranger)
    stop = await create_stop(oms, owner, client_id="mine")

    for request in (
        {"trailing_stop_id": UNKNOWN_ID},
        {"client_id": "nobody-made-this"},
    ):
        await expect_code(
            oms.trailing_stops.GetTrailingStop(
                tpb.GetTrailingStopRequest(user_id=owner, **request)
            ),
            NOT_FOUND,
        )
        await expect_code(
            oms.trailing_stops.CancelTrailingStop(
                tpb.CancelTrailingStopRequest(user_id=owner, **request)
            ),
            NOT_FOUND,
        )
    for request in ({"trailing_stop_id": stop.trailing_stop_id}, {"client_id": "mine"}):
        await expect_code(
            oms.trailing_stops.GetTrailingStop(
                tpb.GetTrailingStopRequest(user_id=stranger, **request)
            ),
            NOT_FOUND,
        )
        await expect_code(
            oms.trailing_stops.CancelTrailingStop(
                tpb.CancelTrailingStopRequest(user_id=stranger, **request)
            ),
            NOT_FOUND,
        )
    assert await get_stop(oms, owner, stop.trailing_stop_id) == stop
    assert await list_stops(oms, stranger) == []


@pytest.mark.parametrize(
    "request_fields",
    [
        {},
        {"trailing_stop_id": UNKNOWN_ID, "client_id": "both"},
    ],
    ids=["neither", "both"],
)
async def test_get_and_cancel_need_exactly_one_id(
    oms: OmsHarness, request_fields: dict[str, str]
) -> None:
    user = new_user()
    await expect_invalid(
        oms.trailing_stops.GetTrailingStop(
            tpb.GetTrailingStopRequest(user_id=user, **request_fields)
        ),
        "trailing_stop_id",
        "client_id",
    )
    await expect_invalid(
        oms.trailing_stops.CancelTrailingStop(
            tpb.CancelTrailingStopRequest(user_id=user, **request_fields)
        ),
        "trailing_stop_id",
        "client_id",
    )


# --- listing -------------------------------------------------------------------------------------


async def test_list_filters_and_pages_newest_first(oms: OmsHarness) -> None:
    user = new_user()
    await ticks(oms, {BTC: "100", ETH: "3000"})
    await open_side(oms, user, LONG, BTC, quantity="0.02")
    await open_side(oms, user, SHORT, BTC, quantity="0.01")
    await open_side(oms, user, LONG, ETH, quantity="1")
    s1 = await create_stop(oms, user, callback_rate="0.05", quantity="0.01")  # ACTIVE, stop 95
    s2 = await create_stop(oms, user, position_side=SHORT, callback_spread="5")
    s3 = await create_stop(oms, user, symbol=ETH, callback_rate="0.01", activation_price="3100")
    s4 = await create_stop(oms, user, callback_rate="0.01", quantity="0.01")  # stop 99
    await cancel_stop(oms, user, s2.trailing_stop_id)
    await publish(oms, "99")  # s4 fires and closes 0.01 of 0.02; s1 keeps trailing
    by_id = {
        s.trailing_stop_id: await get_stop(oms, user, s.trailing_stop_id) for s in (s1, s2, s3, s4)
    }
    assert [by_id[s.trailing_stop_id].status for s in (s1, s2, s3, s4)] == [
        ACTIVE,
        CANCELED,
        PENDING,
        TRIGGERED,
    ]
    ids = {name: s.trailing_stop_id for name, s in (("s1", s1), ("s2", s2), ("s3", s3), ("s4", s4))}

    async def names(**filters: Any) -> list[str]:
        found = await list_stops(oms, user, **filters)
        for stop in found:
            assert stop == by_id[stop.trailing_stop_id]
        reverse = {v: k for k, v in ids.items()}
        return [reverse[s.trailing_stop_id] for s in found]

    assert await names() == ["s4", "s3", "s2", "s1"]
    assert await names(exchange="paper") == ["s4", "s3", "s2", "s1"]
    assert await names(exchange="paper", symbol=ETH) == ["s3"]
    assert await names(exchange="paper", symbol="ETH-USDT-SWAP") == ["s3"]
    assert await names(exchange="paper", symbol=BTC) == ["s4", "s2", "s1"]
    assert await names(position_side=SHORT) == ["s2"]
    assert await names(position_side=LONG) == ["s4", "s3", "s1"]
    assert await names(active_only=True) == ["s3", "s1"]
    assert await names(statuses=[CANCELED]) == ["s2"]
    assert await names(statuses=[TRIGGERED, CANCELED]) == ["s4", "s2"]
    assert await names(statuses=[PENDING, ACTIVE]) == ["s3", "s1"]
    assert await names(exchange="paper", symbol=BTC, position_side=LONG, active_only=True) == ["s1"]
    assert await names(page_size=1) == ["s4", "s3", "s2", "s1"]
    assert await names(page_size=3) == ["s4", "s3", "s2", "s1"]
    assert await names(page_size=1, active_only=True) == ["s3", "s1"]

    first = await oms.trailing_stops.ListTrailingStops(
        tpb.ListTrailingStopsRequest(user_id=user, page_size=3)
    )
    assert len(first.trailing_stops) == 3
    assert first.next_page_token
    last = await oms.trailing_stops.ListTrailingStops(
        tpb.ListTrailingStopsRequest(user_id=user, page_size=3, page_token=first.next_page_token)
    )
    assert [s.trailing_stop_id for s in last.trailing_stops] == [s1.trailing_stop_id]
    assert last.next_page_token == ""
    whole = await oms.trailing_stops.ListTrailingStops(tpb.ListTrailingStopsRequest(user_id=user))
    assert len(whole.trailing_stops) == 4
    assert whole.next_page_token == ""
    assert await list_stops(oms, new_user()) == []


# --- the event stream ----------------------------------------------------------------------------


async def test_the_event_stream_of_the_activation_example(oms: OmsHarness) -> None:
    user = new_user()
    await publish(oms, "50000")
    await open_side(oms, user)
    stream = stop_stream(oms, user)
    await stream.until_live()

    stop = await create_stop(oms, user, callback_rate="0.01", activation_price="52000")
    for price in ("49000", "52000", "53500", "53000", "52965.01", "52965"):
        await publish(oms, price)
    events = await stream.events(4)
    assert [e.event_type for e in events] == [
        CREATED,
        ACTIVATED,
        STOP_PRICE_UPDATED,
        TRIGGERED_EVENT,
    ]
    assert [figures(e.trailing_stop) for e in events] == [
        (PENDING, "", ""),
        (ACTIVE, "52000", "51480"),
        (ACTIVE, "53500", "52965"),
        (TRIGGERED, "53500", "52965"),
    ]
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences))
    assert all(e.trailing_stop.trailing_stop_id == stop.trailing_stop_id for e in events)
    assert events[0].trailing_stop == stop
    assert events[-1].trailing_stop == await get_stop(oms, user, stop.trailing_stop_id)
    assert events[-1].trailing_stop.triggered_price == "52965"

    # Nothing after TRIGGERED for that stop (no CANCELED for its own close): the next event is
    # the next stop's creation.
    await publish(oms, "50000")
    await open_side(oms, user)
    following = await create_stop(oms, user, callback_rate="0.02")
    [created] = await stream.events(1)
    assert created.event_type == CREATED
    assert created.trailing_stop == following
    assert created.sequence > sequences[-1]
    stream.cancel()


async def test_a_watermark_move_that_keeps_the_rounded_stop_sends_no_event(
    oms: OmsHarness,
) -> None:
    user, stop = await long_with_stop(oms)
    stream = stop_stream(oms, user)
    await stream.until_live()
    await publish(oms, "100.49")  # stop 98.49: an event
    await publish(oms, "100.5")  # watermark 100.5, stop still 98.49: no event
    await publish(oms, "99")  # no change: no event
    await publish(oms, "101")  # stop 98.98: an event
    events = await stream.events(2)
    assert [(e.event_type, figures(e.trailing_stop)) for e in events] == [
        (STOP_PRICE_UPDATED, (ACTIVE, "100.49", "98.49")),
        (STOP_PRICE_UPDATED, (ACTIVE, "101", "98.98")),
    ]
    assert events[1].trailing_stop == await get_stop(oms, user, stop.trailing_stop_id)
    stream.cancel()


async def test_list_then_stream_from_as_of_sequence_misses_nothing(oms: OmsHarness) -> None:
    user, stop = await long_with_stop(oms)
    listing = await oms.trailing_stops.ListTrailingStops(tpb.ListTrailingStopsRequest(user_id=user))
    assert list(listing.trailing_stops) == [stop]
    assert listing.as_of_sequence > 0

    await publish(oms, "101")  # between the snapshot and the subscription
    stream = stop_stream(oms, user, after=listing.as_of_sequence)
    await publish(oms, "102")
    events = await stream.events(2)
    assert [(e.event_type, figures(e.trailing_stop)) for e in events] == [
        (STOP_PRICE_UPDATED, (ACTIVE, "101", "98.98")),
        (STOP_PRICE_UPDATED, (ACTIVE, "102", "99.96")),
    ]
    assert listing.as_of_sequence < events[0].sequence < events[1].sequence
    stream.cancel()

    again = await oms.trailing_stops.ListTrailingStops(tpb.ListTrailingStopsRequest(user_id=user))
    assert again.as_of_sequence >= events[1].sequence
    assert list(again.trailing_stops) == [events[1].trailing_stop]

    # Replay from before the creation includes the CREATED event, within the snapshot.
    replay = stop_stream(oms, user, after=1)
    replayed = await replay.events(3)
    assert [e.event_type for e in replayed] == [CREATED, STOP_PRICE_UPDATED, STOP_PRICE_UPDATED]
    assert replayed[0].sequence <= listing.as_of_sequence
    assert replayed[1:] == events
    replay.cancel()


async def test_the_stream_filters_by_symbol_and_never_carries_another_users_stops(
    oms: OmsHarness,
) -> None:
    user, other = new_user(), new_user()
    await ticks(oms, {BTC: "100", ETH: "3000"})
    for who in (user, other):
        await open_side(oms, who, LONG, BTC)
        await open_side(oms, who, LONG, ETH, quantity="1")
    stream = stop_stream(oms, user, exchange="paper", symbol="ETH-USDT-SWAP")
    await stream.until_live()
    await create_stop(oms, other, symbol=ETH)
    await create_stop(oms, user, symbol=BTC)
    eth = await create_stop(oms, user, symbol=ETH)
    [created] = await stream.events(1)
    assert created.trailing_stop == eth
    assert created.trailing_stop.symbol == ETH
    stream.cancel()


async def test_a_resume_point_beyond_the_newest_event_is_out_of_range(oms: OmsHarness) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user)
    await create_stop(oms, user)
    listing = await oms.trailing_stops.ListTrailingStops(tpb.ListTrailingStopsRequest(user_id=user))
    stream = stop_stream(oms, user, after=listing.as_of_sequence + 1000)
    await expect_code(stream.next_message(), grpc.StatusCode.OUT_OF_RANGE)


# --- bad input -----------------------------------------------------------------------------------

MB = "9" * (1 << 20)

# With the last price at 100 and a LONG of 0.01 open.
BAD_CREATES: list[tuple[str, dict[str, Any]]] = [
    ("user_id", {"user_id": ""}),
    ("user_id", {"user_id": "bad user!"}),
    ("user_id", {"user_id": "u" * 65}),
    ("exchange", {"exchange": "nosuchexchange"}),
    ("exchange", {"exchange": ""}),
    ("symbol", {"symbol": "DOGE/USDT:USDT"}),
    ("symbol", {"symbol": ""}),
    ("symbol", {"symbol": MB}),
    ("position_side", {"position_side": S.POSITION_SIDE_UNSPECIFIED}),
    ("position_side", {"position_side": 7}),
    ("callback_rate", {"callback_rate": None}),  # neither callback
    ("callback_rate", {"callback_rate": ""}),
    ("callback_rate", {"callback_rate": "abc"}),
    ("callback_rate", {"callback_rate": "NaN"}),
    ("callback_rate", {"callback_rate": "Infinity"}),
    ("callback_rate", {"callback_rate": "-0.01"}),
    ("callback_rate", {"callback_rate": "0"}),
    ("callback_rate", {"callback_rate": "1e-2"}),  # not plain, as quantity "1e3" in orders
    ("callback_rate", {"callback_rate": " 0.02"}),
    ("callback_rate", {"callback_rate": "0.0009"}),
    ("callback_rate", {"callback_rate": "0.11"}),
    ("callback_rate", {"callback_rate": MB}),
    ("callback_spread", {"callback_spread": "0"}),
    ("callback_spread", {"callback_spread": "-1"}),
    ("callback_spread", {"callback_spread": ""}),
    ("callback_spread", {"callback_spread": "abc"}),
    ("callback_spread", {"callback_spread": "NaN"}),
    ("callback_spread", {"callback_spread": "1e1"}),
    ("activation_price", {"activation_price": "100.001"}),  # off the 0.01 tick
    ("activation_price", {"activation_price": "0"}),
    ("activation_price", {"activation_price": "-105"}),
    ("activation_price", {"activation_price": "abc"}),
    ("activation_price", {"activation_price": "Infinity"}),
    ("activation_price", {"activation_price": "1.05e2"}),
    ("quantity", {"quantity": "0.0001"}),  # below the 0.001 minimum
    ("quantity", {"quantity": "0.0015"}),  # off the 0.001 step
    ("quantity", {"quantity": "0"}),
    ("quantity", {"quantity": "-0.01"}),
    ("quantity", {"quantity": "abc"}),
    ("quantity", {"quantity": "NaN"}),
    ("client_id", {"client_id": "bad id!"}),
    ("client_id", {"client_id": "c" * 65}),
    ("client_id", {"client_id": MB}),
]


@pytest.mark.parametrize(
    ("field", "change"), BAD_CREATES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_CREATES)]
)
async def test_bad_create_is_invalid_argument_naming_the_field_and_leaves_no_state(
    oms: OmsHarness, redis_url: str, field: str, change: dict[str, Any]
) -> None:
    user = new_user()
    await publish(oms, "100")
    await open_side(oms, user)
    before = await redis_snapshot(redis_url)
    request = create_request(**{"user_id": user, **change})
    await expect_invalid(oms.trailing_stops.CreateTrailingStop(request), field)
    assert await redis_snapshot(redis_url) == before


BAD_LISTS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("user_id",), {"user_id": ""}),
    (("user_id",), {"user_id": "u" * 65}),
    (("exchange",), {"exchange": "nosuchexchange"}),
    (("symbol",), {"exchange": "paper", "symbol": "DOGE/USDT:USDT"}),
    (("exchange", "symbol"), {"symbol": BTC}),  # a symbol needs its exchange
    (("position_side",), {"position_side": 9}),
    (("statuses", "statuses[0]"), {"statuses": [T.TRAILING_STOP_STATUS_UNSPECIFIED]}),
    (("statuses", "statuses[1]"), {"statuses": [T.TRAILING_STOP_STATUS_ACTIVE, 42]}),
    (("page_size",), {"page_size": -1}),
    (("page_token",), {"page_token": "not-a-token"}),
]


@pytest.mark.parametrize(
    ("fields", "request_fields"),
    BAD_LISTS,
    ids=[f"{f[0]}-{i}" for i, (f, _) in enumerate(BAD_LISTS)],
)
async def test_bad_list_names_the_field(
    oms: OmsHarness, fields: tuple[str, ...], request_fields: dict[str, Any]
) -> None:
    await expect_invalid(
        oms.trailing_stops.ListTrailingStops(
            tpb.ListTrailingStopsRequest(**{"user_id": new_user(), **request_fields})
        ),
        *fields,
    )


BAD_ID_REQUESTS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("user_id",), {"user_id": "", "trailing_stop_id": UNKNOWN_ID}),
    (("user_id",), {"user_id": "bad user!", "trailing_stop_id": UNKNOWN_ID}),
    (("client_id",), {"client_id": "bad id!"}),
    (("client_id",), {"client_id": "c" * 65}),
]


@pytest.mark.parametrize(
    ("fields", "request_fields"),
    BAD_ID_REQUESTS,
    ids=[f"{f[0]}-{i}" for i, (f, _) in enumerate(BAD_ID_REQUESTS)],
)
async def test_bad_get_and_cancel_name_the_field(
    oms: OmsHarness, fields: tuple[str, ...], request_fields: dict[str, Any]
) -> None:
    values = {"user_id": new_user(), **request_fields}
    await expect_invalid(
        oms.trailing_stops.GetTrailingStop(tpb.GetTrailingStopRequest(**values)), *fields
    )
    await expect_invalid(
        oms.trailing_stops.CancelTrailingStop(tpb.CancelTrailingStopRequest(**values)), *fields
    )


@pytest.mark.parametrize(
    ("fields", "request_fields"),
    BAD_STREAM_FILTERS,
    ids=[f"{f[0]}-{i}" for i, (f, _) in enumerate(BAD_STREAM_FILTERS)],
)
async def test_bad_stream_request_names_the_field(
    oms: OmsHarness, fields: tuple[str, ...], request_fields: dict[str, Any]
) -> None:
    call = oms.trailing_stops.StreamTrailingStopEvents(
        tpb.StreamTrailingStopEventsRequest(**{"user_id": new_user(), **request_fields})
    )
    reader: StreamReader[T.TrailingStopEvent] = StreamReader(call, "trailing_stop_event")
    await expect_invalid(reader.next_message(), *fields)


# --- the close order's client order id ------------------------------------------------------


async def test_the_close_orders_client_order_id_is_not_for_callers_to_take(
    oms: OmsHarness,
) -> None:
    # Taken, it kept the stop's close order from being placed, and every tick of the symbol
    # failed, for every user on it.
    user, stop = await long_with_stop(oms)
    other = new_user()
    await expect_invalid(
        place(oms, user_id=user, client_order_id=f"ts-{stop.trailing_stop_id}"),
        "client_order_id",
    )
    resting = await place(oms, user_id=other, type=S.ORDER_TYPE_LIMIT, price="97", quantity="0.01")

    await publish(oms, "97")

    await assert_close_order(oms, await get_stop(oms, user, stop.trailing_stop_id), quantity="0.01")
    assert (await get_order(oms, other, resting.order_id)).status == S.ORDER_STATUS_FILLED


async def test_a_close_orders_id_taken_before_such_ids_were_refused_fails_the_tick_clearly(
    oms: OmsHarness,
) -> None:
    user, stop = await long_with_stop(oms)
    taken = replace(
        new_order(),
        order_id="01KAQZ3V9Q6R8W2M4N5P7T0XYZ",
        client_order_id=f"ts-{stop.trailing_stop_id}",
        user_id=user,
        status=OrderStatus.CANCELED,
    )
    events = [OrderUpdated(OrderEventType.CANCELED, taken)]
    assert await oms.app.store.commit([OrderChange(taken, None, events)])

    message = await expect_code(publish(oms, "97"), FAILED_PRECONDITION)

    assert f"is taken by order {taken.order_id}" in message

    assert (await get_stop(oms, user, stop.trailing_stop_id)).status == ACTIVE


async def test_a_trigger_is_sequenced_after_its_close_order_and_before_the_position(
    oms: OmsHarness,
) -> None:
    user, stop = await long_with_stop(oms)
    store = oms.app.store
    _, before = await store.sequence_bounds(user)
    await publish(oms, "97.9")  # through its stop, 98
    kinds = [type(item.event) for item in await store.read_events(user, before, 100)]
    triggered = kinds.index(TrailingStopUpdated)
    # The close order's creation and fill, then the trigger naming it, then the position.
    assert set(kinds[:triggered]) == {OrderUpdated, FillRecorded}
    assert kinds[triggered + 1 :] == [PositionUpdated]
    assert figures(await get_stop(oms, user, stop.trailing_stop_id))[0] == TRIGGERED
