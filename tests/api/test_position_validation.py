"""Bad input to the position RPCs and FindOpenOrders: INVALID_ARGUMENT naming the field,
and a refused mutation leaves no state behind."""

from __future__ import annotations

from typing import Any

import pytest
from fixtures.oms_server import OmsHarness
from fixtures.positions import (
    LONG,
    SHORT,
    check_invariants,
    close_request,
    expect_invalid,
    open_request,
    position_stream,
    redis_snapshot,
)
from fixtures.streams import BAD_STREAM_FILTERS
from fixtures.trading import BTC, USER, place, tick
from tradingboost.oms.v1 import order_pb2
from tradingboost.oms.v1 import order_service_pb2 as opb
from tradingboost.oms.v1 import position_service_pb2 as ppb

S = order_pb2
MB = "9" * (1 << 20)
LIMIT = {"type": S.ORDER_TYPE_LIMIT, "price": "49500"}

# With the last price at 50000.
BAD_OPENS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("user_id",), {"user_id": ""}),
    (("user_id",), {"user_id": "bad user!"}),
    (("user_id",), {"user_id": MB}),
    (("exchange",), {"exchange": "nosuchexchange"}),
    (("exchange",), {"exchange": ""}),
    (("symbol",), {"symbol": "DOGE/USDT:USDT"}),
    (("symbol",), {"symbol": ""}),
    (("position_side",), {"position_side": S.POSITION_SIDE_UNSPECIFIED}),
    (("position_side",), {"position_side": 7}),
    (("type",), {"type": S.ORDER_TYPE_UNSPECIFIED}),
    (("type",), {"type": S.ORDER_TYPE_STOP_MARKET}),
    (("type",), {"type": S.ORDER_TYPE_TAKE_PROFIT_MARKET}),
    (("type",), {"type": S.ORDER_TYPE_STOP_LIMIT, "price": "49500"}),
    (("type",), {"type": 42}),
    (("quantity",), {"quantity": "0"}),
    (("quantity",), {"quantity": "-1"}),
    (("quantity",), {"quantity": ""}),
    (("quantity",), {"quantity": "abc"}),
    (("quantity",), {"quantity": "0.0015"}),
    (("quantity",), {"quantity": "0.0001"}),
    (("price",), {"type": S.ORDER_TYPE_LIMIT}),
    (("price",), {"price": "49500"}),  # on a MARKET entry
    (("price",), {"type": S.ORDER_TYPE_LIMIT, "price": "49500.001"}),
    (("price",), {"type": S.ORDER_TYPE_LIMIT, "price": "0"}),
    (("stop_loss_price",), {"stop_loss_price": "0"}),
    (("stop_loss_price",), {"stop_loss_price": "abc"}),
    (("stop_loss_price",), {"stop_loss_price": "49000.001"}),
    (("take_profit_price",), {"take_profit_price": "-51000"}),
    (("take_profit_price",), {"take_profit_price": "51000.005"}),
    # Wrong side of the entry: LONG needs stop_loss < entry < take_profit.
    (("stop_loss_price",), {"stop_loss_price": "50000"}),
    (("stop_loss_price",), {"stop_loss_price": "50100", "take_profit_price": "51000"}),
    (("take_profit_price",), {"take_profit_price": "50000"}),
    (("take_profit_price",), {"take_profit_price": "49000", "stop_loss_price": "48000"}),
    # A LIMIT entry is judged against its limit price, not the last price.
    (("stop_loss_price",), {**LIMIT, "stop_loss_price": "49600"}),
    (("take_profit_price",), {**LIMIT, "take_profit_price": "49400"}),
    # A LIMIT entry that crosses fills at once at the last price: judged against that.
    (
        ("stop_loss_price",),
        {
            "type": S.ORDER_TYPE_LIMIT,
            "price": "51000",
            "stop_loss_price": "50500",
            "take_profit_price": "52000",
        },
    ),
    (
        ("stop_loss_price",),
        {
            "position_side": SHORT,
            "type": S.ORDER_TYPE_LIMIT,
            "price": "49000",
            "stop_loss_price": "49500",
        },
    ),
    # SHORT: the mirror.
    (("stop_loss_price",), {"position_side": SHORT, "stop_loss_price": "49000"}),
    (("stop_loss_price",), {"position_side": SHORT, "stop_loss_price": "50000"}),
    (("take_profit_price",), {"position_side": SHORT, "take_profit_price": "51000"}),
    (
        ("take_profit_price",),
        {
            "position_side": SHORT,
            "type": S.ORDER_TYPE_LIMIT,
            "price": "50500",  # rests: a sell above the last price
            "take_profit_price": "50600",
        },
    ),
    (("leverage",), {"leverage": 0}),
    (("leverage",), {"leverage": 126}),
    (("grid_level",), {"grid_level": 21}),
    (("client_order_id",), {"client_order_id": "bad id!"}),
    (("client_order_id",), {"client_order_id": "c" * 65}),
    (("client_order_id",), {"client_order_id": "tp-01KAQZ3V9Q6R8W2M4N5P7T0XYZ"}),  # an exit's id
    (("time_in_force",), {"time_in_force": S.TIME_IN_FORCE_POST_ONLY}),  # on a MARKET entry
    (("time_in_force",), {"time_in_force": 9}),
    (("strategy",), {"strategy": "s" * 65}),
    (("metadata",), {"metadata": {f"k{i}": "v" for i in range(33)}}),
    (("strategy",), {"strategy": "grid\x00"}),
    (("metadata[note]",), {"metadata": {"note": "a\x00b"}}),
]


@pytest.mark.parametrize(
    ("fields", "change"), BAD_OPENS, ids=[f"{f[0]}-{i}" for i, (f, _) in enumerate(BAD_OPENS)]
)
async def test_bad_open_position_is_invalid_argument_and_leaves_no_state(
    oms: OmsHarness, redis_url: str, fields: tuple[str, ...], change: dict[str, Any]
) -> None:
    await tick(oms, "50000")
    before = await redis_snapshot(redis_url)
    valid = {"take_profit_price": "51000", "stop_loss_price": "49000"}
    if change.get("position_side") == SHORT:
        valid = {"take_profit_price": "49000", "stop_loss_price": "51000"}
    await expect_invalid(oms.positions.OpenPosition(open_request(**{**valid, **change})), *fields)
    assert await redis_snapshot(redis_url) == before


BAD_CLOSES: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("user_id",), {"user_id": ""}),
    (("user_id",), {"user_id": "bad user!"}),
    (("exchange",), {"exchange": "nosuchexchange"}),
    (("exchange",), {"exchange": ""}),
    (("symbol",), {"symbol": "DOGE/USDT:USDT"}),
    (("symbol",), {"symbol": ""}),
    (("position_side",), {"position_side": S.POSITION_SIDE_UNSPECIFIED}),
    (("position_side",), {"position_side": 7}),
    (("quantity",), {"quantity": "0"}),
    (("quantity",), {"quantity": "-0.01"}),
    (("quantity",), {"quantity": "abc"}),
    (("quantity",), {"quantity": "0.0015"}),
    (("quantity",), {"quantity": "0.0001"}),
    (("quantity",), {"quantity": MB}),
    (("client_order_id",), {"client_order_id": "bad id!"}),
    (("client_order_id",), {"client_order_id": "c" * 65}),
    (("client_order_id",), {"client_order_id": "sl-01KAQZ3V9Q6R8W2M4N5P7T0XYZ"}),  # an exit's id
]


@pytest.mark.parametrize(
    ("fields", "change"), BAD_CLOSES, ids=[f"{f[0]}-{i}" for i, (f, _) in enumerate(BAD_CLOSES)]
)
async def test_bad_close_position_is_invalid_argument_and_leaves_no_state(
    oms: OmsHarness, redis_url: str, fields: tuple[str, ...], change: dict[str, Any]
) -> None:
    await tick(oms, "50000")
    await place(oms, quantity="0.02")
    before = await redis_snapshot(redis_url)
    await expect_invalid(oms.positions.ClosePosition(close_request(**change)), *fields)
    assert await redis_snapshot(redis_url) == before
    await check_invariants(oms)


SIDE = {"exchange": "paper", "symbol": BTC, "position_side": LONG}
BAD_GETS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("user_id",), {"user_id": "", **SIDE}),
    (("user_id",), {"user_id": "bad user!", "position_id": "01J00000000000000000000000"}),
    (("position_id", "exchange"), {"user_id": USER}),  # neither way of naming it
    (("position_id",), {"user_id": USER, "position_id": "01J00000000000000000000000", **SIDE}),
    (("exchange",), {"user_id": USER, **SIDE, "exchange": "nosuchexchange"}),
    (("symbol",), {"user_id": USER, **SIDE, "symbol": "DOGE/USDT:USDT"}),
    (("symbol",), {"user_id": USER, **SIDE, "symbol": ""}),
    (("position_side",), {"user_id": USER, **SIDE, "position_side": 0}),
    (("position_side",), {"user_id": USER, **SIDE, "position_side": 9}),
]


@pytest.mark.parametrize(
    ("fields", "request_fields"),
    BAD_GETS,
    ids=[f"{f[0]}-{i}" for i, (f, _) in enumerate(BAD_GETS)],
)
async def test_bad_get_position_names_the_field(
    oms: OmsHarness, fields: tuple[str, ...], request_fields: dict[str, Any]
) -> None:
    await expect_invalid(
        oms.positions.GetPosition(ppb.GetPositionRequest(**request_fields)), *fields
    )


BAD_LISTS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("user_id",), {"user_id": ""}),
    (("user_id",), {"user_id": "u" * 65}),
    (("exchange",), {"exchange": "nosuchexchange"}),
    (("symbol",), {"exchange": "paper", "symbol": "DOGE/USDT:USDT"}),
    (("exchange", "symbol"), {"symbol": BTC}),  # a symbol needs its exchange
    (("position_side",), {"position_side": 9}),
    (("page_size",), {"page_size": -1}),
    (("page_token",), {"page_token": "not-a-token"}),
]


@pytest.mark.parametrize(
    ("fields", "request_fields"),
    BAD_LISTS,
    ids=[f"{f[0]}-{i}" for i, (f, _) in enumerate(BAD_LISTS)],
)
async def test_bad_list_positions_names_the_field(
    oms: OmsHarness, fields: tuple[str, ...], request_fields: dict[str, Any]
) -> None:
    await expect_invalid(
        oms.positions.ListPositions(
            ppb.ListPositionsRequest(**{"user_id": USER, **request_fields})
        ),
        *fields,
    )


@pytest.mark.parametrize(
    ("fields", "request_fields"),
    BAD_STREAM_FILTERS,
    ids=[f"{f[0]}-{i}" for i, (f, _) in enumerate(BAD_STREAM_FILTERS)],
)
async def test_bad_stream_positions_names_the_field(
    oms: OmsHarness, fields: tuple[str, ...], request_fields: dict[str, Any]
) -> None:
    values = {"user_id": USER, **request_fields}
    stream = position_stream(oms, **values)
    await expect_invalid(stream.next_message(), *fields)


BAD_FINDS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("user_id",), {"user_id": "", "grid_level": 1}),
    (("user_id",), {"user_id": "bad user!", "grid_level": 1}),
    (("exchange",), {"exchange": "nosuchexchange", "grid_level": 1}),
    (("exchange",), {"exchange": "", "grid_level": 1}),
    (("symbol",), {"symbol": "DOGE/USDT:USDT", "grid_level": 1}),
    (("symbol",), {"symbol": "", "grid_level": 1}),
    # A real exchange whose markets are not loaded: a market id cannot be unified.
    (("symbol",), {"exchange": "okx", "symbol": "BTC-USDT-SWAP", "grid_level": 1}),
    (("grid_level", "price"), {}),  # neither a level nor a price window
    (("grid_level", "price"), {"side": S.SIDE_BUY}),
    (("price_tolerance", "price"), {"price": "48000"}),
    (("price_tolerance", "price"), {"price_tolerance": "50"}),
    (("price_tolerance", "price"), {"grid_level": 1, "price_tolerance": "50"}),
    (("price",), {"price": "0", "price_tolerance": "50"}),
    (("price",), {"price": "-48000", "price_tolerance": "50"}),
    (("price",), {"price": "abc", "price_tolerance": "50"}),
    (("price_tolerance",), {"price": "48000", "price_tolerance": "-1"}),
    (("price_tolerance",), {"price": "48000", "price_tolerance": "x"}),
    (("grid_level",), {"grid_level": 21}),
    (("side",), {"grid_level": 1, "side": 9}),
]


@pytest.mark.parametrize(
    ("fields", "request_fields"),
    BAD_FINDS,
    ids=[f"{f[0]}-{i}" for i, (f, _) in enumerate(BAD_FINDS)],
)
async def test_bad_find_open_orders_names_the_field(
    oms: OmsHarness, fields: tuple[str, ...], request_fields: dict[str, Any]
) -> None:
    values: dict[str, Any] = {"user_id": USER, "exchange": "paper", "symbol": BTC}
    values.update(request_fields)
    await expect_invalid(oms.orders.FindOpenOrders(opb.FindOpenOrdersRequest(**values)), *fields)
