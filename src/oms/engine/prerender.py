"""A caller's reply, rendered while the commit it reports is in flight."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar, cast

from oms.domain.orders import Order

R_co = TypeVar("R_co", covariant=True)


class Prerender(Generic[R_co]):
    """Renders the order a request produced, ahead of time where the venue allows.

    The paper exchange knows the order a place or cancel will produce before its commit
    returns, and hands it to `ahead` once the commit is on its way: at low concurrency the
    store's round trip is idle time for this process, so the reply then adds no latency.
    Calling the prerender with the order the request returned gives the early rendering if
    it is that very order, and renders afresh otherwise (the commit failed or the request
    was decided again, or the venue never called `ahead`).
    """

    __slots__ = ("_order", "_render", "_rendered")

    def __init__(self, render: Callable[[Order], R_co]) -> None:
        self._render = render
        self._order: Order | None = None
        self._rendered: object = None

    def ahead(self, order: Order) -> None:
        self._rendered = self._render(order)
        self._order = order

    def __call__(self, order: Order) -> R_co:
        if order is self._order:
            return cast(R_co, self._rendered)
        return self._render(order)
