"""What each ccxt error lets the engine conclude about a submit or cancel.

The exchange's own code decides before ccxt's class: the messages below are the bodies ccxt
puts in its exceptions (`<exchange id> <body>`).
"""

from __future__ import annotations

import pytest
from ccxt.base import errors as ccxt_errors  # type: ignore[import-untyped]

from oms.adapters.exchanges.ccxt_gateway import classify, leverage_unchanged
from oms.engine.gateway import (
    CredentialsRefused,
    DuplicateClientId,
    GatewayError,
    OrderUnknown,
    OutcomeUnknown,
    RateLimited,
    SubmitRefused,
)

CASES = [
    # Binance -1007: "execution status unknown", though ccxt calls it a BadResponse.
    (
        "binanceusdm",
        ccxt_errors.BadResponse('binanceusdm {"code":-1007,"msg":"Timeout"}'),
        OutcomeUnknown,
    ),
    (
        "binanceusdm",
        ccxt_errors.InvalidOrder('binanceusdm {"code":-4116,"msg":"dup"}'),
        DuplicateClientId,
    ),
    (
        "binanceusdm",
        ccxt_errors.ExchangeError('binanceusdm {"code":-2011,"msg":"Unknown order sent."}'),
        OrderUnknown,
    ),
    ("binanceusdm", ccxt_errors.InsufficientFunds('binanceusdm {"code":-2019}'), SubmitRefused),
    ("binanceusdm", ccxt_errors.InvalidOrder('binanceusdm {"code":-2022}'), SubmitRefused),
    (
        "binanceusdm",
        ccxt_errors.AuthenticationError('binanceusdm {"code":-2015}'),
        CredentialsRefused,
    ),
    ("okx", ccxt_errors.RequestTimeout('okx {"code":"50004","msg":"timeout"}'), OutcomeUnknown),
    (
        "okx",
        ccxt_errors.InvalidOrder('okx {"code":"1","data":[{"sCode":"51016"}]}'),
        DuplicateClientId,
    ),
    ("okx", ccxt_errors.OrderNotFound('okx {"code":"1","data":[{"sCode":"51402"}]}'), OrderUnknown),
    (
        "okx",
        ccxt_errors.InsufficientFunds('okx {"code":"1","data":[{"sCode":"51008"}]}'),
        SubmitRefused,
    ),
    ("okx", ccxt_errors.RateLimitExceeded('okx {"code":"50011"}'), RateLimited),
    ("okx", ccxt_errors.DDoSProtection("okx 418 I'm a teapot"), RateLimited),
    (
        "okx",
        ccxt_errors.RequestTimeout("okx POST /api/v5/trade/batch-orders timed out"),
        OutcomeUnknown,
    ),
    ("okx", ccxt_errors.ExchangeNotAvailable("okx 503 Service Unavailable"), OutcomeUnknown),
    ("okx", ccxt_errors.NetworkError("connection reset"), OutcomeUnknown),
    # A code nobody mapped: the exchange may have carried the request out.
    ("okx", ccxt_errors.ExchangeError('okx {"code":"59999"}'), OutcomeUnknown),
]


@pytest.mark.parametrize(("exchange", "error", "expected"), CASES)
def test_classify(exchange: str, error: Exception, expected: type[GatewayError]) -> None:
    concluded = classify(exchange, error)
    assert type(concluded) is expected
    assert type(error).__name__ in concluded.message


@pytest.mark.parametrize(
    ("error", "banned"),
    [
        # ccxt raises DDoSProtection for both of Binance's statuses, naming the status.
        (ccxt_errors.DDoSProtection('binanceusdm 429 Too Many Requests {"code":-1003}'), False),
        (ccxt_errors.DDoSProtection('binanceusdm 418 I\'m a teapot {"code":-1003}'), True),
        (ccxt_errors.RateLimitExceeded('okx {"code":"50011"}'), False),
    ],
)
def test_a_ban_is_told_from_a_throttle(error: Exception, banned: bool) -> None:
    concluded = classify("binanceusdm", error)
    assert isinstance(concluded, RateLimited)
    assert concluded.banned is banned


def test_a_leverage_already_set_is_as_good_as_set() -> None:
    # Bybit refuses to set the leverage a symbol already has; ccxt raises it as BadRequest.
    body = '{"retCode":110043,"retMsg":"leverage not modified","result":{},"time":1}'
    error = classify("bybit", ccxt_errors.BadRequest(f"bybit {body}"))
    assert leverage_unchanged("bybit", error)
    refused = classify("bybit", ccxt_errors.BadRequest('bybit {"retCode":110013}'))
    assert not leverage_unchanged("bybit", refused)
    assert not leverage_unchanged("binanceusdm", error)
