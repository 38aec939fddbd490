"""OmsClient's AccountService calls against the real server and a local fake OKX that real
ccxt talks to: register, activate, list page by page, deactivate; INVALID_ARGUMENT naming the
field; credentials the exchange refuses; a registration retried after a lost response; and
secrets that never reach an error message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from fixtures.fake_exchange import FakeExchange
from fixtures.live_trading import API_KEY, MASTER_KEY, PASSWORD, SECRET, exchange_settings
from fixtures.lossy_network import LoseResponses, client_with
from fixtures.oms_server import OmsHarness, make_oms
from google.rpc import error_details_pb2, status_pb2
from oms_client import OmsClient, RetryPolicy
from tradingboost.oms.v1 import account_pb2

ACTIVE = account_pb2.ACCOUNT_STATUS_ACTIVE
INACTIVE = account_pb2.ACCOUNT_STATUS_INACTIVE
OKX = "okx"
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01)


@pytest.fixture
async def accounts_oms(redis_url: str, okx_exchange: FakeExchange) -> AsyncIterator[OmsHarness]:
    """The OMS with a master key and the fake OKX (accounts added with `key_of`)."""
    oms = await make_oms(
        redis_url, master_key=MASTER_KEY, exchanges=exchange_settings(okx_exchange)
    )
    try:
        yield oms
    finally:
        await oms.close()


def key_of(user: str, exchange: FakeExchange) -> str:
    key = f"{API_KEY}-{user}"
    exchange.add_account(key, SECRET, PASSWORD)
    return key


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    trailers: dict[str, Any] = dict(cast(Any, error.trailing_metadata() or ()))
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(request)
    return [violation.field for violation in request.field_violations]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (SECRET, PASSWORD, MASTER_KEY):
            assert secret not in text


async def test_register_activate_list_page_by_page_and_deactivate(
    accounts_oms: OmsHarness, okx_exchange: FakeExchange
) -> None:
    pages = LoseResponses("ListActiveAccounts")  # loses nothing: counts the pages read
    async with client_with(accounts_oms.address, pages) as client:
        for user in ("bob", "ann"):
            registered = await client.register_credentials(
                user_id=user,
                exchange=OKX,
                api_key=key_of(user, okx_exchange),
                secret=SECRET,
                password=PASSWORD,
            )
            assert (registered.user_id, registered.exchange, registered.status) == (
                user,
                OKX,
                INACTIVE,
            )
            assert registered.has_password and not registered.sandbox
            assert_no_secret(str(registered), repr(registered))
            active = await client.activate_account(user_id=user, exchange=OKX, timeout_s=5.0)
            assert active.status == ACTIVE
            assert await client.activate_account(user_id=user, exchange=OKX) == active

        listed = [a async for a in client.list_active_accounts(page_size=1)]
        assert [(a.user_id, a.exchange, a.status) for a in listed] == [
            ("ann", OKX, ACTIVE),
            ("bob", OKX, ACTIVE),
        ]
        assert len(pages.requests) == 2
        assert [r.page_size for r in pages.requests] == [1, 1]
        assert pages.requests[0].page_token == ""
        assert pages.requests[1].page_token != ""

        first = await client.list_active_accounts_page(page_size=1)
        assert [a.user_id for a in first.accounts] == ["ann"] and first.next_page_token
        only_bob = await client.list_active_accounts_page(user_id="bob", exchange=OKX)
        assert ([a.user_id for a in only_bob.accounts], only_bob.next_page_token) == (["bob"], "")

        off = await client.deactivate_account(user_id="bob", exchange=OKX)
        assert (off.user_id, off.status) == ("bob", INACTIVE)
        assert await client.deactivate_account(user_id="bob", exchange=OKX) == off
        assert [a.user_id async for a in client.list_active_accounts(page_size=1)] == ["ann"]


async def test_invalid_argument_is_the_rpc_error_naming_the_field_without_the_secret(
    accounts_oms: OmsHarness,
) -> None:
    count = LoseResponses("RegisterCredentials")
    async with client_with(accounts_oms.address, count, retry=FAST_RETRY) as client:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.register_credentials(
                user_id="ann", exchange="paper", api_key=API_KEY, secret=SECRET
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.value.details() or "").startswith("exchange:")
        assert field_violations(error.value) == ["exchange"]

        pasted = f"{SECRET}\n"  # a pasted secret with its newline
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.register_credentials(
                user_id="ann", exchange=OKX, api_key=API_KEY, secret=pasted
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error.value) == ["secret"]
        assert_no_secret(str(error.value), repr(error.value), error.value.debug_error_string())
        assert len(count.requests) == 2  # neither was retried

        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.list_active_accounts_page(user_id="ann", page_size=-1)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error.value) == ["page_size"]


async def test_a_value_protobuf_refuses_is_reported_by_field_name_only() -> None:
    async with OmsClient.connect("127.0.0.1:1") as client:  # never reached
        not_text = SECRET.encode() + b"\xff"
        with pytest.raises(TypeError) as error:
            await client.register_credentials(
                user_id="ann", exchange=OKX, api_key=API_KEY, secret=cast(Any, not_text)
            )
        assert "secret" in str(error.value)
        assert SECRET not in str(error.value)
        assert error.value.__context__ is None and error.value.__cause__ is None


async def test_credentials_the_exchange_refuses_are_failed_precondition(
    accounts_oms: OmsHarness, okx_exchange: FakeExchange
) -> None:
    count = LoseResponses("ActivateAccount")
    async with client_with(accounts_oms.address, count, retry=FAST_RETRY) as client:
        key = key_of("ann", okx_exchange)
        wrong = "wrong-secret-5e8a"
        await client.register_credentials(
            user_id="ann", exchange=OKX, api_key=key, secret=wrong, password=PASSWORD
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.activate_account(user_id="ann", exchange=OKX)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "refused the credentials" in (error.value.details() or "")
        assert wrong not in str(error.value)
        assert len(count.requests) == 1
        assert [a async for a in client.list_active_accounts(user_id="ann")] == []

        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.activate_account(user_id="nobody", exchange=OKX)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_without_a_master_key_register_is_failed_precondition(oms: OmsHarness) -> None:
    async with OmsClient(oms.channel) as client:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.register_credentials(
                user_id="ann", exchange=OKX, api_key=API_KEY, secret=SECRET
            )
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "OMS_MASTER_KEY" in (error.value.details() or "")


async def test_a_lost_register_response_is_retried_and_stores_one_account(
    accounts_oms: OmsHarness, okx_exchange: FakeExchange
) -> None:
    lose = LoseResponses("RegisterCredentials", times=1)
    async with client_with(accounts_oms.address, lose, retry=FAST_RETRY) as client:
        key = key_of("ann", okx_exchange)
        account = await client.register_credentials(
            user_id="ann", exchange=OKX, api_key=key, secret=SECRET, password=PASSWORD
        )
        first, retry = lose.requests
        assert first == retry  # the same credentials, sent again
        assert (account.user_id, account.status, account.has_password) == ("ann", INACTIVE, True)
        # The retry replaced the credentials of the account the lost attempt created.
        assert account.created_at.ToNanoseconds() < account.credentials_updated_at.ToNanoseconds()

        await client.activate_account(user_id="ann", exchange=OKX)
        [active] = [a async for a in client.list_active_accounts(page_size=1)]
        assert (active.user_id, active.exchange, active.created_at) == (
            "ann",
            OKX,
            account.created_at,
        )
