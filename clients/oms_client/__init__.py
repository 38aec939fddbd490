"""Typed async client of the OMS (tradingboost.oms.v1), on grpcio and the generated stubs:
`OmsClient` over OrderService (conditional rules included), PositionService,
TrailingStopService, MarketDataService and AccountService (retrying unary calls, pages as
`async for`, streams that resume by themselves), the rounding helpers for amount steps and
price ticks, and readers of what an error's status details say (`field_violations`,
`error_reasons`, `error_info`).
"""

from oms_client.client import (
    CHANNEL_OPTIONS,
    DEFAULT_RETRY,
    DEFAULT_STREAM_RETRY,
    FillStream,
    OmsClient,
    OrderUpdateStream,
    PositionUpdateStream,
    RuleUpdateStream,
    TrailingStopEventStream,
    new_client_order_id,
)
from oms_client.errors import (
    HISTORY_TRIMMED_REASON,
    SEQUENCE_AHEAD_REASON,
    SHUTTING_DOWN_REASON,
    STREAM_LIMIT_REASON,
    error_info,
    error_reasons,
    field_violations,
)
from oms_client.retry import (
    NO_RETRY,
    NOT_TAKEN_CODES,
    RETRYABLE_CODES,
    OutcomeUnknown,
    RetryPolicy,
)
from oms_client.rounding import PriceRounding, round_price, round_quantity
from oms_client.streams import RESUMABLE_CODES, EventStream, PriceStream, resumable

__all__ = [
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
]
