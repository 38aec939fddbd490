"""Domain errors become gRPC statuses here, in one interceptor, for unary calls and streams.

INVALID_ARGUMENT carries a google.rpc.BadRequest naming the field, in the standard
`grpc-status-details-bin` trailer (grpcio-status).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
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
    ResumeOutOfRange,
    StreamLimit,
    Unavailable,
)
from oms.engine.subscriptions import ended_by

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


STREAM_LIMIT_REASON = "STREAM_LIMIT"
"""google.rpc.ErrorInfo reason of a RESOURCE_EXHAUSTED that opening again cannot cure."""
SHUTTING_DOWN_REASON = "SHUTTING_DOWN"
"""google.rpc.ErrorInfo reason of an UNAVAILABLE answered without running the call, as the
server stops: nothing was done, so even a call that is not idempotent (PublishPrices) may be
sent again."""
ERROR_DOMAIN = "tradingboost.oms.v1"


def _detail_of(error: OmsError) -> any_pb2.Any | None:
    """The google.rpc detail that tells a program what was wrong, where one is due."""
    detail = any_pb2.Any()
    if isinstance(error, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.description
        )
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    elif isinstance(error, StreamLimit):
        detail.Pack(error_details_pb2.ErrorInfo(reason=STREAM_LIMIT_REASON, domain=ERROR_DOMAIN))
    elif isinstance(error, ResumeOutOfRange):
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
            )
        )
    else:
        return None
    return detail


def _status_of(error: OmsError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    code = next(
        (_CODES[kind] for kind in type(error).__mro__ if kind in _CODES),
        grpc.StatusCode.INTERNAL,
    )
    detail = _detail_of(error)
    if detail is None:
        return code, error.message, ()
    return _with_detail(code, error.message, detail)


def _with_detail(
    code: grpc.StatusCode, message: str, detail: any_pb2.Any
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=[detail])
    )
    return (
        status.code,
        status.details,
        cast(tuple[tuple[str, bytes], ...], status.trailing_metadata),
    )


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: OmsError) -> None:
    """End the call with the status, and the google.rpc detail, `error` maps to (raises)."""
    code, message, trailers = _status_of(error)
    if code is grpc.StatusCode.INTERNAL:
        log.error("unmapped domain error: %r", error)
    await context.abort(code, message, trailers)


class MalformedRequest:
    """Request bytes that do not parse: handed on in place of the request, so that the call
    is authenticated, audited and answered INVALID_ARGUMENT instead of grpc's UNKNOWN."""

    def __init__(self, error: DecodeError) -> None:
        self.error = InvalidArgument("request", f"is not a valid protobuf message: {error}")


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            return MalformedRequest(error)

    return deserialize


def _wrap_unary(
    behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            if type(request) is MalformedRequest:
                raise request.error
            return await behavior(request, context)
        except OmsError as error:
            await abort_with(context, error)

    return unary


def _wrap_stream(
    behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncGenerator[Any, None]],
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]:
    async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            if type(request) is MalformedRequest:
                raise request.error
            # Before anything can cut the stream off: a cut-off during the first write would
            # leave grpc unsure the headers went, and its status would then fail to send.
            await context.send_initial_metadata(())
            # Closed here, whatever ends the call: its subscription goes with it.
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    await context.write(response)
        except OmsError as error:
            await abort_with(context, error)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            ended = ended_by(task)
            if task is None or ended is None:
                raise  # the client went away
            # The engine ended the stream (engine.subscriptions.cut_off): answer with its error.
            task.uncancel()
            try:
                await abort_with(context, ended)
            except grpc.aio.InternalError:
                # Its batch failed: the status waited behind a message a stalled client never
                # read, and the client has gone since. Nobody is left to answer.
                log.debug("cut-off stream's client left before its status: %s", ended)

    return stream


def _refusal() -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=SHUTTING_DOWN_REASON, domain=ERROR_DOMAIN))
    message = "server is shutting down, the call was not run: retry on another instance"
    return _with_detail(grpc.StatusCode.UNAVAILABLE, message, detail)


_REFUSAL = _refusal()


async def _refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    code, message, trailers = _REFUSAL
    await context.abort(code, message, trailers)


_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
# Answered while the server stops, so that load balancers and tools see it NOT_SERVING.
_ALWAYS_ANSWERED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps domain errors to status codes; at shutdown, also the gate that refuses calls."""

    def __init__(self) -> None:
        self._wrapped: dict[str, Handler] = {}
        self._refusing = False
        self.refused = 0
        """Calls refused since `refuse_calls`."""

    def refuse_calls(self) -> None:
        """From now on every call but health checks and reflection is answered UNAVAILABLE
        without running: calls gRPC had already queued then end retryably, not CANCELLED as
        server.stop would end them."""
        self._refusing = True

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler: Any = await continuation(handler_call_details)
            if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
                return None  # type: ignore[return-value]
            wrapped = self._wrapped[method] = _wrap(handler)
        if self._refusing and not method.startswith(_ALWAYS_ANSWERED):
            self.refused += 1
            refusal: Any = wrapped
            return refusal._replace(  # type: ignore[no-any-return]
                **{kind: _refuse for kind in _KINDS if getattr(wrapped, kind) is not None}
            )
        return wrapped


def _wrap(handler: Any) -> Handler:
    parse = handler.request_deserializer
    lenient = {} if parse is None else {"request_deserializer": _lenient(parse)}
    if handler.unary_unary is not None:
        return handler._replace(unary_unary=_wrap_unary(handler.unary_unary), **lenient)  # type: ignore[no-any-return]
    if handler.unary_stream is not None:
        behavior = handler.unary_stream
        # A coroutine writes its stream through context.write (grpc's own Health.Watch).
        wrap = _wrap_unary if inspect.iscoroutinefunction(behavior) else _wrap_stream
        return handler._replace(unary_stream=wrap(behavior), **lenient)  # type: ignore[no-any-return]
    return handler  # type: ignore[no-any-return]
