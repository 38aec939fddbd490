"""The order model: a frozen record changed only through `apply(event)` and a readable table."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from decimal import Decimal
from enum import StrEnum
from operator import attrgetter

from oms.domain.decimals import ZERO, add, div, mul, sub
from oms.domain.errors import FailedPrecondition
from oms.domain.fills import Fill, Liquidity


# The domain's enums are StrEnums, each value its name: the value is what is stored and
# sent, and a member hashes and serializes as that string without Python-level calls
# (a plain Enum's __hash__ and .value are Python functions on 3.11).
class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP_MARKET = "STOP_MARKET"
    STOP_LIMIT = "STOP_LIMIT"
    TAKE_PROFIT_MARKET = "TAKE_PROFIT_MARKET"

    @property
    def needs_price(self) -> bool:
        return self in (OrderType.LIMIT, OrderType.STOP_LIMIT)

    @property
    def needs_stop_price(self) -> bool:
        return self in (
            OrderType.STOP_MARKET,
            OrderType.STOP_LIMIT,
            OrderType.TAKE_PROFIT_MARKET,
        )


class TimeInForce(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"
    POST_ONLY = "POST_ONLY"


class PositionSide(StrEnum):
    LONG = "LONG"
    SHORT = "SHORT"


class OrderStatus(StrEnum):
    PENDING_NEW = "PENDING_NEW"
    OPEN = "OPEN"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    PENDING_CANCEL = "PENDING_CANCEL"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    (OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED)
)


def default_position_side(side: Side, reduce_only: bool) -> PositionSide:
    """Hedge mode: BUY opens LONG and SELL opens SHORT; reduce-only flips that."""
    opens_long = side is Side.BUY
    return PositionSide.LONG if opens_long != reduce_only else PositionSide.SHORT


# Events an order can undergo: reports from the venue turned into facts by the engine.


@dataclass(frozen=True, slots=True)
class OrderAccepted:
    exchange_order_id: str


@dataclass(frozen=True, slots=True)
class OrderRejected:
    reason: str


@dataclass(frozen=True, slots=True)
class OrderTriggered:
    """A stop or take-profit condition was met; the order now works as market or limit."""


@dataclass(frozen=True, slots=True)
class OrderSentAgain:
    """An order that fired (a held stop, a trailing stop's close) sent again, the exchange
    not having taken it: committed before the send, so its lookup counts from then."""


@dataclass(frozen=True, slots=True)
class OrderFilled:
    fill: Fill


@dataclass(frozen=True, slots=True)
class OrderAmended:
    """The OMS changed the quantity of a working order (an exit growing with its entry)."""

    quantity: Decimal


@dataclass(frozen=True, slots=True)
class OrderPendingCancel:
    """A cancel was sent and the exchange has not confirmed it yet."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class OrderCanceled:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OrderExpired:
    reason: str = ""


OrderEvent = (
    OrderAccepted
    | OrderRejected
    | OrderTriggered
    | OrderSentAgain
    | OrderFilled
    | OrderAmended
    | OrderPendingCancel
    | OrderCanceled
    | OrderExpired
)


@dataclass(frozen=True, slots=True)
class TrailingExit:
    """An entry order's trailing stop: started on its first fill, under a reserved id."""

    trailing_stop_id: str
    callback_rate: Decimal | None
    callback_spread: Decimal | None
    activation_price: Decimal | None


@dataclass(frozen=True, slots=True)
class Bracket:
    """The exits of an entry order: take-profit and stop-loss (with the order ids reserved
    for them) and a trailing stop."""

    take_profit_price: Decimal | None
    stop_loss_price: Decimal | None
    take_profit_order_id: str
    stop_loss_order_id: str
    trailing: TrailingExit | None = None


S = OrderStatus
# (status, event) -> status after it. `None` means "from the fill": PARTIALLY_FILLED or FILLED.
_TRANSITIONS: dict[tuple[OrderStatus, type], OrderStatus | None] = {
    (S.PENDING_NEW, OrderAccepted): S.OPEN,
    (S.PENDING_NEW, OrderRejected): S.REJECTED,
    (S.PENDING_NEW, OrderFilled): None,  # the fill report can overtake the acknowledgement
    (S.PENDING_NEW, OrderCanceled): S.CANCELED,
    (S.PENDING_NEW, OrderExpired): S.EXPIRED,
    # A submit of unknown outcome, cancelled: cancelled at the exchange once it is found there.
    (S.PENDING_NEW, OrderPendingCancel): S.PENDING_CANCEL,
    (S.OPEN, OrderTriggered): S.OPEN,
    # A stop held by the OMS, sent to a real exchange once triggered: the exchange's id.
    (S.OPEN, OrderAccepted): S.OPEN,
    # ... or whose acknowledgement comes after a cancel or a fill was recorded.
    (S.PENDING_CANCEL, OrderAccepted): S.PENDING_CANCEL,
    (S.PARTIALLY_FILLED, OrderAccepted): S.PARTIALLY_FILLED,
    (S.OPEN, OrderAmended): S.OPEN,
    # A fired order the exchange did not take, brought within its position and sent again.
    (S.PENDING_NEW, OrderAmended): S.PENDING_NEW,
    (S.PENDING_NEW, OrderSentAgain): S.PENDING_NEW,
    (S.OPEN, OrderSentAgain): S.OPEN,
    (S.PARTIALLY_FILLED, OrderAmended): S.PARTIALLY_FILLED,
    (S.OPEN, OrderFilled): None,
    (S.OPEN, OrderPendingCancel): S.PENDING_CANCEL,
    (S.OPEN, OrderCanceled): S.CANCELED,
    (S.OPEN, OrderExpired): S.EXPIRED,
    (S.PARTIALLY_FILLED, OrderFilled): None,
    (S.PARTIALLY_FILLED, OrderPendingCancel): S.PENDING_CANCEL,
    (S.PARTIALLY_FILLED, OrderCanceled): S.CANCELED,
    (S.PARTIALLY_FILLED, OrderExpired): S.EXPIRED,
    (S.PENDING_CANCEL, OrderFilled): None,  # filled while the cancel was in flight
    (S.PENDING_CANCEL, OrderCanceled): S.CANCELED,
    (S.PENDING_CANCEL, OrderExpired): S.EXPIRED,
    # A fill reported after the cancel: a real-world race. The fill is applied (quantities and
    # positions must stay true) but the terminal status is kept.
    (S.CANCELED, OrderFilled): S.CANCELED,
    (S.EXPIRED, OrderFilled): S.EXPIRED,
}

_ACTION_NAMES: dict[type, str] = {
    OrderAccepted: "accept",
    OrderRejected: "reject",
    OrderTriggered: "trigger",
    OrderSentAgain: "send again",
    OrderFilled: "fill",
    OrderAmended: "amend",
    OrderPendingCancel: "cancel",
    OrderCanceled: "cancel",
    OrderExpired: "expire",
}


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    client_order_id: str
    user_id: str
    exchange: str
    symbol: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    reduce_only: bool
    position_side: PositionSide
    leverage: int | None
    strategy: str
    grid_level: int | None
    metadata: dict[str, str]
    fingerprint: str
    """Digest of the request parameters: a retry with the same client_order_id must match it."""
    created_at_ns: int
    updated_at_ns: int
    status: OrderStatus = OrderStatus.PENDING_NEW
    exchange_order_id: str = ""
    filled_quantity: Decimal = ZERO
    filled_notional: Decimal = ZERO
    """Sum of price x quantity over fills: the exact source of average_fill_price."""
    fees: Decimal = ZERO
    fee_currency: str = ""
    reject_reason: str = ""
    triggered: bool = False
    """Sent because a price reached its trigger: a held stop that fired, a trailing stop's
    close. Until the exchange takes or refuses it, the OMS owes it the send."""
    version: int = 0
    """Bumped on every change; the store refuses a write based on a stale version."""
    fill_ids: tuple[str, ...] = field(default=())
    cancel_reason: str = ""
    """Why the OMS or the venue ended the order CANCELED or EXPIRED."""
    bracket: Bracket | None = None
    """On an entry order: the exits to place once it fills."""
    parent_order_id: str = ""
    """On a take-profit or stop-loss: the entry order it protects."""
    position_id: str = ""
    """The position (the trade) the order's fills went into, its latest fill's; on a
    take-profit or stop-loss, from the start: the position its entry filled into, when
    known. On a real exchange, once the side holds another (its trade closed, the next one
    opened), such an exit is cancelled rather than sent: it would close that trade."""
    linked_order_id: str = ""
    """One-cancels-other: the order this one cancels when it fills (and vice versa)."""

    @property
    def remaining_quantity(self) -> Decimal:
        if self.status.is_terminal:
            return ZERO
        return sub(self.quantity, self.filled_quantity)

    def fill(
        self,
        fill_id: str,
        price: Decimal,
        quantity: Decimal,
        fee: Decimal,
        fee_currency: str,
        liquidity: Liquidity,
        time_ns: int,
        exchange_trade_id: str,
    ) -> Fill:
        """An execution of this order, to apply with OrderFilled."""
        return Fill(
            fill_id=fill_id,
            order_id=self.order_id,
            client_order_id=self.client_order_id,
            user_id=self.user_id,
            exchange=self.exchange,
            symbol=self.symbol,
            side=self.side,
            position_side=self.position_side,
            price=price,
            quantity=quantity,
            fee=fee,
            fee_currency=fee_currency,
            liquidity=liquidity,
            time_ns=time_ns,
            strategy=self.strategy,
            grid_level=self.grid_level,
            exchange_trade_id=exchange_trade_id,
        )

    @property
    def average_fill_price(self) -> Decimal | None:
        if not self.filled_quantity:
            return None
        return div(self.filled_notional, self.filled_quantity)

    @property
    def is_open(self) -> bool:
        return not self.status.is_terminal

    def apply(self, event: OrderEvent, now_ns: int) -> Order:
        try:
            target = _TRANSITIONS[self.status, type(event)]
        except KeyError:
            action = _ACTION_NAMES[type(event)]
            raise FailedPrecondition(
                f"cannot {action} order {self.order_id}: it is {self.status.value}"
            ) from None
        changes: dict[str, object] = {"version": self.version + 1, "updated_at_ns": now_ns}
        match event:
            case OrderAccepted(exchange_order_id=exchange_order_id):
                changes["exchange_order_id"] = exchange_order_id
            case OrderRejected(reason=reason):
                changes["reject_reason"] = reason
            case OrderAmended(quantity=quantity):
                if quantity < self.filled_quantity:
                    raise FailedPrecondition(
                        f"cannot amend order {self.order_id} below its filled quantity"
                    )
                changes["quantity"] = quantity
            case (
                OrderCanceled(reason=reason)
                | OrderExpired(reason=reason)
                | OrderPendingCancel(reason=reason)
            ):
                changes["cancel_reason"] = reason
            case OrderTriggered():
                changes["triggered"] = True
            case OrderFilled(fill=fill):
                filled = add(self.filled_quantity, fill.quantity)
                if filled > self.quantity:
                    raise FailedPrecondition(
                        f"fill {fill.fill_id} would overfill order {self.order_id}"
                    )
                changes["filled_quantity"] = filled
                changes["filled_notional"] = add(
                    self.filled_notional, mul(fill.price, fill.quantity)
                )
                changes["fees"] = add(self.fees, fill.fee)
                changes["fee_currency"] = fill.fee_currency
                changes["fill_ids"] = (*self.fill_ids, fill.fill_id)
                if fill.position_id:
                    changes["position_id"] = fill.position_id
                if target is None:
                    if filled == self.quantity:
                        target = S.FILLED
                    elif self.status is S.PENDING_CANCEL:
                        target = S.PENDING_CANCEL  # the cancel of the rest still stands
                    else:
                        target = S.PARTIALLY_FILLED
                if target is S.FILLED:
                    # It filled before a pending cancel could land: it was not cancelled.
                    changes["cancel_reason"] = ""
        changes["status"] = target
        # Every order change on the hot path comes through here: the copy sets the slots
        # through their descriptors, a third of the cost of object.__setattr__ per field and
        # a sixth of dataclasses.replace's (which walks the fields, then runs __init__).
        after = object.__new__(Order)
        for set_slot, value in zip(_SLOT_SETTERS, _field_values(self), strict=True):
            set_slot(after, value)
        for name, value in changes.items():
            _SLOT_SETTER[name](after, value)
        return after


_FIELD_NAMES = tuple(f.name for f in fields(Order))
_field_values = attrgetter(*_FIELD_NAMES)
_SLOT_SETTERS = tuple(Order.__dict__[name].__set__ for name in _FIELD_NAMES)
_SLOT_SETTER = dict(zip(_FIELD_NAMES, _SLOT_SETTERS, strict=True))


_REQUEST_FIELDS = (
    "exchange",
    "symbol",
    "side",
    "type",
    "time_in_force",
    "quantity",
    "price",
    "stop_price",
    "reduce_only",
    "position_side",
    "leverage",
    "strategy",
    "grid_level",
    "metadata",
)


def changed_parameters(placed: Order, retried: Order) -> str:
    """What a request reusing `placed`'s client order id changed, for its ALREADY_EXISTS:
    "price 40000 there, 41000 here" for each of the order's own fields that differ, or
    "different parameters" when only what the order does not keep (an entry's exits) does."""
    changes = [
        f"{name} {_shown(getattr(placed, name))} there, {_shown(getattr(retried, name))} here"
        for name in _REQUEST_FIELDS
        if getattr(placed, name) != getattr(retried, name)
    ]
    return "different parameters: " + "; ".join(changes) if changes else "different parameters"


def _shown(value: object) -> str:
    if value is None:
        return "none"
    if value == "":
        return '""'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in sorted(value.items()))[:64] + "}"
    return str(value)[:64]


def reducing_order(
    *,
    order_id: str,
    client_order_id: str,
    user_id: str,
    exchange: str,
    symbol: str,
    position_side: PositionSide,
    type: OrderType,
    quantity: Decimal,
    now_ns: int,
    stop_price: Decimal | None = None,
    strategy: str = "",
    grid_level: int | None = None,
    metadata: dict[str, str] | None = None,
    triggered: bool = False,
    parent_order_id: str = "",
    position_id: str = "",
) -> Order:
    """An order the OMS places itself to reduce a position side (an exit, a trailing stop's
    close, the close of a late fill): reduce-only, good till cancelled, on the side that
    reduces it, at market or at its trigger."""
    return Order(
        order_id=order_id,
        client_order_id=client_order_id,
        user_id=user_id,
        exchange=exchange,
        symbol=symbol,
        side=Side.SELL if position_side is PositionSide.LONG else Side.BUY,
        type=type,
        time_in_force=TimeInForce.GTC,
        quantity=quantity,
        price=None,
        stop_price=stop_price,
        reduce_only=True,
        position_side=position_side,
        leverage=None,
        strategy=strategy,
        grid_level=grid_level,
        metadata={} if metadata is None else metadata,
        fingerprint="",
        created_at_ns=now_ns,
        updated_at_ns=now_ns,
        triggered=triggered,
        parent_order_id=parent_order_id,
        position_id=position_id,
    )
