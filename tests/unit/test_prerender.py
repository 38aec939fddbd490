"""A prerendered reply is used only for the very order it was rendered from."""

from __future__ import annotations

from dataclasses import replace

from fixtures.domain import new_order

from oms.domain.orders import Order
from oms.engine.prerender import Prerender


class CountingRender:
    def __init__(self) -> None:
        self.calls: list[Order] = []

    def __call__(self, order: Order) -> tuple[str, int]:
        self.calls.append(order)
        return order.order_id, len(self.calls)


def test_the_order_rendered_ahead_is_not_rendered_again() -> None:
    render = CountingRender()
    prerender = Prerender(render)
    order = new_order()
    prerender.ahead(order)
    assert prerender(order) == ("O1", 1)
    assert render.calls == [order]


def test_another_order_is_rendered_afresh() -> None:
    render = CountingRender()
    prerender = Prerender(render)
    decided = new_order()
    prerender.ahead(decided)
    # Equal in every field but not the object decided: the commit was decided again.
    stored = replace(decided)
    assert prerender(stored) == ("O1", 2)
    assert render.calls == [decided, stored]


def test_without_ahead_the_order_is_rendered_when_asked() -> None:
    render = CountingRender()
    assert Prerender(render)(new_order()) == ("O1", 1)
