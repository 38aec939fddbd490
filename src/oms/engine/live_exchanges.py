"""Orders on real exchanges: persisted before they are sent, settled from what the exchange
reports, and never sent twice.

Each followed account (user, exchange) has a gateway and a lock: every change to one of its
orders (a submit's reply, a lookup, a poll, a cancel) is decided and committed under the
lock from the stored order, so reports that race each other settle one after the other.

An ambiguous submit or cancel leaves the order PENDING_NEW or PENDING_CANCEL, looked up
until it is settled (order_lookups.py).

Changes reach the OMS through the account's websocket order feed where ccxt has one, with a
REST backfill after every drop, and through a poll of the account's open orders every
`poll_interval_s` (the safety net, and the only source elsewhere). What changed while the
OMS was not looking is found by the reconciliation (reconciliation.py) when an account is
followed and after its feed dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal

from oms.domain.accounts import Account, Credentials
from oms.domain.brackets import bracket_legs, late_fill_close, late_fills, moot_when_flat
from oms.domain.conditional_rules import ConditionalRule
from oms.domain.decimals import add, sub
from oms.domain.errors import (
    ConcurrentModification,
    FailedPrecondition,
    OmsError,
    ResourceExhausted,
    Unavailable,
)
from oms.domain.events import OrderEventType, OrderUpdated, PositionUpdated, apply_all
from oms.domain.identifiers import EXCHANGE_CLIENT_ID_PREFIX, exchange_client_id
from oms.domain.markets import Market, MarketCatalog
from oms.domain.orders import (
    Order,
    OrderAccepted,
    OrderAmended,
    OrderCanceled,
    OrderEvent,
    OrderFilled,
    OrderPendingCancel,
    OrderRejected,
    OrderStatus,
    OrderTriggered,
)
from oms.domain.paper_matching import stop_reached
from oms.domain.positions import Position, PositionKey, take_fill
from oms.domain.trailing_stops import TrailingStop, TrailingStopSpec
from oms.domain.venue_reports import (
    EXTERNAL_CLIENT_ID_PREFIX,
    FillReport,
    OrderReport,
    VenueOrderStatus,
    fill_of,
    refusal_events,
    settlement_events,
    unacknowledged,
    unsent_trigger,
    unsettled,
)
from oms.engine.backoff import Backoff
from oms.engine.followed_accounts import FollowedAccount
from oms.engine.gateway import (
    AccountAccess,
    CredentialsRefused,
    DuplicateClientId,
    GatewayConnector,
    GatewayError,
    NotSent,
    OrderUnknown,
    OutcomeUnknown,
    RateLimited,
    SubmitRefused,
)
from oms.engine.held_stops import HeldStops, is_held
from oms.engine.journal import Journal
from oms.engine.live_rules import LiveRules, RuleHolds, RuleRunner
from oms.engine.live_trailing import LiveTrailingStops
from oms.engine.mark_prices import MarkPrices
from oms.engine.order_lookups import OrderLookups
from oms.engine.ports import Conflict, OrderChange, PriceUpdate, StateStore, stored_order
from oms.engine.prerender import Prerender
from oms.engine.reconciliation import Reconciliation
from oms.engine.run_to_end import run_to_end
from oms.engine.venue_policy import VenuePolicy

log = logging.getLogger(__name__)

_COMMIT_ATTEMPTS = 3
_CUT_SHORT = (Unavailable, ConcurrentModification, GatewayError)
"""Failures that pass: what they cut short is run again (LiveExchanges._until_done)."""
_RESUBSCRIBED_S = 2.0
"""How long a new feed socket's watch must hold (no error) to count as subscribed."""
_FeedItem = list[OrderReport] | GatewayError | None
"""A batch of the order feed, its drop, or None: subscribed again after a drop."""


@dataclasses.dataclass(frozen=True)
class _LeftMoot:
    """What a side that went flat left moot (LiveExchanges._left_moot)."""

    orders: list[str]
    stops: list[TrailingStop]


class LiveExchanges:
    """The venue for every exchange but paper, and the follower of active accounts."""

    def __init__(
        self,
        store: StateStore,
        journal: Journal,
        catalog: MarketCatalog,
        connector: GatewayConnector,
        new_id: Callable[[], str],
        clock_ns: Callable[[], int],
        policy: Callable[[str], VenuePolicy],
        observe_prices: Callable[[Sequence[PriceUpdate]], None],
        rule_holds: RuleHolds,
    ) -> None:
        """`rule_holds`: the paper exchange, whose orders a rule fired here may list."""
        self._store = store
        self._journal = journal
        self._catalog = catalog
        self._connector = connector
        self._new_id = new_id
        self._clock_ns = clock_ns
        self._policy = policy
        self._accounts: dict[tuple[str, str], FollowedAccount] = {}
        self._resuming: dict[tuple[str, str], str] = {}
        """Active accounts the start has not followed yet -> why (see `resuming`)."""
        self._marks = MarkPrices(
            store,
            journal,
            connector,
            self,
            observe_prices,
            clock_ns,
            policy,
        )
        self._held = HeldStops()
        self._trailing = LiveTrailingStops(store, journal, self, new_id, clock_ns)
        self._rules = LiveRules(store, journal, self, clock_ns, rule_holds)
        self._lookups = OrderLookups(store, self, clock_ns, policy)
        self._reconciliation = Reconciliation(
            store,
            journal,
            catalog,
            self,
            new_id,
            clock_ns,
            lambda exchange: policy(exchange).fill_lookback_s,
        )
        self._throttled: dict[tuple[str, str], tuple[float, bool]] = {}
        """(exchange, user id, or "" for every account on it) -> (monotonic time until which
        orders are not sent, banned)."""

    # -- following accounts -----------------------------------------------------------

    async def follow(self, account: Account, credentials: Credentials) -> None:
        """Connect, check the credentials, settle the account's unsettled orders, then keep
        its open orders in step with the exchange."""
        await self.load_markets(account.exchange)
        access = AccountAccess(account.exchange, credentials, account.sandbox)
        gateway = self._connector.connect(access)
        try:
            await gateway.verify()
        except CredentialsRefused as error:
            await gateway.close()
            raise FailedPrecondition(
                f"{account.exchange} refused the credentials of {account.user_id}: {error.message}"
            ) from error
        except GatewayError as error:
            await gateway.close()
            raise Unavailable(f"{account.exchange} is unreachable: {error.message}") from error
        followed = FollowedAccount(account, gateway)
        if gateway.has_feed:
            # Before the reconciliation, so nothing that happens during it is missed.
            followed.start("feed", self._feed(followed))
        try:
            await self._sync(followed, reconcile=True)
        except BaseException as error:
            # Not followed after all: its feed and connection stop with it.
            await followed.stop()
            if isinstance(error, GatewayError):
                raise Unavailable(
                    f"{account.exchange}: reconciling {account.user_id} failed: {error.message}"
                ) from error
            raise
        # New credentials replacing working ones: this connection takes over before the
        # previous one closes, and what that one kept working (stops, trailing stops,
        # rules) goes on as it is: read again, it could come back from before a change.
        previous = self._accounts.get((account.user_id, account.exchange))
        self._accounts[(account.user_id, account.exchange)] = followed
        self._resuming.pop((account.user_id, account.exchange), None)
        if previous is not None:
            await previous.stop()

        async def catch_up() -> None:
            if previous is None:
                self._trailing.load(
                    [
                        stop
                        for stop in await self._store.working_trailing_stops_on(account.exchange)
                        if stop.user_id == account.user_id
                    ]
                )
                await self._rules.load(account.user_id, account.exchange)
            else:
                # The previous connection's retries of failed firings ended with it.
                await self._rules.judge_unsettled(account.user_id, account.exchange)
            await self._finish_follow_ups(followed)
            await self._cancel_exits_of_closed_trades(followed)

        # Followed from here on: a failure now must not leave it half followed.
        await self._until_done(followed, "catch-up", catch_up)
        followed.start("poll", self._poll(followed))
        self._marks.follow(account.exchange)

    def resuming(self, user_id: str, exchange: str, why: str | None) -> None:
        """The account is active, but its exchange has not been reached since the start, for
        `why`: its calls are UNAVAILABLE (retry later), not refused as if it were inactive,
        until it is followed or deactivated. None: no longer."""
        if why is None:
            self._resuming.pop((user_id, exchange), None)
        else:
            self._resuming[(user_id, exchange)] = why

    @property
    def accounts_not_reached(self) -> int:
        """Active accounts whose exchange the start has not reached yet."""
        return len(self._resuming)

    def not_reached(self, exchange: str) -> str | None:
        """Why the start has not reached `exchange`, where an account is active; None if
        no such account waits."""
        return next((why for (_, on), why in self._resuming.items() if on == exchange), None)

    async def unfollow(self, account: Account) -> None:
        self._resuming.pop((account.user_id, account.exchange), None)
        followed = self._accounts.pop((account.user_id, account.exchange), None)
        if followed is not None:
            await followed.stop()
            self._held.release_user(account.user_id, account.exchange)
            self._trailing.forget_user(account.user_id, account.exchange)
            self._rules.forget_user(account.user_id, account.exchange)
        if not self.followed_locks(account.exchange):
            await self._marks.unfollow(account.exchange)

    def held_symbols(self, exchange: str) -> set[str]:
        return self._held.symbols(exchange) | self._trailing.symbols(exchange)

    def account_lock(self, user_id: str, exchange: str) -> asyncio.Lock:
        self.check_followed(user_id, exchange)
        return self._accounts[(user_id, exchange)].lock

    def last_mark(self, exchange: str, symbol: str) -> Decimal | None:
        return self._marks.last(exchange, symbol)

    def send_later(self, order: Order) -> None:
        followed = self._accounts.get((order.user_id, order.exchange))
        if followed is not None:
            followed.start(f"send:{order.order_id}", self._send_in_background(followed, order))

    def unsent(self, order: Order, why: str) -> None:
        followed = self._accounts.get((order.user_id, order.exchange))
        if followed is not None:
            followed.unsent[order.order_id] = why

    async def _send_in_background(self, followed: FollowedAccount, order: Order) -> None:
        try:
            await self.send(followed, order)
        except (OmsError, GatewayError) as error:
            log.error("order %s: not sent: %s", order.order_id, error)

    @run_to_end
    async def create_trailing_stop(
        self, spec: TrailingStopSpec, trailing_stop_id: str
    ) -> tuple[TrailingStop, bool]:
        created = await self._trailing.create(spec, trailing_stop_id)
        self._marks.nudge(spec.market.exchange)
        return created

    @run_to_end
    async def cancel_trailing_stop(self, stop: TrailingStop) -> TrailingStop | None:
        return await self._trailing.cancel(stop)

    def run_rules_with(
        self, runner: RuleRunner, unsure: Callable[[ConditionalRule], None] | None = None
    ) -> None:
        self._rules.run_rules_with(runner, unsure)

    @run_to_end
    async def add_rule(self, rule: ConditionalRule) -> ConditionalRule | None:
        return await self._rules.add(rule)

    @run_to_end
    async def delete_rule(self, rule: ConditionalRule) -> ConditionalRule | None:
        return await self._rules.delete(rule)

    def followed_locks(self, exchange: str) -> dict[str, asyncio.Lock]:
        """user_id -> the lock of each followed account on `exchange`."""
        return {user: a.lock for (user, ex), a in self._accounts.items() if ex == exchange}

    async def load_markets(self, exchange: str) -> None:
        if self._catalog.has_exchange(exchange):
            return
        try:
            markets = await self._connector.load_markets(exchange)
        except GatewayError as error:
            raise Unavailable(f"cannot load the markets of {exchange}: {error.message}") from error
        self._catalog.add(markets)

    async def close(self) -> None:
        await self._marks.close()
        # All at once: closing a gateway may take a while (ccxt's sleeps 250 ms).
        await asyncio.gather(*(followed.stop() for followed in list(self._accounts.values())))
        self._accounts.clear()

    # -- the venue ----------------------------------------------------------------------

    @run_to_end
    async def place(
        self, order: Order, prerender: Prerender[object] | None = None
    ) -> tuple[Order, bool]:
        # No early rendering: the order's outcome is the exchange's answer.
        followed = self._followed(order)
        self._check_throttle(order.exchange, order.user_id)
        created = OrderUpdated(OrderEventType.CREATED, order)
        try:
            outcome = await self._journal.record([OrderChange(order, None, [created])])
        except Unavailable as error:
            # Its commit may have landed: then the poll finds it stored and unsettled, and its
            # lookup sends it, within its grace, as an order that found the exchange down (a
            # stop is held by the poll, and accepted by the client's retry).
            if not order.type.needs_stop_price:
                followed.unsent[order.order_id] = error.message
            raise
        if isinstance(outcome, Conflict):
            existing = outcome.existing
            assert existing is not None
            if existing.status is OrderStatus.PENDING_NEW and existing.type.needs_stop_price:
                return await self._hold(followed, existing), False
            if existing.filled_quantity:
                # A retry: what the first attempt's fills set off may have been cut short.
                follow_up = functools.partial(self._follow_up, followed, existing)
                await self._until_done(followed, f"set-off:{existing.order_id}", follow_up)
            return existing, False
        if order.type.needs_stop_price:
            return await self._hold(followed, order), True
        return await self.send(followed, order), True

    async def _hold(self, followed: FollowedAccount, order: Order) -> Order:
        """Accept a stop or take-profit order into the held book, or refuse it as the
        paper exchange and Binance do when the price has reached it already; the exit of a
        filled entry that is reached already (its entry filled through it) is sent at once."""
        last = self._marks.last(order.exchange, order.symbol)
        fired = False

        async def decide(current: Order) -> list[OrderEvent]:
            nonlocal fired
            fired = False
            if current.status is not OrderStatus.PENDING_NEW:
                # Cancelled while its placement was committed, or accepted (and maybe
                # triggered and sent: its send is that trigger's) by another attempt.
                return []
            if current.parent_order_id and not await self._trade_open(current):
                # Closed (and maybe reopened by the next trade) before the exit was stored:
                # the close took stock of the side's exits without it (see _left_moot).
                return [OrderCanceled("position closed")]
            if last is not None and stop_reached(current, last):
                if current.parent_order_id:
                    fired = True
                    return [OrderAccepted(""), OrderTriggered()]
                return [OrderRejected(f"order would trigger immediately (mark price {last})")]
            return [OrderAccepted("")]

        held = await self.commit(followed, order.order_id, decide)
        if fired:
            log.info("order %s reached at mark price %s when placed: sent now", held.order_id, last)
            return await self.send(followed, held)
        if is_held(held):
            self._held.hold(held)
            # A mark that came in while the hold was committed found it not held yet.
            mark = self._marks.last(order.exchange, order.symbol)
            if mark is not None and mark != last:
                self._trigger_reached(order.exchange, order.symbol, mark)
            self._marks.nudge(order.exchange)
        return held

    async def _accept_stored(self, followed: FollowedAccount, order: Order) -> None:
        try:
            await self._hold(followed, order)
        except Exception:
            log.exception(
                "order %s: stored but not accepted yet; the next poll tries again", order.order_id
            )

    @run_to_end
    async def send(self, followed: FollowedAccount, order: Order) -> Order:
        """Send an order (new, or a held stop just triggered) and settle it from the reply;
        an ambiguous reply leaves it unsettled, looked up by client id. It is stored: it
        goes out whatever becomes of the call that placed it (a deadline that passed while
        it waited for its leverage, say), or it would wait PENDING_NEW for nothing."""
        client_id = exchange_client_id(order.order_id)
        try:
            with followed.submitting(order.order_id):
                report = await followed.gateway.submit(order, client_id)
        except (OutcomeUnknown, DuplicateClientId) as error:
            log.warning(
                "order %s: submit outcome unknown, looking it up: %s", order.order_id, error
            )
            self._lookups.start(followed, order.order_id)
            return order
        except NotSent as error:
            log.warning(
                "order %s: not sent, %s unreachable: %s", order.order_id, order.exchange, error
            )
            if not unsent_trigger(order):  # (one that fired is owed: its lookup sends it again)
                followed.unsent[order.order_id] = error.message
            self._lookups.start(followed, order.order_id)
            return order
        except RateLimited as error:
            # The exchange refused it, as it refuses for funds: REJECTED, and the call itself
            # succeeds. Orders that come while it backs off are refused before being stored.
            policy = self._policy(order.exchange)
            wait_s = policy.ban_backoff_s if error.banned else policy.rate_limit_backoff_s
            scope = (order.exchange, "" if error.whole_address else order.user_id)
            self._throttled[scope] = (time.monotonic() + wait_s, error.banned)
            log.warning("order %s not sent: %s", order.order_id, error.message)
            if unsent_trigger(order):
                # A stop that fired (a stop-loss, say) still has to go out: a 429 or 418 was
                # not processed, so its lookup sends it again once the back-off has passed.
                followed.refused_sends.add(order.order_id)
                self._lookups.start(followed, order.order_id)
                return order
            reason = f"not sent: {error.message}; new orders are refused for {wait_s:g} s"
            return await self._commit(
                followed, order.order_id, lambda current: refusal_events(current, reason)
            )
        except (SubmitRefused, CredentialsRefused) as error:
            message = error.message
            return await self._commit(
                followed, order.order_id, lambda current: refusal_events(current, message)
            )
        placed = await self.settle(followed, order.order_id, report)
        if placed.is_open and placed.price is None:
            # A market order's fills are listed a moment after the acknowledgement.
            placed = await self._refresh(followed, placed)
        return placed

    async def on_marks(self, exchange: str, marks: dict[str, Decimal]) -> None:
        """Send the held stops the new mark prices reach, and move the trailing stops; a
        symbol whose trailing stops fail to move keeps neither its held stops nor the other
        symbols from the marks (the first failure is raised once all had them)."""
        failed: list[OmsError] = []
        for symbol, price in marks.items():
            try:
                await self._trailing.on_mark(exchange, symbol, price)
            except (Unavailable, ConcurrentModification) as error:
                failed.append(error)
            self._trigger_reached(exchange, symbol, price)
        if failed:
            raise failed[0]

    def _trigger_reached(self, exchange: str, symbol: str, price: Decimal) -> None:
        for order in self._held.reached(exchange, symbol, price):
            followed = self._accounts.get((order.user_id, exchange))
            if followed is not None:
                followed.start(f"trigger:{order.order_id}", self._trigger(followed, order, price))

    async def _trigger(self, followed: FollowedAccount, order: Order, price: Decimal) -> None:
        fired = False

        async def trigger(current: Order) -> list[OrderEvent]:
            nonlocal fired
            fired = False
            if not is_held(current):
                return []  # triggered already (a held copy read before), or ended
            fitted = await self.fit_position(current)
            if fitted and isinstance(fitted[-1], OrderCanceled):
                return fitted
            fired = True
            return [*fitted, OrderTriggered()]

        try:
            triggered = await self.commit(followed, order.order_id, trigger)
            # Only the trigger that committed sends: the send of one that came before is
            # its own, or its lookup's.
            if fired:
                log.info("order %s triggered at mark price %s", order.order_id, price)
                await self.send(followed, triggered)
        except Exception:
            # Committed as triggered: the lookup on the next sync settles it.
            log.exception("order %s: triggered but not sent", order.order_id)

    async def fit_position(self, order: Order) -> list[OrderEvent]:
        """A reduce-only order about to be sent for more than the position holds now (a
        partial close came first) would be refused: it goes for what is left, or not at all
        when the side is flat. Nothing for an order that fits or is not reduce-only."""
        if not order.reduce_only:
            return []
        position = await self._position_of(order)
        if position is None or not position.holds(order.position_id):
            if order.position_id:
                # An exit of a trade that closed (its follow-ups cut short by a crash, say):
                # sent, it would close the side's next trade.
                return [OrderCanceled("position closed")]
            return [OrderCanceled(f"reduce-only: no {order.position_side} position left")]
        if position.size < sub(order.quantity, order.filled_quantity):
            return [OrderAmended(add(order.filled_quantity, position.size))]
        return []

    @run_to_end
    async def cancel(
        self, order: Order, reason: str, prerender: Prerender[object] | None = None
    ) -> Order:
        # Cut short after its PENDING_CANCEL commit, no cancel would be asked of the exchange,
        # and a retry finds the order PENDING_CANCEL already.
        return await self._cancel_on(self._followed(order), order, reason)

    async def _cancel_on(self, followed: FollowedAccount, order: Order, reason: str) -> Order:
        if is_held(order):
            # Not sent while not triggered (held, or not yet in the book while its placement
            # commits): cancelled here, unless a trigger committed first.
            order = await self._commit(
                followed,
                order.order_id,
                lambda current: [OrderCanceled(reason)] if is_held(current) else [],
            )
            if not order.is_open:
                self._held.release(order)
                return order
        if order.status is OrderStatus.PENDING_CANCEL:
            return order
        asked_already = False

        def cancel(current: Order) -> list[OrderEvent]:
            nonlocal asked_already
            asked_already = False
            if current.status is OrderStatus.PENDING_CANCEL:
                # A cancel that read the order open before this one committed (the retry of
                # a cancel in flight): that one asks the exchange, and this one answers it.
                asked_already = True
                return []
            if current.order_id in followed.unsent and current.order_id not in followed.sending:
                # It never left, and its lookup has not started sending it: nothing to ask.
                del followed.unsent[current.order_id]
                return [OrderCanceled(reason)]
            return [OrderPendingCancel(reason)]

        after = await self._commit(followed, order.order_id, cancel)
        if asked_already or not after.is_open:
            return after
        if unacknowledged(after):
            # Sent, but its exchange id is not known yet: read it (by our client id) first.
            after = await self._refresh(followed, after)
        if after.status is OrderStatus.PENDING_CANCEL and after.exchange_order_id:
            client_id = exchange_client_id(order.order_id)
            try:
                report: OrderReport | None = await followed.gateway.cancel(after, client_id)
            except OrderUnknown:
                # Filled or cancelled before the cancel arrived: read what happened.
                report = None
            except GatewayError as error:
                log.warning("order %s: cancel outcome unknown: %s", order.order_id, error)
                report = None
            if report is not None:
                after = await self.settle(followed, order.order_id, report)
            if after.status is OrderStatus.PENDING_CANCEL:
                after = await self._refresh(followed, after)
        if unsettled(after):
            self._lookups.start(followed, order.order_id)
        return after

    # -- settling -------------------------------------------------------------------------

    async def settle(
        self,
        followed: FollowedAccount,
        order_id: str,
        report: OrderReport | None,
        fills: Sequence[FillReport] = (),
    ) -> Order:
        """Bring the order in line with a report: its fills first, then its status. Without
        `fills` they are read from the exchange when the report says more filled; those it
        does not list yet are read again shortly (`_read_fills_again`)."""
        order = await stored_order(self._store, followed.user_id, order_id)
        reported = order.filled_quantity if report is None else report.filled_quantity
        if (
            not fills
            and report is not None
            and report.filled_quantity > order.filled_quantity
            and report.exchange_order_id
        ):
            try:
                fills = await followed.gateway.fetch_fills(order.symbol, report.exchange_order_id)
            except GatewayError as error:
                # Without its fills the report's status would run ahead of them: keep only
                # the acknowledgement; the next poll reads the rest.
                log.warning("order %s: cannot read its fills: %s", order_id, error)
                report = _acknowledgement(report, order)
        trade_ids = [fill.trade_id for fill in fills]

        async def decide(current: Order) -> list[OrderEvent]:
            applied = await self._store.applied_trade_ids(
                current.user_id, current.exchange, current.symbol, trade_ids
            )
            new = [
                fill_of(current, fill, self._new_id())
                for fill in fills
                if fill.trade_id not in applied
            ]
            return settlement_events(current, report, new)

        after = await self.commit(followed, order_id, decide)
        if after.filled_quantity < reported and not after.status.is_terminal:
            followed.start(
                f"fills:{order_id}", self._read_fills_again(followed, order_id, reported)
            )
        return after

    async def _read_fills_again(
        self, followed: FollowedAccount, order_id: str, reported: Decimal
    ) -> None:
        """Settle an order again, with backoff, until the fills the exchange reported are in:
        its REST may list a trade a moment after its feed reported it, and the next poll may
        be a minute away. Past `lookup_grace_s`, the poll is left to it."""
        policy = self._policy(followed.exchange)
        backoff = Backoff(policy.lookup_backoff_s, policy.max_backoff_s)
        give_up_at = time.monotonic() + policy.lookup_grace_s
        while time.monotonic() < give_up_at:
            await backoff.wait()
            try:
                order = await stored_order(self._store, followed.user_id, order_id)
                if order.filled_quantity >= reported or order.status.is_terminal:
                    return
                await self._refresh(followed, order)
            except (ConcurrentModification, Unavailable) as error:
                log.warning("order %s: fills not read again: %s", order_id, error)
            except Exception:
                log.exception("order %s: fills not read again", order_id)

    async def _refresh(self, followed: FollowedAccount, order: Order) -> Order:
        """Read the order back from the exchange and settle it; unchanged if unreadable."""
        try:
            report = await followed.gateway.fetch_order(order, exchange_client_id(order.order_id))
            return order if report is None else await self.settle(followed, order.order_id, report)
        except GatewayError as error:
            log.warning("order %s: cannot read it back: %s", order.order_id, error)
            return order

    async def _feed(self, followed: FollowedAccount) -> None:
        """Apply the account's websocket order feed. When the socket drops, the reader's
        next watch reconnects; what happened meanwhile is read back over REST, at once and
        again once the new subscription has held (what happened between the two is in
        neither the first backfill nor the new socket)."""
        batches: asyncio.Queue[_FeedItem] = asyncio.Queue()
        followed.start("feed-reader", self._read_feed(followed, batches))
        while True:
            batch = await batches.get()
            if batch is None or isinstance(batch, GatewayError):
                if batch is None:
                    log.info(
                        "%s %s: order feed back, backfilling over REST again",
                        followed.exchange,
                        followed.user_id,
                    )
                else:
                    log.warning(
                        "%s %s: order feed dropped, backfilling over REST: %s",
                        followed.exchange,
                        followed.user_id,
                        batch,
                    )
                try:
                    await self._sync(followed, reconcile=True)
                except (GatewayError, ConcurrentModification, Unavailable) as failed:
                    log.warning(
                        "%s %s: backfill failed: %s", followed.exchange, followed.user_id, failed
                    )
                except Exception:
                    log.exception("%s %s: backfill failed", followed.exchange, followed.user_id)
                continue
            for report in batch:
                try:
                    await self._on_report(followed, report)
                except (GatewayError, ConcurrentModification, Unavailable) as error:
                    log.warning(
                        "%s order %s: feed update not applied (the poll will): %s",
                        followed.exchange,
                        report.exchange_order_id,
                        error,
                    )
                except Exception:
                    # One update the engine cannot apply must not end the account's feed.
                    log.exception(
                        "%s order %s: feed update not applied",
                        followed.exchange,
                        report.exchange_order_id,
                    )

    async def _read_feed(
        self, followed: FollowedAccount, batches: asyncio.Queue[_FeedItem]
    ) -> None:
        """Keep a watch pending at all times: ccxt wakes a watch only for a message that
        arrives while it waits, so a reader that stopped to apply a batch would leave the
        next update unseen until yet another message came. After a drop, None once the new
        subscription has held for `_RESUBSCRIBED_S` (or brought a message)."""
        policy = self._policy(followed.exchange)
        backoff = Backoff(policy.lookup_backoff_s, policy.max_backoff_s)
        dropped = False
        while True:
            watch = asyncio.ensure_future(followed.gateway.watch_orders())
            try:
                if dropped:
                    await asyncio.wait({watch}, timeout=_RESUBSCRIBED_S)
                    if not watch.done() or watch.exception() is None:
                        batches.put_nowait(None)
                        dropped = False
                batches.put_nowait(await watch)
                backoff.reset()
            except GatewayError as error:
                batches.put_nowait(error)
                dropped = True
                await backoff.wait()
            finally:
                watch.cancel()

    async def known_order(self, followed: FollowedAccount, report: OrderReport) -> Order | None:
        """The OMS order an exchange report is about: one it sent (by the client id it gave
        it), or one placed outside that it tracks (by its "ext-" client order id)."""
        if report.client_id.startswith(EXCHANGE_CLIENT_ID_PREFIX):
            order_id = report.client_id.removeprefix(EXCHANGE_CLIENT_ID_PREFIX)
            order = await self._store.get_order(followed.user_id, order_id)
            if order is not None:
                return order
        return await self._store.get_order_by_client_id(
            followed.user_id, f"{EXTERNAL_CLIENT_ID_PREFIX}{report.exchange_order_id}"
        )

    async def _on_report(self, followed: FollowedAccount, report: OrderReport) -> None:
        """Settle the order a feed update is about; track an order placed outside the OMS."""
        order = await self.known_order(followed, report)
        if order is None:
            if not report.status.is_terminal:
                await self._reconciliation.track_external(followed, [report])
            return
        if (
            order.status is OrderStatus.PENDING_NEW
            or report.filled_quantity != order.filled_quantity
            or (report.status.is_terminal and order.is_open)
        ):
            await self.settle(followed, order.order_id, report)

    async def _poll(self, followed: FollowedAccount) -> None:
        interval = self._policy(followed.exchange).poll_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self._sync(followed)
            except (GatewayError, ConcurrentModification, Unavailable) as error:
                log.warning("%s %s: poll failed: %s", followed.exchange, followed.user_id, error)
            except Exception:
                log.exception("%s %s: poll failed", followed.exchange, followed.user_id)

    async def _sync(self, followed: FollowedAccount, *, reconcile: bool = False) -> None:
        """Read the account's open orders back from the exchange and settle those that
        changed; unsettled ones get a lookup of their own.

        With `reconcile` (on activation, at start-up and after the feed dropped) every open
        order of the account is listed at once, one the OMS did not place is tracked from then
        on (RECONCILED), recent fills of finished orders are read and positions compared.
        """
        by_symbol: dict[str, list[Order]] = defaultdict(list)
        for order in await self._store.open_orders(followed.user_id):
            if order.exchange != followed.exchange:
                continue
            if is_held(order) and order.status is OrderStatus.PENDING_NEW:
                # Its placement's reply was lost and no retry came (or it is still running):
                # accepted, or refused, as that placement would, which its retry then finds.
                followed.start(f"hold:{order.order_id}", self._accept_stored(followed, order))
            elif is_held(order):
                self._held.hold(order)
            elif unsettled(order):
                self._lookups.start(followed, order.order_id)
            elif order.order_id not in followed.tasks:
                by_symbol[order.symbol].append(order)
        if reconcile:
            listed = await followed.gateway.open_orders(None)
            await self._reconciliation.reconcile(followed, listed)
        else:
            listed = [
                report
                for symbol in by_symbol
                for report in await followed.gateway.open_orders(symbol)
            ]
        by_exchange_id = {report.exchange_order_id: report for report in listed}
        for orders in by_symbol.values():
            for order in orders:
                report = by_exchange_id.get(order.exchange_order_id)
                if report is None:
                    # Not open any more: read how it ended.
                    report = await followed.gateway.fetch_order(
                        order, exchange_client_id(order.order_id)
                    )
                if report is None:
                    log.error(
                        "order %s is open in the OMS but unknown to %s",
                        order.order_id,
                        order.exchange,
                    )
                elif report.filled_quantity != order.filled_quantity or report.status.is_terminal:
                    if reconcile:
                        log.warning(
                            "reconciliation: order %s changed on %s while unobserved: %s, "
                            "filled %s (the OMS had %s, filled %s)",
                            order.order_id,
                            order.exchange,
                            report.status.value,
                            report.filled_quantity,
                            order.status.value,
                            order.filled_quantity,
                        )
                    await self.settle(followed, order.order_id, report)

    # -- committing -----------------------------------------------------------------------

    async def _commit(
        self, followed: FollowedAccount, order_id: str, decide: Callable[[Order], list[OrderEvent]]
    ) -> Order:
        """`commit` of a decision that needs no await."""

        async def decide_async(order: Order) -> list[OrderEvent]:
            return decide(order)

        return await self.commit(followed, order_id, decide_async)

    async def commit(
        self,
        followed: FollowedAccount,
        order_id: str,
        decide: Callable[[Order], Awaitable[list[OrderEvent]]],
    ) -> Order:
        """Apply what `decide` makes of the stored order, with its fills' effect on the
        position, in one commit under the account's lock."""
        async with followed.lock:
            for _ in range(_COMMIT_ATTEMPTS):
                order = await stored_order(self._store, followed.user_id, order_id)
                events = await decide(order)
                if not events:
                    return order
                now = self._clock_ns()
                events, updates = await self._into_position(order, events)
                after, published = apply_all(order, events, now)
                outcome = await self._journal.record(
                    [OrderChange(after, order.version, published)], updates=updates
                )
                if not isinstance(outcome, Conflict):
                    break
            else:
                raise ConcurrentModification(f"order {order_id} kept changing; try again")
            trade = updates[0].position if updates else None
            try:
                # Read under the lock, before the next trade's fill can commit: what it
                # brings (exits, a trailing stop) is the next trade's, and stays.
                flat = await self._left_moot(after) if trade and not trade.is_open else None
            except _CUT_SHORT as error:
                self._set_off_again(followed, order_id, error)
                return after
        filled = any(isinstance(event, OrderFilled) for event in events)
        if filled:
            self._marks.nudge(order.exchange)
        try:
            await self._rules.judge(after)
            if filled:
                await self._after_fills(followed, after, flat)
        except _CUT_SHORT as error:
            # The change stands: its caller is answered with it.
            self._set_off_again(followed, order_id, error)
        return after

    def _set_off_again(self, followed: FollowedAccount, order_id: str, error: Exception) -> None:
        """What a committed change of the order sets off (its rules judged, its fills'
        follow-ups), cut short: done again in the background, against the order and its
        trade as they are then."""

        async def set_off() -> None:
            order = await stored_order(self._store, followed.user_id, order_id)
            await self._rules.judge(order)
            if order.filled_quantity:
                await self._follow_up(followed, order)

        self._again_until_done(followed, f"set-off:{order_id}", set_off, error)

    async def _until_done(
        self, followed: FollowedAccount, name: str, step: Callable[[], Awaitable[None]]
    ) -> None:
        """Run `step`; cut short by a store or exchange failure, it runs again in the
        background until it is done (see _again_until_done)."""
        try:
            await step()
        except _CUT_SHORT as error:
            self._again_until_done(followed, name, step, error)

    def _again_until_done(
        self,
        followed: FollowedAccount,
        name: str,
        step: Callable[[], Awaitable[None]],
        error: Exception,
    ) -> None:
        """Run `step` again in the background, backing off, until it is done or the account
        stops being followed (its next follow finishes it then). A step looks before it
        acts, so what it did before it was cut short is not done twice."""
        log.warning(
            "%s %s: %s cut short, retrying: %s", followed.exchange, followed.user_id, name, error
        )

        async def again() -> None:
            policy = self._policy(followed.exchange)
            backoff = Backoff(policy.lookup_backoff_s, policy.max_backoff_s)
            while True:
                await backoff.wait()
                try:
                    await step()
                    return
                except _CUT_SHORT as failure:
                    log.warning(
                        "%s %s: %s cut short again: %s",
                        followed.exchange,
                        followed.user_id,
                        name,
                        failure,
                    )

        followed.start(name, again())

    async def _finish_follow_ups(self, followed: FollowedAccount) -> None:
        """Run again what the account's recent fills (`fill_lookback_s`) set off. Each step
        is a commit of its own after the fill's, so a crash, or a store lost in between, left
        it undone; every step looks before it acts, so what was done is not done twice."""
        for order in await self._reconciliation.recent_orders(followed):
            if order.filled_quantity:
                await self._follow_up(followed, order)

    async def _cancel_exits_of_closed_trades(self, followed: FollowedAccount) -> None:
        """Cancel the held exits whose trade closed without their being cancelled (a crash cut
        short the close's follow-ups): they would not be sent (see fit_position), but would
        look working until they triggered."""
        for order in await self._store.open_orders(followed.user_id):
            if (
                order.exchange == followed.exchange
                and order.position_id
                and is_held(order)
                and not await self._trade_open(order)
            ):
                await self._cancel_moot(followed, order.order_id, "position closed")

    async def _follow_up(self, followed: FollowedAccount, order: Order) -> None:
        """`_after_fills` of an order filled earlier, against its trade as it is now."""
        async with followed.lock:  # (as commit takes stock: before another fill commits)
            trade = await self._trade_of(order)
            flat = None if trade and trade.is_open else await self._left_moot(order)
        await self._after_fills(followed, order, flat)

    async def _trade_of(self, order: Order) -> Position | None:
        """The position the order's fills went into, or (when that was not recorded: fills
        from before it was) the side's current one."""
        if order.position_id:
            return await self._store.get_position(order.user_id, order.position_id)
        return await self._position_of(order)

    async def _position_of(self, order: Order) -> Position | None:
        """The current (last) position record of the side of `order`."""
        return await self._store.current_position(
            PositionKey(order.user_id, order.exchange, order.symbol, order.position_side)
        )

    async def _trade_open(self, exit: Order) -> bool:
        """Whether the side of `exit` is open, and still in its position if known."""
        position = await self._position_of(exit)
        return position is not None and position.holds(exit.position_id)

    async def _after_fills(
        self, followed: FollowedAccount, order: Order, flat: _LeftMoot | None
    ) -> None:
        """What an order's fills set off, each in a commit of its own after the fills' (on
        paper they share it; here a store or exchange failure that cuts them short has them
        run again in the background, and a crash at the next start): an entry's exits
        placed or grown, the linked exit and the rest of the entry of a filled exit
        cancelled, and the exits, trailing stops and partly filled entries of a position
        that went flat (`flat`, None while it is open) cancelled."""
        async with followed.follow_ups(order.order_id):
            if order.bracket is not None:
                # Also when its trade closed before they ran: the exits and the trailing stop
                # whose ids OpenPosition gave out exist, over already ("position closed").
                await self._place_exits(followed, order)
                if len(order.fill_ids) > 1:  # (a late fill is never an entry's first)
                    await self._take_back_late_fills(followed, order)
            if order.linked_order_id:
                await self._cancel_moot(
                    followed, order.linked_order_id, f"one-cancels-other: {order.order_id} filled"
                )
            if order.parent_order_id:
                # The exit ended the trade: the rest of its entry must not reopen it unprotected.
                await self._cancel_moot(
                    followed, order.parent_order_id, f"exit {order.order_id} filled"
                )
            if flat is not None:
                await self._after_flat(followed, flat)

    async def _left_moot(self, order: Order) -> _LeftMoot:
        """What the trade of `order` left moot when it went flat: its exits (held, being
        placed or sent), its working trailing stops and its partly filled entries, as they
        are now; not the side's next trade's. (The side's, for an order whose trade is not
        recorded.)"""
        side = (order.user_id, order.exchange, order.symbol, order.position_side)

        def of_trade(position_id: str) -> bool:
            return position_id in ("", order.position_id) or not order.position_id

        orders = [
            working.order_id
            for working in await self._store.open_orders(order.user_id)
            if moot_when_flat(working)
            and (working.user_id, working.exchange, working.symbol, working.position_side) == side
            and of_trade(working.position_id)
        ]
        stops = [stop for stop in self._trailing.working_of(*side) if of_trade(stop.position_id)]
        return _LeftMoot(orders=orders, stops=stops)

    async def _after_flat(self, followed: FollowedAccount, flat: _LeftMoot) -> None:
        """Cancel what the side left moot (those still open), not what the next trade, which
        may have reopened it meanwhile, placed since."""
        await self._trailing.position_closed(flat.stops)
        for order_id in flat.orders:
            await self._cancel_moot(followed, order_id, "position closed")

    async def _place_exits(self, followed: FollowedAccount, entry: Order) -> None:
        """The entry's take-profit and stop-loss, held, covering what it filled so far, and
        its trailing stop on the whole position (its trade)."""
        assert entry.bracket is not None
        # Not while the account is being reconciled (its stops are loaded once it is
        # followed): the follow-ups run then start it.
        if entry.bracket.trailing is not None and self._followed_now(followed):
            await self._start_trailing(entry)
        for leg in bracket_legs(entry, self._clock_ns()):
            stored = await self._store.get_order(entry.user_id, leg.order_id)
            if stored is None:
                created = OrderUpdated(OrderEventType.CREATED, leg)
                outcome = await self._journal.record([OrderChange(leg, None, [created])])
                if isinstance(outcome, Conflict):
                    continue
                stored = leg
            if stored.status is OrderStatus.PENDING_NEW:
                # Also one stored by a run a failure cut short before it was held.
                await self._hold(followed, stored)
            elif (
                is_held(stored)
                and stored.position_id in ("", entry.position_id)
                and stored.quantity < entry.filled_quantity
            ):
                grown = await self._commit(
                    followed,
                    leg.order_id,
                    lambda o: [OrderAmended(entry.filled_quantity)] if is_held(o) else [],
                )
                if is_held(grown):
                    self._held.hold(grown)

    async def _take_back_late_fills(self, followed: FollowedAccount, entry: Order) -> None:
        """Close, at market and once per fill, what the entry's late fills (`late_fills`:
        its trade had ended, and its rest's cancel had not landed) put into a trade its
        exits do not protect: the trade was over, and the late fill would stay unprotected."""
        fills = await self._store.get_fills(entry.user_id, entry.fill_ids)
        for fill in late_fills(fills):
            trade = await self._store.get_position(entry.user_id, fill.position_id)
            if trade is None or not trade.is_open:
                continue  # closed since: nothing of the fill is left to take back
            quantity = min(fill.quantity, trade.size)
            order = late_fill_close(entry, fill, quantity, self._new_id(), self._clock_ns())
            created = OrderUpdated(OrderEventType.CREATED, order)
            if isinstance(
                await self._journal.record([OrderChange(order, None, [created])]), Conflict
            ):
                continue  # taken back already (this is a follow-up run again)
            log.warning(
                "order %s filled %s after its trade ended (fill %s): closed by order %s",
                entry.order_id,
                fill.quantity,
                fill.fill_id,
                order.order_id,
            )
            await self._send_in_background(followed, order)

    async def _cancel_moot(self, followed: FollowedAccount, order_id: str, reason: str) -> None:
        """Cancel an order a fill made moot, if still open; a failure is logged, not raised."""
        order = await self._store.get_order(followed.user_id, order_id)
        if order is None or not order.is_open:
            return
        try:
            # On the account being reconciled, which is not followed until that is done.
            await self._cancel_on(followed, order, reason)
        except (OmsError, GatewayError) as error:
            log.error("order %s: could not cancel it (%s): %s", order_id, reason, error)

    async def _into_position(
        self, order: Order, events: list[OrderEvent]
    ) -> tuple[list[OrderEvent], list[PositionUpdated]]:
        """The fills among `events` applied to their position: the events with each fill
        marked with the position's id, and the position as it is after them."""
        if not any(isinstance(event, OrderFilled) for event in events):
            return events, []
        market = self._catalog.resolve(order.exchange, order.symbol)
        position = await self._position_of(order)
        marked: list[OrderEvent] = []
        for event in events:
            if isinstance(event, OrderFilled):
                position, event = self._apply_fill(market, order, position, event)
            marked.append(event)
        return marked, [] if position is None else [PositionUpdated(position)]

    def _apply_fill(
        self, market: Market, order: Order, position: Position | None, filled: OrderFilled
    ) -> tuple[Position | None, OrderFilled]:
        """The position after the fill, and the fill marked with it; both as they were for
        a fill that cannot be applied (it would reduce below zero)."""
        fill = filled.fill
        try:
            position = take_fill(position, order, fill, market, self._new_id).mark(
                fill.price, fill.time_ns
            )
        except ValueError as error:  # the venue reports more than the OMS holds
            log.error(
                "fill %s not applied to %s %s %s: %s",
                fill.exchange_trade_id,
                order.user_id,
                order.symbol,
                order.position_side.value,
                error,
            )
            return position, filled
        return position, OrderFilled(dataclasses.replace(fill, position_id=position.position_id))

    def throttle_wait_s(self, exchange: str, user_id: str) -> float:
        until = max((until for until, _ in self._throttles(exchange, user_id)), default=0.0)
        return max(until - time.monotonic(), 0.0)

    def _throttles(self, exchange: str, user_id: str) -> list[tuple[float, bool]]:
        """The back-offs that hold the account's orders: its own, and its address's."""
        scopes = ((exchange, user_id), (exchange, ""))
        return [self._throttled[scope] for scope in scopes if scope in self._throttled]

    def _check_throttle(self, exchange: str, user_id: str) -> None:
        """Refuse, before anything is stored, while the account's or the exchange's rate
        limit is backed off from: the caller may retry under the same client order id once
        it has passed."""
        now = time.monotonic()
        waits = [(until - now, banned) for until, banned in self._throttles(exchange, user_id)]
        wait_s, banned = max(waits, default=(0.0, False))
        if wait_s > 0:
            message = (
                f"{exchange} rate limit: backing off for {wait_s:.1f} s more; nothing was sent"
            )
            raise (Unavailable if banned else ResourceExhausted)(message)

    def is_real(self, exchange: str) -> bool:
        """A ccxt exchange id, whether or not any account on it is followed."""
        return exchange in self._connector.exchanges

    def follows(self, user_id: str, exchange: str) -> bool:
        return (user_id, exchange) in self._accounts

    def check_followed(self, user_id: str, exchange: str) -> None:
        if self.is_real(exchange) and (user_id, exchange) not in self._accounts:
            why = self._resuming.get((user_id, exchange))
            if why is not None:
                raise Unavailable(
                    f"the account of {user_id[:64]} on {exchange} is active, but {exchange} "
                    f"has not been reached since the server started ({why}): retry later"
                )
            raise FailedPrecondition(
                f"user {user_id[:64]} has no active account on {exchange}: "
                "register credentials and activate the account first"
            )

    async def _start_trailing(self, entry: Order) -> None:
        assert entry.bracket is not None and entry.bracket.trailing is not None
        market = self._catalog.resolve(entry.exchange, entry.symbol)
        await self._trailing.start_exit(entry, entry.bracket.trailing, market)
        self._marks.nudge(entry.exchange)

    def _followed_now(self, followed: FollowedAccount) -> bool:
        return self._accounts.get((followed.user_id, followed.exchange)) is followed

    def _followed(self, order: Order) -> FollowedAccount:
        self.check_followed(order.user_id, order.exchange)
        return self._accounts[(order.user_id, order.exchange)]


def _acknowledgement(report: OrderReport, order: Order) -> OrderReport:
    """What `report` says about `order` short of its fills: that the exchange has it."""
    return dataclasses.replace(
        report, status=VenueOrderStatus.OPEN, filled_quantity=order.filled_quantity
    )
