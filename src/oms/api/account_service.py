"""AccountService: proto in, engine call, proto out. Credentials go one way only: in."""

from __future__ import annotations

from typing import Any

import grpc
from tradingboost.oms.v1 import account_service_pb2 as pb
from tradingboost.oms.v1 import account_service_pb2_grpc

from oms.api.converters import account_to_proto, register_credentials_command
from oms.engine.accounts import Accounts

Context = grpc.aio.ServicerContext[Any, Any]


class AccountService(account_service_pb2_grpc.AccountServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    async def RegisterCredentials(
        self, request: pb.RegisterCredentialsRequest, context: Context
    ) -> pb.RegisterCredentialsResponse:
        account = await self._accounts.register(register_credentials_command(request))
        return pb.RegisterCredentialsResponse(account=account_to_proto(account))

    async def ActivateAccount(
        self, request: pb.ActivateAccountRequest, context: Context
    ) -> pb.ActivateAccountResponse:
        account = await self._accounts.activate(request.user_id, request.exchange)
        return pb.ActivateAccountResponse(account=account_to_proto(account))

    async def DeactivateAccount(
        self, request: pb.DeactivateAccountRequest, context: Context
    ) -> pb.DeactivateAccountResponse:
        account = await self._accounts.deactivate(request.user_id, request.exchange)
        return pb.DeactivateAccountResponse(account=account_to_proto(account))

    async def ListActiveAccounts(
        self, request: pb.ListActiveAccountsRequest, context: Context
    ) -> pb.ListActiveAccountsResponse:
        page = await self._accounts.list_active(
            request.user_id, request.exchange, request.page_size, request.page_token
        )
        return pb.ListActiveAccountsResponse(
            accounts=[account_to_proto(account) for account in page.accounts],
            next_page_token=page.next_page_token,
        )
