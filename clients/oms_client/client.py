"""OmsClient: OrderService (conditional rules included), PositionService, TrailingStopService,
MarketDataService and AccountService over one grpc.aio channel.

Requests and results are the generated messages themselves (`order_pb2.Order`, ...). Every
unary method takes either a ready request message or its fields as keywords, and the same
call options: `timeout_s` (the deadline of each attempt), `rpc_metadata` (extra metadata)
and `retry` (its `deadline_s` bounds the whole call, retries included). Errors are the
`grpc.aio.AioRpcError` the server answered, after any retries.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol, TypeVar, Unpack, cast

import grpc
from google.protobuf.message import Message
from tradingboost.oms.v1 import (
    account_pb2,
    account_service_pb2_grpc,
    conditional_rule_pb2,
    market_data_pb2,
    market_data_service_pb2_grpc,
    order_pb2,
    order_service_pb2_grpc,
    position_pb2,
    position_service_pb2_grpc,
    trailing_stop_pb2,
    trailing_stop_service_pb2_grpc,
)
from tradingboost.oms.v1 import account_service_pb2 as apb
from tradingboost.oms.v1 import market_data_service_pb2 as md
from tradingboost.oms.v1 import order_service_pb2 as pb
from tradingboost.oms.v1 import position_service_pb2 as ppb
from tradingboost.oms.v1 import trailing_stop_service_pb2 as tpb

from oms_client.pagination import paginate
from oms_client.request_fields import (
    AccountRefFields,
    CancelAllOrdersFields,
    ClosePositionFields,
    CreateConditionalRuleFields,
    CreateTrailingStopFields,
    FindOpenOrdersFields,
    GetPortfolioSummaryFields,
    GetPositionFields,
    InstrumentFields,
    ListActiveAccountsFields,
    ListConditionalRulesFields,
    ListFillsFields,
    ListOrdersFields,
    ListPositionsFields,
    ListTrailingStopsFields,
    OpenPositionFields,
    OrderRefFields,
    PlaceOrderFields,
    PublishPricesFields,
    RegisterCredentialsFields,
    RuleRefFields,
    TrailingStopRefFields,
    build_request,
)
from oms_client.retry import (
    NOT_TAKEN_CODES,
    RETRYABLE_CODES,
    OutcomeUnknown,
    RetryPolicy,
    call_with_retry,
    not_run,
)
from oms_client.streams import (
    EventStream,
    PriceStream,
    fill_payload,
    order_update_payload,
    position_update_payload,
    rule_update_payload,
    trailing_stop_event_payload,
)

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_RETRY",
    "DEFAULT_STREAM_RETRY",
    "FillStream",
    "OmsClient",
    "OrderUpdateStream",
    "PositionUpdateStream",
    "RuleUpdateStream",
    "TrailingStopEventStream",
    "new_client_order_id",
]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Result = TypeVar("Result")
M = TypeVar("M", bound=Message)
# The requests whose client order id the client makes when the caller gives none.
C = TypeVar("C", pb.PlaceOrderRequest, ppb.OpenPositionRequest, ppb.ClosePositionRequest)
K = TypeVar("K", tpb.CreateTrailingStopRequest, pb.CreateConditionalRuleRequest)

OrderUpdateStream = EventStream[pb.StreamOrderUpdatesResponse, order_pb2.OrderUpdate]
FillStream = EventStream[pb.StreamFillsResponse, order_pb2.Fill]
RuleUpdateStream = EventStream[pb.StreamConditionalRulesResponse, conditional_rule_pb2.RuleUpdate]
PositionUpdateStream = EventStream[ppb.StreamPositionsResponse, position_pb2.PositionUpdate]
TrailingStopEventStream = EventStream[
    tpb.StreamTrailingStopEventsResponse, trailing_stop_pb2.TrailingStopEvent
]

DEFAULT_RETRY = RetryPolicy()
"""Unary calls: 6 attempts over about 1.5 s, for a blip, not for an outage. That outlasts
the reconnect backoff of a channel with CHANNEL_OPTIONS (at most ~0.6 s), so the first calls
after a server came back find it."""

DEFAULT_STREAM_RETRY = RetryPolicy(attempts=20)
"""Streams: reconnect attempts over about 30 s, long enough to ride out a server restart."""

# gRPC's reconnect backoff defaults (first retry after 1 s, growing to 120 s) suit big fleets;
# a strategy next to its OMS wants its channel back within moments of a restart.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    # Keep pinging while only the server talks (a stream): the default stops after 2 pings.
    ("grpc.http2.max_pings_without_data", 0),
)
"""The options `OmsClient.connect` gives its channel: reconnects within ~0.6 s of a server
restart, which DEFAULT_RETRY assumes. Pass them to a channel of your own
(`grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)`)."""


class OmsClient:
    """An async client of the OMS.

    `OmsClient.connect(target)` opens (and on close, closes) an insecure channel;
    `OmsClient(channel)` uses a channel you own. Use it as an async context manager, or call
    `close()`. Give a channel of your own `options=CHANNEL_OPTIONS` (plus the
    `grpc.keepalive_*` ones that `connect` sets): with gRPC's default reconnect backoff (1 s,
    growing to 120 s) it can take seconds to find a restarted server, longer than
    DEFAULT_RETRY keeps trying.

    Args:
        token: sent as `authorization: Bearer <token>` on every call when auth is on.
        retry: for unary calls; only RETRYABLE_CODES are retried (PublishPrices only when
            the server did not run it, see `publish_prices`).
        stream_retry: reconnects of the resuming streams.
        default_timeout_s: deadline of each attempt when a call gives no `timeout_s`;
            None for no deadline.
        stream_idle_timeout_s: an event stream with no message at all (the server sends a
            heartbeat at least every 15 s) for this long is taken for a dead connection and
            reconnected; None to wait forever.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        token: str | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        stream_retry: RetryPolicy = DEFAULT_STREAM_RETRY,
        default_timeout_s: float | None = 10.0,
        stream_idle_timeout_s: float | None = 45.0,
    ) -> None:
        self._channel = channel
        self._owns_channel = False
        self._orders: order_service_pb2_grpc.OrderServiceAsyncStub = (
            order_service_pb2_grpc.OrderServiceStub(channel)
        )
        self._market: market_data_service_pb2_grpc.MarketDataServiceAsyncStub = (
            market_data_service_pb2_grpc.MarketDataServiceStub(channel)
        )
        self._positions: position_service_pb2_grpc.PositionServiceAsyncStub = (
            position_service_pb2_grpc.PositionServiceStub(channel)
        )
        self._trailing_stops: trailing_stop_service_pb2_grpc.TrailingStopServiceAsyncStub = (
            trailing_stop_service_pb2_grpc.TrailingStopServiceStub(channel)
        )
        self._accounts: account_service_pb2_grpc.AccountServiceAsyncStub = (
            account_service_pb2_grpc.AccountServiceStub(channel)
        )
        self._auth: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._retry = retry
        self._stream_retry = stream_retry
        self._default_timeout_s = default_timeout_s
        self._stream_idle_timeout_s = stream_idle_timeout_s

    @classmethod
    def connect(
        cls,
        target: str,
        *,
        token: str | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        stream_retry: RetryPolicy = DEFAULT_STREAM_RETRY,
        default_timeout_s: float | None = 10.0,
        stream_idle_timeout_s: float | None = 45.0,
        keepalive_s: float = 10.0,
    ) -> OmsClient:
        """A client on a new insecure channel to `target` ("host:port"), closed with it.

        The channel reconnects by itself; a server restarted on the same address is found
        again, and the streams resume on it. While calls are open it pings the server every
        `keepalive_s` (the server accepts one a second at most): a connection that does not
        answer within half that is dropped, and its calls fail UNAVAILABLE (streams resume),
        instead of waiting minutes for TCP to give up on a peer that vanished silently.
        """
        keepalive = (
            ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive_s * 500)),
            ("grpc.http2.ping_timeout_ms", int(keepalive_s * 500)),
        )
        client = cls(
            grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS + keepalive),
            token=token,
            retry=retry,
            stream_retry=stream_retry,
            default_timeout_s=default_timeout_s,
            stream_idle_timeout_s=stream_idle_timeout_s,
        )
        client._owns_channel = True
        return client

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel, for the services this client does not wrap (health, reflection)."""
        return self._channel

    async def close(self) -> None:
        """Closes the channel if `connect` opened it; a channel passed in stays open."""
        if self._owns_channel:
            await self._channel.close(grace=None)

    async def __aenter__(self) -> OmsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # Orders

    async def place_order(
        self,
        request: pb.PlaceOrderRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[PlaceOrderFields],
    ) -> order_pb2.Order:
        """Places an order; returns it as it stands after the submit.

        Without a `client_order_id` the client makes one ("c-" + 32 hex digits) once, before
        the first attempt: every retry sends the same id, and the server's idempotency on
        (user_id, client_order_id) turns a retry after a lost response into a read of the
        order already placed, never a second order. The id is on the returned order.
        """
        prepared = _with_client_order_id(build_request(pb.PlaceOrderRequest, request, fields))
        response = await self._keyed(
            self._orders.PlaceOrder, prepared, timeout_s, rpc_metadata, retry, "client_order_id"
        )
        return response.order

    async def cancel_order(
        self,
        request: pb.CancelOrderRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[OrderRefFields],
    ) -> order_pb2.Order:
        """Cancels an order by `order_id` or `client_order_id`; returns it (CANCELED, or
        PENDING_CANCEL while the exchange confirms).

        A retry whose lost predecessor did cancel the order would meet FAILED_PRECONDITION
        (the order is terminal); the client then reads the order and returns it if it is
        CANCELED, since that is the outcome asked for.
        """
        prepared = build_request(pb.CancelOrderRequest, request, fields)
        metadata = self._metadata(rpc_metadata)

        async def cancel(within_s: float | None) -> order_pb2.Order:
            response = await self._orders.CancelOrder(prepared, timeout=within_s, metadata=metadata)
            return response.order

        async def read(within_s: float | None) -> order_pb2.Order:
            response = await self._orders.GetOrder(
                pb.GetOrderRequest(
                    user_id=prepared.user_id,
                    order_id=prepared.order_id,
                    client_order_id=prepared.client_order_id,
                ),
                timeout=within_s,
                metadata=metadata,
            )
            return response.order

        return await self._cancel_with_retry(
            cancel,
            read,
            lambda order: order.status == order_pb2.ORDER_STATUS_CANCELED,
            timeout_s,
            retry,
        )

    async def cancel_all_orders(
        self,
        request: pb.CancelAllOrdersRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[CancelAllOrdersFields],
    ) -> list[order_pb2.Order]:
        """Cancels every open order of the user (optionally of one exchange, symbol or
        strategy tag); returns
        the orders acted on. After a retry, orders that a lost earlier attempt cancelled are
        not in the list (they are no longer open): list them with `list_orders` if needed."""
        prepared = build_request(pb.CancelAllOrdersRequest, request, fields)
        response = await self._unary(
            self._orders.CancelAllOrders, prepared, timeout_s, rpc_metadata, retry
        )
        return list(response.orders)

    async def get_order(
        self,
        request: pb.GetOrderRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[OrderRefFields],
    ) -> order_pb2.Order:
        """One order, by `order_id` or `client_order_id`."""
        prepared = build_request(pb.GetOrderRequest, request, fields)
        response = await self._unary(
            self._orders.GetOrder, prepared, timeout_s, rpc_metadata, retry
        )
        return response.order

    async def list_orders_page(
        self,
        request: pb.ListOrdersRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ListOrdersFields],
    ) -> pb.ListOrdersResponse:
        """One page of orders, newest first, with `next_page_token` and `as_of_sequence`
        (stream with `after_sequence=as_of_sequence` to continue from this snapshot)."""
        prepared = build_request(pb.ListOrdersRequest, request, fields)
        return await self._unary(self._orders.ListOrders, prepared, timeout_s, rpc_metadata, retry)

    def list_orders(
        self,
        request: pb.ListOrdersRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ListOrdersFields],
    ) -> AsyncIterator[order_pb2.Order]:
        """Every matching order across all pages (`page_size` sets the page length)."""
        return _every_item(
            build_request(pb.ListOrdersRequest, request, fields),
            lambda page: self.list_orders_page(
                page, timeout_s=timeout_s, rpc_metadata=rpc_metadata, retry=retry
            ),
            lambda response: response.orders,
        )

    async def find_open_orders(
        self,
        request: pb.FindOpenOrdersRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[FindOpenOrdersFields],
    ) -> list[order_pb2.Order]:
        """A grid bot's "is this level taken?": the open orders of one instrument that carry
        `grid_level`, or whose price (limit, else stop) is within `price_tolerance` of `price`
        (give either, or both); oldest first, at most 1000 (the RPC's own response says
        `truncated` when more matched)."""
        prepared = build_request(pb.FindOpenOrdersRequest, request, fields)
        response = await self._unary(
            self._orders.FindOpenOrders, prepared, timeout_s, rpc_metadata, retry
        )
        return list(response.orders)

    async def list_fills_page(
        self,
        request: pb.ListFillsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ListFillsFields],
    ) -> pb.ListFillsResponse:
        """One page of fills, newest first, with `next_page_token` and `as_of_sequence`."""
        prepared = build_request(pb.ListFillsRequest, request, fields)
        return await self._unary(self._orders.ListFills, prepared, timeout_s, rpc_metadata, retry)

    def list_fills(
        self,
        request: pb.ListFillsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ListFillsFields],
    ) -> AsyncIterator[order_pb2.Fill]:
        """Every matching fill across all pages."""
        return _every_item(
            build_request(pb.ListFillsRequest, request, fields),
            lambda page: self.list_fills_page(
                page, timeout_s=timeout_s, rpc_metadata=rpc_metadata, retry=retry
            ),
            lambda response: response.fills,
        )

    def stream_order_updates(
        self,
        user_id: str,
        *,
        exchange: str = "",
        symbol: str = "",
        after_sequence: int = 0,
        from_oldest: bool = False,
        rpc_metadata: Mapping[str, str] | None = None,
    ) -> OrderUpdateStream:
        """Every order change of the user, each once and in order, resuming by itself after
        a server restart, a dropped connection or a slow-consumer cut-off.

        `after_sequence` 0 is live only; pass a snapshot's `as_of_sequence` or a persisted
        `last_sequence` to replay from there, or `from_oldest` to replay every retained
        event (what a snapshot whose `as_of_sequence` is 0, a user with no events yet, needs).
        The stream connects on the first read.
        """
        metadata = self._metadata(rpc_metadata)

        def open_call(
            after: int, oldest: bool
        ) -> grpc.aio.UnaryStreamCall[pb.StreamOrderUpdatesRequest, pb.StreamOrderUpdatesResponse]:
            return self._orders.StreamOrderUpdates(
                pb.StreamOrderUpdatesRequest(
                    user_id=user_id,
                    exchange=exchange,
                    symbol=symbol,
                    after_sequence=after,
                    from_oldest=oldest,
                ),
                metadata=metadata,
            )

        return EventStream(
            open_call,
            order_update_payload,
            after_sequence,
            self._stream_retry,
            self._stream_idle_timeout_s,
            from_oldest=from_oldest,
        )

    def stream_fills(
        self,
        user_id: str,
        *,
        exchange: str = "",
        symbol: str = "",
        after_sequence: int = 0,
        from_oldest: bool = False,
        rpc_metadata: Mapping[str, str] | None = None,
    ) -> FillStream:
        """Every fill of the user, each once and in order; resumes as `stream_order_updates`."""
        metadata = self._metadata(rpc_metadata)

        def open_call(
            after: int, oldest: bool
        ) -> grpc.aio.UnaryStreamCall[pb.StreamFillsRequest, pb.StreamFillsResponse]:
            return self._orders.StreamFills(
                pb.StreamFillsRequest(
                    user_id=user_id,
                    exchange=exchange,
                    symbol=symbol,
                    after_sequence=after,
                    from_oldest=oldest,
                ),
                metadata=metadata,
            )

        return EventStream(
            open_call,
            fill_payload,
            after_sequence,
            self._stream_retry,
            self._stream_idle_timeout_s,
            from_oldest=from_oldest,
        )

    # Conditional rules

    async def create_rule(
        self,
        request: pb.CreateConditionalRuleRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[CreateConditionalRuleFields],
    ) -> conditional_rule_pb2.ConditionalRule:
        """Creates a one-shot one-cancels-others rule: when the trigger order reaches
        `condition` (FILLED, PARTIALLY_FILLED = its first fill, or CANCELED), every order of
        `cancel_order_ids` still open is cancelled, once. Returns the rule: ACTIVE, or already
        TRIGGERED (with its results) when the trigger was past the condition.

        Without a `client_id` the client makes one ("c-" + 32 hex digits) once, before the
        first attempt, as `place_order` does: every retry sends the same id, and the server
        answers a known (user_id, client_id) with the rule it already has, so a retry after a
        lost response returns the rule the first attempt created and never arms a second one.
        The id is on the returned rule.
        """
        prepared = _with_client_id(build_request(pb.CreateConditionalRuleRequest, request, fields))
        response = await self._keyed(
            self._orders.CreateConditionalRule,
            prepared,
            timeout_s,
            rpc_metadata,
            retry,
            "client_id",
        )
        return response.rule

    async def get_rule(
        self,
        request: pb.GetConditionalRuleRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[RuleRefFields],
    ) -> conditional_rule_pb2.ConditionalRule:
        """One conditional rule, by `rule_id` or by the `client_id` it was created with."""
        prepared = build_request(pb.GetConditionalRuleRequest, request, fields)
        response = await self._unary(
            self._orders.GetConditionalRule, prepared, timeout_s, rpc_metadata, retry
        )
        return response.rule

    async def list_rules_page(
        self,
        request: pb.ListConditionalRulesRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ListConditionalRulesFields],
    ) -> pb.ListConditionalRulesResponse:
        """One page of conditional rules (optionally of one `trigger_order_id`, or in
        `statuses`), newest first, with `next_page_token` and `as_of_sequence`."""
        prepared = build_request(pb.ListConditionalRulesRequest, request, fields)
        return await self._unary(
            self._orders.ListConditionalRules, prepared, timeout_s, rpc_metadata, retry
        )

    def list_rules(
        self,
        request: pb.ListConditionalRulesRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ListConditionalRulesFields],
    ) -> AsyncIterator[conditional_rule_pb2.ConditionalRule]:
        """Every matching conditional rule across all pages (`page_size` sets the page
        length), newest first."""
        return _every_item(
            build_request(pb.ListConditionalRulesRequest, request, fields),
            lambda page: self.list_rules_page(
                page, timeout_s=timeout_s, rpc_metadata=rpc_metadata, retry=retry
            ),
            lambda response: response.rules,
        )

    async def delete_rule(
        self,
        request: pb.DeleteConditionalRuleRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[RuleRefFields],
    ) -> conditional_rule_pb2.ConditionalRule:
        """Deletes an ACTIVE rule (by `rule_id` or `client_id`) so that it never fires; returns
        it, CANCELED with `status_reason` "deleted" (kept for history). FAILED_PRECONDITION
        when the rule has already TRIGGERED.

        Retried like a read: the server answers the delete of a CANCELED rule with the rule
        unchanged, so a retry after a lost response returns what the first attempt did.
        """
        prepared = build_request(pb.DeleteConditionalRuleRequest, request, fields)
        response = await self._unary(
            self._orders.DeleteConditionalRule, prepared, timeout_s, rpc_metadata, retry
        )
        return response.rule

    def stream_rules(
        self,
        user_id: str,
        *,
        after_sequence: int = 0,
        from_oldest: bool = False,
        rpc_metadata: Mapping[str, str] | None = None,
    ) -> RuleUpdateStream:
        """Every change of the user's conditional rules (created, fired, results committed,
        cancelled), each once and in order; resumes as `stream_order_updates`. Pass a
        `list_rules_page` snapshot's `as_of_sequence` as `after_sequence` for
        list-then-watch."""
        metadata = self._metadata(rpc_metadata)

        def open_call(
            after: int, oldest: bool
        ) -> grpc.aio.UnaryStreamCall[
            pb.StreamConditionalRulesRequest, pb.StreamConditionalRulesResponse
        ]:
            return self._orders.StreamConditionalRules(
                pb.StreamConditionalRulesRequest(
                    user_id=user_id, after_sequence=after, from_oldest=oldest
                ),
                metadata=metadata,
            )

        return EventStream(
            open_call,
            rule_update_payload,
            after_sequence,
            self._stream_retry,
            self._stream_idle_timeout_s,
            from_oldest=from_oldest,
        )

    # Positions

    async def get_position(
        self,
        request: ppb.GetPositionRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[GetPositionFields],
    ) -> position_pb2.Position:
        """One position record: by `position_id`, or the current record of (`exchange`,
        `symbol`, `position_side`), which is the latest CLOSED one while that side is flat."""
        prepared = build_request(ppb.GetPositionRequest, request, fields)
        response = await self._unary(
            self._positions.GetPosition, prepared, timeout_s, rpc_metadata, retry
        )
        return response.position

    async def list_positions_page(
        self,
        request: ppb.ListPositionsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ListPositionsFields],
    ) -> ppb.ListPositionsResponse:
        """One page of position records (OPEN only unless `include_closed`), most recently
        updated first, with `next_page_token` and `as_of_sequence` (stream positions with
        `after_sequence=as_of_sequence` to continue from this snapshot)."""
        prepared = build_request(ppb.ListPositionsRequest, request, fields)
        return await self._unary(
            self._positions.ListPositions, prepared, timeout_s, rpc_metadata, retry
        )

    def list_positions(
        self,
        request: ppb.ListPositionsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ListPositionsFields],
    ) -> AsyncIterator[position_pb2.Position]:
        """Every matching position record across all pages (`page_size` sets the page
        length), newest record first, each once. A record opened while the pages are read
        may be missed: for a consistent view read one page (up to 1000) and follow
        `stream_positions` from its `as_of_sequence`."""
        return _every_item(
            build_request(ppb.ListPositionsRequest, request, fields),
            lambda page: self.list_positions_page(
                page, timeout_s=timeout_s, rpc_metadata=rpc_metadata, retry=retry
            ),
            lambda response: response.positions,
        )

    async def open_position(
        self,
        request: ppb.OpenPositionRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[OpenPositionFields],
    ) -> ppb.OpenPositionResponse:
        """Places an entry order (MARKET or LIMIT) for `position_side`, with the take-profit
        and stop-loss the server places, linked one-cancels-other, once the entry has filled.
        Returns the entry as it stands after the submit and the order ids reserved for the
        exits (they exist from the entry's fill on).

        The entry's `client_order_id`, when not given, is made here once, as in
        `place_order`: a retry after a lost response returns the same entry and the same
        reserved exit ids, never a second position entry, even once the price has moved
        past an exit (the server looks the id up before judging the exits).
        """
        prepared = _with_client_order_id(build_request(ppb.OpenPositionRequest, request, fields))
        return await self._keyed(
            self._positions.OpenPosition,
            prepared,
            timeout_s,
            rpc_metadata,
            retry,
            "client_order_id",
        )

    async def close_position(
        self,
        request: ppb.ClosePositionRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ClosePositionFields],
    ) -> order_pb2.Order:
        """Closes `quantity` of the position on one side (the whole of it when empty) with a
        reduce-only MARKET order; returns that order as it stands after the submit.

        The `client_order_id`, when not given, is made here once, as in `place_order`: a
        retry after a lost response returns the order the first attempt placed, instead of
        closing a second time (or meeting FAILED_PRECONDITION on a position already flat).
        """
        prepared = _with_client_order_id(build_request(ppb.ClosePositionRequest, request, fields))
        response = await self._keyed(
            self._positions.ClosePosition,
            prepared,
            timeout_s,
            rpc_metadata,
            retry,
            "client_order_id",
        )
        return response.order

    def stream_positions(
        self,
        user_id: str,
        *,
        exchange: str = "",
        symbol: str = "",
        after_sequence: int = 0,
        from_oldest: bool = False,
        rpc_metadata: Mapping[str, str] | None = None,
    ) -> PositionUpdateStream:
        """Every position change of the user (fills, and mark price moves coalesced to one
        update per position per tick), each once and in order; resumes as
        `stream_order_updates`. Pass a `list_positions_page` snapshot's `as_of_sequence` as
        `after_sequence` for list-then-watch."""
        metadata = self._metadata(rpc_metadata)

        def open_call(
            after: int, oldest: bool
        ) -> grpc.aio.UnaryStreamCall[ppb.StreamPositionsRequest, ppb.StreamPositionsResponse]:
            return self._positions.StreamPositions(
                ppb.StreamPositionsRequest(
                    user_id=user_id,
                    exchange=exchange,
                    symbol=symbol,
                    after_sequence=after,
                    from_oldest=oldest,
                ),
                metadata=metadata,
            )

        return EventStream(
            open_call,
            position_update_payload,
            after_sequence,
            self._stream_retry,
            self._stream_idle_timeout_s,
            from_oldest=from_oldest,
        )

    async def get_portfolio_summary(
        self,
        request: ppb.GetPortfolioSummaryRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[GetPortfolioSummaryFields],
    ) -> position_pb2.PortfolioSummary:
        """Totals over the user's position records, OPEN and CLOSED (optionally on one
        exchange); zero totals for a user with no position."""
        prepared = build_request(ppb.GetPortfolioSummaryRequest, request, fields)
        response = await self._unary(
            self._positions.GetPortfolioSummary, prepared, timeout_s, rpc_metadata, retry
        )
        return response.portfolio_summary

    # Trailing stops

    async def create_trailing_stop(
        self,
        request: tpb.CreateTrailingStopRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[CreateTrailingStopFields],
    ) -> trailing_stop_pb2.TrailingStop:
        """Starts a trailing stop on the user's open position on one side; returns it: ACTIVE
        at once with the last price as watermark, or PENDING_ACTIVATION until the price
        reaches `activation_price`. Give exactly one of `callback_rate` (a fraction: "0.02"
        is 2%, from 0.001 to 0.1) and `callback_spread` (a price distance), as a Decimal or a
        decimal string, like `activation_price` and `quantity` (empty: the whole position at
        trigger time).

        Without a `client_id` the client makes one ("c-" + 32 hex digits) once, before the
        first attempt, as `place_order` does: every retry sends the same id, and the server
        answers a known (user_id, client_id) with the stop it already has, before judging the
        request against the current price again, so a retry after a lost response returns
        the stop the first attempt created and never starts a second one. The id is on the
        returned stop.
        """
        prepared = _with_client_id(
            build_request(
                tpb.CreateTrailingStopRequest, request, _create_trailing_stop_fields(fields)
            )
        )
        response = await self._keyed(
            self._trailing_stops.CreateTrailingStop,
            prepared,
            timeout_s,
            rpc_metadata,
            retry,
            "client_id",
        )
        return response.trailing_stop

    async def get_trailing_stop(
        self,
        request: tpb.GetTrailingStopRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[TrailingStopRefFields],
    ) -> trailing_stop_pb2.TrailingStop:
        """One trailing stop, by `trailing_stop_id` or `client_id`."""
        prepared = build_request(tpb.GetTrailingStopRequest, request, fields)
        response = await self._unary(
            self._trailing_stops.GetTrailingStop, prepared, timeout_s, rpc_metadata, retry
        )
        return response.trailing_stop

    async def list_trailing_stops_page(
        self,
        request: tpb.ListTrailingStopsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ListTrailingStopsFields],
    ) -> tpb.ListTrailingStopsResponse:
        """One page of trailing stops, newest first, with `next_page_token` and
        `as_of_sequence` (stream with `after_sequence=as_of_sequence` to continue from this
        snapshot). `active_only` keeps the working ones (PENDING_ACTIVATION, ACTIVE)."""
        prepared = build_request(tpb.ListTrailingStopsRequest, request, fields)
        return await self._unary(
            self._trailing_stops.ListTrailingStops, prepared, timeout_s, rpc_metadata, retry
        )

    def list_trailing_stops(
        self,
        request: tpb.ListTrailingStopsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ListTrailingStopsFields],
    ) -> AsyncIterator[trailing_stop_pb2.TrailingStop]:
        """Every matching trailing stop across all pages (`page_size` sets the page length),
        newest first."""
        return _every_item(
            build_request(tpb.ListTrailingStopsRequest, request, fields),
            lambda page: self.list_trailing_stops_page(
                page, timeout_s=timeout_s, rpc_metadata=rpc_metadata, retry=retry
            ),
            lambda response: response.trailing_stops,
        )

    async def cancel_trailing_stop(
        self,
        request: tpb.CancelTrailingStopRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[TrailingStopRefFields],
    ) -> trailing_stop_pb2.TrailingStop:
        """Cancels a working trailing stop by `trailing_stop_id` or `client_id`; returns it,
        CANCELED with `status_reason` "canceled_by_user". FAILED_PRECONDITION when it is
        already TRIGGERED, CANCELED or FAILED.

        A retry whose lost predecessor did cancel the stop would meet FAILED_PRECONDITION;
        the client then reads the stop and returns it if it is CANCELED with reason
        "canceled_by_user", since that is the outcome asked for. A stop that ended any other
        way (triggered, or "position_closed") keeps the error.
        """
        prepared = build_request(tpb.CancelTrailingStopRequest, request, fields)
        metadata = self._metadata(rpc_metadata)

        async def cancel(within_s: float | None) -> trailing_stop_pb2.TrailingStop:
            response = await self._trailing_stops.CancelTrailingStop(
                prepared, timeout=within_s, metadata=metadata
            )
            return response.trailing_stop

        async def read(within_s: float | None) -> trailing_stop_pb2.TrailingStop:
            response = await self._trailing_stops.GetTrailingStop(
                tpb.GetTrailingStopRequest(
                    user_id=prepared.user_id,
                    trailing_stop_id=prepared.trailing_stop_id,
                    client_id=prepared.client_id,
                ),
                timeout=within_s,
                metadata=metadata,
            )
            return response.trailing_stop

        def canceled_by_user(stop: trailing_stop_pb2.TrailingStop) -> bool:
            return (
                stop.status == trailing_stop_pb2.TRAILING_STOP_STATUS_CANCELED
                and stop.status_reason == _CANCELED_BY_USER
            )

        return await self._cancel_with_retry(cancel, read, canceled_by_user, timeout_s, retry)

    def stream_trailing_stop_events(
        self,
        user_id: str,
        *,
        exchange: str = "",
        symbol: str = "",
        after_sequence: int = 0,
        from_oldest: bool = False,
        rpc_metadata: Mapping[str, str] | None = None,
    ) -> TrailingStopEventStream:
        """Every trailing stop change of the user (created, activated, stop price moved,
        triggered, canceled, failed), each once and in order; resumes as
        `stream_order_updates`. Pass a `list_trailing_stops_page` snapshot's
        `as_of_sequence` as `after_sequence` for list-then-watch."""
        metadata = self._metadata(rpc_metadata)

        def open_call(
            after: int, oldest: bool
        ) -> grpc.aio.UnaryStreamCall[
            tpb.StreamTrailingStopEventsRequest, tpb.StreamTrailingStopEventsResponse
        ]:
            return self._trailing_stops.StreamTrailingStopEvents(
                tpb.StreamTrailingStopEventsRequest(
                    user_id=user_id,
                    exchange=exchange,
                    symbol=symbol,
                    after_sequence=after,
                    from_oldest=oldest,
                ),
                metadata=metadata,
            )

        return EventStream(
            open_call,
            trailing_stop_event_payload,
            after_sequence,
            self._stream_retry,
            self._stream_idle_timeout_s,
            from_oldest=from_oldest,
        )

    # Accounts

    async def register_credentials(
        self,
        request: apb.RegisterCredentialsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[RegisterCredentialsFields],
    ) -> account_pb2.Account:
        """Stores the user's `api_key`, `secret` and optional `password` for one exchange
        (not "paper"), sealed by the server, replacing any previous ones; `sandbox` for the
        exchange's testnet. Returns the account, never its credentials: INACTIVE when new, and
        still ACTIVE (reconnected with the new credentials) when it was. FAILED_PRECONDITION
        when the server has no master key.

        Retried like a read: a registration replaces what is stored, so a retry after a lost
        response stores the same credentials again, in the same one account. The client
        logs nothing, and a keyword it cannot put in the request is reported by name,
        without its value.
        """
        prepared = _register_credentials_request(request, fields)
        response = await self._unary(
            self._accounts.RegisterCredentials, prepared, timeout_s, rpc_metadata, retry
        )
        return response.account

    async def activate_account(
        self,
        request: apb.ActivateAccountRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[AccountRefFields],
    ) -> account_pb2.Account:
        """Makes the OMS follow the account of (`user_id`, `exchange`): the server checks the
        credentials with the exchange and reconciles the account first; returns it ACTIVE.
        NOT_FOUND without registered credentials, FAILED_PRECONDITION when the exchange
        refuses them (the message says why). Activation talks to the exchange: give it a
        `timeout_s` long enough for that.

        Retried like a read: activating an ACTIVE account returns it unchanged."""
        prepared = build_request(apb.ActivateAccountRequest, request, fields)
        response = await self._unary(
            self._accounts.ActivateAccount, prepared, timeout_s, rpc_metadata, retry
        )
        return response.account

    async def deactivate_account(
        self,
        request: apb.DeactivateAccountRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[AccountRefFields],
    ) -> account_pb2.Account:
        """Stops following the account of (`user_id`, `exchange`); returns it INACTIVE. Its
        orders at the exchange stay as they are and its credentials stay stored. NOT_FOUND
        without registered credentials.

        Retried like a read: deactivating an INACTIVE account returns it unchanged."""
        prepared = build_request(apb.DeactivateAccountRequest, request, fields)
        response = await self._unary(
            self._accounts.DeactivateAccount, prepared, timeout_s, rpc_metadata, retry
        )
        return response.account

    async def list_active_accounts_page(
        self,
        request: apb.ListActiveAccountsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ListActiveAccountsFields],
    ) -> apb.ListActiveAccountsResponse:
        """One page of ACTIVE accounts (optionally of one `user_id` and/or `exchange`),
        ordered by (user_id, exchange), with `next_page_token`. Every user's accounts (no
        `user_id`) need an admin token when auth is on."""
        prepared = build_request(apb.ListActiveAccountsRequest, request, fields)
        return await self._unary(
            self._accounts.ListActiveAccounts, prepared, timeout_s, rpc_metadata, retry
        )

    def list_active_accounts(
        self,
        request: apb.ListActiveAccountsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[ListActiveAccountsFields],
    ) -> AsyncIterator[account_pb2.Account]:
        """Every matching ACTIVE account across all pages (`page_size` sets the page length),
        ordered by (user_id, exchange)."""
        return _every_item(
            build_request(apb.ListActiveAccountsRequest, request, fields),
            lambda page: self.list_active_accounts_page(
                page, timeout_s=timeout_s, rpc_metadata=rpc_metadata, retry=retry
            ),
            lambda response: response.accounts,
        )

    # Market data

    async def publish_prices(
        self,
        request: md.PublishPricesRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[PublishPricesFields],
    ) -> list[market_data_pb2.Price]:
        """Applies price ticks (paper exchange); returns once all they cause is committed.

        By default retried only when the server refused it without running it, as it stopped
        (SHUTTING_DOWN_REASON), under the client's retry policy: a tick is an event, not an
        idempotent state write. If a response is lost after the server applied the tick, a
        retry applies it a second time, which streams it twice and matches it again against
        orders resting since. Pass a `retry` (any retryable failure retried) only where a
        repeated tick is harmless, or NO_RETRY for none at all. A call that never reached the
        server is safe to repeat, and needs no retry: the call waits for the channel to be
        connected (gRPC's wait-for-ready), within its `timeout_s`, instead of failing at once
        while the server restarts.
        """
        prepared = build_request(md.PublishPricesRequest, request, fields)
        response = await self._unary(
            self._market.PublishPrices,
            prepared,
            timeout_s,
            rpc_metadata,
            retry,
            wait_for_ready=True,
            only=not_run if retry is None else None,
        )
        return list(response.prices)

    async def get_price(
        self,
        request: md.GetPriceRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[InstrumentFields],
    ) -> market_data_pb2.Price:
        """The last price of one instrument."""
        prepared = build_request(md.GetPriceRequest, request, fields)
        response = await self._unary(
            self._market.GetPrice, prepared, timeout_s, rpc_metadata, retry
        )
        return response.price

    async def get_market(
        self,
        request: md.GetMarketRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        **fields: Unpack[InstrumentFields],
    ) -> market_data_pb2.Market:
        """One market's trading rules (amount step, minimum amount, price tick, contract
        size): what `round_quantity` and `round_price` need."""
        prepared = build_request(md.GetMarketRequest, request, fields)
        response = await self._unary(
            self._market.GetMarket, prepared, timeout_s, rpc_metadata, retry
        )
        return response.market

    def stream_prices(
        self,
        instruments: Iterable[market_data_pb2.Instrument],
        *,
        with_last_prices: bool = True,
        rpc_metadata: Mapping[str, str] | None = None,
    ) -> PriceStream:
        """Ticks of the instruments, reconnecting by itself: with `with_last_prices`, each
        (re)connection starts with every instrument's last price (see PriceStream)."""
        request = md.StreamPricesRequest(instruments=instruments, with_last_prices=with_last_prices)
        metadata = self._metadata(rpc_metadata)

        def open_call() -> grpc.aio.UnaryStreamCall[
            md.StreamPricesRequest, md.StreamPricesResponse
        ]:
            return self._market.StreamPrices(request, metadata=metadata)

        return PriceStream(open_call, self._stream_retry)

    # Plumbing

    def _metadata(self, rpc_metadata: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
        return self._auth + tuple((rpc_metadata or {}).items())

    def _attempt_timeout(self, timeout_s: float | None) -> float | None:
        return self._default_timeout_s if timeout_s is None else timeout_s

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout_s: float | None,
        rpc_metadata: Mapping[str, str] | None,
        retry: RetryPolicy | None,
        *,
        wait_for_ready: bool | None = None,
        failed: Callable[[grpc.aio.AioRpcError], None] | None = None,
        only: Callable[[grpc.aio.AioRpcError], bool] | None = None,
    ) -> Resp:
        metadata = self._metadata(rpc_metadata)
        return await call_with_retry(
            self._retry if retry is None else retry,
            lambda within_s: method(
                request, timeout=within_s, metadata=metadata, wait_for_ready=wait_for_ready
            ),
            self._attempt_timeout(timeout_s),
            failed,
            only,
        )

    async def _keyed(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout_s: float | None,
        rpc_metadata: Mapping[str, str] | None,
        retry: RetryPolicy | None,
        key_field: str,
    ) -> Resp:
        """`_unary` for a call idempotent on the request's `key_field`: when its attempts run
        out without an answer, OutcomeUnknown hands the caller that key, which the client may
        have made, so that the caller's own retry cannot act twice."""
        maybe_taken = False

        def failed(error: grpc.aio.AioRpcError) -> None:
            nonlocal maybe_taken
            maybe_taken |= error.code() not in NOT_TAKEN_CODES and not not_run(error)

        try:
            return await self._unary(method, request, timeout_s, rpc_metadata, retry, failed=failed)
        except grpc.aio.AioRpcError as error:
            if error.code() in RETRYABLE_CODES and maybe_taken:
                raise OutcomeUnknown(error, key_field, getattr(request, key_field)) from error
            raise

    async def _cancel_with_retry(
        self,
        cancel: Callable[[float | None], Awaitable[Result]],
        read: Callable[[float | None], Awaitable[Result]],
        cancelled: Callable[[Result], bool],
        timeout_s: float | None,
        retry: RetryPolicy | None,
    ) -> Result:
        """`cancel`, retried. A retry whose lost predecessor did cancel meets
        FAILED_PRECONDITION (the thing is terminal now): then `read` it, and return it when
        `cancelled` says it ended as a cancel ends it, since that is the outcome asked for;
        otherwise the error stands. The read shares its attempt's time: with none left it
        ends DEADLINE_EXCEEDED, and the retry policy decides on that."""
        attempts = 0
        loop = asyncio.get_running_loop()

        async def attempt(within_s: float | None) -> Result:
            nonlocal attempts
            attempts += 1
            started = loop.time()
            try:
                return await cancel(within_s)
            except grpc.aio.AioRpcError as error:
                if attempts > 1 and error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    spent = loop.time() - started
                    current = await read(None if within_s is None else max(within_s - spent, 0))
                    if cancelled(current):
                        return current
                raise

        return await call_with_retry(
            self._retry if retry is None else retry, attempt, self._attempt_timeout(timeout_s)
        )


class _PageRequest(Protocol):
    page_token: str


class _PageResponse(Protocol):
    @property
    def next_page_token(self) -> str: ...


Q = TypeVar("Q", bound=Message)
R = TypeVar("R", bound=_PageResponse)
T = TypeVar("T")


def _every_item(
    first: Q, read_page: Callable[[Q], Awaitable[R]], items: Callable[[R], Iterable[T]]
) -> AsyncIterator[T]:
    """Every item of every page, each page read with `first` and the previous page's token."""

    async def fetch_page(token: str) -> tuple[Iterable[T], str]:
        request = _copy(first)
        cast(_PageRequest, request).page_token = token
        response = await read_page(request)
        return items(response), response.next_page_token

    return paginate(fetch_page, cast(_PageRequest, first).page_token)


def _copy(message: M) -> M:
    duplicate = type(message)()
    duplicate.CopyFrom(message)
    return duplicate


def new_client_order_id() -> str:
    """A fresh client order id (or trailing stop client_id), as the client makes for a call
    given none. Make it before a call that may be cancelled (asyncio.wait_for) and send it
    again with the retry: an id the client made dies with a cancelled call."""
    return f"c-{uuid.uuid4().hex}"


def _with_client_order_id(request: C) -> C:
    """The request with a client order id: its own, or a new one ("c-" + 32 hex digits) on a
    copy, so the caller's message stays as it was. Made once, before the first attempt, so
    every retry sends the same id and the server's idempotency on (user_id,
    client_order_id) turns a retry after a lost response into a read of what the first
    attempt did."""
    if request.client_order_id:
        return request
    prepared = _copy(request)
    prepared.client_order_id = new_client_order_id()
    return prepared


def _with_client_id(request: K) -> K:
    """The request with its idempotency key `client_id`: its own, or a new one on a copy,
    made once before the first attempt, as `_with_client_order_id` does for orders."""
    if request.client_id:
        return request
    prepared = _copy(request)
    prepared.client_id = new_client_order_id()
    return prepared


def _register_credentials_request(
    request: apb.RegisterCredentialsRequest | None, fields: RegisterCredentialsFields
) -> apb.RegisterCredentialsRequest:
    """`build_request` for credentials, whose values are secrets: protobuf's own error for a
    value it refuses may quote the value (a UnicodeDecodeError even holds all of it), so the
    error raised here names the fields only, and is raised outside the handler so that the
    original is not chained to it."""
    if request is not None:
        return build_request(apb.RegisterCredentialsRequest, request, fields)
    try:
        return apb.RegisterCredentialsRequest(**fields)
    except (TypeError, ValueError):
        pass
    refused = sorted(name for name, value in fields.items() if not _fits(name, value))
    raise TypeError(
        "RegisterCredentialsRequest refused "
        f"{', '.join(refused) or 'its fields'}: no such field, or a value of the wrong type "
        "(not shown: it may be a secret)"
    )


def _fits(name: str, value: object) -> bool:
    one: dict[str, Any] = {name: value}
    try:
        apb.RegisterCredentialsRequest(**one)
    except (TypeError, ValueError):
        return False
    return True


_CANCELED_BY_USER = "canceled_by_user"
"""The `status_reason` of a trailing stop that CancelTrailingStop ended."""


def _create_trailing_stop_fields(fields: CreateTrailingStopFields) -> dict[str, object]:
    """The keyword fields, both callbacks refused: the request's `callback` oneof would
    silently keep only the last one set. A callback given as None is not set."""
    if fields.get("callback_rate") is not None and fields.get("callback_spread") is not None:
        raise TypeError("give exactly one of callback_rate and callback_spread, not both")
    return dict(fields)
