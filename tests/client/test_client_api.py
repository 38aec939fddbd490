"""The client's public surface, locked: a new RPC fails here until it is wrapped or listed."""

from __future__ import annotations

import re

import oms_client
from oms_client import OmsClient
from tradingboost.oms.v1 import (
    account_service_pb2,
    market_data_service_pb2,
    order_service_pb2,
    position_service_pb2,
    trailing_stop_service_pb2,
)

NOT_WRAPPED: set[str] = set()

# RPCs whose client method is not the RPC's name in snake case: the client's only rules are the
# conditional ones, so the short names.
RENAMED = {
    "CreateConditionalRule": "create_rule",
    "GetConditionalRule": "get_rule",
    "ListConditionalRules": "list_rules",
    "DeleteConditionalRule": "delete_rule",
    "StreamConditionalRules": "stream_rules",
}


def snake_case(rpc: str) -> str:
    return RENAMED.get(rpc) or re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


def test_every_rpc_of_the_wrapped_services_has_a_client_method_or_is_listed() -> None:
    rpcs = {
        method.name
        for module, service in (
            (order_service_pb2, "OrderService"),
            (market_data_service_pb2, "MarketDataService"),
            (position_service_pb2, "PositionService"),
            (trailing_stop_service_pb2, "TrailingStopService"),
            (account_service_pb2, "AccountService"),
        )
        for method in module.DESCRIPTOR.services_by_name[service].methods
    }
    assert set(RENAMED) <= rpcs
    wrapped = {rpc for rpc in rpcs if hasattr(OmsClient, snake_case(rpc))}
    assert rpcs - wrapped <= NOT_WRAPPED
    assert not wrapped & NOT_WRAPPED


def test_public_names() -> None:
    assert set(oms_client.__all__) == {
        "CHANNEL_OPTIONS",
        "DEFAULT_RETRY",
        "DEFAULT_STREAM_RETRY",
        "HISTORY_TRIMMED_REASON",
        "NOT_TAKEN_CODES",
        "NO_RETRY",
        "RESUMABLE_CODES",
        "RETRYABLE_CODES",
        "SEQUENCE_AHEAD_REASON",
        "SHUTTING_DOWN_REASON",
        "STREAM_LIMIT_REASON",
        "EventStream",
        "FillStream",
        "OmsClient",
        "OrderUpdateStream",
        "OutcomeUnknown",
        "PositionUpdateStream",
        "PriceRounding",
        "PriceStream",
        "RetryPolicy",
        "RuleUpdateStream",
        "TrailingStopEventStream",
        "error_info",
        "error_reasons",
        "field_violations",
        "new_client_order_id",
        "resumable",
        "round_price",
        "round_quantity",
    }
    assert {name for name in vars(OmsClient) if not name.startswith("_")} == {
        "connect",
        "channel",
        "close",
        "place_order",
        "cancel_order",
        "cancel_all_orders",
        "get_order",
        "list_orders",
        "list_orders_page",
        "find_open_orders",
        "list_fills",
        "list_fills_page",
        "stream_order_updates",
        "stream_fills",
        "create_rule",
        "get_rule",
        "list_rules",
        "list_rules_page",
        "delete_rule",
        "stream_rules",
        "get_position",
        "list_positions",
        "list_positions_page",
        "open_position",
        "close_position",
        "stream_positions",
        "get_portfolio_summary",
        "create_trailing_stop",
        "get_trailing_stop",
        "list_trailing_stops",
        "list_trailing_stops_page",
        "cancel_trailing_stop",
        "stream_trailing_stop_events",
        "register_credentials",
        "activate_account",
        "deactivate_account",
        "list_active_accounts",
        "list_active_accounts_page",
        "publish_prices",
        "get_price",
        "get_market",
        "stream_prices",
    }
