from __future__ import annotations

from oms.engine.backoff import Backoff


async def test_waits_double_up_to_the_cap_and_start_again_after_a_reset() -> None:
    backoff = Backoff(0.001, 0.004)
    waits = []
    for _ in range(4):
        waits.append(backoff.next_s)
        await backoff.wait()
    assert waits == [0.001, 0.002, 0.004, 0.004]
    backoff.reset()
    assert backoff.next_s == 0.001
