"""The server freezes what start-up allocated, so full collections no longer walk it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from oms.bootstrap import freeze_startup_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_startup_objects_leave_the_collected_heap() -> None:
    # Importing oms.bootstrap imported the whole server, as `oms serve` has it.
    tracked = len(gc.get_objects())
    frozen = freeze_startup_heap()
    assert frozen >= tracked // 2
    assert len(gc.get_objects()) < frozen // 100
