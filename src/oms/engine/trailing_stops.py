"""Trailing stop use cases: create, look up, list, cancel and follow trailing stops.

The stops themselves live on the venue desks, which evaluate them on every tick in the same
commit as the tick's fills; this module validates requests and reads the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from oms.domain.errors import AlreadyExists, NotFound
from oms.domain.events import Heartbeat, SequencedEvent, TrailingStopUpdated, UserEvent
from oms.domain.identifiers import check_one_ref, check_user_id
from oms.domain.markets import MarketCatalog
from oms.domain.orders import PositionSide
from oms.domain.paging import page_size
from oms.domain.trailing_stops import (
    CreateTrailingStop,
    TrailingStop,
    TrailingStopSpec,
    TrailingStopStatus,
    validate_create_trailing_stop,
)
from oms.engine.keyed_locks import ClientIdTurns
from oms.engine.order_lifecycle import OrderLifecycle, StreamFilter
from oms.engine.paper_exchange import PAPER, PaperExchange
from oms.engine.ports import Page, StateStore, TrailingStopQuery, fetch_page
from oms.engine.run_to_end import run_to_end
from oms.engine.subscriptions import EventHub


@dataclass(frozen=True, slots=True)
class TrailingStopRef:
    """A trailing stop named by exactly one of its OMS id or client id."""

    user_id: str
    trailing_stop_id: str = ""
    client_id: str = ""


class TrailingVenue(Protocol):
    """Where trailing stops are followed: the paper desks, or real exchanges' marks."""

    async def create_trailing_stop(
        self, spec: TrailingStopSpec, trailing_stop_id: str
    ) -> tuple[TrailingStop, bool]: ...

    async def cancel_trailing_stop(self, stop: TrailingStop) -> TrailingStop | None: ...


class TrailingStops:
    def __init__(
        self,
        store: StateStore,
        catalog: MarketCatalog,
        orders: OrderLifecycle,
        paper: PaperExchange,
        live: TrailingVenue,
        hub: EventHub,
        new_id: Callable[[], str],
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._orders = orders
        self._paper = paper
        self._live = live
        self._hub = hub
        self._new_id = new_id
        self._turns = ClientIdTurns()

    @run_to_end
    async def create(self, command: CreateTrailingStop) -> TrailingStop:
        self._orders.check_tradable(command.user_id, command.exchange)
        spec = validate_create_trailing_stop(command, self._catalog)
        async with self._turns(spec.user_id, spec.client_id):
            return await self._create(spec)

    async def _create(self, spec: TrailingStopSpec) -> TrailingStop:
        if spec.client_id:
            # A retry is answered by idempotency, not judged again against a moved price.
            existing = await self._store.get_trailing_stop_by_client_id(
                spec.user_id, spec.client_id
            )
            if existing is not None:
                return self._same(existing, spec.fingerprint())
        venue = self._paper if spec.market.exchange == PAPER else self._live
        stop, created = await venue.create_trailing_stop(spec, self._new_id())
        return stop if created else self._same(stop, spec.fingerprint())

    @staticmethod
    def _same(stop: TrailingStop, fingerprint: str) -> TrailingStop:
        if stop.fingerprint != fingerprint:
            raise AlreadyExists(
                f"client_id {stop.client_id!r} already names trailing stop "
                f"{stop.trailing_stop_id} with different parameters"
            )
        return stop

    async def get(self, ref: TrailingStopRef) -> TrailingStop:
        _check_ref(ref)
        if ref.trailing_stop_id:
            stop = await self._store.get_trailing_stop(ref.user_id, ref.trailing_stop_id)
            name = f"trailing stop {ref.trailing_stop_id}"
        else:
            stop = await self._store.get_trailing_stop_by_client_id(ref.user_id, ref.client_id)
            name = f"trailing stop with client_id {ref.client_id!r}"
        if stop is None:
            raise NotFound(f"{name} not found for user {ref.user_id}")
        return stop

    async def cancel(self, ref: TrailingStopRef) -> TrailingStop:
        stop = await self.get(ref)
        if stop.status.is_working:
            venue = self._paper if stop.exchange == PAPER else self._live
            canceled = await venue.cancel_trailing_stop(stop)
            if canceled is not None:
                return canceled
            stop = await self.get(ref)  # it triggered or was cancelled meanwhile
        raise stop.not_working()

    async def list(
        self,
        user_id: str,
        *,
        exchange: str = "",
        symbol: str = "",
        position_side: PositionSide | None = None,
        working_only: bool = False,
        statuses: frozenset[TrailingStopStatus] = frozenset(),
        size: int = 0,
        page_token: str = "",
    ) -> Page[TrailingStop]:
        check_user_id(user_id)
        exchange, symbol = self._orders.instrument_filter(exchange, symbol)
        return await fetch_page(
            self._store.list_trailing_stops,
            TrailingStopQuery(
                user_id=user_id,
                page_size=page_size(size),
                exchange=exchange,
                symbol=symbol,
                position_side=position_side,
                working_only=working_only,
                statuses=statuses,
            ),
            page_token,
        )

    def follow(self, query: StreamFilter) -> AsyncIterator[SequencedEvent | Heartbeat]:
        check_user_id(query.user_id)
        exchange, symbol = self._orders.instrument_filter(query.exchange, query.symbol)

        def accept(event: UserEvent) -> bool:
            if not isinstance(event, TrailingStopUpdated):
                return False
            stop = event.trailing_stop
            return (not exchange or stop.exchange == exchange) and (
                not symbol or stop.symbol == symbol
            )

        return self._hub.follow(query.user_id, query.after_sequence, accept, query.from_oldest)


def _check_ref(ref: TrailingStopRef) -> None:
    check_user_id(ref.user_id)
    check_one_ref("trailing_stop_id", ref.trailing_stop_id, "client_id", ref.client_id)
