"""OrderService: proto in, engine call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from tradingboost.oms.v1 import conditional_rule_pb2, order_service_pb2_grpc
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.api.converters import (
    ORDER_STATUSES,
    RULE_STATUSES,
    SIDES,
    RenderedOnce,
    create_rule_command,
    fill_to_proto,
    heartbeat_to_proto,
    order_to_proto,
    order_update_to_proto,
    place_order_command,
    rule_to_proto,
    statuses,
    stream_filter,
)
from oms.domain.conditional_rules import RuleStatus
from oms.domain.events import FillRecorded, Heartbeat, RuleUpdated, SequencedEvent
from oms.domain.orders import Order, OrderStatus, Side
from oms.engine.conditional_rules import ConditionalRules
from oms.engine.order_lifecycle import OpenOrderSearch, OrderLifecycle, OrderRef
from oms.engine.prerender import Prerender

Context = grpc.aio.ServicerContext[Any, Any]


class OrderService(order_service_pb2_grpc.OrderServiceServicer):
    def __init__(self, orders: OrderLifecycle, rules: ConditionalRules) -> None:
        self._orders = orders
        self._rules = rules
        self._order_update = RenderedOnce(
            lambda e: pb.StreamOrderUpdatesResponse(order_update=order_update_to_proto(e))
        )
        self._fill = RenderedOnce(_fill_response)
        self._rule_update = RenderedOnce(_rule_update_response)

    async def PlaceOrder(
        self, request: pb.PlaceOrderRequest, context: Context
    ) -> pb.PlaceOrderResponse:
        render = Prerender(_place_response)
        return render(await self._orders.place(place_order_command(request), render))

    async def CancelOrder(
        self, request: pb.CancelOrderRequest, context: Context
    ) -> pb.CancelOrderResponse:
        ref = OrderRef(request.user_id, request.order_id, request.client_order_id)
        render = Prerender(_cancel_response)
        return render(await self._orders.cancel(ref, render))

    async def CancelAllOrders(
        self, request: pb.CancelAllOrdersRequest, context: Context
    ) -> pb.CancelAllOrdersResponse:
        orders = await self._orders.cancel_all(
            request.user_id, request.exchange, request.symbol, request.strategy
        )
        return pb.CancelAllOrdersResponse(orders=[order_to_proto(order) for order in orders])

    async def GetOrder(self, request: pb.GetOrderRequest, context: Context) -> pb.GetOrderResponse:
        ref = OrderRef(request.user_id, request.order_id, request.client_order_id)
        return pb.GetOrderResponse(order=order_to_proto(await self._orders.get(ref)))

    async def ListOrders(
        self, request: pb.ListOrdersRequest, context: Context
    ) -> pb.ListOrdersResponse:
        page = await self._orders.list_orders(
            request.user_id,
            exchange=request.exchange,
            symbol=request.symbol,
            open_only=request.open_only,
            statuses=statuses(ORDER_STATUSES, list(request.statuses), OrderStatus),
            grid_level=request.grid_level if request.HasField("grid_level") else None,
            strategy=request.strategy,
            size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListOrdersResponse(
            orders=[order_to_proto(order) for order in page.items],
            next_page_token=page.next_page_token,
            as_of_sequence=page.as_of_sequence,
        )

    async def FindOpenOrders(
        self, request: pb.FindOpenOrdersRequest, context: Context
    ) -> pb.FindOpenOrdersResponse:
        orders, truncated = await self._orders.find_open_orders(
            OpenOrderSearch(
                user_id=request.user_id,
                exchange=request.exchange,
                symbol=request.symbol,
                grid_level=request.grid_level if request.HasField("grid_level") else None,
                price=request.price,
                price_tolerance=request.price_tolerance,
                side=SIDES.parse("side", request.side, Side),
            )
        )
        return pb.FindOpenOrdersResponse(
            orders=[order_to_proto(order) for order in orders], truncated=truncated
        )

    async def ListFills(
        self, request: pb.ListFillsRequest, context: Context
    ) -> pb.ListFillsResponse:
        page = await self._orders.list_fills(
            request.user_id,
            order_id=request.order_id,
            exchange=request.exchange,
            symbol=request.symbol,
            position_id=request.position_id,
            size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListFillsResponse(
            fills=[fill_to_proto(fill, sequence) for sequence, fill in page.items],
            next_page_token=page.next_page_token,
            as_of_sequence=page.as_of_sequence,
        )

    async def StreamOrderUpdates(
        self, request: pb.StreamOrderUpdatesRequest, context: Context
    ) -> AsyncIterator[pb.StreamOrderUpdatesResponse]:
        query = stream_filter(request)
        async for item in self._orders.follow_orders(query):
            if isinstance(item, Heartbeat):
                yield pb.StreamOrderUpdatesResponse(heartbeat=heartbeat_to_proto(item))
            else:
                yield self._order_update(item)

    async def StreamFills(
        self, request: pb.StreamFillsRequest, context: Context
    ) -> AsyncIterator[pb.StreamFillsResponse]:
        query = stream_filter(request)
        async for item in self._orders.follow_fills(query):
            if isinstance(item, Heartbeat):
                yield pb.StreamFillsResponse(heartbeat=heartbeat_to_proto(item))
            else:
                yield self._fill(item)

    async def CreateConditionalRule(
        self, request: pb.CreateConditionalRuleRequest, context: Context
    ) -> pb.CreateConditionalRuleResponse:
        rule = await self._rules.create(create_rule_command(request))
        return pb.CreateConditionalRuleResponse(rule=rule_to_proto(rule))

    async def GetConditionalRule(
        self, request: pb.GetConditionalRuleRequest, context: Context
    ) -> pb.GetConditionalRuleResponse:
        rule = await self._rules.get(request.user_id, request.rule_id, request.client_id)
        return pb.GetConditionalRuleResponse(rule=rule_to_proto(rule))

    async def ListConditionalRules(
        self, request: pb.ListConditionalRulesRequest, context: Context
    ) -> pb.ListConditionalRulesResponse:
        page = await self._rules.list(
            request.user_id,
            trigger_order_id=request.trigger_order_id,
            statuses=statuses(RULE_STATUSES, list(request.statuses), RuleStatus),
            size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListConditionalRulesResponse(
            rules=[rule_to_proto(rule) for rule in page.items],
            next_page_token=page.next_page_token,
            as_of_sequence=page.as_of_sequence,
        )

    async def DeleteConditionalRule(
        self, request: pb.DeleteConditionalRuleRequest, context: Context
    ) -> pb.DeleteConditionalRuleResponse:
        rule = await self._rules.delete(request.user_id, request.rule_id, request.client_id)
        return pb.DeleteConditionalRuleResponse(rule=rule_to_proto(rule))

    async def StreamConditionalRules(
        self, request: pb.StreamConditionalRulesRequest, context: Context
    ) -> AsyncIterator[pb.StreamConditionalRulesResponse]:
        follow = self._rules.follow(request.user_id, request.after_sequence, request.from_oldest)
        async for item in follow:
            if isinstance(item, Heartbeat):
                yield pb.StreamConditionalRulesResponse(heartbeat=heartbeat_to_proto(item))
            else:
                yield self._rule_update(item)


# Whole responses, so the copy of the order into its response is made ahead too.
def _rule_update_response(item: SequencedEvent) -> pb.StreamConditionalRulesResponse:
    assert isinstance(item.event, RuleUpdated)
    update = conditional_rule_pb2.RuleUpdate(
        sequence=item.sequence, rule=rule_to_proto(item.event.rule)
    )
    return pb.StreamConditionalRulesResponse(rule_update=update)


def _fill_response(item: SequencedEvent) -> pb.StreamFillsResponse:
    assert isinstance(item.event, FillRecorded)
    return pb.StreamFillsResponse(fill=fill_to_proto(item.event.fill, item.sequence))


def _place_response(order: Order) -> pb.PlaceOrderResponse:
    return pb.PlaceOrderResponse(order=order_to_proto(order))


def _cancel_response(order: Order) -> pb.CancelOrderResponse:
    return pb.CancelOrderResponse(order=order_to_proto(order))
