"""The one place that wires settings, adapters, engine and API together, and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
from redis.exceptions import RedisError

from oms.adapters.commit_floor_file import CommitFloorFile
from oms.adapters.credential_vault import CredentialVault, MasterKeyError, parse_master_key
from oms.adapters.exchanges.ccxt_gateway import CcxtConnector, CcxtSettings
from oms.adapters.postgres_archive import PostgresArchive
from oms.adapters.redis_store.accounts import RedisAccountStore
from oms.adapters.redis_store.embedded import EmbeddedRedis
from oms.adapters.redis_store.store import RedisStore, connect
from oms.api.account_service import AccountService
from oms.api.auth import AuthInterceptor
from oms.api.market_data_service import MarketDataService
from oms.api.metrics import Metrics
from oms.api.order_service import OrderService
from oms.api.position_service import PositionService
from oms.api.server import OmsServer
from oms.api.trailing_stop_service import TrailingStopService
from oms.config import AuthSettings, ExchangeSettings, Settings, is_loopback, tcp_address
from oms.domain.access import Grant
from oms.domain.errors import FailedPrecondition, Unavailable
from oms.domain.identifiers import IdGenerator
from oms.domain.markets import Market, MarketCatalog
from oms.domain.paper_matching import FeeSchedule
from oms.engine.accounts import Accounts
from oms.engine.archiving import Archiver
from oms.engine.conditional_rules import ConditionalRules
from oms.engine.journal import Journal
from oms.engine.live_exchanges import LiveExchanges
from oms.engine.market_data import MarketData
from oms.engine.order_lifecycle import OrderLifecycle
from oms.engine.order_retention import OrderRetention
from oms.engine.paper_exchange import PAPER, PaperExchange
from oms.engine.positions import Positions
from oms.engine.run_to_end import finish_running
from oms.engine.subscriptions import EventHub
from oms.engine.trailing_stops import TrailingStops
from oms.engine.venue_policy import VenuePolicy

log = logging.getLogger("oms")


def paper_catalog(settings: Settings) -> MarketCatalog:
    return MarketCatalog(
        Market(
            exchange=PAPER,
            symbol=market.symbol,
            market_id=market.market_id,
            settle=market.settle,
            contract_size=market.contract_size,
            amount_step=market.amount_step,
            min_amount=market.min_amount,
            price_tick=market.price_tick,
            maintenance_margin_rate=market.maintenance_margin_rate,
            max_leverage=market.max_leverage or market.highest_leverage,
        )
        for market in settings.paper.markets
    )


def ccxt_connector(settings: Settings) -> CcxtConnector:
    return CcxtConnector(
        {
            exchange: CcxtSettings(
                rest_url=table.rest_url,
                ws_url=table.ws_url,
                timeout_ms=table.timeout_ms,
                rate_limit=table.rate_limit,
                options=table.options,
            )
            for exchange, table in settings.exchanges.items()
        }
    )


def venue_policy(settings: Settings) -> Callable[[str], VenuePolicy]:
    def policy(exchange: str) -> VenuePolicy:
        table = settings.exchanges.get(exchange, ExchangeSettings())
        return VenuePolicy(
            poll_interval_s=table.poll_interval_s,
            # Not before the exchange's own window for the request has closed (the client
            # sets it to the request timeout): until then it may still take the order.
            lookup_grace_s=max(table.lookup_grace_s, table.timeout_ms / 1000),
            mark_interval_s=table.mark_interval_s,
            position_mark_interval_s=settings.position_mark_interval_s,
            fill_lookback_s=table.fill_lookback_s,
            rate_limit_backoff_s=table.rate_limit_backoff_s,
            ban_backoff_s=table.ban_backoff_s,
        )

    return policy


def auth_interceptor(auth: AuthSettings) -> AuthInterceptor | None:
    if not auth.enabled:
        return None
    return AuthInterceptor(
        [
            (
                token.digest,
                Grant(token.name, frozenset(token.users), token.admin, token.publish_prices),
                token.rate_limit_per_s,
                token.burst,
                token.max_price_streams,
            )
            for token in auth.tokens
        ],
        unauthenticated=(auth.unauthenticated_rate_per_s, auth.unauthenticated_burst),
    )


class StartupError(Exception):
    """The service cannot start as configured (Redis unreachable, address in use): what an
    operator needs is the reason, not a traceback."""


class Application:
    """The running service. `start` recovers state before it reports SERVING."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
        writer_lease: bool = True,
    ) -> None:
        """`writer_lease` False: the store is private to this process already (the embedded
        Redis, behind its data dir's lock)."""
        self.settings = settings
        self._lease_holder = (
            f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
            if writer_lease
            else ""
        )
        # Renewed at every store check: lapses only if several checks in a row fail.
        self._lease_s = max(settings.writer_lease_s, 3 * settings.store_check_interval_s)
        self.store = RedisStore(
            connect(redis_url, settings.redis_timeout_s, settings.redis_max_connections),
            settings.retention_events,
            settings.redis_timeout_s,
        )
        self.hub = EventHub(
            self.store,
            settings.heartbeat_interval_s,
            settings.stream_buffer_events,
            settings.max_streams_per_user,
        )
        catalog = paper_catalog(settings)
        ids = IdGenerator()
        fees = FeeSchedule(settings.paper.maker_fee_rate, settings.paper.taker_fee_rate)
        self.journal = journal = Journal(self.store, self.hub)
        self.paper = PaperExchange(
            catalog,
            fees,
            journal,
            ids.new_id,
            time.time_ns,
            settings.paper.maker_fill_limit,
            settings.position_mark_interval_s,
        )
        self.connector = ccxt_connector(settings)
        self.market_data = MarketData(
            catalog,
            self.paper,
            settings.stream_buffer_events,
            self.connector.exchanges,
            settings.max_price_streams,
            # Read at each call: the exchanges are wired next.
            lambda exchange: self.exchanges.not_reached(exchange),
        )
        self.exchanges = LiveExchanges(
            self.store,
            journal,
            catalog,
            self.connector,
            ids.new_id,
            time.time_ns,
            venue_policy(settings),
            self.market_data.observe,
            self.paper,
        )
        orders = OrderLifecycle(
            self.store, catalog, self.paper, self.exchanges, self.hub, ids.new_id, time.time_ns
        )
        positions = Positions(self.store, catalog, orders, self.hub, self.market_data.last_price_of)
        self.rules = ConditionalRules(
            self.store, journal, self.paper, self.exchanges, self.hub, ids.new_id, time.time_ns
        )
        trailing_stops = TrailingStops(
            self.store, catalog, orders, self.paper, self.exchanges, self.hub, ids.new_id
        )
        master_key = settings.master_key
        vault = (
            None
            if master_key is None
            else CredentialVault(parse_master_key(master_key.get_secret_value()))
        )
        self.accounts = Accounts(
            RedisAccountStore(self.store.redis, settings.redis_timeout_s),
            vault,
            self.exchanges,
            self.connector.exchanges,
            time.time_ns,
        )
        self._metrics_at = (
            None if settings.metrics_listen is None else tcp_address(settings.metrics_listen)
        )
        self.metrics = None if self._metrics_at is None else self._metrics()
        self.metrics_port: int | None = None
        """Where /metrics is served, once started."""
        self.server = OmsServer(
            OrderService(orders, self.rules),
            MarketDataService(self.market_data),
            PositionService(positions),
            TrailingStopService(trailing_stops),
            AccountService(self.accounts),
            extra_handlers,
            auth_interceptor(settings.auth),
            settings.keepalive_s,
            self.metrics,
        )
        self.archiver: Archiver | None = None
        self._archiving: asyncio.Task[None] | None = None
        if settings.postgres_dsn is not None:
            archive = PostgresArchive(settings.postgres_dsn.get_secret_value())
            self.archiver = Archiver(self.store, archive)
            self.hub.add_listener(self.archiver.committed)
        retention_s = settings.finished_order_retention_s
        self.retention = (
            None if retention_s is None else OrderRetention(self.store, retention_s, time.time_ns)
        )
        self._retaining: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        """Set by a second stop signal: the stop waits for nothing more."""
        self._watching: asyncio.Task[None] | None = None
        self._floor_file: CommitFloorFile | None = None
        self._renewing: asyncio.Task[None] | None = None
        self.store_lost = False

    def _metrics(self) -> Metrics:
        metrics = Metrics()
        self.hub.add_event_listener(metrics.observe_events)
        metrics.gauge(
            "oms_event_streams_open",
            "Order, fill, position, trailing-stop and rule streams open now.",
            lambda: self.hub.streams,
        )
        metrics.gauge(
            "oms_price_streams_open", "Price streams open now.", lambda: self.market_data.streams
        )
        metrics.gauge(
            "oms_paper_resting_orders",
            "Open orders resting on the paper exchange's books.",
            lambda: self.paper.resting_orders,
        )
        metrics.gauge(
            "oms_archive_held_users",
            "Users whose events the history archive refuses now, each waiting for its retry.",
            lambda: self.archiver.held_users if self.archiver is not None else 0,
        )
        metrics.gauge(
            "oms_accounts_not_reached",
            "Active accounts whose exchange the start has not reached yet (calls UNAVAILABLE).",
            lambda: self.exchanges.accounts_not_reached,
        )
        metrics.counter(
            "oms_archive_missed_events",
            "Events the store's retention trimmed before the history archive copied them.",
            lambda: self.archiver.missed_events if self.archiver is not None else 0,
        )
        return metrics

    async def start(self) -> int:
        """Recover, listen, report SERVING; returns the bound port."""
        try:
            await self.store.claim_identity()
            await self._take_lease()
        except RedisError as error:
            raise StartupError(f"cannot reach Redis: {error}") from error
        try:
            try:
                await self._check_floor()
            except RedisError as error:
                raise StartupError(f"cannot reach Redis: {error}") from error
            await self.paper.recover()
            await self.rules.finish_pending(paper_only=True)
            try:
                port = self.server.bind(self.settings.listen)
            except OSError as error:
                raise StartupError(str(error)) from error
        except BaseException:
            await self._release_lease()  # the next start need not wait it out
            raise
        await self.server.start()
        # Listening but NOT_SERVING while the exchanges are reconciled: an unreachable one
        # keeps the server here, visible to health checks.
        try:
            if self.metrics is not None and self._metrics_at is not None:
                try:
                    self.metrics_port = self.metrics.serve(*self._metrics_at)
                except OSError as error:
                    raise StartupError(
                        f"metrics_listen {self.settings.metrics_listen}: {error}"
                    ) from error
                if not is_loopback(self.settings.metrics_listen or ""):
                    log.warning(
                        "metrics served on %s with no authentication: keep it on a private network",
                        self.settings.metrics_listen,
                    )
            try:
                await self.accounts.resume()
            except (FailedPrecondition, MasterKeyError) as error:
                raise StartupError(f"OMS_MASTER_KEY: {error}") from error
            # The rest, once the accounts are followed: they cancel on real exchanges.
            await self.rules.finish_pending()
        except BaseException:
            await self.stop()
            raise
        if self.archiver is not None:
            self._archiving = asyncio.get_running_loop().create_task(
                self.archiver.run(), name="archive"
            )
        if self.retention is not None:
            self._retaining = asyncio.get_running_loop().create_task(
                self.retention.run(), name="order-retention"
            )
        await self.server.ready()
        self._watching = asyncio.get_running_loop().create_task(
            self._watch_store(), name="store-health"
        )
        return port

    async def _take_lease(self) -> None:
        """Become the store's only writer, waiting out the lease of a server that died
        without giving it back; another that still renews its lease is a StartupError."""
        if not self._lease_holder:
            return
        deadline = time.monotonic() + self._lease_s + 1
        told = ""
        while (held := await self.store.hold_lease(self._lease_holder, self._lease_s)) is not None:
            holder, left_s = held
            if time.monotonic() + min(left_s, 0.5) > deadline:
                raise StartupError(
                    f"another OMS writes this Redis ({holder}): stop it first. Two servers on "
                    "one store would each decide on a paper book of their own"
                )
            if holder != told:  # once per holder, not at every look
                log.warning(
                    "waiting up to %.1f s for the lease of %s on this Redis", left_s, holder
                )
                told = holder
            await asyncio.sleep(min(left_s, 0.5))
        # From now until it is given back: through recovery, reconciliation and draining.
        self._renewing = asyncio.get_running_loop().create_task(
            self._renew_lease(), name="writer-lease"
        )

    async def _renew_lease(self) -> None:
        """Renew the writer lease at every store check; stop the server if another has
        taken it over (every commit checks it too: nothing lands meanwhile)."""
        assert self._lease_holder
        while True:
            await asyncio.sleep(self.settings.store_check_interval_s)
            try:
                async with asyncio.timeout(self.settings.redis_timeout_s):
                    held = await self.store.hold_lease(self._lease_holder, self._lease_s)
            except (RedisError, OSError, TimeoutError):
                continue  # the health watcher reports a store that does not answer
            if held is not None:
                self.lose_store(
                    f"another OMS ({held[0]}) took this Redis over while this one did not "
                    "renew its lease: only one server may write a store"
                )
                return

    async def _check_floor(self) -> None:
        """Refuse a store that holds fewer commits than it answered an earlier run of this
        server (kept in the data dir, for a Redis of its own: an embedded one has its
        append-only file there already)."""
        if not self._lease_holder:
            return
        self._floor_file = CommitFloorFile(self.settings.data_dir, self.store.identity)
        try:
            answered = self._floor_file.read()
        except (OSError, ValueError) as error:
            raise StartupError(f"cannot read {self._floor_file.path}: {error}") from error
        count = await self.store.hold_floor(answered)
        if count < answered:
            raise StartupError(
                f"Redis lost commits it had acknowledged: it holds {count} commits of this "
                f"store, and answered {answered} before (recorded in {self._floor_file.path}). "
                "Streams would see its sequences again for other events, and clients orders "
                "they were told of would go missing: recover what Redis lost if you can (a "
                "newer append-only file, the history archive). To serve it as it is, delete "
                "that file"
            )

    def _save_floor(self) -> None:
        if self._floor_file is not None:
            try:
                self._floor_file.save(self.store.floor)
            except OSError as error:
                # Once, not at every check: the data dir is read-only, say.
                log.warning(
                    "cannot record the commit floor in %s, so a restart would not notice "
                    "Redis losing commits: %s",
                    self._floor_file.path,
                    error,
                )
                self._floor_file = None

    async def _release_lease(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        if self._lease_holder:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self.settings.redis_timeout_s):
                    await self.store.release_lease(self._lease_holder)

    async def _watch_store(self) -> None:
        """NOT_SERVING while the state store does not answer, SERVING once it does again, so
        that an orchestrator can route around (or restart) an instance that can only fail.
        A store that comes back without its data stops the server (see `lose_store`)."""
        serving = True
        while True:
            await asyncio.sleep(self.settings.store_check_interval_s)
            try:
                async with asyncio.timeout(self.settings.redis_timeout_s):
                    same_store = await self.store.holds_identity()
                    if same_store:
                        self._save_floor()
                        await self.journal.catch_up_unsure()
                reachable = True
            except (RedisError, OSError, TimeoutError, Unavailable) as error:
                reachable = False
                if serving:
                    reason = str(error) or f"no answer within {self.settings.redis_timeout_s:g} s"
                    log.error("state store unreachable, reporting NOT_SERVING: %s", reason)
            if reachable and not same_store:
                self.lose_store(
                    "the state store lost its data (Redis restarted empty, or another one "
                    "answers at its address): restore it from its backup before starting "
                    "again; streams resumed on an empty store would skip events"
                )
                return
            if self.store.lost_writes is not None:
                self.lose_store(
                    f"{self.store.lost_writes}: streams would see its sequences again for "
                    "other events, and clients orders they were told of go missing; recover "
                    "what Redis lost if you can (a newer append-only file, the history "
                    "archive), then start again"
                )
                return
            if reachable != serving:
                serving = reachable
                await (self.server.ready() if serving else self.server.not_serving())
                if serving:
                    log.info("state store reachable again, reporting SERVING")
            if reachable:
                # Outside the check's time bound: their cancels may wait on exchanges.
                await self.rules.finish_unfinished()

    def request_stop(self) -> None:
        self._stopping.set()

    def on_stop_signal(self) -> None:
        """SIGTERM or SIGINT: the first stops gracefully, the next cuts the stop short (an
        operator who will not wait out the grace, as with Ctrl-C pressed twice)."""
        if not self._stopping.is_set():
            self.request_stop()
        elif not self._hurry.is_set():
            log.warning(
                "asked to stop again: not waiting any longer for running calls (cancelled, "
                "their clients see UNAVAILABLE), the history archive or the state store"
            )
            self._hurry.set()

    def lose_store(self, reason: str) -> None:
        """The state went from under the server: stop, and exit 1 (see `serve`)."""
        log.error("%s: stopping", reason)
        self.store_lost = True
        self.request_stop()

    async def wait_for_stop_request(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """NOT_SERVING, end streams with UNAVAILABLE, drain unary calls, close the store."""
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
        if self._retaining is not None:
            self._retaining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retaining
        await self.server.begin_shutdown()
        self.hub.close()
        self.market_data.close()
        if not await self._unless_hurried(self.server.stop(self.settings.shutdown_grace_s)):
            await self.server.stop_now()
        # Calls whose clients gave up run on (engine/run_to_end.py): to their end, within a
        # grace of their own, before the exchanges and the store close under them.
        await self._unless_hurried(finish_running(self.settings.shutdown_grace_s))
        # Together: closing each ccxt client sleeps 250 ms, the accounts' and the public ones'.
        await asyncio.gather(self.exchanges.close(), self.connector.close())
        await self._unless_hurried(self._stop_archiving())
        self._save_floor()  # above all when Redis lost commits: the next start must know
        # Else the lease lapses by itself, and the next server waits that long.
        await self._unless_hurried(self._release_lease())
        await self.store.close()
        if self.metrics is not None:
            self.metrics.close()

    async def _unless_hurried(self, step: Coroutine[Any, Any, None]) -> bool:
        """Run `step` of the stop to its end, or cancel it at a second stop signal;
        returns whether it ended by itself."""
        running = asyncio.ensure_future(step)
        hurry = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait((running, hurry), return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        if not running.done():
            running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        return not running.cancelled()

    async def _stop_archiving(self) -> None:
        """One last pass within the grace period; the next start copies what it missed."""
        if self._archiving is not None:
            self._archiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._archiving
        if self.archiver is not None:
            try:
                async with asyncio.timeout(self.settings.shutdown_grace_s):
                    await self.archiver.copy_pending()
            except (Unavailable, TimeoutError) as error:
                log.warning(
                    "history archive: the last pass did not finish (%s); the next start "
                    "copies what it missed",
                    str(error) or f"not within the {self.settings.shutdown_grace_s:g} s grace",
                )
            except Exception:  # the stop goes on: the lease, the store
                log.exception("history archive: the last pass failed")
            await self.archiver.close()


def freeze_startup_heap() -> int:
    """Keep what imports and wiring allocated out of every later garbage collection; returns
    how many objects that is.

    Imports (ccxt, protobuf descriptors) leave ~240k long-lived objects, and a full
    collection walks them all: 50-90 ms with every call stalled behind it. Frozen, they are
    still freed by reference counting, only no longer scanned for cycles.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def serve(
    settings: Settings,
    redis_url: str,
    extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
    embedded: EmbeddedRedis | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT (exit status 0), or until the state goes from under it
    (1): `embedded`, the Redis this process started, exits by itself (a restart recovers it
    from the append-only file), or the store comes back without its data."""
    app = Application(settings, redis_url, extra_handlers, writer_lease=embedded is None)
    freeze_startup_heap()  # before the first call can be stalled by it
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, app.on_stop_signal)
    port = await app.start()
    listen = settings.listen
    # A unix socket has no port (grpc answers 1 for it).
    address = listen if listen.startswith("unix") else f"{listen.rpartition(':')[0]}:{port}"
    # Tests and scripts wait for this line; keep its shape.
    print(f"oms serving on {address}", flush=True)
    pidfd = None
    if embedded is not None:
        pidfd = os.pidfd_open(embedded.pid)  # readable once the process has exited
        loop.add_reader(pidfd, _embedded_exited, embedded, app, pidfd)
    await app.wait_for_stop_request()
    if pidfd is not None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    log.info("shutting down")
    await app.stop()
    return 1 if app.store_lost else 0


def _embedded_exited(embedded: EmbeddedRedis, app: Application, pidfd: int) -> None:
    asyncio.get_running_loop().remove_reader(pidfd)
    app.lose_store(f"the embedded redis-server exited (code {embedded.exit_code})")
