"""What an error's google.rpc status details say, typed: the fields an INVALID_ARGUMENT names
(google.rpc.BadRequest) and the reasons a status gives (google.rpc.ErrorInfo)."""

from __future__ import annotations

from typing import TypeVar, cast

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "HISTORY_TRIMMED_REASON",
    "SEQUENCE_AHEAD_REASON",
    "SHUTTING_DOWN_REASON",
    "STREAM_LIMIT_REASON",
    "error_info",
    "error_reasons",
    "field_violations",
]

D = TypeVar("D", bound=Message)

STREAM_LIMIT_REASON = "STREAM_LIMIT"
"""A RESOURCE_EXHAUSTED stream start: as many streams open as the server allows."""
HISTORY_TRIMMED_REASON = "HISTORY_TRIMMED"
"""An OUT_OF_RANGE stream: events after its resume point left the retained history. Its
`error_info` metadata `oldest_sequence` is the oldest still there: list again (the
snapshot's `as_of_sequence`), then stream after that."""
SHUTTING_DOWN_REASON = "SHUTTING_DOWN"
"""An UNAVAILABLE call the server refused without running it, as it stopped: nothing was done,
so it may be sent again, even a PublishPrices (the client does so by itself)."""
SEQUENCE_AHEAD_REASON = "SEQUENCE_AHEAD"
"""An OUT_OF_RANGE stream: its resume point is beyond the user's newest sequence (metadata
`newest_sequence`): a cursor kept from another server, or from a store that was reset."""


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The fields an INVALID_ARGUMENT names, each with what was wrong with it
    (`{"quantity": "0.0105 is not a multiple of the amount step 0.001"}`); empty for an
    error without them."""
    return {
        violation.field: violation.description
        for request in _details(error, error_details_pb2.BadRequest)
        for violation in request.field_violations
    }


def error_reasons(error: grpc.aio.AioRpcError) -> set[str]:
    """The google.rpc.ErrorInfo reasons the error carries (`STREAM_LIMIT_REASON`)."""
    return {info.reason for info in _details(error, error_details_pb2.ErrorInfo)}


def error_info(error: grpc.aio.AioRpcError) -> dict[str, dict[str, str]]:
    """The google.rpc.ErrorInfo the error carries, by reason, each with its metadata
    (`{"HISTORY_TRIMMED": {"oldest_sequence": "1201"}}`)."""
    return {
        info.reason: dict(info.metadata) for info in _details(error, error_details_pb2.ErrorInfo)
    }


def _details(error: grpc.aio.AioRpcError, kind: type[D]) -> list[D]:
    # An AioRpcError's trailing metadata is a grpc.aio.Metadata (its stub says a tuple too).
    trailers = cast(grpc.aio.Metadata, error.trailing_metadata() or grpc.aio.Metadata())
    status = trailers.get("grpc-status-details-bin")
    if not isinstance(status, bytes):
        return []
    found = []
    for packed in status_pb2.Status.FromString(status).details:
        detail = kind()
        if packed.Unpack(detail):
            found.append(detail)
    return found
