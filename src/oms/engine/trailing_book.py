"""The working trailing stops of one symbol, ordered so that a tick visits only what it changes.

Per position side, three sorted lists of (price, stop id): pending stops by activation price,
active stops by watermark and by stop price. A tick reads the ends of each list: the stops it
activates, improves or triggers are a contiguous run there, and a tick that changes nothing
costs a few comparisons whatever the number of stops.
"""

from __future__ import annotations

from decimal import Decimal

from sortedcontainers import SortedList

from oms.domain.orders import PositionSide
from oms.domain.trailing_stops import TrailingStop, TrailingStopStatus

_LOW = ""
_HIGH = "\x7f"
"""Ids are ASCII: (p, _LOW) sorts before and (p, _HIGH) after every (p, id)."""

Entry = tuple[Decimal, str]


class _Side:
    def __init__(self) -> None:
        self.pending: SortedList[Entry] = SortedList()
        self.watermarks: SortedList[Entry] = SortedList()
        self.stops: SortedList[Entry] = SortedList()


class TrailingBook:
    def __init__(self) -> None:
        self._by_id: dict[str, TrailingStop] = {}
        self._by_owner: dict[tuple[str, PositionSide], dict[str, None]] = {}
        self._long = _Side()
        self._short = _Side()

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, trailing_stop_id: str) -> TrailingStop | None:
        return self._by_id.get(trailing_stop_id)

    def stops(self) -> list[TrailingStop]:
        return list(self._by_id.values())

    def of_position(self, user_id: str, side: PositionSide) -> list[TrailingStop]:
        ids = self._by_owner.get((user_id, side), {})
        return [self._by_id[stop_id] for stop_id in ids]

    def put(self, stop: TrailingStop) -> None:
        assert stop.status.is_working
        stop_id = stop.trailing_stop_id
        self._by_id[stop_id] = stop
        self._by_owner.setdefault((stop.user_id, stop.position_side), {})[stop_id] = None
        side = self._side(stop.position_side)
        if stop.status is TrailingStopStatus.PENDING_ACTIVATION:
            assert stop.activation_price is not None
            side.pending.add((stop.activation_price, stop_id))
        else:
            assert stop.watermark_price is not None and stop.stop_price is not None
            side.watermarks.add((stop.watermark_price, stop_id))
            side.stops.add((stop.stop_price, stop_id))

    def remove(self, stop: TrailingStop) -> None:
        stop_id = stop.trailing_stop_id
        current = self._by_id.pop(stop_id)
        owner = (current.user_id, current.position_side)
        del self._by_owner[owner][stop_id]
        if not self._by_owner[owner]:
            del self._by_owner[owner]
        side = self._side(current.position_side)
        if current.status is TrailingStopStatus.PENDING_ACTIVATION:
            assert current.activation_price is not None
            side.pending.remove((current.activation_price, stop_id))
        else:
            assert current.watermark_price is not None and current.stop_price is not None
            side.watermarks.remove((current.watermark_price, stop_id))
            side.stops.remove((current.stop_price, stop_id))

    def replace_all(self, stops: list[TrailingStop]) -> None:
        self._by_id.clear()
        self._by_owner.clear()
        self._long, self._short = _Side(), _Side()
        for stop in stops:
            self.put(stop)

    # -- what a tick at `price` changes, in a deterministic order -----------------------------

    def activated_by(self, price: Decimal) -> list[TrailingStop]:
        """Pending stops whose activation price `price` reaches (LONG >=, SHORT <=)."""
        ids = [
            *self._long.pending.irange(maximum=(price, _HIGH)),
            *self._short.pending.irange(minimum=(price, _LOW)),
        ]
        return self._stops(ids)

    def improved_by(self, price: Decimal) -> list[TrailingStop]:
        """Active stops whose watermark `price` betters (LONG higher, SHORT lower)."""
        ids = [
            *self._long.watermarks.irange(maximum=(price, _LOW), inclusive=(True, False)),
            *self._short.watermarks.irange(minimum=(price, _HIGH), inclusive=(False, True)),
        ]
        return self._stops(ids)

    def crossed_by(self, price: Decimal) -> list[TrailingStop]:
        """Active stops `price` triggers (LONG price <= stop, SHORT price >= stop), each side
        in the order a price moving there reaches them: LONG stops highest first, SHORT ones
        lowest first (equal stops by id). A gap through two stops of one position triggers
        the nearer one first, as the move did."""
        longs = sorted(self._long.stops.irange(minimum=(price, _LOW)), key=lambda entry: -entry[0])
        return self._stops([*longs, *self._short.stops.irange(maximum=(price, _HIGH))])

    def _stops(self, entries: list[Entry]) -> list[TrailingStop]:
        return [self._by_id[stop_id] for _, stop_id in entries]

    def _side(self, side: PositionSide) -> _Side:
        return self._long if side is PositionSide.LONG else self._short
