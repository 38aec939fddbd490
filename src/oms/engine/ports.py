"""What the engine needs from the outside world, as Protocols the adapters satisfy."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Generic, Protocol, TypeVar

from oms.domain.accounts import Account, Credentials
from oms.domain.conditional_rules import ConditionalRule, RuleStatus
from oms.domain.events import SequencedEvent, Update, UserEvent
from oms.domain.fills import Fill
from oms.domain.orders import Order, OrderStatus, PositionSide
from oms.domain.paging import decode_page_token, encode_page_token, listing_of
from oms.domain.positions import Position, PositionKey
from oms.domain.trailing_stops import TrailingStop, TrailingStopStatus

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OrderChange:
    """One order's transition: the order after it and the events it publishes.

    `previous_version` None means the order is new: it is created only if its client order id
    is unused for the user.
    """

    order: Order
    previous_version: int | None
    events: Sequence[UserEvent]


@dataclass(frozen=True, slots=True)
class PriceUpdate:
    exchange: str
    symbol: str
    price: Decimal
    time_ns: int


class ConflictKind(enum.Enum):
    CLIENT_ORDER_ID_TAKEN = "client_order_id_taken"
    """A new order's client order id already names `existing`."""
    STALE_VERSION = "stale_version"
    """The order changed since the version the change was computed from."""
    DUPLICATE_FILL = "duplicate_fill"
    """A fill with this exchange trade id was applied before."""
    TRAILING_CLIENT_ID_TAKEN = "trailing_client_id_taken"
    """A new trailing stop's client id already names `existing_stop`; `change_index` indexes
    the commit's updates."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """The commit wrote nothing: the guard of `changes[change_index]` did not hold."""

    kind: ConflictKind
    change_index: int
    existing: Order | None = None
    existing_stop: TrailingStop | None = None


@dataclass(frozen=True, slots=True)
class OrderQuery:
    user_id: str
    page_size: int
    cursor: int | None = None
    exchange: str = ""
    symbol: str = ""
    open_only: bool = False
    statuses: frozenset[OrderStatus] = frozenset()
    grid_level: int | None = None
    strategy: str = ""


@dataclass(frozen=True, slots=True)
class FillQuery:
    user_id: str
    page_size: int
    cursor: int | None = None
    order_id: str = ""
    exchange: str = ""
    symbol: str = ""
    position_id: str = ""


@dataclass(frozen=True, slots=True)
class PositionQuery:
    user_id: str
    page_size: int
    cursor: int | None = None
    exchange: str = ""
    symbol: str = ""
    position_side: PositionSide | None = None
    include_closed: bool = False


@dataclass(frozen=True, slots=True)
class TrailingStopQuery:
    user_id: str
    page_size: int
    cursor: int | None = None
    exchange: str = ""
    symbol: str = ""
    position_side: PositionSide | None = None
    working_only: bool = False
    statuses: frozenset[TrailingStopStatus] = frozenset()


@dataclass(frozen=True, slots=True)
class RuleQuery:
    user_id: str
    page_size: int
    cursor: int | None = None
    trigger_order_id: str = ""
    statuses: frozenset[RuleStatus] = frozenset()


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: int | None
    """None at the end of the listing."""
    as_of_sequence: int
    listing: str = ""
    """The listing the page belongs to (paging.listing_of its query): its token is bound to it."""

    @property
    def next_page_token(self) -> str:
        return encode_page_token(self.next_cursor, self.listing)


Q = TypeVar("Q", OrderQuery, FillQuery, PositionQuery, TrailingStopQuery, RuleQuery)


async def fetch_page(
    fetch: Callable[[Q], Awaitable[Page[T]]], query: Q, page_token: str
) -> Page[T]:
    """One page of `query`'s listing, from where `page_token` (from a previous page of the same
    listing, or empty for the first) left off."""
    listing = listing_of(query)
    page = await fetch(replace(query, cursor=decode_page_token(page_token, listing)))
    return replace(page, listing=listing)


class StateStore(Protocol):
    """Durable state. Every commit is atomic: state, per-user sequence and events together.

    | method                 | what it does                                               |
    |------------------------|------------------------------------------------------------|
    | commit                 | apply order changes (+ prices, other updates) atomically   |
    | get_order              | one order by id, within the user                           |
    | get_order_by_client_id | one order by client order id, within the user              |
    | open_orders            | a user's open orders                                        |
    | open_orders_on         | every user's open orders on one exchange (recovery)        |
    | applied_trade_ids      | which of an exchange's trade ids were applied already      |
    | list_orders/list_fills | one page, newest first, with the sequence it is as of       |
    | read_events            | retained events after a sequence, oldest first              |
    | sequence_bounds        | (oldest retained, newest) sequence of a user                |
    | load_prices            | the last price of every instrument                          |
    | get_position           | one position record by id, within the user                  |
    | current_position       | the current record of one (user, exchange, symbol, side)    |
    | open_positions_on      | every open record on one exchange (recovery)               |
    | closed_positions_on    | the current record of every flat side on one exchange      |
    | all_positions          | every record of a user, open and closed                    |
    | list_positions         | one page, newest record first, with its sequence            |
    | get_orders             | several orders by id, within the user (None where unknown) |
    | get_fills              | several fills by id, within the user (the unknown left out) |
    | get_trailing_stop(_by_client_id) | one trailing stop, within the user               |
    | working_trailing_stops_on | every working trailing stop on one exchange (recovery)  |
    | list_trailing_stops    | one page, newest first, with its sequence                  |
    | get_rule / list_rules  | one conditional rule; one page of them, newest first        |
    | active_rules_on        | every ACTIVE rule whose trigger is on one exchange (recovery) |
    | pending_rules          | every fired rule whose cancels are unfinished (recovery)    |
    """

    async def commit(
        self,
        changes: Sequence[OrderChange],
        prices: Sequence[PriceUpdate] = (),
        updates: Sequence[Update] = (),
    ) -> list[SequencedEvent] | Conflict: ...

    async def get_order(self, user_id: str, order_id: str) -> Order | None: ...

    async def get_order_by_client_id(self, user_id: str, client_order_id: str) -> Order | None: ...

    async def open_orders(self, user_id: str) -> list[Order]: ...

    async def open_orders_on(self, exchange: str) -> list[Order]: ...

    async def applied_trade_ids(
        self, user_id: str, exchange: str, symbol: str, trade_ids: Sequence[str]
    ) -> set[str]: ...

    async def list_orders(self, query: OrderQuery) -> Page[Order]: ...

    async def list_fills(self, query: FillQuery) -> Page[tuple[int, Fill]]: ...

    async def read_events(self, user_id: str, after: int, limit: int) -> list[SequencedEvent]: ...

    async def sequence_bounds(self, user_id: str) -> tuple[int, int]: ...

    async def load_prices(self) -> list[PriceUpdate]: ...

    async def get_position(self, user_id: str, position_id: str) -> Position | None: ...

    async def current_position(self, key: PositionKey) -> Position | None: ...

    async def open_positions_on(self, exchange: str) -> list[Position]: ...

    async def closed_positions_on(self, exchange: str) -> list[Position]: ...

    async def all_positions(self, user_id: str) -> list[Position]: ...

    async def list_positions(self, query: PositionQuery) -> Page[Position]: ...

    async def get_orders(self, user_id: str, order_ids: Sequence[str]) -> list[Order | None]: ...

    async def get_fills(self, user_id: str, fill_ids: Sequence[str]) -> list[Fill]: ...

    async def get_trailing_stop(
        self, user_id: str, trailing_stop_id: str
    ) -> TrailingStop | None: ...

    async def get_trailing_stop_by_client_id(
        self, user_id: str, client_id: str
    ) -> TrailingStop | None: ...

    async def working_trailing_stops_on(self, exchange: str) -> list[TrailingStop]: ...

    async def list_trailing_stops(self, query: TrailingStopQuery) -> Page[TrailingStop]: ...

    async def get_rule(self, user_id: str, rule_id: str) -> ConditionalRule | None: ...

    async def get_rule_by_client_id(
        self, user_id: str, client_id: str
    ) -> ConditionalRule | None: ...

    async def active_rules_on(self, exchange: str) -> list[ConditionalRule]: ...

    async def pending_rules(self) -> list[ConditionalRule]: ...

    async def list_rules(self, query: RuleQuery) -> Page[ConditionalRule]: ...


async def stored_order(store: StateStore, user_id: str, order_id: str) -> Order:
    """An order this process has stored: missing, the store lost data."""
    order = await store.get_order(user_id, order_id)
    if order is None:
        raise AssertionError(f"order {order_id} vanished from the store")
    return order


class AccountStore(Protocol):
    """Exchange accounts and their sealed credentials.

    | method           | what it does                                                     |
    |------------------|------------------------------------------------------------------|
    | get              | one account and its sealed credentials, or None                  |
    | put              | write an account (with new sealed credentials when given)        |
    | list_active      | members '<user_id> <exchange>' of active accounts after a member |
    | get_many         | the accounts those members name                                  |
    | all_active       | every active account (start-up)                                  |
    | vault_check      | the sealed constant that proves which master key is in use       |
    | set_vault_check  | store it, in place of any before (only while nothing is sealed)  |
    | has_credentials  | whether any credentials are stored                               |
    """

    async def get(self, user_id: str, exchange: str) -> tuple[Account, bytes] | None: ...

    async def put(self, account: Account, sealed: bytes | None = None) -> None: ...

    async def list_active(
        self, user_id: str, exchange: str, after: str, limit: int
    ) -> list[str]: ...

    async def get_many(self, members: list[str]) -> list[Account]: ...

    async def all_active(self) -> list[Account]: ...

    async def vault_check(self) -> bytes | None: ...

    async def set_vault_check(self, sealed: bytes) -> None: ...

    async def has_credentials(self) -> bool: ...


class Vault(Protocol):
    """Seals credentials for storage; `owner` binds a blob to its account."""

    def seal(self, owner: str, credentials: Credentials) -> bytes: ...

    def open(self, owner: str, sealed: bytes) -> Credentials: ...

    def check_value(self) -> bytes: ...

    def verify_check_value(self, sealed: bytes) -> None: ...


class EventSource(Protocol):
    """Every user's events as the store keeps them (encoded), for the history archive."""

    async def users_with_events(self) -> list[str]: ...

    async def read_event_docs(
        self, user_id: str, after: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """(sequence, encoded event) after `after`, oldest first, at most `limit`."""
        ...


class RetainedOrders(Protocol):
    """Orders as the store keeps them, for the retention of finished ones."""

    async def users_with_orders(self) -> list[str]: ...

    async def open_orders(self, user_id: str) -> list[Order]: ...

    async def orders_from_oldest(
        self, user_id: str, after: int, count: int
    ) -> list[tuple[int, Order | None]]:
        """Up to `count` orders in the order they were placed, each with its place in that
        order, from the first after `after` (0: the oldest); None for one gone meanwhile."""
        ...

    async def forget_orders(self, user_id: str, orders: Sequence[Order]) -> int:
        """Remove finished orders and their fills, each only if unchanged since it was read;
        returns how many went."""
        ...

    async def rule_order_ids(self) -> set[tuple[str, str]]:
        """(user, order id) of every order a conditional rule may still act on."""
        ...


class EventArchive(Protocol):
    """Where events are kept for good. Appending a sequence already kept changes nothing.
    Fails Unavailable when the archive cannot be used now, FailedPrecondition when it refuses
    the given events (they hold that user back, not everyone)."""

    async def last_sequences(self) -> dict[str, int]:
        """The newest archived sequence of each user."""
        ...

    async def append(self, user_id: str, docs: Sequence[tuple[int, bytes]]) -> None: ...

    async def first_mismatch(self, user_id: str, docs: Sequence[tuple[int, bytes]]) -> int | None:
        """The first sequence of `docs` that the archive does not hold as given; None if it
        holds them all."""
        ...

    async def set_aside(self, user_id: str, from_sequence: int) -> int:
        """Moves the archived events from `from_sequence` on out of the way (kept, not
        deleted) and resumes the user's archive after `from_sequence - 1`; how many moved."""
        ...

    async def close(self) -> None: ...
