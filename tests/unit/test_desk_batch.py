"""A desk's batch undoes, in memory, exactly what one refused decision recorded."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any, cast

from fixtures.domain import MARKET, new_order

from oms.domain.events import PositionUpdated
from oms.domain.orders import PositionSide
from oms.domain.positions import Position, PositionStatus, open_record
from oms.engine.paper_exchange import _Batch, _Desk, _Op, _RestingBook
from oms.engine.ports import OrderChange


class _DeskState:
    """The parts of a desk a batch touches."""

    def __init__(self) -> None:
        self.book = _RestingBook()
        self.positions: dict[Any, Any] = {}
        self.closed: dict[Any, Any] = {}


def test_rollback_to_a_mark_keeps_what_came_before_it() -> None:
    state = _DeskState()
    desk = cast(_Desk, state)
    owner = cast(_Op, object())
    batch = _Batch()
    kept = new_order()
    batch.put(state.book, kept)
    batch.add(owner, OrderChange(kept, None, []))
    batch.new_client_ids[("order", "u1", "c1")] = None

    mark = batch.mark()
    later = replace(new_order(), order_id="O2", client_order_id="c2")
    batch.put(state.book, later)
    batch.add(owner, OrderChange(later, None, []))
    batch.new_client_ids[("order", "u1", "c2")] = None
    position = open_record("P1", "u1", MARKET, PositionSide.LONG, 1)
    batch.set_position(desk, ("u1", PositionSide.LONG), replace(position, size=Decimal(1)))
    batch.rollback(desk, to=mark)

    assert state.book.orders() == [kept]
    assert [change.order for change in batch.changes] == [kept]
    assert batch.owners == [owner]
    assert list(batch.new_client_ids) == [("order", "u1", "c1")]
    assert state.positions == {}
    assert batch.touched == {}
    assert batch.mark() == mark

    batch.rollback(desk)
    assert state.book.orders() == []
    assert batch.changes == []


SLOT = ("u1", PositionSide.LONG)


def long_of_size(position_id: str, size: int) -> Position:
    return replace(open_record(position_id, "u1", MARKET, PositionSide.LONG, 1), size=Decimal(size))


def test_a_side_that_closes_and_opens_again_writes_both_records_and_keeps_the_open_one() -> None:
    state = _DeskState()
    desk = cast(_Desk, state)
    batch = _Batch()
    first = long_of_size("P1", 1)
    state.positions[SLOT] = first
    marked = first.mark(Decimal(101), 2)
    batch.set_position(desk, SLOT, marked)

    mark = batch.mark()
    closed = replace(marked, status=PositionStatus.CLOSED, size=Decimal(0), closed_at_ns=3)
    batch.set_position(desk, SLOT, closed)
    assert state.positions == {}
    assert state.closed == {SLOT: closed}  # the side reopens at its leverage
    second = long_of_size("P2", 2)
    batch.set_position(desk, SLOT, second)

    assert state.positions == {SLOT: second}
    batch.op_decided()
    assert batch.all_updates() == [PositionUpdated(closed), PositionUpdated(second)]

    batch.rollback(desk, to=mark)
    assert state.positions == {SLOT: marked}
    assert state.closed == {}
    batch.op_decided()
    assert batch.all_updates() == [PositionUpdated(marked)]


def test_one_op_s_changes_to_a_position_make_one_update_and_each_op_its_own() -> None:
    # A tick's fills on one position are one update; two orders filling on it in one commit
    # are two: every change the position went through is streamed.
    desk, batch = cast(_Desk, _DeskState()), _Batch()
    batch.set_position(desk, SLOT, long_of_size("P1", 1))
    grown = long_of_size("P1", 2)
    batch.set_position(desk, SLOT, grown)
    batch.op_decided()
    grown_again = long_of_size("P1", 3)
    batch.set_position(desk, SLOT, grown_again)
    batch.op_decided()

    assert batch.all_updates() == [PositionUpdated(grown), PositionUpdated(grown_again)]
