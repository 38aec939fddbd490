"""Trailing stops against a reference, over random price paths, through the real server.

Each example: a new user opens a LONG or a SHORT at a starting price near 10000 on BTC, puts a
trailing stop on it (a callback rate or spread, with or without an activation price), and then
a path of 5 to 25 ticks on the 0.01 tick is published. After every tick, GetTrailingStop must
show exactly what `Reference` (plain Decimal arithmetic, written from CONTRACT section 5 and
independent of the server) says: status, watermark and stop price. So the stop price never
loosens, the stop triggers at the first crossing and only then, and at most once; its close
order fills at the trigger price for the whole position.

Paths mix random steps with exact boundary prices (the stop price itself, one tick short of
it, the activation price, one tick short of it), which random steps alone would rarely hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from fixtures.oms_server import OmsHarness
from fixtures.positions import LONG, SHORT, check_invariants
from fixtures.trading import BTC
from fixtures.trailing import (
    ACTIVE,
    CANCELED,
    CLOSED,
    PENDING,
    TRIGGERED,
    WORKING,
    assert_close_order,
    create_stop,
    current_position,
    figures,
    get_stop,
    new_user,
    open_side,
    publish,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tradingboost.oms.v1 import position_service_pb2 as ppb
from tradingboost.oms.v1 import trailing_stop_pb2 as T

TICK = Decimal("0.01")
RATES = ["0.001", "0.005", "0.01", "0.02", "0.1"]
QUANTITY = "0.01"


def plain(value: Decimal) -> str:
    """The API's decimal form: no exponent, no trailing zeros."""
    return format(value.normalize(), "f") if value else "0"


def cents(value: Decimal) -> int:
    return int(value / TICK)


@dataclass
class Reference:
    """One trailing stop, tick by tick, exactly as CONTRACT section 5 words it."""

    side: int
    rate: Decimal | None
    spread: Decimal | None
    activation: Decimal | None
    status: int = PENDING
    watermark: Decimal | None = None
    stop: Decimal | None = None

    def start(self, last: Decimal) -> None:
        if self.activation is None:  # ACTIVE at once, the last price as watermark
            self.status = ACTIVE
            self.watermark = last
            self.stop = self.stop_for(last)

    def stop_for(self, watermark: Decimal) -> Decimal:
        long = self.side == LONG
        if self.rate is not None:
            raw = watermark * (1 - self.rate) if long else watermark * (1 + self.rate)
        else:
            assert self.spread is not None
            raw = watermark - self.spread if long else watermark + self.spread
        # On the tick, toward the market (LONG up, SHORT down), and at least a tick away.
        rounding = ROUND_CEILING if long else ROUND_FLOOR
        stop = (raw / TICK).to_integral_value(rounding=rounding) * TICK
        return min(stop, watermark - TICK) if long else max(stop, watermark + TICK)

    def better(self, price: Decimal, than: Decimal) -> bool:
        return price > than if self.side == LONG else price < than

    def on_tick(self, price: Decimal) -> bool:
        """Applies one tick; True when this tick triggers the stop."""
        if self.status == PENDING:
            assert self.activation is not None
            reached = price >= self.activation if self.side == LONG else price <= self.activation
            if not reached:
                return False  # prices before activation are ignored
            self.status = ACTIVE
            self.watermark = price
            self.stop = self.stop_for(price)
        if self.status != ACTIVE:
            return False  # terminal: a stop fires at most once
        assert self.watermark is not None and self.stop is not None
        if self.better(price, self.watermark):
            self.watermark = price
            new_stop = self.stop_for(price)
            # It only ever tightens (LONG up, SHORT down).
            self.stop = max(self.stop, new_stop) if self.side == LONG else min(self.stop, new_stop)
        crossed = price <= self.stop if self.side == LONG else price >= self.stop
        if crossed:
            self.status = TRIGGERED
        return crossed

    def figures(self) -> tuple[int, str, str]:
        return (
            self.status,
            "" if self.watermark is None else plain(self.watermark),
            "" if self.stop is None else plain(self.stop),
        )


def test_the_reference_reproduces_the_worked_examples() -> None:
    """The reference itself, on the contract's four worked examples."""
    d = Decimal

    def run(ref: Reference, last: str, prices: list[str]) -> list[tuple[int, str, str]]:
        ref.start(d(last))
        seen = []
        for price in prices:
            ref.on_tick(d(price))
            seen.append(ref.figures())
        return seen

    assert run(Reference(LONG, d("0.02"), None, None), "100", ["105", "102.91", "102.90"]) == [
        (ACTIVE, "105", "102.9"),
        (ACTIVE, "105", "102.9"),
        (TRIGGERED, "105", "102.9"),
    ]
    assert run(
        Reference(LONG, d("0.01"), None, d("52000")),
        "50000",
        ["49000", "52000", "53500", "52965.01", "52965"],
    ) == [
        (PENDING, "", ""),
        (ACTIVE, "52000", "51480"),
        (ACTIVE, "53500", "52965"),
        (ACTIVE, "53500", "52965"),
        (TRIGGERED, "53500", "52965"),
    ]
    assert run(
        Reference(SHORT, None, d("25"), d("2900")), "2950", ["2900", "2860", "2884.99", "2885"]
    ) == [
        (ACTIVE, "2900", "2925"),
        (ACTIVE, "2860", "2885"),
        (ACTIVE, "2860", "2885"),
        (TRIGGERED, "2860", "2885"),
    ]
    assert run(Reference(LONG, d("0.015"), None, None), "100", ["101.37", "99.86", "99.85"]) == [
        (ACTIVE, "101.37", "99.85"),
        (ACTIVE, "101.37", "99.85"),
        (TRIGGERED, "101.37", "99.85"),
    ]


MOVES = ["step", "step", "step", "step", "stop", "near-stop", "activation", "near-activation"]


def next_price(data: st.DataObject, ref: Reference, price: int, scale: int) -> int:
    """The next price in cents: a random step, or an exact boundary of the stop's state."""
    move = data.draw(st.sampled_from(MOVES), label="move")
    toward_market = 1 if ref.side == LONG else -1  # one tick on the side that does not cross
    if move == "stop" and ref.status == ACTIVE and ref.stop is not None:
        return cents(ref.stop)
    if move == "near-stop" and ref.status == ACTIVE and ref.stop is not None:
        return cents(ref.stop) + toward_market
    if move == "activation" and ref.status == PENDING and ref.activation is not None:
        return cents(ref.activation)
    if move == "near-activation" and ref.status == PENDING and ref.activation is not None:
        return cents(ref.activation) - toward_market
    return max(1, price + data.draw(st.integers(-scale, scale), label="step"))


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_the_stop_follows_the_reference_tick_by_tick(
    oms: OmsHarness, data: st.DataObject
) -> None:
    side = data.draw(st.sampled_from([LONG, SHORT]), label="side")
    start = data.draw(st.integers(990_000, 1_010_000), label="start cents")
    if data.draw(st.booleans(), label="rate?"):
        rate: Decimal | None = Decimal(data.draw(st.sampled_from(RATES), label="rate"))
        spread: Decimal | None = None
    else:
        rate = None
        spread = data.draw(st.integers(1, 40_000), label="spread cents") * TICK
    away = data.draw(st.none() | st.integers(1, 30_000), label="activation offset cents")
    activation = None if away is None else (start + away if side == LONG else start - away) * TICK
    scale = data.draw(st.sampled_from([100, 1_000, 5_000, 20_000]), label="step scale")
    length = data.draw(st.integers(5, 25), label="ticks")

    user = new_user("prop")
    last = start * TICK
    await publish(oms, plain(last))
    await open_side(oms, user, side, quantity=QUANTITY)
    fields: dict[str, Any] = {"position_side": side}
    if rate is not None:
        fields["callback_rate"] = plain(rate)
    else:
        assert spread is not None
        fields["callback_spread"] = plain(spread)
    if activation is not None:
        fields["activation_price"] = plain(activation)
    stop = await create_stop(oms, user, **fields)
    ref = Reference(side, rate, spread, activation)
    ref.start(last)
    assert figures(stop) == ref.figures()

    price = start
    previous_stop = ""
    fired_at: list[int] = []
    for index in range(length):
        price = next_price(data, ref, price, scale)
        tick_price = price * TICK
        fires = ref.on_tick(tick_price)
        await publish(oms, plain(tick_price))
        now = await get_stop(oms, user, stop.trailing_stop_id)
        assert figures(now) == ref.figures(), f"tick {index} at {plain(tick_price)}"
        if previous_stop and now.stop_price:  # never loosens
            if side == LONG:
                assert Decimal(now.stop_price) >= Decimal(previous_stop)
            else:
                assert Decimal(now.stop_price) <= Decimal(previous_stop)
        previous_stop = now.stop_price or previous_stop
        if fires:
            fired_at.append(index)
            assert now.triggered_price == plain(tick_price)
            await assert_close_order(oms, now, quantity=QUANTITY)
            assert (await current_position(oms, user, side)).status == CLOSED
    assert len(fired_at) <= 1

    final = await get_stop(oms, user, stop.trailing_stop_id)
    event(f"ended {T.TrailingStopStatus.Name(final.status)}")  # --hypothesis-show-statistics
    if final.status in WORKING:
        # Leave nothing trailing for the next example; flat by ClosePosition: position_closed.
        await oms.positions.ClosePosition(
            ppb.ClosePositionRequest(user_id=user, exchange="paper", symbol=BTC, position_side=side)
        )
        closed = await get_stop(oms, user, stop.trailing_stop_id)
        assert (closed.status, closed.status_reason) == (CANCELED, "position_closed")
    await check_invariants(oms, user)
