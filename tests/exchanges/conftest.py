"""Fixtures of the tests against the local fake exchange: each test runs once per venue.

A module may set `LIVE_POLICY` (ExchangeSettings fields) to change how the OMS treats the
exchange in its tests, such as a slower poll; a test may add its own with
`@pytest.mark.live_policy(field=value)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import API_KEY, BTC, LiveTrading, live_trading
from fixtures.redis_proxy import RedisFaultProxy


@pytest.fixture(params=["binanceusdm", "okx"])
def exchange(request: pytest.FixtureRequest) -> FakeExchange:
    # Synchronous: an async fixture cannot getfixturevalue() another async fixture.
    name = "binance_exchange" if request.param == "binanceusdm" else "okx_exchange"
    fake: FakeExchange = request.getfixturevalue(name)
    fake.set_price(BTC, Decimal("50000"))
    return fake


async def _followed(
    redis_url: str, exchange: FakeExchange, request: pytest.FixtureRequest
) -> AsyncIterator[LiveTrading]:
    policy = dict(getattr(request.module, "LIVE_POLICY", {}))
    for marker in request.node.iter_markers("live_policy"):
        policy |= marker.kwargs
    trading = await live_trading(redis_url, exchange, **policy)
    await exchange.wait_for_private_feed(API_KEY)
    try:
        yield trading
        await trading.assert_invariants()
    finally:
        await trading.oms.close()


@pytest.fixture
async def live(
    exchange: FakeExchange, redis_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[LiveTrading]:
    """The OMS with an active account on `exchange`, its order feed connected; every test
    ends by checking the OMS against the exchange's own records."""
    async for trading in _followed(redis_url, exchange, request):
        yield trading


@pytest.fixture
async def live_via_proxy(
    exchange: FakeExchange, proxy: RedisFaultProxy, request: pytest.FixtureRequest
) -> AsyncIterator[LiveTrading]:
    """As `live`, with its Redis behind `proxy`, which plays the faults."""
    async for trading in _followed(await proxy.start(), exchange, request):
        yield trading
