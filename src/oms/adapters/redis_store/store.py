"""The Redis state store: every transition is one `commit.lua` call (one round trip)."""

from __future__ import annotations

import asyncio
import functools
import re
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from decimal import Decimal
from enum import Enum
from importlib import resources
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from oms.adapters.redis_store import keys
from oms.adapters.redis_store.codec import (
    decode_event,
    decode_fill,
    decode_order,
    decode_position,
    decode_rule,
    decode_trailing_stop,
    encode_event,
    encode_fill,
    encode_order,
    encode_position,
    encode_rule,
    encode_trailing_stop,
)
from oms.adapters.redis_store.script_pipe import Rewound, ScriptPipe
from oms.domain.conditional_rules import ConditionalRule, RuleStatus
from oms.domain.errors import Unavailable
from oms.domain.events import (
    FillRecorded,
    OrderUpdated,
    PositionUpdated,
    RuleUpdated,
    SequencedEvent,
    TrailingStopUpdated,
    Update,
    UserEvent,
    WatermarkMoved,
)
from oms.domain.fills import Fill
from oms.domain.orders import Order
from oms.domain.positions import Position, PositionKey
from oms.domain.trailing_stops import TrailingStop, TrailingStopEventType
from oms.engine.ports import (
    Conflict,
    ConflictKind,
    FillQuery,
    OrderChange,
    OrderQuery,
    Page,
    PositionQuery,
    PriceUpdate,
    RuleQuery,
    TrailingStopQuery,
)

P = ParamSpec("P")
R = TypeVar("R")

# Most index entries one page may examine: bounds the time a filtered listing holds Redis.
_SCAN_BUDGET = 5000


def _script(name: str) -> str:
    return resources.files("oms.adapters.redis_store").joinpath(f"lua/{name}").read_text()


def _filters(**fields: object) -> dict[str, list[str]]:
    """list_page.lua filters by document field: the allowed values of each field given.
    Unset values (None, "", an empty set) filter nothing; enums compare by value."""
    found = {}
    for name, value in fields.items():
        values = value if isinstance(value, frozenset | set | list | tuple) else [value]
        texts = [v.value if isinstance(v, Enum) else str(v) for v in values if v not in (None, "")]
        if texts:
            found[name] = texts
    return found


def _side_member(position: Position) -> str:
    """Its side's member in the exchange's set of open sides."""
    return f"{position.user_id}|{position.key.field()}"


def connect(url: str, timeout_s: float, max_connections: int = 64) -> Redis:
    """A client that gives up within ~0.5 s on a refused connection, and within `timeout_s`
    on a connection that cannot be made: a caller gets UNAVAILABLE, not a long hang.

    At most `max_connections` (commits have a connection of their own, ScriptPipe): a burst
    of reads waits for a free one, up to `timeout_s`, where an unbounded pool would open a
    connection per concurrent call and keep them all (file descriptors, Redis's maxclients).
    Named "oms" in Redis's CLIENT LIST.

    redis-py's default retries back off for up to 10 s per attempt. No socket_timeout: on
    Python 3.11 redis-py then sends through asyncio.wait_for, which loses a cancellation that
    lands as the send completes (a background loop asked to stop runs on, and shutdown waits
    for it). A silent connection is bounded by `unavailable_when_down` instead.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        client_name="oms",
        retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.02), 3),
        socket_connect_timeout=timeout_s,
    )
    return Redis.from_pool(pool)


class TimeBound(Protocol):
    @property
    def timeout_s(self) -> float:
        """How long one store call may wait for Redis before it fails UNAVAILABLE."""
        ...


B = TypeVar("B", bound=TimeBound)


def unavailable_when_down(
    method: Callable[Concatenate[B, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[B, P], Coroutine[Any, Any, R]]:
    """Redis errors, and no answer within the store's `timeout_s`, become UNAVAILABLE.

    The bound covers a network partition: a read on a connection that stays open would
    otherwise wait forever. Cancelled by the bound, redis-py closes that connection, so no
    late reply is ever read as the answer to a later command.
    """

    async def guarded(self: B, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await method(self, *args, **kwargs)
        except TimeoutError as error:
            raise Unavailable(f"state store did not answer within {self.timeout_s:g} s") from error
        except (RedisConnectionError, RedisTimeoutError, MasterDownError, ReadOnlyError) as error:
            # (A replica that lost its master, or that writes were sent to: down for us.)
            raise _down(error) from error
        except ResponseError as error:
            if not _refused_for_now(error):
                raise
            raise _down(error) from error

    functools.update_wrapper(guarded, method)
    return guarded


_REFUSED_FOR_NOW = re.compile(r"(?:(?:ERR )?Error running script .*: -)?(?:BUSY|OOM|MISCONF) ")


def _refused_for_now(error: ResponseError) -> bool:
    """Redis refusing a command for now: another client's script running long, memory full
    (maxmemory), snapshots failing. A script names the refusal after its line: commit.lua's
    first write meets it, so nothing was written."""
    return isinstance(error, OutOfMemoryError) or bool(_REFUSED_FOR_NOW.match(str(error)))


def _down(error: Exception) -> BaseException:
    """What a Redis error becomes for a caller: UNAVAILABLE, or, raised while the task is
    being cancelled, the cancellation (a loop that handles Unavailable must not carry on)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return asyncio.CancelledError()
    return _unreachable(error)


def _store_lost() -> Unavailable:
    return Unavailable("the state store lost its data (its identity is gone): nothing was written")


def _unreachable(error: Exception) -> Unavailable:
    return Unavailable(f"state store unreachable: {error}")


class _Transaction:
    """Builds the instruction list of one commit.lua call."""

    def __init__(self, retention_events: int) -> None:
        self.keys: list[str] = []
        self._key_index: dict[str, str] = {}
        self.args: list[str | bytes] = [str(retention_events)]
        self.guards = 0
        self.events = 0

    def _k(self, key: str) -> str:
        index = self._key_index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._key_index[key] = str(len(self.keys))
        return index

    def same_store(self, key: str, identity: str) -> None:
        self.args += ["I", self._k(key), identity]

    def lease_held(self, key: str, holder: str) -> None:
        self.args += ["L", self._k(key), holder]

    def unique(self, key: str, field: str, doc_key: str) -> int:
        self.args += ["U", self._k(key), field, self._k(doc_key)]
        self.guards += 1
        return self.guards

    def equal(self, key: str, field: str, value: str) -> int:
        self.args += ["E", self._k(key), field, value]
        self.guards += 1
        return self.guards

    def absent(self, key: str, field: str) -> int:
        self.args += ["A", self._k(key), field]
        self.guards += 1
        return self.guards

    def event(self, user_id: str, payload: bytes) -> int:
        self.args += ["X", self._k(keys.sequence(user_id)), self._k(keys.events(user_id)), payload]
        self.events += 1
        return self.events

    def hset(self, key: str, field: str, value: str | bytes) -> None:
        self.args += ["H", self._k(key), field, value]

    def hdel(self, key: str, field: str) -> None:
        self.args += ["D", self._k(key), field]

    def sadd(self, key: str, member: str) -> None:
        self.args += ["S", self._k(key), member]

    def srem(self, key: str, member: str) -> None:
        self.args += ["R", self._k(key), member]

    def zadd_at_event(
        self, key: str, event_no: int, member: str, *, only_new: bool = False
    ) -> None:
        self.args += ["N" if only_new else "Z", self._k(key), str(event_no), member]


class RedisStore:
    """StateStore on Redis. This process is the single writer of its keyspace.

    The `type: ignore[misc]` on awaits: redis-py types its asyncio client with the sync
    return types (`Awaitable[T] | T`).
    """

    def __init__(self, redis: Redis, retention_events: int, timeout_s: float = 5.0) -> None:
        """`timeout_s`: how long a read may wait for Redis, and a commit attempt before its
        connection is presumed dead and the commit sent again (ScriptPipe)."""
        self._redis = redis
        self._retention = retention_events
        self.timeout_s = timeout_s
        self._identity = ""
        self._lease_holder = ""
        self.lost_writes: str | None = None
        """Why the store is known to have lost acknowledged commits (then every commit is
        refused), None while it is not."""
        self._commit = ScriptPipe(
            redis,
            _script("commit.lua"),
            reply_timeout_s=timeout_s,
            marks_prefix=keys.landing_marks(),
            count_key=keys.commit_count(),
        )
        # The health watcher's own connection: a burst of reads holding every pooled one
        # must not make a healthy store look down.
        pool = redis.connection_pool
        self._probe = Redis.from_pool(
            BlockingConnectionPool(
                connection_class=pool.connection_class,
                max_connections=1,
                timeout=None,  # its callers bound their waits
                **pool.connection_kwargs,
            )
        )
        self._list_page = redis.register_script(_script("list_page.lua"))
        self._forget_closed_sides = redis.register_script(_script("forget_closed_sides.lua"))
        self._get_by_key = redis.register_script(_script("get_by_key.lua"))
        self._forget_orders = redis.register_script(_script("forget_orders.lua"))
        # Renewed on the probe's connection too, for the same reason: a burst of reads must
        # not hold up a renewal until the lease lapses.
        self._writer_lease = self._probe.register_script(_script("writer_lease.lua"))

    @property
    def redis(self) -> Redis:
        return self._redis

    async def claim_identity(self) -> None:
        """Takes this store's identity, made on its first use. Redis restarted empty (or
        another one behind the same address) does not have it: see `holds_identity`."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.store_identity(), uuid.uuid4().hex, nx=True)
            pipe.get(keys.store_identity())
            _, identity = await pipe.execute()
        self._identity = bytes(identity).decode()

    async def hold_lease(self, holder: str, ttl_s: float) -> tuple[str, float] | None:
        """Take or keep the store's writer lease for `ttl_s`: None when `holder` has it now,
        else (the holder that has it, the seconds its lease has left). This process being
        the keyspace's single writer is what lets it keep the paper book in memory."""
        answer = await self._writer_lease(
            keys=[keys.writer_lease()], args=[holder, "hold", int(ttl_s * 1000)]
        )
        if not answer:
            self._lease_holder = holder  # every commit checks it from now on
            return None
        other, left_ms = answer
        return bytes(other).decode(), int(left_ms) / 1000

    async def release_lease(self, holder: str) -> None:
        await self._writer_lease(keys=[keys.writer_lease()], args=[holder, "release"])

    @property
    def identity(self) -> str:
        """The identity claimed (see claim_identity); empty before."""
        return self._identity

    @property
    def floor(self) -> int:
        """The highest commit count Redis has answered: it must never hold fewer."""
        return self._commit.floor

    async def hold_floor(self, floor: int) -> int:
        """Carry over a floor answered before (by an earlier run of the server); returns the
        commit count Redis holds now, which is below it if Redis lost commits since."""
        self._commit.floor = max(self._commit.floor, floor)
        return int(await self._probe.get(keys.commit_count()) or 0)

    async def _same_identity(self) -> bool:
        """`holds_identity`, True if it cannot tell."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.holds_identity()
        except (RedisError, TimeoutError):
            return True

    async def holds_identity(self) -> bool:
        """Whether the store still holds the identity claimed (True before any claim); also
        proves it answers, and notes in `lost_writes` a store that went back to before
        commits it acknowledged."""
        # Read first: what was acknowledged before the count is read must be in it.
        floor = self._commit.floor
        identity, count = await self._probe.mget(keys.store_identity(), keys.commit_count())
        if identity is not None and int(count or 0) < floor:
            self.lost_writes = self.lost_writes or str(Rewound(int(count or 0), floor))
        return not self._identity or identity == self._identity.encode()

    async def close(self) -> None:
        await self._commit.close()
        await self._probe.aclose()
        await self._redis.aclose()

    # -- writes --------------------------------------------------------------------------

    async def commit(
        self,
        changes: Sequence[OrderChange],
        prices: Sequence[PriceUpdate] = (),
        updates: Sequence[Update] = (),
    ) -> list[SequencedEvent] | Conflict:
        """Apply order changes, price updates and other updates in one atomic step.

        Returns the sequenced events (those of `changes`, then those of `updates`), or the
        Conflict of the first change whose guard failed (nothing is written then). An order
        may change more than once in one commit: only its first change is guarded, the later
        ones build on it.
        """
        tx = _Transaction(self._retention)
        if self._identity:
            # Nothing lands in a store that lost its data, though the server learns of it
            # only at its next check (see claim_identity).
            tx.same_store(keys.store_identity(), self._identity)
        if self._lease_holder:
            # A server stalled past its lease, which another has taken since, writes nothing.
            tx.lease_held(keys.writer_lease(), self._lease_holder)
        guard_owner: dict[int, tuple[ConflictKind, int]] = {}
        guarded: set[str] = set()
        for index, change in enumerate(changes):
            order = change.order
            user = order.user_id
            if order.order_id not in guarded:
                guarded.add(order.order_id)
                if change.previous_version is None:
                    guard = tx.unique(
                        keys.client_order_ids(user), order.client_order_id, keys.orders(user)
                    )
                    guard_owner[guard] = (ConflictKind.CLIENT_ORDER_ID_TAKEN, index)
                else:
                    guard = tx.equal(
                        keys.order_versions(user), order.order_id, str(change.previous_version)
                    )
                    guard_owner[guard] = (ConflictKind.STALE_VERSION, index)
            for event in change.events:
                if isinstance(event, FillRecorded):
                    fill = event.fill
                    for field in (
                        keys.trade_field(fill.exchange, fill.symbol, fill.exchange_trade_id),
                        keys.legacy_trade_field(fill.exchange, fill.exchange_trade_id),
                    ):
                        guard = tx.absent(keys.trade_ids(user), field)
                        guard_owner[guard] = (ConflictKind.DUPLICATE_FILL, index)
        for index, update in enumerate(updates):
            if (
                isinstance(update, TrailingStopUpdated)
                and update.event_type is TrailingStopEventType.CREATED
                and update.trailing_stop.client_id
            ):
                stop = update.trailing_stop
                guard = tx.unique(
                    keys.trailing_client_ids(stop.user_id),
                    stop.client_id,
                    keys.trailing_stops(stop.user_id),
                )
                guard_owner[guard] = (ConflictKind.TRAILING_CLIENT_ID_TAKEN, index)
        for change in changes:
            self._write_change(tx, change)
        for update in updates:
            self._write_update(tx, update)
        for price in prices:
            tx.hset(
                keys.prices(), f"{price.exchange}|{price.symbol}", f"{price.price}|{price.time_ns}"
            )
        try:
            # Not under unavailable_when_down's bound: the pipe bounds each attempt itself.
            reply = await self._commit(keys=tx.keys, args=tx.args)
        except RedisConnectionError as error:
            raise _unreachable(error) from error
        except ResponseError as error:
            if not _refused_for_now(error):
                raise
            raise Unavailable(f"state store refused the commit: {error}") from error
        except Rewound as error:
            if not await self._same_identity():
                raise _store_lost() from error  # restarted empty, not merely older
            self.lost_writes = str(error)
            raise Unavailable(f"{error}; nothing was written") from error
        if reply[0] == b"lost":
            raise _store_lost()
        if reply[0] == b"taken":
            raise Unavailable(
                "this server's writer lease on the state store lapsed (another server may "
                "write it now): nothing was written"
            )
        if reply[0] == b"landed":
            # An earlier attempt, whose reply was lost, wrote exactly this. Its events are in
            # the store, their sequences unknown here (the journal has streams read them).
            return []
        if reply[0] == b"ok":
            published: list[UserEvent] = [event for change in changes for event in change.events]
            published += [update for update in updates if not isinstance(update, WatermarkMoved)]
            return [
                SequencedEvent(int(seq), event)
                for seq, event in zip(reply[1:], published, strict=True)
            ]
        kind, index = guard_owner[int(reply[1])]
        if reply[0] != b"exists":
            return Conflict(kind, index)
        if kind is ConflictKind.TRAILING_CLIENT_ID_TAKEN:
            return Conflict(kind, index, existing_stop=decode_trailing_stop(reply[3]))
        return Conflict(kind, index, decode_order(reply[3]))

    def _write_change(self, tx: _Transaction, change: OrderChange) -> None:
        order = change.order
        user = order.user_id
        first_event = tx.events + 1
        doc = encode_order(order)
        for event in change.events:
            # The event of the change's last step carries the order as stored: encode it once.
            same = isinstance(event, OrderUpdated) and event.order is order
            event_no = tx.event(user, encode_event(event, doc if same else None))
            if isinstance(event, FillRecorded):
                fill = event.fill
                tx.hset(keys.fills(user), fill.fill_id, encode_fill(fill))
                tx.zadd_at_event(keys.fill_index(user), event_no, fill.fill_id)
                tx.hset(
                    keys.trade_ids(user),
                    keys.trade_field(fill.exchange, fill.symbol, fill.exchange_trade_id),
                    fill.fill_id,
                )
        tx.hset(keys.orders(user), order.order_id, doc)
        tx.hset(keys.order_versions(user), order.order_id, str(order.version))
        if change.previous_version is None:
            tx.hset(keys.client_order_ids(user), order.client_order_id, order.order_id)
            tx.zadd_at_event(keys.order_index(user), first_event, order.order_id)
        member = f"{user}|{order.order_id}"
        if order.is_open:
            tx.sadd(keys.open_orders(user), order.order_id)
            tx.sadd(keys.exchange_open_orders(order.exchange), member)
        else:
            tx.srem(keys.open_orders(user), order.order_id)
            tx.srem(keys.exchange_open_orders(order.exchange), member)

    def _write_update(self, tx: _Transaction, update: Update) -> None:
        match update:
            case PositionUpdated(position=position):
                self._write_position(tx, update, position)
            case TrailingStopUpdated(trailing_stop=stop):
                self._write_trailing_stop(tx, update, stop)
            case WatermarkMoved(trailing_stop=stop):
                tx.hset(
                    keys.trailing_stops(stop.user_id),
                    stop.trailing_stop_id,
                    encode_trailing_stop(stop),
                )
            case RuleUpdated(rule=rule):
                self._write_rule(tx, update, rule)

    def _write_position(
        self, tx: _Transaction, update: PositionUpdated, position: Position
    ) -> None:
        user = position.user_id
        event_no = tx.event(user, encode_event(update))
        tx.hset(keys.positions(user), position.position_id, encode_position(position))
        tx.hset(keys.current_positions(user), position.key.field(), position.position_id)
        # Scored by the record's first event: pages stay stable while positions move.
        tx.zadd_at_event(keys.position_index(user), event_no, position.position_id, only_new=True)
        if position.is_open:
            tx.sadd(keys.open_positions(user), position.position_id)
            tx.sadd(keys.exchange_positions(position.exchange), _side_member(position))
        else:
            tx.srem(keys.open_positions(user), position.position_id)
            tx.srem(keys.exchange_positions(position.exchange), _side_member(position))

    def _write_trailing_stop(
        self, tx: _Transaction, update: TrailingStopUpdated, stop: TrailingStop
    ) -> None:
        user, stop_id = stop.user_id, stop.trailing_stop_id
        event_no = tx.event(user, encode_event(update))
        tx.hset(keys.trailing_stops(user), stop_id, encode_trailing_stop(stop))
        if update.event_type is TrailingStopEventType.CREATED:
            if stop.client_id:
                tx.hset(keys.trailing_client_ids(user), stop.client_id, stop_id)
            tx.zadd_at_event(keys.trailing_index(user), event_no, stop_id)
        member = f"{user}|{stop_id}"
        if stop.status.is_working:
            tx.sadd(keys.working_trailing_stops(user), stop_id)
            tx.sadd(keys.exchange_trailing_stops(stop.exchange), member)
        else:
            tx.srem(keys.working_trailing_stops(user), stop_id)
            tx.srem(keys.exchange_trailing_stops(stop.exchange), member)

    def _write_rule(self, tx: _Transaction, update: RuleUpdated, rule: ConditionalRule) -> None:
        user = rule.user_id
        event_no = tx.event(user, encode_event(update))
        tx.hset(keys.rules(user), rule.rule_id, encode_rule(rule))
        if rule.client_id:
            tx.hset(keys.rule_client_ids(user), rule.client_id, rule.rule_id)
        tx.zadd_at_event(keys.rule_index(user), event_no, rule.rule_id, only_new=True)
        member = f"{user}|{rule.rule_id}"
        if rule.status is RuleStatus.ACTIVE:
            tx.sadd(keys.exchange_active_rules(rule.trigger_exchange), member)
        else:
            tx.srem(keys.exchange_active_rules(rule.trigger_exchange), member)
        if rule.pending:
            tx.sadd(keys.pending_rules(), member)
        else:
            tx.srem(keys.pending_rules(), member)

    # -- reads ---------------------------------------------------------------------------

    @unavailable_when_down
    async def get_order(self, user_id: str, order_id: str) -> Order | None:
        raw = await self._redis.hget(keys.orders(user_id), order_id)  # type: ignore[misc]
        return None if raw is None else decode_order(raw)

    @unavailable_when_down
    async def get_order_by_client_id(self, user_id: str, client_order_id: str) -> Order | None:
        raw = await self._by_key(
            keys.client_order_ids(user_id), keys.orders(user_id), client_order_id
        )
        return None if raw is None else decode_order(raw)

    @unavailable_when_down
    async def open_orders(self, user_id: str) -> list[Order]:
        ids = await self._redis.smembers(keys.open_orders(user_id))  # type: ignore[misc]
        if not ids:
            return []
        docs = await self._redis.hmget(keys.orders(user_id), sorted(ids))  # type: ignore[misc]
        return [decode_order(doc) for doc in docs if doc is not None]

    @unavailable_when_down
    async def users_with_orders(self) -> list[str]:
        return await self._users_with(keys.order_index("*"))

    @unavailable_when_down
    async def orders_from_oldest(
        self, user_id: str, after: int, count: int
    ) -> list[tuple[int, Order | None]]:
        """Up to `count` of the user's orders in the order they were placed, each with its
        place in that order (the sequence of its first event), from the first after `after`;
        None for one gone meanwhile."""
        index = await self._redis.zrangebyscore(
            keys.order_index(user_id), f"({after}", "+inf", start=0, num=count, withscores=True
        )
        if not index:
            return []
        docs = await self._redis.hmget(keys.orders(user_id), [oid for oid, _ in index])  # type: ignore[misc]
        return [
            (int(score), None if doc is None else decode_order(doc))
            for (_, score), doc in zip(index, docs, strict=True)
        ]

    @unavailable_when_down
    async def forget_orders(self, user_id: str, orders: Sequence[Order]) -> int:
        """Remove finished orders and their fills, each only if unchanged since it was read;
        returns how many went. The fills' trade ids stay: a trade reported again is still
        known as applied."""
        args: list[str | int] = [self._lease_holder]
        for order in orders:
            assert order.status.is_terminal
            args += [order.order_id, order.version, order.client_order_id, len(order.fill_ids)]
            args += order.fill_ids
        forgotten = await self._forget_orders(
            keys=[
                keys.orders(user_id),
                keys.order_versions(user_id),
                keys.client_order_ids(user_id),
                keys.order_index(user_id),
                keys.fills(user_id),
                keys.fill_index(user_id),
                keys.writer_lease(),
            ],
            args=args,
        )
        return int(forgotten)

    @unavailable_when_down
    async def rule_order_ids(self) -> set[tuple[str, str]]:
        """(user, order id) of every trigger and listed order of a rule that is ACTIVE, or
        fired with its cancels unfinished, on any exchange."""
        active = keys.exchange_active_rules("*")
        members_keys = [keys.pending_rules()]
        members_keys += [
            key.decode() async for key in self._redis.scan_iter(match=active, count=1000)
        ]
        found = set()
        for members_key in members_keys:
            for doc in await self._members_docs(members_key, keys.rules):
                rule = decode_rule(doc)
                for order_id in (rule.trigger_order_id, *rule.cancel_order_ids):
                    found.add((rule.user_id, order_id))
        return found

    @unavailable_when_down
    async def applied_trade_ids(
        self, user_id: str, exchange: str, symbol: str, trade_ids: Sequence[str]
    ) -> set[str]:
        if not trade_ids:
            return set()
        fields = [keys.trade_field(exchange, symbol, trade_id) for trade_id in trade_ids]
        fields += [keys.legacy_trade_field(exchange, trade_id) for trade_id in trade_ids]
        found = await self._redis.hmget(keys.trade_ids(user_id), fields)  # type: ignore[misc]
        now, before = found[: len(trade_ids)], found[len(trade_ids) :]
        return {
            trade_id
            for trade_id, hit, legacy_hit in zip(trade_ids, now, before, strict=True)
            if hit is not None or legacy_hit is not None
        }

    @unavailable_when_down
    async def open_orders_on(self, exchange: str) -> list[Order]:
        docs = await self._members_docs(keys.exchange_open_orders(exchange), keys.orders)
        return [decode_order(doc) for doc in docs]

    @unavailable_when_down
    async def list_orders(self, query: OrderQuery) -> Page[Order]:
        filters = _filters(
            exchange=query.exchange,
            symbol=query.symbol,
            status=query.statuses,
            grid_level=query.grid_level,
            strategy=query.strategy,
        )
        user = query.user_id
        raw = await self._page(
            [
                keys.sequence(user),
                keys.order_index(user),
                keys.orders(user),
                keys.open_orders(user),
            ],
            query.cursor,
            query.page_size,
            filters,
            from_candidates=query.open_only,
        )
        return Page([decode_order(doc) for doc, _ in raw[2]], raw[1], raw[0])

    @unavailable_when_down
    async def list_fills(self, query: FillQuery) -> Page[tuple[int, Fill]]:
        filters = _filters(
            order_id=query.order_id,
            exchange=query.exchange,
            symbol=query.symbol,
            position_id=query.position_id,
        )
        user = query.user_id
        raw = await self._page(
            [keys.sequence(user), keys.fill_index(user), keys.fills(user)],
            query.cursor,
            query.page_size,
            filters,
            from_candidates=False,
        )
        return Page([(score, decode_fill(doc)) for doc, score in raw[2]], raw[1], raw[0])

    async def _page(
        self,
        page_keys: list[str],
        cursor: int | None,
        page_size: int,
        filters: dict[str, list[str]],
        from_candidates: bool,
    ) -> tuple[int, int | None, list[tuple[bytes, int]]]:
        reply: list[Any] = await self._list_page(
            keys=page_keys,
            args=[
                "+inf" if cursor is None else str(cursor),
                str(page_size),
                str(_SCAN_BUDGET),
                orjson.dumps(filters),
                "1" if from_candidates else "0",
            ],
        )
        rows = [(reply[k], int(reply[k + 1])) for k in range(2, len(reply), 2)]
        next_cursor = int(reply[1]) if reply[1] else None
        return int(reply[0]), next_cursor, rows

    async def read_events(self, user_id: str, after: int, limit: int) -> list[SequencedEvent]:
        docs = await self.read_event_docs(user_id, after, limit)
        return [SequencedEvent(sequence, decode_event(doc)) for sequence, doc in docs]

    @unavailable_when_down
    async def read_event_docs(
        self, user_id: str, after: int, limit: int
    ) -> list[tuple[int, bytes]]:
        rows = await self._redis.xrange(
            keys.events(user_id), min=f"({after}-0", max="+", count=limit
        )
        return [(int(entry_id.split(b"-", 1)[0]), fields[b"d"]) for entry_id, fields in rows]

    @unavailable_when_down
    async def users_with_events(self) -> list[str]:
        return await self._users_with(keys.sequence("*"))

    async def _users_with(self, pattern: str) -> list[str]:
        """The users whose key of `pattern` (a user key with the user as '*') exists."""
        head, _, tail = pattern.partition("*")
        return [
            key.decode()[len(head) : -len(tail)]
            async for key in self._redis.scan_iter(match=pattern, count=1000)
        ]

    @unavailable_when_down
    async def sequence_bounds(self, user_id: str) -> tuple[int, int]:
        """(oldest retained sequence, newest sequence); (newest + 1, newest) when none kept."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(keys.sequence(user_id))
        pipe.xrange(keys.events(user_id), min="-", max="+", count=1)
        newest_raw, first = await pipe.execute()
        newest = int(newest_raw or 0)
        oldest = int(first[0][0].split(b"-", 1)[0]) if first else newest + 1
        return oldest, newest

    @unavailable_when_down
    async def get_position(self, user_id: str, position_id: str) -> Position | None:
        raw = await self._redis.hget(keys.positions(user_id), position_id)  # type: ignore[misc]
        return None if raw is None else decode_position(raw)

    @unavailable_when_down
    async def current_position(self, key: PositionKey) -> Position | None:
        position_id = await self._redis.hget(keys.current_positions(key.user_id), key.field())  # type: ignore[misc]
        return (
            None
            if position_id is None
            else await self.get_position(key.user_id, position_id.decode())
        )

    @unavailable_when_down
    async def open_positions_on(self, exchange: str) -> list[Position]:
        """Every open record on one exchange. A side found closed (written before a close
        took its side out of the set) is removed from the set, so it is read once only."""
        index = keys.exchange_positions(exchange)
        found = await self._current_records(await self._redis.smembers(index))  # type: ignore[misc]
        closed = [position for position in found if not position.is_open]
        if closed:
            await self._forget_closed_sides(
                keys=[index, *(keys.current_positions(p.user_id) for p in closed)],
                args=[
                    arg for p in closed for arg in (_side_member(p), p.key.field(), p.position_id)
                ],
            )
        return [position for position in found if position.is_open]

    @unavailable_when_down
    async def closed_positions_on(self, exchange: str) -> list[Position]:
        """The current record of every side on one exchange that is flat now, having been
        open before (recovery: its leverage is the side's when it reopens). Reads every
        user's current records: for a start or a reload, not for a call."""
        users = await self._users_with(keys.current_positions("*"))
        pipe = self._redis.pipeline(transaction=False)
        for user_id in users:
            pipe.hgetall(keys.current_positions(user_id))
        sides = [
            f"{user_id}|{field.decode()}"
            for user_id, current in zip(users, await pipe.execute(), strict=True)
            for field in current
            if field.decode().startswith(f"{exchange}|")
        ]
        found = await self._current_records(sides)
        return [position for position in found if not position.is_open]

    async def _current_records(self, members: Iterable[bytes | str]) -> list[Position]:
        """The current record of each side '<user_id>|<field in current_positions>'."""
        pipe = self._redis.pipeline(transaction=False)
        users = []
        for member in sorted(m.decode() if isinstance(m, bytes) else m for m in members):
            user_id, field = member.split("|", 1)
            users.append(user_id)
            pipe.hget(keys.current_positions(user_id), field)
        ids = await pipe.execute()
        pipe = self._redis.pipeline(transaction=False)
        for user_id, position_id in zip(users, ids, strict=True):
            pipe.hget(keys.positions(user_id), position_id)
        return [decode_position(doc) for doc in await pipe.execute() if doc is not None]

    @unavailable_when_down
    async def all_positions(self, user_id: str) -> list[Position]:
        docs = await self._redis.hvals(keys.positions(user_id))  # type: ignore[misc]
        return [decode_position(doc) for doc in docs]

    @unavailable_when_down
    async def list_positions(self, query: PositionQuery) -> Page[Position]:
        filters = _filters(
            exchange=query.exchange, symbol=query.symbol, position_side=query.position_side
        )
        user = query.user_id
        raw = await self._page(
            [
                keys.sequence(user),
                keys.position_index(user),
                keys.positions(user),
                keys.open_positions(user),
            ],
            query.cursor,
            query.page_size,
            filters,
            from_candidates=not query.include_closed,
        )
        return Page([decode_position(doc) for doc, _ in raw[2]], raw[1], raw[0])

    async def _by_key(self, index: str, docs: str, key: str) -> bytes | None:
        """The document of `docs` whose id the hash `index` holds under the caller's `key`."""
        raw: bytes | None = await self._get_by_key(keys=[index, docs], args=[key])
        return raw

    @unavailable_when_down
    async def get_orders(self, user_id: str, order_ids: Sequence[str]) -> list[Order | None]:
        docs = await self._redis.hmget(keys.orders(user_id), list(order_ids))  # type: ignore[misc]
        return [None if doc is None else decode_order(doc) for doc in docs]

    @unavailable_when_down
    async def get_fills(self, user_id: str, fill_ids: Sequence[str]) -> list[Fill]:
        docs = await self._redis.hmget(keys.fills(user_id), list(fill_ids))  # type: ignore[misc]
        return [decode_fill(doc) for doc in docs if doc is not None]

    @unavailable_when_down
    async def get_trailing_stop(self, user_id: str, trailing_stop_id: str) -> TrailingStop | None:
        raw = await self._redis.hget(keys.trailing_stops(user_id), trailing_stop_id)  # type: ignore[misc]
        return None if raw is None else decode_trailing_stop(raw)

    @unavailable_when_down
    async def get_trailing_stop_by_client_id(
        self, user_id: str, client_id: str
    ) -> TrailingStop | None:
        raw = await self._by_key(
            keys.trailing_client_ids(user_id), keys.trailing_stops(user_id), client_id
        )
        return None if raw is None else decode_trailing_stop(raw)

    @unavailable_when_down
    async def working_trailing_stops_on(self, exchange: str) -> list[TrailingStop]:
        return [
            decode_trailing_stop(doc)
            for doc in await self._members_docs(
                keys.exchange_trailing_stops(exchange), keys.trailing_stops
            )
        ]

    @unavailable_when_down
    async def list_trailing_stops(self, query: TrailingStopQuery) -> Page[TrailingStop]:
        filters = _filters(
            exchange=query.exchange,
            symbol=query.symbol,
            position_side=query.position_side,
            status=query.statuses,
        )
        user = query.user_id
        raw = await self._page(
            [
                keys.sequence(user),
                keys.trailing_index(user),
                keys.trailing_stops(user),
                keys.working_trailing_stops(user),
            ],
            query.cursor,
            query.page_size,
            filters,
            from_candidates=query.working_only,
        )
        return Page([decode_trailing_stop(doc) for doc, _ in raw[2]], raw[1], raw[0])

    @unavailable_when_down
    async def get_rule(self, user_id: str, rule_id: str) -> ConditionalRule | None:
        raw = await self._redis.hget(keys.rules(user_id), rule_id)  # type: ignore[misc]
        return None if raw is None else decode_rule(raw)

    @unavailable_when_down
    async def get_rule_by_client_id(self, user_id: str, client_id: str) -> ConditionalRule | None:
        raw = await self._by_key(keys.rule_client_ids(user_id), keys.rules(user_id), client_id)
        return None if raw is None else decode_rule(raw)

    @unavailable_when_down
    async def active_rules_on(self, exchange: str) -> list[ConditionalRule]:
        docs = await self._members_docs(keys.exchange_active_rules(exchange), keys.rules)
        return [decode_rule(doc) for doc in docs]

    @unavailable_when_down
    async def pending_rules(self) -> list[ConditionalRule]:
        docs = await self._members_docs(keys.pending_rules(), keys.rules)
        return [decode_rule(doc) for doc in docs]

    @unavailable_when_down
    async def list_rules(self, query: RuleQuery) -> Page[ConditionalRule]:
        filters = _filters(trigger_order_id=query.trigger_order_id, status=query.statuses)
        user = query.user_id
        raw = await self._page(
            [keys.sequence(user), keys.rule_index(user), keys.rules(user)],
            query.cursor,
            query.page_size,
            filters,
            from_candidates=False,
        )
        return Page([decode_rule(doc) for doc, _ in raw[2]], raw[1], raw[0])

    async def _members_docs(self, members_key: str, docs_key: Callable[[str], str]) -> list[bytes]:
        """The documents a set of '<user_id>|<id>' members names, in member order."""
        members = await self._redis.smembers(members_key)  # type: ignore[misc]
        pipe = self._redis.pipeline(transaction=False)
        for member in sorted(members):
            user_id, record_id = member.decode().split("|", 1)
            pipe.hget(docs_key(user_id), record_id)
        return [doc for doc in await pipe.execute() if doc is not None]

    @unavailable_when_down
    async def load_prices(self) -> list[PriceUpdate]:
        rows = await self._redis.hgetall(keys.prices())  # type: ignore[misc]
        updates = []
        for field, value in rows.items():
            exchange, symbol = field.decode().split("|", 1)
            price, time_ns = value.decode().split("|", 1)
            updates.append(PriceUpdate(exchange, symbol, Decimal(price), int(time_ns)))
        return updates
