"""StreamPositions: coalesced updates, resume, list-then-watch, filters, heartbeats.

Absence of an update is shown deterministically: after the action that must publish nothing,
a later action publishes a known update, and the next event received must be that one.
"""

from __future__ import annotations

import grpc
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.positions import (
    ETH,
    LONG,
    SHORT,
    check_invariants,
    close_position,
    expect_code,
    list_positions,
    position,
    position_stream,
    ticks,
)
from fixtures.trading import BTC, USER, place, tick
from tradingboost.oms.v1 import order_pb2, position_pb2
from tradingboost.oms.v1 import position_service_pb2 as ppb

S = order_pb2
P = position_pb2


def figures(update: P.PositionUpdate) -> tuple[str, int, str, str, int]:
    p = update.position
    return (p.symbol, p.position_side, p.size, p.mark_price, p.status)


async def test_a_fill_at_placement_publishes_one_update_and_a_resting_order_none(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    stream = position_stream(oms)
    await stream.until_live()

    await place(oms, quantity="0.01")
    [opened] = await stream.events(1)
    assert figures(opened) == (BTC, LONG, "0.01", "50000", P.POSITION_STATUS_OPEN)
    assert opened.sequence > 0
    assert opened.position == await position(oms)

    await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000")  # rests: no position change
    await tick(oms, "50000")  # same price again: no change
    await tick(oms, "50100")  # the mark moves: one update
    [moved] = await stream.events(1)
    assert figures(moved) == (BTC, LONG, "0.01", "50100", P.POSITION_STATUS_OPEN)
    assert moved.position.unrealized_pnl == "1"
    assert moved.sequence > opened.sequence
    assert moved.position == await position(oms)
    stream.cancel()
    await check_invariants(oms)


async def test_one_tick_publishes_at_most_one_update_per_position(oms: OmsHarness) -> None:
    await ticks(oms, {BTC: "50000", ETH: "3000"})
    await place(oms, quantity="0.01")  # BTC long
    await place(oms, side=S.SIDE_SELL, quantity="0.01")  # BTC short
    await place(oms, symbol=ETH, side=S.SIDE_SELL, quantity="1")  # ETH short
    await place(oms, type=S.ORDER_TYPE_LIMIT, price="49000", quantity="0.01")
    await place(oms, type=S.ORDER_TYPE_LIMIT, price="48500", quantity="0.02")
    stream = position_stream(oms)
    await stream.until_live()

    # One call, two instruments; the BTC tick fills both resting buys of the long.
    await ticks(oms, {BTC: "48000", ETH: "2900"})
    updates = await stream.events(3)
    by_position = {(u.position.symbol, u.position.position_side): u for u in updates}
    assert set(by_position) == {(BTC, LONG), (BTC, SHORT), (ETH, SHORT)}
    long = by_position[BTC, LONG].position
    assert (long.size, long.entry_price, long.mark_price) == ("0.04", "49000", "48000")
    assert by_position[BTC, SHORT].position.unrealized_pnl == "20"  # (50000 - 48000) x 0.01
    assert by_position[ETH, SHORT].position.mark_price == "2900"
    assert len({u.sequence for u in updates}) == 3

    await ticks(oms, {BTC: "48000", ETH: "2900"})  # nothing changes: nothing published
    await tick(oms, "2901", symbol=ETH)
    [next_update] = await stream.events(1)
    assert figures(next_update) == (ETH, SHORT, "1", "2901", P.POSITION_STATUS_OPEN)
    assert next_update.sequence > max(u.sequence for u in updates)
    stream.cancel()
    await check_invariants(oms)


async def test_a_tick_that_closes_a_position_through_its_take_profit_publishes_one_update(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    await oms.positions.OpenPosition(
        ppb.OpenPositionRequest(
            user_id=USER,
            exchange="paper",
            symbol=BTC,
            position_side=LONG,
            type=S.ORDER_TYPE_MARKET,
            quantity="0.01",
            take_profit_price="51000",
            stop_loss_price="49000",
        )
    )
    stream = position_stream(oms)
    await stream.until_live()
    await tick(oms, "51000")
    [closed] = await stream.events(1)
    assert closed.position.status == P.POSITION_STATUS_CLOSED
    assert closed.position.realized_pnl == "10"
    await place(oms, quantity="0.02")  # a new record: the next update is its opening
    [reopened] = await stream.events(1)
    assert reopened.position.position_id != closed.position.position_id
    assert figures(reopened) == (BTC, LONG, "0.02", "51000", P.POSITION_STATUS_OPEN)
    stream.cancel()
    await check_invariants(oms)


async def test_resume_after_disconnect_replays_exactly_the_missed_updates(
    oms: OmsHarness,
) -> None:
    await tick(oms, "50000")
    stream = position_stream(oms)
    await stream.until_live()
    await place(oms, quantity="0.01")
    [seen] = await stream.events(1)
    stream.cancel()

    # While disconnected: four position changes, and three actions that change nothing.
    await tick(oms, "51000")
    await place(oms, quantity="0.01")
    await tick(oms, "51000")
    await place(oms, type=S.ORDER_TYPE_LIMIT, price="50000", quantity="0.01")
    await tick(oms, "52000")
    await place(oms, side=S.SIDE_SELL, reduce_only=True, quantity="0.02")
    await tick(oms, "52500")

    resumed = position_stream(oms, after=seen.sequence)
    replayed = await resumed.events(4)
    assert [figures(u) for u in replayed] == [
        (BTC, LONG, "0.01", "51000", P.POSITION_STATUS_OPEN),
        (BTC, LONG, "0.02", "51000", P.POSITION_STATUS_OPEN),
        (BTC, LONG, "0.02", "52000", P.POSITION_STATUS_OPEN),
        (BTC, LONG, "0", "52000", P.POSITION_STATUS_CLOSED),
    ]
    sequences = [u.sequence for u in replayed]
    assert sequences == sorted(set(sequences))
    assert sequences[0] > seen.sequence
    assert {u.position.position_id for u in replayed} == {seen.position.position_id}
    # The replay is complete: the live marker comes next, not another update.
    live = await resumed.next_message()
    assert live.WhichOneof("payload") == "heartbeat"
    assert live.heartbeat.latest_sequence >= sequences[-1]

    await place(oms, quantity="0.01")
    [later] = await resumed.events(1)
    assert later.sequence > sequences[-1]
    assert later.position.position_id != seen.position.position_id
    assert figures(later) == (BTC, LONG, "0.01", "52500", P.POSITION_STATUS_OPEN)
    resumed.cancel()
    await check_invariants(oms)


async def test_list_then_watch_misses_nothing_and_counts_nothing_twice(
    oms: OmsHarness,
) -> None:
    await ticks(oms, {BTC: "50000", ETH: "3000"})
    await place(oms, quantity="0.01")
    await place(oms, symbol=ETH, side=S.SIDE_SELL, quantity="1")
    snapshot = await oms.positions.ListPositions(ppb.ListPositionsRequest(user_id=USER))
    book = {p.position_id: p for p in snapshot.positions}
    assert len(book) == 2
    assert snapshot.as_of_sequence > 0

    # Changes between the snapshot and the watch: the stream must replay exactly these.
    await tick(oms, "51000")
    await place(oms, symbol=ETH, side=S.SIDE_SELL, quantity="1")
    await close_position(oms)
    stream = position_stream(oms, after=snapshot.as_of_sequence)
    for update in await stream.events(3):
        assert update.sequence > snapshot.as_of_sequence
        book[update.position.position_id] = update.position
    live = await stream.next_message()
    assert live.WhichOneof("payload") == "heartbeat"
    open_book = sorted(
        (p for p in book.values() if p.status == P.POSITION_STATUS_OPEN),
        key=lambda p: p.position_id,
    )
    now = sorted(await list_positions(oms.positions), key=lambda p: p.position_id)
    assert open_book == now
    assert [p.symbol for p in now] == [ETH]
    stream.cancel()
    await check_invariants(oms)


async def test_filters_deliver_only_their_instrument_and_users_are_isolated(
    oms: OmsHarness,
) -> None:
    await ticks(oms, {BTC: "50000", ETH: "3000"})
    eth = position_stream(oms, exchange="paper", symbol="ETH-USDT-SWAP")
    bob = position_stream(oms, user_id="bob")
    await eth.until_live()
    await bob.until_live()
    await place(oms, quantity="0.01")  # alice BTC
    await place(oms, symbol=ETH, quantity="1")  # alice ETH
    await place(oms, user_id="bob", side=S.SIDE_SELL, quantity="0.02")  # bob BTC
    [first] = await eth.events(1)
    assert (first.position.symbol, first.position.user_id) == (ETH, USER)
    [bobs] = await bob.events(1)
    assert (bobs.position.user_id, bobs.position.position_side) == ("bob", SHORT)
    assert bobs.position.size == "0.02"
    eth.cancel()
    bob.cancel()
    await check_invariants(oms)
    await check_invariants(oms, "bob")


async def test_resume_point_in_the_future_is_out_of_range(oms: OmsHarness) -> None:
    await tick(oms, "50000")
    await place(oms)
    live = position_stream(oms)
    newest = await live.until_live()
    live.cancel()
    stream = position_stream(oms, after=newest + 1000)
    details = await expect_code(stream.next_message(), grpc.StatusCode.OUT_OF_RANGE)
    assert f"newest sequence {newest}" in details
    await check_invariants(oms)


async def test_idle_position_stream_sends_heartbeats_with_the_latest_sequence(
    redis_url: str,
) -> None:
    oms = await make_oms(redis_url, heartbeat_interval_s=0.2)
    try:
        await tick(oms, "50000")
        await place(oms)
        assert (await position(oms)).size == "0.01"
        stream = position_stream(oms)
        latest = await stream.until_live()
        assert latest > 0
        beat = await stream.next_message(timeout_s=2)
        assert beat.WhichOneof("payload") == "heartbeat"
        assert beat.heartbeat.latest_sequence == latest
        stream.cancel()
        await check_invariants(oms)
    finally:
        await oms.close()
