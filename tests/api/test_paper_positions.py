"""The paper exchange holds only open positions: in its desks' memory and in its recovery set
in Redis (what a start loads). A closed record lives on in the store, where GetPosition,
ListPositions and StreamPositions read it; the side's next fill opens a new record.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.positions import (
    LONG,
    SHORT,
    check_invariants,
    close_position,
    expect_code,
    position,
    position_by_id,
    position_stream,
)
from fixtures.trading import BTC, USER, place, tick
from tradingboost.oms.v1 import order_pb2, position_pb2
from tradingboost.oms.v1 import position_service_pb2 as ppb

from oms.adapters.redis_store import keys
from oms.domain.orders import PositionSide

S = order_pb2
P = position_pb2

RECOVERY_SET = keys.exchange_positions("paper")


def desk_records(oms: OmsHarness) -> dict[tuple[str, PositionSide], str]:
    """(user, side) -> position id of each record the BTC desk holds in memory."""
    desk = oms.app.paper._desk(BTC)
    return {slot: record.position_id for slot, record in desk.positions.items()}


# The awaits' `type: ignore[misc]`: redis-py types its asyncio client with sync return types.


async def recovery_set(oms: OmsHarness) -> set[str]:
    members = await oms.app.store.redis.smembers(RECOVERY_SET)  # type: ignore[misc]
    return {member.decode() for member in members}


async def leave_closed_side_in_set(oms: OmsHarness, user_id: str) -> None:
    """What versions before closes left the set held: a member for every side ever traded."""
    await oms.app.store.redis.sadd(RECOVERY_SET, member(user_id))  # type: ignore[misc]


def member(user_id: str, side: PositionSide = PositionSide.LONG) -> str:
    return f"{user_id}|paper|{BTC}|{side.value}"


async def test_only_open_positions_stay_in_the_desk_and_the_recovery_set(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    users = [f"u{n}" for n in range(5)]
    for user in users:
        await place(oms, user_id=user)
    await place(oms, user_id="u4", side=S.SIDE_SELL, position_side=SHORT)
    for user in users[:3]:
        await close_position(oms, user_id=user)
    closed = [await position(oms, user_id=user) for user in users[:3]]
    assert {record.status for record in closed} == {P.POSITION_STATUS_CLOSED}

    still_open = {
        ("u3", PositionSide.LONG): (await position(oms, user_id="u3")).position_id,
        ("u4", PositionSide.LONG): (await position(oms, user_id="u4")).position_id,
        ("u4", PositionSide.SHORT): (await position(oms, SHORT, user_id="u4")).position_id,
    }
    assert desk_records(oms) == still_open
    assert await recovery_set(oms) == {member(user, side) for user, side in still_open}

    # A tick marks the open records and leaves the closed ones as they closed.
    await tick(oms, "51000")
    assert (await position(oms, user_id="u3")).mark_price == "51000"
    assert [await position(oms, user_id=user) for user in users[:3]] == closed
    for user in users:
        await check_invariants(oms, user)


async def test_a_side_closed_and_opened_again_gets_a_new_record_in_memory_and_in_the_set(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    opening = await place(oms)
    first = await position(oms)
    await tick(oms, "51000")
    closing = await close_position(oms)
    # An order names the record its fills went into.
    assert opening.position_id == closing.position_id == first.position_id
    closed = await position_by_id(oms, first.position_id)
    assert (closed.status, closed.realized_pnl) == (P.POSITION_STATUS_CLOSED, "10")
    assert desk_records(oms) == {}
    assert await recovery_set(oms) == set()

    await tick(oms, "52000")
    reopening = await place(oms, quantity="0.02")
    second = await position(oms)
    assert reopening.position_id == second.position_id != first.position_id
    assert (second.status, second.size, second.entry_price) == (
        P.POSITION_STATUS_OPEN,
        "0.02",
        "52000",
    )
    assert second.realized_pnl == "0"
    assert await position_by_id(oms, first.position_id) == closed
    assert desk_records(oms) == {(USER, PositionSide.LONG): second.position_id}
    assert await recovery_set(oms) == {member(USER)}
    # Hedge mode sizes a reduction from the new record, not the closed one.
    await expect_code(
        place(oms, side=S.SIDE_SELL, position_side=LONG, quantity="0.03"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await check_invariants(oms)


async def test_a_side_that_closes_and_opens_again_on_one_tick_writes_both_records(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    await place(oms)
    first = await position(oms)
    # Placed in this order, so the tick fills the exit first and the stop next.
    await place(oms, side=S.SIDE_SELL, position_side=LONG, type=S.ORDER_TYPE_LIMIT, price="51000")
    await place(oms, type=S.ORDER_TYPE_STOP_MARKET, stop_price="51000")
    stream = position_stream(oms)
    await stream.until_live()

    await tick(oms, "51000")

    closed, opened = [update.position for update in await stream.events(2)]
    assert (closed.position_id, closed.status) == (first.position_id, P.POSITION_STATUS_CLOSED)
    assert closed.realized_pnl == "10"
    assert opened.position_id != first.position_id
    assert (opened.status, opened.size, opened.entry_price, opened.realized_pnl) == (
        P.POSITION_STATUS_OPEN,
        "0.01",
        "51000",
        "0",
    )
    assert await position_by_id(oms, first.position_id) == closed
    assert await position(oms) == opened
    assert desk_records(oms) == {(USER, PositionSide.LONG): opened.position_id}
    assert await recovery_set(oms) == {member(USER)}
    await check_invariants(oms)


async def test_a_restart_loads_only_open_positions_and_forgets_closed_sides_left_in_the_set(
    redis_url: str,
) -> None:
    oms = await make_oms(redis_url)
    try:
        await tick(oms, "50000")
        for user in ("u0", "u1"):
            await place(oms, user_id=user)
        await close_position(oms, user_id="u0")
        closed = await position(oms, user_id="u0")
        kept = await position(oms, user_id="u1")
        await leave_closed_side_in_set(oms, "u0")
    finally:
        await oms.close()

    oms = await make_oms(redis_url)
    try:
        assert desk_records(oms) == {("u1", PositionSide.LONG): kept.position_id}
        assert await recovery_set(oms) == {member("u1")}
        assert await position(oms, user_id="u0") == closed
        await place(oms, user_id="u0")
        reopened = await position(oms, user_id="u0")
        assert reopened.position_id != closed.position_id
        assert (reopened.size, reopened.realized_pnl) == ("0.01", "0")
        await close_position(oms, user_id="u1")
        assert desk_records(oms) == {("u0", PositionSide.LONG): reopened.position_id}
        assert await recovery_set(oms) == {member("u0")}
        for user in ("u0", "u1"):
            await check_invariants(oms, user)
    finally:
        await oms.close()


async def test_a_side_that_opens_again_while_its_closed_record_is_forgotten_keeps_its_member(
    oms: OmsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await tick(oms, "50000")
    await place(oms)
    await close_position(oms)
    await leave_closed_side_in_set(oms, USER)
    store = oms.app.store
    forget = store._forget_closed_sides

    async def reopen_first(**script: Any) -> Any:
        # The side opens again between the read of its closed record and its removal.
        await place(oms)
        return await forget(**script)

    monkeypatch.setattr(store, "_forget_closed_sides", reopen_first)
    assert await store.open_positions_on("paper") == []
    assert await recovery_set(oms) == {member(USER)}
    assert desk_records(oms) == {(USER, PositionSide.LONG): (await position(oms)).position_id}
    await check_invariants(oms)


async def test_a_mark_rewrites_a_position_at_most_every_position_mark_interval_s(
    redis_url: str,
) -> None:
    # Ticks move the mark; only a fill rewrites the position within the interval, and it
    # takes the mark of the moment. No event for the ticks between: history is kept.
    oms = await make_oms(redis_url, position_mark_interval_s=3600)
    try:
        await tick(oms, "50000")
        await place(oms)  # a market buy: fills at 50000
        opened = await position(oms)
        events = await newest_sequence(oms)
        for price in ("51000", "52000"):
            await tick(oms, price)
        assert await position(oms) == opened
        assert await newest_sequence(oms) == events
        await place(oms)
        grown = await position(oms)
        assert (grown.size, grown.mark_price, grown.unrealized_pnl) == ("0.02", "52000", "20")
        await check_invariants(oms, USER)
    finally:
        await oms.close()


async def newest_sequence(oms: OmsHarness) -> int:
    response = await oms.positions.ListPositions(ppb.ListPositionsRequest(user_id=USER))
    return response.as_of_sequence
