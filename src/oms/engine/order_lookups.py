"""Lookups of orders whose outcome at their exchange is not known yet.

An ambiguous submit or cancel (a timeout, a 5xx, "status unknown") leaves the order
PENDING_NEW or PENDING_CANCEL. Each such order is looked up by the OMS's client id, with
backoff, until it is settled: the exchange has it (settled from its report, and cancelled
again while a cancel is pending) or, once `lookup_grace_s` has passed since it was sent,
positively has not (REJECTED). A new order that never left (no connection could be opened)
is sent as soon as the exchange answers again within that grace, and REJECTED past it.

What fired (a held stop, a trailing stop's close) is owed: one the exchange never took (a
429, a 5xx it did not act on, a crash while it was sent) is sent again rather than given
up, reduce-only ones fitted to the position first. Each resend is committed before it goes
(SENT_AGAIN), and goes only if the order is still as its lookup saw it, so two lookups of
one order (an account followed anew while the old connection closes) send it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from oms.domain.errors import ConcurrentModification, Unavailable
from oms.domain.identifiers import exchange_client_id
from oms.domain.orders import Order, OrderCanceled, OrderEvent, OrderSentAgain, OrderStatus
from oms.domain.venue_reports import (
    OrderReport,
    refusal_events,
    unacknowledged,
    unsent_trigger,
    unsettled,
)
from oms.engine.backoff import Backoff
from oms.engine.followed_accounts import FollowedAccount
from oms.engine.gateway import GatewayError
from oms.engine.ports import StateStore, stored_order
from oms.engine.venue_policy import VenuePolicy

log = logging.getLogger(__name__)


class Sender(Protocol):
    """What a lookup asks of the live venue."""

    async def send(self, followed: FollowedAccount, order: Order) -> Order:
        """Send an order and settle it from the reply (unsettled if the reply is ambiguous)."""
        ...

    async def settle(
        self, followed: FollowedAccount, order_id: str, report: OrderReport | None
    ) -> Order:
        """Bring the order in line with a report, under the account's lock."""
        ...

    async def commit(
        self,
        followed: FollowedAccount,
        order_id: str,
        decide: Callable[[Order], Awaitable[list[OrderEvent]]],
    ) -> Order:
        """Apply what `decide` makes of the stored order, under the account's lock."""
        ...

    async def fit_position(self, order: Order) -> list[OrderEvent]:
        """A reduce-only order amended down to the position left, or cancelled if flat."""
        ...

    def throttle_wait_s(self, exchange: str, user_id: str) -> float:
        """How long the account's (or its exchange's) rate limit is still backed off from
        (0: not at all)."""
        ...


class OrderLookups:
    def __init__(
        self,
        store: StateStore,
        sender: Sender,
        clock_ns: Callable[[], int],
        policy: Callable[[str], VenuePolicy],
    ) -> None:
        self._store = store
        self._sender = sender
        self._clock_ns = clock_ns
        self._policy = policy

    def start(self, followed: FollowedAccount, order_id: str) -> None:
        """Look the order up in the background until it is settled (once per order)."""
        followed.start(order_id, self._resolve(followed, order_id))

    async def _resolve(self, followed: FollowedAccount, order_id: str) -> None:
        policy = self._policy(followed.exchange)
        backoff = Backoff(policy.lookup_backoff_s, policy.max_backoff_s)
        client_id = exchange_client_id(order_id)
        while True:
            try:
                order = await stored_order(self._store, followed.user_id, order_id)
                if not unsettled(order):
                    followed.refused_sends.discard(order_id)
                    return
                if order_id in followed.refused_sends:
                    await self._send_again(followed, order)
                    backoff.reset()
                    continue
                report = await followed.gateway.fetch_order(order, client_id)
                if report is None and order_id in followed.unsent:
                    order = await self._send_unsent(followed, order, policy)
                elif report is not None:
                    order = await self._sender.settle(followed, order_id, report)
                    if order.status is OrderStatus.PENDING_CANCEL and not report.status.is_terminal:
                        with contextlib.suppress(GatewayError):
                            report = await followed.gateway.cancel(order, client_id)
                            order = await self._sender.settle(followed, order_id, report)
                elif (
                    order.status is not OrderStatus.PENDING_CANCEL or unacknowledged(order)
                ) and self._past_grace(followed, order, policy):
                    reason = (
                        f"{order.exchange} has no order {client_id} "
                        f"{policy.lookup_grace_s:g} s after it was sent"
                    )
                    if unsent_trigger(order) and order.status is not OrderStatus.PENDING_CANCEL:
                        # The exchange never took it (a 5xx it did not act on, a crash while
                        # sending): a stop that fired is still owed, so it goes again.
                        log.warning("order %s: %s; sending it again", order_id, reason)
                        await self._send_again(followed, order)
                        backoff.reset()
                        continue
                    order = await self._sender.commit(followed, order_id, _refuse(reason))
                if not unsettled(order):
                    return
            except (GatewayError, ConcurrentModification, Unavailable) as error:
                log.warning("order %s: lookup failed, retrying: %s", order_id, error)
            except Exception:
                log.exception("order %s: lookup failed, retrying", order_id)
            await backoff.wait()

    async def _send_unsent(
        self, followed: FollowedAccount, seen: Order, policy: VenuePolicy
    ) -> Order:
        """The exchange answers again and has not got `seen`, an order that never left:
        sent now, within its grace, as if the exchange had been slow; REJECTED past it,
        unless it fired (a stop is owed whenever it can go); CANCELED if a cancel came
        meanwhile."""
        past_grace = self._past_grace(followed, seen, policy)
        claimed = False

        async def claim(current: Order) -> list[OrderEvent]:
            # Under the account's lock, as the order is now: a cancel takes the same lock.
            nonlocal claimed
            claimed = False
            if current.order_id not in followed.unsent or not unacknowledged(current):
                return []
            why = followed.unsent.pop(current.order_id)
            if current.status is OrderStatus.PENDING_CANCEL:
                return [OrderCanceled(current.cancel_reason)]
            if past_grace and not current.triggered:
                reason = f"not sent within {policy.lookup_grace_s:g} s: {why}"[:256]
                return refusal_events(current, reason)
            claimed = True
            followed.sending.add(current.order_id)  # a cancel from now on waits for the send
            return []

        order = await self._sender.commit(followed, seen.order_id, claim)
        if not claimed:
            return order
        log.info("order %s: the exchange answers again, sending it", order.order_id)
        return await self._sender.send(followed, order)

    async def _send_again(self, followed: FollowedAccount, seen: Order) -> None:
        """Send again `seen`, a fired order the exchange did not take, unless it changed
        since it was seen so: sent again, cancelled or settled by another hand (the account
        followed anew, say, whose new follower looks it up too)."""
        await asyncio.sleep(self._sender.throttle_wait_s(followed.exchange, followed.user_id))
        followed.refused_sends.discard(seen.order_id)
        again = False

        async def decide(current: Order) -> list[OrderEvent]:
            nonlocal again
            again = False
            if current.version != seen.version or not unsent_trigger(current):
                return []
            if current.status is OrderStatus.PENDING_CANCEL:
                # Never taken, and a cancel came: done here, nothing to send.
                return [OrderCanceled(current.cancel_reason)]
            fitted = await self._sender.fit_position(current)
            if fitted and isinstance(fitted[-1], OrderCanceled):
                return fitted
            # Committed before it goes: a restart, or the account followed anew, looks
            # it up from this send on rather than sending it once more.
            again = True
            return [*fitted, OrderSentAgain()]

        order = await self._sender.commit(followed, seen.order_id, decide)
        if again:
            log.info("order %s: sending it again", order.order_id)
            await self._sender.send(followed, order)

    def _past_grace(self, followed: FollowedAccount, order: Order, policy: VenuePolicy) -> bool:
        if order.order_id in followed.sending:
            return False  # its submit has not returned: the exchange may take it yet
        # An order that fired was sent with its last change (the trigger, or SENT_AGAIN).
        sent_at_ns = order.updated_at_ns if order.triggered else order.created_at_ns
        return self._clock_ns() - sent_at_ns >= policy.lookup_grace_s * 1e9


def _refuse(reason: str) -> Callable[[Order], Awaitable[list[OrderEvent]]]:
    async def decide(order: Order) -> list[OrderEvent]:
        return refusal_events(order, reason)

    return decide
