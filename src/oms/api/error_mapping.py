"""Domain errors become gRPC statuses here, in one interceptor, for unary calls and streams.

INVALID_ARGUMENT carries a google.rpc.BadRequest naming the field, in the standard
`grpc-status-details-bin` trailer (grpcio-status).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from oms.domain.errors import (
    AlreadyExists,
    ConcurrentModification,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OmsError,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # generic only in the stubs
    Handler = grpc.RpcMethodHandler[Any, Any]

_CODES: dict[type[OmsError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    ConcurrentModification: grpc.StatusCode.ABORTED,
}


def _status_of(error: OmsError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    code = _CODES.get(type(error), grpc.StatusCode.INTERNAL)
    if not isinstance(error, InvalidArgument):
        return code, error.message, ()
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=error.field, description=error.description
    )
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=error.message, details=[detail])
    )
    return (
        status.code,
        status.details,
        cast(tuple[tuple[str, bytes], ...], status.trailing_metadata),
    )


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: OmsError) -> None:
    code, message, trailers = _status_of(error)
    if code is grpc.StatusCode.INTERNAL:
        log.error("unmapped domain error: %r", error)
    await context.abort(code, message, trailers)


def _wrap_unary(
    behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except OmsError as error:
            await _abort(context, error)

    return unary


def _wrap_stream(
    behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
    async def stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except OmsError as error:
            await _abort(context, error)

    return stream


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self) -> None:
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler: Any = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
            return None  # type: ignore[return-value]
        if handler.unary_unary is not None:
            wrapped = handler._replace(unary_unary=_wrap_unary(handler.unary_unary))
        elif handler.unary_stream is not None:
            behavior = handler.unary_stream
            # A coroutine writes its stream through context.write (grpc's own Health.Watch).
            wrap = _wrap_unary if inspect.iscoroutinefunction(behavior) else _wrap_stream
            wrapped = handler._replace(unary_stream=wrap(behavior))
        else:
            wrapped = handler
        self._wrapped[method] = wrapped
        return wrapped  # type: ignore[no-any-return]
