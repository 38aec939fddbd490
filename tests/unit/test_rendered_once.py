"""A stream message is rendered once per event object, however many streams send it."""

from __future__ import annotations

from fixtures.domain import new_order

from oms.api.converters import RenderedOnce
from oms.domain.events import OrderEventType, OrderUpdated, SequencedEvent


def event(sequence: int) -> SequencedEvent:
    return SequencedEvent(sequence, OrderUpdated(OrderEventType.ACCEPTED, new_order()))


def test_the_same_event_is_rendered_once_and_an_equal_one_again() -> None:
    calls: list[SequencedEvent] = []

    def render(item: SequencedEvent) -> tuple[int, int]:
        calls.append(item)
        return item.sequence, len(calls)

    rendered = RenderedOnce(render)
    first = event(1)
    assert rendered(first) == rendered(first) == (1, 1)
    # Equal but another object (a replay read from the store): rendered for itself.
    again = event(1)
    assert rendered(again) == (1, 2)
    assert calls == [first, again]


def test_it_keeps_only_the_most_recent_events() -> None:
    calls: list[int] = []

    def render(item: SequencedEvent) -> int:
        calls.append(item.sequence)
        return item.sequence

    rendered = RenderedOnce(render, keep=2)
    events = [event(n) for n in range(1, 4)]
    for item in events:
        rendered(item)
    rendered(events[2])  # kept
    rendered(events[0])  # gone: rendered again
    assert calls == [1, 2, 3, 1]
