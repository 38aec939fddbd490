"""Bearer tokens on every RPC when any are configured (CONTRACT section 10).

The token is looked up when the call arrives; the decision is taken in the wrapped
behaviour, once the request (and its `user_id`) is deserialized, before the handler runs.
Health and reflection stay open, so probes and
`grpcurl list` need no token. Every decision, accepted or denied, is one JSON line on the
`oms.audit` logger, naming the token by its configured name, never by its value.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import logging
import logging.handlers
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from oms.api.error_mapping import MalformedRequest, abort_with
from oms.domain.access import Grant, TokenBucket, token_digest
from oms.domain.errors import StreamLimit

if TYPE_CHECKING:  # generic only in the stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]

audit = logging.getLogger("oms.audit")
audit.setLevel(logging.INFO)  # whatever the log level: every decision is recorded

_OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_PUBLISH_PRICES = "/tradingboost.oms.v1.MarketDataService/PublishPrices"
_STREAM_PRICES = "/tradingboost.oms.v1.MarketDataService/StreamPrices"
# Where an empty user_id means every user; anywhere else it is malformed (INVALID_ARGUMENT,
# which the handler answers).
_EVERY_USER = "/tradingboost.oms.v1.AccountService/ListActiveAccounts"


class _Caller:
    def __init__(self, grant: Grant, limit: TokenBucket, max_price_streams: int) -> None:
        self.grant = grant
        self.limit = limit
        # Price streams are not per user: without a share of its own, one token could take
        # every place the server's max_price_streams has and lock out every other tenant.
        self.max_price_streams = max_price_streams
        self.price_streams = 0


def _address(peer: str) -> str:
    """The address of a gRPC peer, not its port: "ipv4:10.0.0.7:53120" -> "ipv4:10.0.0.7";
    for IPv6, its /64, which one host commonly holds whole (an IPv4 address mapped into IPv6
    stays that one address)."""
    address = peer.rpartition(":")[0] or peer
    if address.startswith("ipv6:[") and address.endswith("]"):
        try:
            ip = ipaddress.IPv6Address(address[6:-1])
        except ValueError:
            return address
        if ip.ipv4_mapped is not None:
            return f"ipv4:{ip.ipv4_mapped}"
        return f"ipv6:{ipaddress.IPv6Network((ip, 64), strict=False)}"
    return address


class PeerLimits:
    """A token bucket per peer address, for the calls that bring no valid token."""

    # Past this many addresses the buckets start afresh rather than grow without end.
    _MAX_PEERS = 10_000

    def __init__(self, rate_per_s: float, burst: int, clock_s: Callable[[], float]) -> None:
        self._rate_per_s, self._burst, self._clock_s = rate_per_s, burst, clock_s
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, peer: str) -> bool:
        address = _address(peer)
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self._MAX_PEERS:
                self._buckets.clear()
            bucket = TokenBucket(self._rate_per_s, self._burst, self._clock_s)
            self._buckets[address] = bucket
        return bucket.take()


class HeldBack:
    """Calls without a valid token that an address makes past its limit, audited as one line
    per address and method a second, which says how many calls it stands for: a flood costs
    the audit log what a trickle does, and every call is still counted."""

    def __init__(self, window_s: float = 1.0) -> None:
        self._window_s = window_s
        self._calls: dict[tuple[str, str], int] = {}

    def add(self, peer: str, method: str) -> None:
        key = (_address(peer), method)
        if key not in self._calls:
            self._calls[key] = 0
            asyncio.get_running_loop().call_later(self._window_s, self._write, key)
        self._calls[key] += 1

    def _write(self, key: tuple[str, str]) -> None:
        address, method = key
        _write_audit(address, method, None, None, "RESOURCE_EXHAUSTED", self._calls.pop(key))


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        tokens: Sequence[tuple[bytes, Grant, float, int, int]],
        unauthenticated: tuple[float, int],
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        """`tokens`: (the token's digest, grant, calls a second, burst, price streams open at
        once) each; `unauthenticated`: (calls a second, burst) per peer address of calls
        without one."""
        self._callers = {
            digest: _Caller(grant, TokenBucket(rate, burst, clock_s), price_streams)
            for digest, grant, rate, burst, price_streams in tokens
        }
        self._strangers = PeerLimits(*unauthenticated, clock_s)
        self._held_back = HeldBack()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Any = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_OPEN_SERVICES):
            return handler  # type: ignore[no-any-return]
        caller = self._caller(handler_call_details.invocation_metadata)
        # Both kinds are coroutines: the error mapping (the next interceptor) writes a
        # stream's responses through context.write.
        if handler.unary_unary is not None:
            return handler._replace(  # type: ignore[no-any-return]
                unary_unary=self._guard(method, caller, handler.unary_unary)
            )
        if handler.unary_stream is not None:
            return handler._replace(  # type: ignore[no-any-return]
                unary_stream=self._guard(method, caller, handler.unary_stream)
            )
        return handler  # type: ignore[no-any-return]

    def _caller(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> _Caller | None:
        """The caller its one `authorization: Bearer <token>` names; None for none, an unknown
        token, or more than one header (ambiguous: one a proxy added could shadow another)."""
        values = [value for key, value in metadata or () if key == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        scheme, _, token = values[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self._callers.get(token_digest(token.strip()))

    def _guard(
        self,
        method: str,
        caller: _Caller | None,
        behavior: Callable[[Any, Context], Awaitable[Any]],
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def guarded(request: Any, context: Context) -> Any:
            if caller is None:
                await self._refuse(method, request, context)
            assert caller is not None
            await _admit(method, caller, request, context)
            if method != _STREAM_PRICES:
                return await behavior(request, context)
            # Counted from its admission, with no await in between: no two opens take the
            # same last place.
            caller.price_streams += 1
            try:
                return await behavior(request, context)
            finally:
                caller.price_streams -= 1

        return guarded

    async def _refuse(self, method: str, request: Any, context: Context) -> None:
        """Abort a call that brings no valid token: UNAUTHENTICATED, or RESOURCE_EXHAUSTED
        once its address has made too many."""
        user_id: str | None = getattr(request, "user_id", None)
        if not self._strangers.take(context.peer()):
            self._held_back.add(context.peer(), method)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many calls without a valid token from this address: slow down",
            )
        await _deny(
            context,
            method,
            None,
            user_id,
            grpc.StatusCode.UNAUTHENTICATED,
            "missing, unknown or repeated token: send one 'authorization: Bearer <token>'",
        )


async def _admit(method: str, caller: _Caller, request: Any, context: Context) -> None:
    """Return to go on; abort the call with the status the contract names otherwise."""
    user_id: str | None = getattr(request, "user_id", None)
    grant = caller.grant
    if not caller.limit.take():
        # Malformed calls count too: they cost an audit line and a parse each.
        await _deny(
            context,
            method,
            grant,
            user_id,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"token {grant.name} is over its rate limit",
        )
    if type(request) is MalformedRequest:
        # No user_id to judge: the handler's wrapper answers INVALID_ARGUMENT.
        _record(context, method, grant, None, "INVALID_ARGUMENT")
        return
    denial = _denial(method, grant, user_id)
    if denial:
        await _deny(context, method, grant, user_id, grpc.StatusCode.PERMISSION_DENIED, denial)
    if method == _STREAM_PRICES and caller.price_streams >= caller.max_price_streams:
        _record(context, method, grant, user_id, "RESOURCE_EXHAUSTED")
        await abort_with(
            context,
            StreamLimit(
                f"token {grant.name} holds {caller.price_streams} price streams open, as many "
                "as its max_price_streams allows: close one first (one stream takes many "
                "instruments)"
            ),
        )
    _record(context, method, grant, user_id, "ACCEPTED")


async def _deny(
    context: Context,
    method: str,
    grant: Grant | None,
    user_id: str | None,
    code: grpc.StatusCode,
    message: str,
) -> None:
    """Audit the refusal under its status's name, then end the call with it (raises)."""
    _record(context, method, grant, user_id, code.name)
    await context.abort(code, message)


def _denial(method: str, grant: Grant, user_id: str | None) -> str:
    """Why `grant` may not make this call; empty when it may."""
    if method == _PUBLISH_PRICES:
        return "" if grant.may_publish_prices else f"token {grant.name} may not publish prices"
    if user_id is None or grant.may_act_for(user_id):
        return ""  # no user_id: prices, which are not per user
    if not user_id:
        if method != _EVERY_USER:
            return ""  # malformed: the handler names the field
        return f"user_id: empty means every user, which needs an admin token (not {grant.name})"
    return f"user_id: token {grant.name} may not act for {user_id[:64]!r}"


class _OwnerOnlyFileHandler(logging.handlers.WatchedFileHandler):
    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        return open(os.open(self.baseFilename, flags, 0o600), "a", encoding=self.encoding)


def audit_to_file(path: Path) -> logging.Handler:
    """Also append the audit log to `path`, one JSON line per decision; returns the handler.
    A new file is readable by its owner only; one that logrotate moved or removed is opened
    anew at the next line."""
    handler = _OwnerOnlyFileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit.addHandler(handler)
    return handler


def _record(
    context: Context, method: str, grant: Grant | None, user_id: str | None, outcome: str
) -> None:
    _write_audit(context.peer(), method, grant, user_id, outcome)


def _write_audit(
    peer: str,
    method: str,
    grant: Grant | None,
    user_id: str | None,
    outcome: str,
    calls: int = 1,
) -> None:
    entry: dict[str, object] = {
        # RFC 3339 in UTC, as log shippers and people read it.
        "time": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "outcome": outcome,
        "peer": peer,  # who, when no token names them
        "method": method,
        "token": None if grant is None else grant.name,
        "user_id": None if user_id is None else user_id[:64],
    }
    if calls != 1:
        entry["calls"] = calls
    audit.info(json.dumps(entry))
