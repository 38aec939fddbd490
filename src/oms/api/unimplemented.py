"""Services and RPCs whose capability has not landed yet answer UNIMPLEMENTED, by name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

Context = grpc.aio.ServicerContext[Any, Any]


async def abort_unimplemented(context: Context, method: str) -> NoReturn:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet")
    raise AssertionError("abort returned")


def _handler(method: MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
    name = method.full_name

    async def unary(request: bytes, context: Context) -> bytes:
        await abort_unimplemented(context, name)

    async def stream(request: bytes, context: Context) -> AsyncIterator[bytes]:
        await abort_unimplemented(context, name)
        yield b""

    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


def unimplemented_service(service: ServiceDescriptor) -> grpc.GenericRpcHandler[Any, Any]:
    """A handler for every method of `service`; requests are not even decoded."""
    return grpc.method_handlers_generic_handler(
        service.full_name, {method.name: _handler(method) for method in service.methods}
    )
