"""A paper desk's book hands a tick exactly the orders it reaches, in placement order."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from fixtures.domain import new_order
from hypothesis import given
from hypothesis import strategies as st

from oms.domain.orders import Order, OrderType, Side
from oms.domain.paper_matching import tick_reaches_at
from oms.engine.paper_exchange import _RestingBook

KINDS = [
    (OrderType.LIMIT, False),
    (OrderType.STOP_MARKET, False),
    (OrderType.TAKE_PROFIT_MARKET, False),
    (OrderType.STOP_LIMIT, False),
    (OrderType.STOP_LIMIT, True),  # triggered: rests as a limit
]


@st.composite
def orders(draw: st.DrawFn) -> list[Order]:
    made = []
    for n in range(draw(st.integers(0, 30))):
        kind, triggered = draw(st.sampled_from(KINDS))
        made.append(
            replace(
                new_order(),
                order_id=f"O{n:03d}",
                client_order_id=f"c{n}",
                side=draw(st.sampled_from(list(Side))),
                type=kind,
                price=Decimal(draw(st.integers(90, 110))),
                stop_price=None if kind is OrderType.LIMIT else Decimal(draw(st.integers(90, 110))),
                triggered=triggered,
            )
        )
    return made


def reached(order: Order, price: Decimal) -> bool:
    """Brute force, from the matching rules' own words."""
    if order.type is OrderType.LIMIT or (order.type is OrderType.STOP_LIMIT and order.triggered):
        assert order.price is not None
        return price <= order.price if order.side is Side.BUY else price >= order.price
    assert order.stop_price is not None
    rising = (order.side is Side.BUY) == (order.type is not OrderType.TAKE_PROFIT_MARKET)
    return price >= order.stop_price if rising else price <= order.stop_price


@given(orders(), st.integers(85, 115), st.sets(st.integers(0, 29)))
def test_a_tick_gets_every_order_it_reaches_and_no_other(
    placed: list[Order], tick: int, removed: set[int]
) -> None:
    book = _RestingBook()
    for order in reversed(placed):  # put out of order: the book keeps placement order
        book.put(order)
    for n in removed & set(range(len(placed))):
        book.remove(placed[n])
    # A changed order (here: triggered) replaces its earlier version wherever it stood.
    for order in placed[:3]:
        if book.get(order.order_id) is order and order.type is OrderType.STOP_LIMIT:
            book.put(replace(order, triggered=True))
    price = Decimal(tick)
    left = sorted(book.orders(), key=lambda o: o.order_id)
    assert book.reached_by(price) == [o for o in left if reached(o, price)]


def test_the_matching_rules_and_the_book_agree_on_where_a_tick_reaches() -> None:
    order = replace(new_order(), type=OrderType.STOP_MARKET, stop_price=Decimal(105))
    assert tick_reaches_at(order) == (Decimal(105), True)  # a buy stop: on the rise
    assert tick_reaches_at(replace(order, type=OrderType.TAKE_PROFIT_MARKET)) == (
        Decimal(105),
        False,
    )
    assert tick_reaches_at(replace(order, type=OrderType.LIMIT)) == (Decimal(100), False)
