"""Bearer tokens (CONTRACT section 10): UNAUTHENTICATED without a known token,
PERMISSION_DENIED for a user the token may not act for, RESOURCE_EXHAUSTED over its rate
limit, and an audit line for every decision that never shows the token."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from fixtures.client_streams import until
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.trading import BTC, order_request
from grpc_health.v1 import health_pb2
from oms_client import STREAM_LIMIT_REASON, OmsClient, error_reasons
from pydantic import SecretStr
from tradingboost.oms.v1 import account_service_pb2 as apb
from tradingboost.oms.v1 import market_data_pb2
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_pb2 as S
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.api.auth import audit_to_file
from oms.config import AuthSettings, TokenSettings

ALICE = "alice-token-0123456789"
ADMIN = "admin-token-0123456789"
FEEDER = "feeder-token-0123456789"
SLOW = "slow-token-0123456789"
DAVE = "dave-token-0123456789"  # configured by its SHA-256 only
WATCHER = "watcher-token-0123456789"

TOKENS = [
    TokenSettings(name="alice-bot", token=SecretStr(ALICE), users=["alice"]),
    TokenSettings(name="ops", token=SecretStr(ADMIN), admin=True),
    TokenSettings(name="feeder", token=SecretStr(FEEDER), publish_prices=True),
    TokenSettings(
        name="slow", token=SecretStr(SLOW), users=["carol"], rate_limit_per_s=0.001, burst=2
    ),
    TokenSettings(
        name="dave-bot", token_sha256=hashlib.sha256(DAVE.encode()).hexdigest(), users=["dave"]
    ),
    TokenSettings(name="watcher", token=SecretStr(WATCHER), users=["erin"], max_price_streams=2),
]


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def oms(redis_url: str) -> AsyncIterator[OmsHarness]:
    auth = AuthSettings(tokens=TOKENS, unauthenticated_rate_per_s=0.001, unauthenticated_burst=8)
    harness = await make_oms(redis_url, auth=auth)
    try:
        yield harness
    finally:
        await harness.close()


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    code: grpc.StatusCode = error.value.code()
    return code


def order(user_id: str) -> pb.PlaceOrderRequest:
    """A resting buy limit of `user_id`."""
    return order_request(
        user_id=user_id, type=S.ORDER_TYPE_LIMIT, price="40000", client_order_id="c1"
    )


def tick(price: str) -> md.PublishPricesRequest:
    return md.PublishPricesRequest(
        prices=[market_data_pb2.PriceTick(exchange="paper", symbol=BTC, price=price)]
    )


async def test_every_call_needs_a_known_token(oms: OmsHarness) -> None:
    assert await status_of(oms.orders.PlaceOrder(order("alice"))) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    for metadata in (bearer("not-a-token-0123456789"), (("authorization", ALICE),)):
        assert await status_of(oms.orders.PlaceOrder(order("alice"), metadata=metadata)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    stream = oms.orders.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(user_id="alice"))
    assert await status_of(stream.read()) == grpc.StatusCode.UNAUTHENTICATED
    listed = await oms.orders.ListOrders(
        pb.ListOrdersRequest(user_id="alice"), metadata=bearer(ADMIN)
    )
    assert list(listed.orders) == []


async def test_two_authorization_headers_are_refused_whichever_comes_first(
    oms: OmsHarness,
) -> None:
    # One a proxy appends must not be shadowed by (or shadow) the client's own.
    for first, second in ((ALICE, ADMIN), (ADMIN, ALICE), ("not-a-token", ALICE)):
        metadata = (*bearer(first), *bearer(second))
        assert await status_of(oms.orders.PlaceOrder(order("alice"), metadata=metadata)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    padded = (("authorization", f"  Bearer {ALICE} "),)
    await oms.orders.ListOrders(pb.ListOrdersRequest(user_id="alice"), metadata=padded)


async def test_bytes_that_are_no_request_are_authenticated_first_then_invalid_argument(
    oms: OmsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="oms.audit")

    def raw(path: str) -> Any:
        return oms.channel.unary_unary(
            f"/tradingboost.oms.v1.OrderService/{path}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )

    garbage = b"\xff\xff\xff\xff"
    assert await status_of(raw("PlaceOrder")(garbage)) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await raw("PlaceOrder")(garbage, metadata=bearer(FEEDER))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith("request: is not a valid protobuf message")
    entries = [json.loads(r.getMessage()) for r in caplog.records if r.name == "oms.audit"]
    assert [(e["outcome"], e["token"]) for e in entries] == [
        ("UNAUTHENTICATED", None),
        ("INVALID_ARGUMENT", "feeder"),  # not ACCEPTED: nothing ran
    ]


async def test_an_empty_user_id_is_malformed_except_where_it_means_every_user(
    oms: OmsHarness,
) -> None:
    # The same answer whatever the token: the field is wrong, not the token's rights.
    for token in (ALICE, ADMIN):
        assert await status_of(oms.orders.PlaceOrder(order(""), metadata=bearer(token))) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )


async def test_a_token_acts_only_for_its_users(oms: OmsHarness) -> None:
    await oms.market.PublishPrices(tick("50000"), metadata=bearer(FEEDER))
    placed = await oms.orders.PlaceOrder(order("alice"), metadata=bearer(ALICE))
    assert placed.order.status == S.ORDER_STATUS_OPEN
    for call in (
        oms.orders.PlaceOrder(order("bob"), metadata=bearer(ALICE)),
        oms.orders.GetOrder(
            pb.GetOrderRequest(user_id="bob", order_id=placed.order.order_id),
            metadata=bearer(ALICE),
        ),
        oms.orders.StreamOrderUpdates(
            pb.StreamOrderUpdatesRequest(user_id="bob"), metadata=bearer(ALICE)
        ).read(),
    ):
        assert await status_of(call) == grpc.StatusCode.PERMISSION_DENIED
    listed = await oms.orders.ListOrders(
        pb.ListOrdersRequest(user_id="bob"), metadata=bearer(ADMIN)
    )
    assert list(listed.orders) == []  # the refused order left nothing behind
    # The admin token acts for anyone.
    mine = await oms.orders.GetOrder(
        pb.GetOrderRequest(user_id="alice", order_id=placed.order.order_id),
        metadata=bearer(ADMIN),
    )
    assert mine.order == placed.order
    # Streams it may follow deliver: the going-live heartbeat, then alice's events.
    stream = oms.orders.StreamOrderUpdates(
        pb.StreamOrderUpdatesRequest(user_id="alice"), metadata=bearer(ALICE)
    )
    first = await stream.read()
    assert isinstance(first, pb.StreamOrderUpdatesResponse)
    assert first.heartbeat.latest_sequence == 1
    canceled = await oms.orders.CancelOrder(
        pb.CancelOrderRequest(user_id="alice", order_id=placed.order.order_id),
        metadata=bearer(ALICE),
    )
    update = await stream.read()
    assert isinstance(update, pb.StreamOrderUpdatesResponse)
    assert update.order_update.order == canceled.order
    stream.cancel()


async def test_a_token_configured_by_its_sha256_is_accepted(oms: OmsHarness) -> None:
    await oms.market.PublishPrices(tick("50000"), metadata=bearer(FEEDER))
    placed = await oms.orders.PlaceOrder(order("dave"), metadata=bearer(DAVE))
    assert placed.order.status == S.ORDER_STATUS_OPEN
    assert await status_of(oms.orders.PlaceOrder(order("alice"), metadata=bearer(DAVE))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    digest = hashlib.sha256(DAVE.encode()).hexdigest()
    assert await status_of(oms.orders.PlaceOrder(order("dave"), metadata=bearer(digest))) == (
        grpc.StatusCode.UNAUTHENTICATED  # the digest is not a token
    )


async def test_every_users_accounts_need_an_admin_token(oms: OmsHarness) -> None:
    everyone = apb.ListActiveAccountsRequest()
    assert await status_of(oms.accounts.ListActiveAccounts(everyone, metadata=bearer(ALICE))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    await oms.accounts.ListActiveAccounts(everyone, metadata=bearer(ADMIN))
    await oms.accounts.ListActiveAccounts(
        apb.ListActiveAccountsRequest(user_id="alice"), metadata=bearer(ALICE)
    )


async def test_publishing_prices_needs_a_feeder_or_admin_token(oms: OmsHarness) -> None:
    assert await status_of(oms.market.PublishPrices(tick("50000"), metadata=bearer(ALICE))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    await oms.market.PublishPrices(tick("50000"), metadata=bearer(FEEDER))
    await oms.market.PublishPrices(tick("50100"), metadata=bearer(ADMIN))
    # Prices are not per user: any known token reads them.
    price = await oms.market.GetPrice(
        md.GetPriceRequest(exchange="paper", symbol=BTC), metadata=bearer(ALICE)
    )
    assert price.price.price == "50100"
    # A feeder acts for no user.
    assert await status_of(oms.orders.PlaceOrder(order("alice"), metadata=bearer(FEEDER))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def test_over_its_rate_limit_a_token_is_resource_exhausted(oms: OmsHarness) -> None:
    request = pb.ListOrdersRequest(user_id="carol")
    for _ in range(2):  # the burst
        await oms.orders.ListOrders(request, metadata=bearer(SLOW))
    assert await status_of(oms.orders.ListOrders(request, metadata=bearer(SLOW))) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    # A request that does not parse counts too: it costs a parse and an audit line.
    raw = oms.channel.unary_unary(
        "/tradingboost.oms.v1.OrderService/ListOrders",
        request_serializer=bytes,
        response_deserializer=bytes,
    )
    assert await status_of(raw(b"\xff\xff\xff", metadata=bearer(SLOW))) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    # Other tokens have buckets of their own.
    await oms.orders.ListOrders(pb.ListOrdersRequest(user_id="alice"), metadata=bearer(ALICE))


async def test_a_token_holds_no_more_price_streams_than_its_own_limit(
    oms: OmsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    # Far below the server's max_price_streams: one tenant cannot take every place.
    caplog.set_level(logging.INFO, logger="oms.audit")
    request = md.StreamPricesRequest(
        instruments=[market_data_pb2.Instrument(exchange="paper", symbol=BTC)]
    )

    def open_stream(token: str) -> Any:
        return oms.market.StreamPrices(request, metadata=bearer(token))

    first, second = open_stream(WATCHER), open_stream(WATCHER)
    await until(lambda: oms.app.market_data.streams == 2)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await open_stream(WATCHER).read()
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "token watcher holds 2 price streams open" in (error.value.details() or "")
    assert error_reasons(error.value) == {STREAM_LIMIT_REASON}
    outcomes = [json.loads(r.getMessage())["outcome"] for r in caplog.records]
    assert outcomes[-1] == "RESOURCE_EXHAUSTED"

    other = open_stream(ALICE)  # other tokens have places of their own
    await until(lambda: oms.app.market_data.streams == 3)
    first.cancel()  # frees its place
    await until(lambda: oms.app.market_data.streams == 2)
    again = open_stream(WATCHER)
    await until(lambda: oms.app.market_data.streams == 3)
    await oms.market.PublishPrices(tick("50000"), metadata=bearer(FEEDER))
    for stream in (second, again, other):
        assert (await stream.read()).price.price == "50000"


async def test_an_address_making_calls_without_a_token_is_slowed_down(
    oms: OmsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="oms.audit")
    request = pb.ListOrdersRequest(user_id="alice")
    guesses = [bearer(f"guess-{n:02}-0123456789") for n in range(8)]  # the burst
    for metadata in guesses:
        assert await status_of(oms.orders.ListOrders(request, metadata=metadata)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    # Past the burst, this address's calls without a valid token are held back.
    for held_back in (bearer("guess-08-0123456789"), None):
        assert await status_of(oms.orders.ListOrders(request, metadata=held_back)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    # Calls with a valid token are not counted, and are not held back.
    await oms.orders.ListOrders(request, metadata=bearer(ALICE))
    # A flood from the address: audited as one line a second, counting the calls.
    flood = 200
    for _ in range(flood):
        await status_of(oms.orders.ListOrders(request))

    def entries() -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == "oms.audit"]

    await until(lambda: sum(e.get("calls", 1) for e in entries()) == 8 + 1 + 2 + flood)
    audited = entries()
    assert [(e["outcome"], e["token"]) for e in audited[:9]] == [
        *8 * [("UNAUTHENTICATED", None)],
        ("ACCEPTED", "alice-bot"),
    ]
    limited = audited[9:]
    assert {(e["outcome"], e["peer"], e["method"]) for e in limited} == {
        ("RESOURCE_EXHAUSTED", "ipv4:127.0.0.1", "/tradingboost.oms.v1.OrderService/ListOrders")
    }
    assert len(limited) <= 4  # one a second, however many calls


async def test_health_and_reflection_need_no_token(oms: OmsHarness) -> None:
    checked = await oms.health.Check(health_pb2.HealthCheckRequest())
    assert checked.status == health_pb2.HealthCheckResponse.SERVING


async def test_every_decision_is_audited_and_no_token_is_shown(
    oms: OmsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="oms.audit")
    started = datetime.now(UTC)
    await oms.orders.ListOrders(pb.ListOrdersRequest(user_id="alice"), metadata=bearer(ALICE))
    await status_of(
        oms.orders.ListOrders(pb.ListOrdersRequest(user_id="bob"), metadata=bearer(ALICE))
    )
    await status_of(oms.orders.ListOrders(pb.ListOrdersRequest(user_id="bob")))
    ended = datetime.now(UTC)
    entries = [json.loads(r.getMessage()) for r in caplog.records if r.name == "oms.audit"]
    method = "/tradingboost.oms.v1.OrderService/ListOrders"
    assert [(e["outcome"], e["method"], e["token"], e["user_id"]) for e in entries] == [
        ("ACCEPTED", method, "alice-bot", "alice"),
        ("PERMISSION_DENIED", method, "alice-bot", "bob"),
        ("UNAUTHENTICATED", method, None, "bob"),
    ]
    # Where the call came from: all there is to go on when no token names the caller.
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") for e in entries)
    # When, in UTC (RFC 3339), in the order the calls were made.
    times = [e["time"] for e in entries]
    assert all(t.endswith("Z") for t in times)
    parsed = [datetime.fromisoformat(t) for t in times]
    assert started <= parsed[0] <= parsed[1] <= parsed[2] <= ended
    assert not any(ALICE in r.getMessage() for r in caplog.records)


async def test_the_audit_log_file_gets_a_json_line_per_decision(
    oms: OmsHarness, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    handler = audit_to_file(path)
    try:
        await oms.orders.ListOrders(pb.ListOrdersRequest(user_id="alice"), metadata=bearer(ALICE))
        path.rename(tmp_path / "audit.jsonl.1")  # logrotate, without telling the server
        await status_of(oms.orders.ListOrders(pb.ListOrdersRequest(user_id="alice")))
    finally:
        logging.getLogger("oms.audit").removeHandler(handler)
        handler.close()
    rotated = (tmp_path / "audit.jsonl.1").read_text().splitlines()
    assert [json.loads(line)["outcome"] for line in rotated] == ["ACCEPTED"]
    assert [json.loads(line)["outcome"] for line in path.read_text().splitlines()] == [
        "UNAUTHENTICATED"
    ]
    assert path.stat().st_mode & 0o777 == 0o600  # who called whom is no one else's to read


async def test_the_client_library_sends_its_token(oms: OmsHarness) -> None:
    async with OmsClient.connect(oms.address, token=ALICE) as client:
        listed = await client.list_orders_page(user_id="alice")
        assert list(listed.orders) == []
    async with OmsClient.connect(oms.address) as anonymous:
        assert await status_of(anonymous.list_orders_page(user_id="alice")) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
