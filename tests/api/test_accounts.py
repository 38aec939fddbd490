"""AccountService without an exchange: credentials sealed at rest and never returned, the
master key checked at start, and bad input refused with nothing stored (CONTRACT section 10).
Activation against an exchange is in tests/exchanges/test_accounts_live.py."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.positions import expect_invalid, redis_snapshot
from pydantic import SecretStr
from tradingboost.oms.v1 import account_pb2
from tradingboost.oms.v1 import account_service_pb2 as pb

from oms.bootstrap import StartupError
from oms.config import Settings

USER = "carol"
API_KEY = "AK-unique-5e1f0c"
SECRET = "SK-unique-77d2a9"
PASSWORD = "PW-unique-31b8"
SECRETS = (API_KEY, SECRET, PASSWORD)


def new_master_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


@pytest.fixture
async def keyed(redis_url: str) -> AsyncIterator[OmsHarness]:
    harness = await make_oms(redis_url, master_key=new_master_key())
    try:
        yield harness
    finally:
        await harness.close()


def register(**fields: Any) -> pb.RegisterCredentialsRequest:
    values: dict[str, Any] = {
        "user_id": USER,
        "exchange": "okx",
        "api_key": API_KEY,
        "secret": SECRET,
        "password": PASSWORD,
    }
    values.update(fields)
    return pb.RegisterCredentialsRequest(**values)


async def raw_redis_values(redis_url: str) -> bytes:
    """Every key and value in Redis, concatenated: where a leaked secret would show."""
    client = redis.Redis.from_url(redis_url)
    try:
        dump = b""
        for key in await client.keys("*"):
            kind = await client.type(key)
            if kind == b"hash":
                for field, value in (await client.hgetall(key)).items():
                    dump += field + value
            elif kind == b"string":
                dump += await client.get(key) or b""
            dump += key
        return dump
    finally:
        await client.aclose()


async def test_registered_credentials_are_sealed_and_never_returned(
    keyed: OmsHarness, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = await keyed.accounts.RegisterCredentials(register(sandbox=True))
    account = response.account
    assert (account.user_id, account.exchange) == (USER, "okx")
    assert account.status == account_pb2.ACCOUNT_STATUS_INACTIVE
    assert account.sandbox and account.has_password
    assert account.created_at == account.credentials_updated_at == account.updated_at
    stored = await raw_redis_values(redis_url)
    for secret in SECRETS:
        assert secret.encode() not in stored
        assert secret.encode() not in response.SerializeToString()
        assert secret not in caplog.text


async def test_registering_again_replaces_the_credentials(keyed: OmsHarness) -> None:
    first = (await keyed.accounts.RegisterCredentials(register())).account
    again = (
        await keyed.accounts.RegisterCredentials(register(api_key="AK-2", password=None))
    ).account
    assert again.created_at == first.created_at
    assert (
        again.credentials_updated_at.ToNanoseconds() > first.credentials_updated_at.ToNanoseconds()
    )
    assert not again.has_password


async def test_an_empty_password_is_none(keyed: OmsHarness) -> None:
    # As a JSON client (grpcurl, buf curl) sends "no password"; kept, OKX would fail on it.
    registered = (await keyed.accounts.RegisterCredentials(register(password=""))).account
    assert not registered.has_password


async def test_without_a_master_key_credentials_are_refused(oms: OmsHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await oms.accounts.RegisterCredentials(register())
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "OMS_MASTER_KEY" in (error.value.details() or "")


async def test_a_start_with_another_master_key_fails_loudly(redis_url: str) -> None:
    first = await make_oms(redis_url, master_key=new_master_key())
    await first.accounts.RegisterCredentials(register())
    await first.close()
    with pytest.raises(StartupError, match=r"OMS_MASTER_KEY: .*not the key"):
        await make_oms(redis_url, master_key=new_master_key())


async def test_a_start_without_the_master_key_fails_when_credentials_are_stored(
    redis_url: str,
) -> None:
    first = await make_oms(redis_url, master_key=new_master_key())
    await first.accounts.RegisterCredentials(register())
    await first.close()
    with pytest.raises(StartupError, match="OMS_MASTER_KEY is not set"):
        await make_oms(redis_url)


async def test_with_nothing_sealed_any_master_key_or_none_may_start(redis_url: str) -> None:
    # Only sealed credentials tie the data to a key.
    for key in (new_master_key(), None, new_master_key()):
        oms = await make_oms(redis_url, master_key=key)
        await oms.close()
    last = new_master_key()
    oms = await make_oms(redis_url, master_key=last)
    await oms.accounts.RegisterCredentials(register())
    await oms.close()
    await (await make_oms(redis_url, master_key=last)).close()


def test_a_malformed_master_key_is_refused_at_settings() -> None:
    with pytest.raises(ValueError, match="master_key"):
        Settings(master_key=SecretStr("too-short"))


MB = "x" * (1 << 20)
BAD_REGISTRATIONS: list[tuple[str, dict[str, Any]]] = [
    ("user_id", {"user_id": ""}),
    ("user_id", {"user_id": "bad user!"}),
    ("user_id", {"user_id": MB}),
    ("exchange", {"exchange": ""}),
    ("exchange", {"exchange": "paper"}),
    ("exchange", {"exchange": "nosuchexchange"}),
    ("exchange", {"exchange": MB}),
    ("api_key", {"api_key": ""}),
    ("api_key", {"api_key": " AK-1"}),
    ("api_key", {"api_key": "AK-1\n"}),
    ("api_key", {"api_key": MB}),
    ("secret", {"secret": ""}),
    ("secret", {"secret": MB}),
    ("password", {"password": "pw\t"}),
]


@pytest.mark.parametrize(
    ("field", "change"), BAD_REGISTRATIONS, ids=[f for f, _ in BAD_REGISTRATIONS]
)
async def test_bad_registration_is_invalid_argument_and_stores_nothing(
    keyed: OmsHarness, redis_url: str, field: str, change: dict[str, Any]
) -> None:
    before = await redis_snapshot(redis_url)
    await expect_invalid(keyed.accounts.RegisterCredentials(register(**change)), field)
    assert await redis_snapshot(redis_url) == before


@pytest.mark.parametrize("rpc", ["ActivateAccount", "DeactivateAccount"])
async def test_activation_needs_registered_credentials(keyed: OmsHarness, rpc: str) -> None:
    request_type = getattr(pb, f"{rpc}Request")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await getattr(keyed.accounts, rpc)(request_type(user_id=USER, exchange="okx"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"{USER} on okx" in (error.value.details() or "")


@pytest.mark.parametrize("rpc", ["ActivateAccount", "DeactivateAccount"])
@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("user_id", {"user_id": "", "exchange": "okx"}),
        ("exchange", {"user_id": USER, "exchange": "paper"}),
        ("exchange", {"user_id": USER, "exchange": "nope"}),
    ],
)
async def test_bad_activation_is_invalid_argument(
    keyed: OmsHarness, rpc: str, field: str, fields: dict[str, str]
) -> None:
    request_type = getattr(pb, f"{rpc}Request")
    await expect_invalid(getattr(keyed.accounts, rpc)(request_type(**fields)), field)


@pytest.mark.parametrize(
    ("field", "request_"),
    [
        ("user_id", pb.ListActiveAccountsRequest(user_id="bad user")),
        ("exchange", pb.ListActiveAccountsRequest(exchange="nope")),
        ("page_size", pb.ListActiveAccountsRequest(page_size=-1)),
        ("page_token", pb.ListActiveAccountsRequest(page_token="garbage")),
    ],
)
async def test_bad_list_active_accounts(
    keyed: OmsHarness, field: str, request_: pb.ListActiveAccountsRequest
) -> None:
    await expect_invalid(keyed.accounts.ListActiveAccounts(request_), field)


async def test_no_active_accounts_is_an_empty_list(keyed: OmsHarness) -> None:
    await keyed.accounts.RegisterCredentials(register())
    response = await keyed.accounts.ListActiveAccounts(pb.ListActiveAccountsRequest())
    assert list(response.accounts) == []
    assert response.next_page_token == ""


async def test_calls_on_accounts_that_do_not_exist_leave_nothing_behind(oms: OmsHarness) -> None:
    # Each change takes a per-account lock; asking about 200 unknown accounts must not keep
    # 200 of them.
    for n in range(200):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await oms.accounts.DeactivateAccount(
                pb.DeactivateAccountRequest(user_id=f"nobody-{n}", exchange="okx")
            )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(oms.app.accounts._lock) == 0
