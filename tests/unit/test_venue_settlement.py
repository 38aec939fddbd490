"""How exchange reports settle an order: acknowledgement, fills once, then terminal status."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from fixtures.domain import new_order

from oms.domain.events import apply_all
from oms.domain.fills import Fill, Liquidity
from oms.domain.orders import (
    Order,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderPendingCancel,
    OrderRejected,
    OrderStatus,
)
from oms.domain.venue_reports import (
    CANCELED_AT_EXCHANGE,
    FillReport,
    OrderReport,
    VenueOrderStatus,
    fill_of,
    settlement_events,
)


def report(status: VenueOrderStatus, filled: str = "0", reason: str = "") -> OrderReport:
    return OrderReport("X1", "omsO1", "BTC/USDT:USDT", status, Decimal(filled), reason)


def fill(order: Order, trade_id: str, quantity: str, time_ns: int = 10) -> Fill:
    venue = FillReport(
        trade_id=trade_id,
        exchange_order_id="X1",
        symbol=order.symbol,
        price=Decimal("100"),
        quantity=Decimal(quantity),
        fee=Decimal("0.02"),
        fee_currency="USDT",
        liquidity=Liquidity.MAKER,
        time_ns=time_ns,
    )
    return fill_of(order, venue, f"F-{trade_id}")


def settled(order: Order, venue: OrderReport | None, fills: list[Fill]) -> Order:
    return apply_all(order, settlement_events(order, venue, fills), 99)[0]


def test_an_acknowledged_order_becomes_open_with_the_exchange_id() -> None:
    order = new_order()
    events = settlement_events(order, report(VenueOrderStatus.OPEN), [])
    assert events == [OrderAccepted("X1")]
    assert settled(order, report(VenueOrderStatus.OPEN), []).status is OrderStatus.OPEN


def test_fills_are_applied_oldest_first_and_filled_comes_from_them() -> None:
    order = new_order("1")
    late, early = fill(order, "t2", "0.6", time_ns=20), fill(order, "t1", "0.4", time_ns=10)
    events = settlement_events(order, report(VenueOrderStatus.FILLED, "1"), [late, early])
    assert events == [OrderAccepted("X1"), OrderFilled(early), OrderFilled(late)]
    after = settled(order, report(VenueOrderStatus.FILLED, "1"), [late, early])
    assert (after.status, after.filled_quantity, after.fees) == (
        OrderStatus.FILLED,
        Decimal("1.0"),
        Decimal("0.04"),
    )


def test_a_filled_report_ahead_of_its_listed_fills_waits_for_them() -> None:
    order = settled(new_order("1"), report(VenueOrderStatus.OPEN), [])
    after = settled(order, report(VenueOrderStatus.FILLED, "1"), [fill(order, "t1", "0.4")])
    assert (after.status, after.filled_quantity) == (
        OrderStatus.PARTIALLY_FILLED,
        Decimal("0.4"),
    )


def test_a_cancel_confirmed_after_a_partial_fill_keeps_the_fill_and_the_reason() -> None:
    opened = settled(new_order("1"), report(VenueOrderStatus.OPEN), [])
    pending = opened.apply(OrderPendingCancel("canceled by user"), 50)
    canceled = report(VenueOrderStatus.CANCELED, "0.3")
    events = settlement_events(pending, canceled, [fill(pending, "t1", "0.3")])
    assert [type(event) for event in events] == [OrderFilled, OrderCanceled]
    after = settled(pending, canceled, [fill(pending, "t1", "0.3")])
    assert (after.status, after.filled_quantity, after.cancel_reason) == (
        OrderStatus.CANCELED,
        Decimal("0.3"),
        "canceled by user",
    )


def test_a_partial_fill_before_the_cancel_lands_keeps_the_cancel_pending() -> None:
    # The cancel has not reached the exchange yet (or its answer was lost): the rest is
    # still to be cancelled, and the lookup goes on doing it.
    opened = settled(new_order("1"), report(VenueOrderStatus.OPEN), [])
    pending = opened.apply(OrderPendingCancel("canceled by user"), 50)
    still_open = report(VenueOrderStatus.PARTIALLY_FILLED, "0.3")
    after = settled(pending, still_open, [fill(pending, "t1", "0.3")])
    assert (after.status, after.filled_quantity, after.cancel_reason) == (
        OrderStatus.PENDING_CANCEL,
        Decimal("0.3"),
        "canceled by user",
    )


def test_an_order_canceled_at_the_exchange_says_so() -> None:
    opened = settled(new_order(), report(VenueOrderStatus.OPEN), [])
    after = settled(opened, report(VenueOrderStatus.CANCELED), [])
    assert (after.status, after.cancel_reason) == (OrderStatus.CANCELED, CANCELED_AT_EXCHANGE)


def test_a_fill_reported_after_the_cancel_is_applied_and_the_order_stays_canceled() -> None:
    opened = settled(new_order("1"), report(VenueOrderStatus.OPEN), [])
    canceled = settled(opened, report(VenueOrderStatus.CANCELED), [])
    assert canceled.status is OrderStatus.CANCELED
    after = settled(canceled, report(VenueOrderStatus.CANCELED, "0.5"), [fill(opened, "t1", "0.5")])
    assert (after.status, after.filled_quantity) == (OrderStatus.CANCELED, Decimal("0.5"))


def test_a_cancel_report_ahead_of_its_listed_fills_waits_for_them() -> None:
    # The exchange says it filled 0.5 before the cancel, but lists no such fill yet: ended
    # now, the order would never be read again, and the fill would be lost.
    opened = settled(new_order("1"), report(VenueOrderStatus.OPEN), [])
    for status in (VenueOrderStatus.CANCELED, VenueOrderStatus.EXPIRED):
        assert settled(opened, report(status, "0.5"), []).status is OrderStatus.OPEN
        early = settled(opened, report(status, "0.5"), [fill(opened, "t1", "0.2")])
        assert (early.status, early.filled_quantity) == (
            OrderStatus.PARTIALLY_FILLED,
            Decimal("0.2"),
        )
        after = settled(early, report(status, "0.5"), [fill(opened, "t2", "0.3")])
        assert (after.filled_quantity, after.status.is_terminal) == (Decimal("0.5"), True)


def test_a_pending_cancel_that_filled_first_ends_filled_without_a_cancel_reason() -> None:
    opened = settled(new_order("1"), report(VenueOrderStatus.OPEN), [])
    pending = opened.apply(OrderPendingCancel("canceled by user"), 50)
    after = settled(pending, report(VenueOrderStatus.FILLED, "1"), [fill(pending, "t1", "1")])
    assert (after.status, after.cancel_reason) == (OrderStatus.FILLED, "")


def test_a_rejection_of_a_new_order_carries_the_exchange_reason() -> None:
    order = new_order()
    events = settlement_events(order, report(VenueOrderStatus.REJECTED, reason="margin"), [])
    assert events == [OrderRejected("margin")]


def test_an_open_order_the_exchange_later_rejects_expires() -> None:
    opened = settled(new_order(), report(VenueOrderStatus.OPEN), [])
    events = settlement_events(opened, report(VenueOrderStatus.REJECTED, reason="post only"), [])
    assert events == [OrderExpired("post only")]


def test_a_report_that_would_overfill_is_not_applied() -> None:
    opened = settled(new_order("1"), report(VenueOrderStatus.OPEN), [])
    too_much = fill(opened, "t1", "1.5")
    assert settlement_events(opened, report(VenueOrderStatus.FILLED, "1.5"), [too_much]) == []


def test_nothing_changes_for_a_report_that_says_what_the_order_already_says() -> None:
    opened = settled(new_order(), report(VenueOrderStatus.OPEN), [])
    assert settlement_events(opened, report(VenueOrderStatus.OPEN), []) == []
    done = replace(opened, status=OrderStatus.EXPIRED)
    assert settlement_events(done, report(VenueOrderStatus.CANCELED), []) == []
