"""`oms serve` with tokens in its TOML file: it listens on a public address, every call needs
a token, and the audit file gets a line per decision whatever the log level."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fixtures.oms_process import OmsProcess
from fixtures.trading import BTC
from tradingboost.oms.v1 import market_data_pb2
from tradingboost.oms.v1 import market_data_service_pb2 as md

TOKEN = "feeder-token-0123456789"


@pytest.fixture
def oms_process(tmp_path: Path) -> Iterator[OmsProcess]:
    config = tmp_path / "oms.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [auth]
            audit_log = "{tmp_path / "audit.jsonl"}"

            [[auth.tokens]]
            name = "feeder"
            token = "{TOKEN}"
            publish_prices = true
            """
        )
    )
    process = OmsProcess(
        tmp_path / "data",
        "--listen",
        "0.0.0.0:0",
        "--config",
        str(config),
        env={"OMS_LOG_LEVEL": "WARNING"},
    )
    yield process
    process.stop()


async def test_a_public_address_with_tokens_serves_only_known_tokens(
    oms_process: OmsProcess, tmp_path: Path
) -> None:
    oms_process.start()
    tick = md.PublishPricesRequest(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price="50000")]
    )
    async with oms_process.channel() as channel:
        _, market = oms_process.stubs(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await market.PublishPrices(tick)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await market.PublishPrices(tick, metadata=(("authorization", f"Bearer {TOKEN}"),))
    audit = (tmp_path / "audit.jsonl").read_text()
    assert TOKEN not in audit
    assert [(e["outcome"], e["token"]) for e in map(json.loads, audit.splitlines())] == [
        ("UNAUTHENTICATED", None),
        ("ACCEPTED", "feeder"),
    ]
