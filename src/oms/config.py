"""Typed settings for `oms serve`.

Each value comes from the first of these that sets it:

1. command-line flags (the CLI passes them to `load_settings`),
2. environment variables `OMS_<FIELD>` (`OMS_LISTEN`, `OMS_REDIS_URL`, ...),
3. the TOML settings file named by `--config` / `OMS_CONFIG`,
4. the defaults below.

The TOML file holds the same keys at its top level (`listen = "127.0.0.1:50051"`) plus the
`[paper]` table. Money and precision values are `Decimal`s written as TOML strings
(`maker_fee_rate = "0.0002"`) or integers; TOML floats are refused because they are binary
and would round silently. Example::

    heartbeat_interval_s = 10

    [paper]
    maker_fee_rate = "0.0001"

    [[paper.markets]]               # added to the default BTC, ETH and SOL swaps
    symbol = "DOGE/USDT:USDT"
    market_id = "DOGE-USDT-SWAP"
    price_tick = "0.00001"

    [[auth.tokens]]                 # any token turns auth on for every RPC
    name = "rsi-bot"
    token = "rsi-bot-token-change-me"
    users = ["alice"]
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from oms.adapters.credential_vault import parse_master_key
from oms.domain.access import token_digest
from oms.domain.markets import MAX_LEVERAGE, highest_leverage

__all__ = [
    "DEFAULT_PAPER_MARKETS",
    "AuthSettings",
    "ConfigError",
    "ExchangeSettings",
    "MarketSettings",
    "PaperSettings",
    "Settings",
    "TokenSettings",
    "is_loopback",
    "load_settings",
]


class ConfigError(ValueError):
    """The settings are invalid; the message names each offending key."""


def _refuse_float(value: object) -> object:
    # Float -> Decimal keeps the binary error (0.1 -> 0.1000000000000000055...), so a
    # decimal must arrive as a string or an integer.
    if isinstance(value, float):
        raise ValueError(
            f'must be a decimal string such as "{Decimal(repr(value)):f}" or an integer, '
            f"not the float {value!r} (floats are binary and would not be exact)"
        )
    if isinstance(value, bool):
        raise ValueError("must be a decimal string or an integer, not a boolean")
    return value


ExactDecimal = Annotated[Decimal, BeforeValidator(_refuse_float), Field(allow_inf_nan=False)]
"""A finite Decimal parsed from a string or integer, never from a float."""

PositiveDecimal = Annotated[ExactDecimal, Field(gt=0)]

FeeRate = Annotated[ExactDecimal, Field(gt=-1, lt=1)]
"""A fraction of notional; negative for a maker rebate."""

_UNIFIED_SYMBOL = re.compile(
    r"(?P<base>[A-Za-z0-9]+)/(?P<quote>[A-Za-z0-9]+):(?P<settle>[A-Za-z0-9]+)"
)
_MARKET_ID = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


class MarketSettings(BaseModel):
    """One paper-exchange market: a linear swap, settled in its quote currency.

    Precision fields default to the paper exchange's usual values, so a new market can be
    added with just its symbol and id.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    symbol: str
    """ccxt unified symbol BASE/QUOTE:SETTLE, e.g. "BTC/USDT:USDT"."""
    market_id: str
    """The exchange's own id, e.g. "BTC-USDT-SWAP"; requests may name the market by either."""
    base: str = ""
    """Base currency; taken from the symbol when omitted."""
    quote: str = ""
    """Quote currency; taken from the symbol when omitted."""
    settle: str = ""
    """Settlement currency (fees, PnL), equal to quote; taken from the symbol when omitted."""
    contract_size: PositiveDecimal = Decimal(1)
    """Base units per contract; order quantities are in contracts."""
    amount_step: PositiveDecimal = Decimal("0.001")
    """Order quantities must be a multiple of this, in contracts."""
    min_amount: PositiveDecimal = Decimal("0.001")
    """Smallest order quantity, in contracts."""
    price_tick: PositiveDecimal = Decimal("0.01")
    """Prices must be a multiple of this, in the quote currency."""
    maintenance_margin_rate: Annotated[ExactDecimal, Field(gt=0, lt=1)] = Decimal("0.005")
    """Fraction of notional, used for the isolated-margin liquidation estimate."""
    max_leverage: Annotated[int, Field(ge=1, le=MAX_LEVERAGE)] | None = None
    """The highest leverage an order may set; unset: the highest whose initial margin stays
    above the maintenance margin (at most 125: 125 at 0.005, 99 at 0.01)."""

    @model_validator(mode="before")
    @classmethod
    def _currencies_from_symbol(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("symbol"), str):
            match = _UNIFIED_SYMBOL.fullmatch(data["symbol"])
            if match:
                return {**match.groupdict(), **data}
        return data

    @field_validator("symbol")
    @classmethod
    def _check_symbol(cls, symbol: str) -> str:
        if not _UNIFIED_SYMBOL.fullmatch(symbol):
            raise ValueError(f"{symbol!r} is not a unified swap symbol such as 'BTC/USDT:USDT'")
        return symbol

    @field_validator("market_id")
    @classmethod
    def _check_market_id(cls, market_id: str) -> str:
        if not _MARKET_ID.fullmatch(market_id):
            raise ValueError(f"{market_id!r} must be 1 to 64 chars of [A-Za-z0-9_.:/-]")
        return market_id

    @model_validator(mode="after")
    def _check_linear_swap(self) -> MarketSettings:
        expected = f"{self.base}/{self.quote}:{self.settle}"
        if self.symbol != expected:
            raise ValueError(f"base/quote/settle say {expected!r} but symbol is {self.symbol!r}")
        if self.settle != self.quote:
            raise ValueError(
                f"{self.symbol}: paper markets are linear swaps, settle must equal quote"
            )
        if self.max_leverage is not None and self.max_leverage > self.highest_leverage:
            raise ValueError(
                f"{self.symbol}: max_leverage {self.max_leverage} leaves an initial margin at "
                f"or below the maintenance margin rate {self.maintenance_margin_rate}: a "
                f"position would open liquidatable (at most {self.highest_leverage})"
            )
        return self

    @property
    def highest_leverage(self) -> int:
        return highest_leverage(self.maintenance_margin_rate)


def _paper_swap(base: str) -> MarketSettings:
    return MarketSettings(
        symbol=f"{base}/USDT:USDT",
        market_id=f"{base}-USDT-SWAP",
        base=base,
        quote="USDT",
        settle="USDT",
    )


DEFAULT_PAPER_MARKETS: tuple[MarketSettings, ...] = tuple(
    _paper_swap(base) for base in ("BTC", "ETH", "SOL")
)
"""The paper exchange's built-in markets (contract section 7)."""


class PaperSettings(BaseModel):
    """The built-in deterministic `paper` exchange (TOML table `[paper]`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    maker_fee_rate: FeeRate = Decimal("0.0002")
    """Fee on a maker fill, as a fraction of notional, charged in the settle currency."""
    taker_fee_rate: FeeRate = Decimal("0.0005")
    """Fee on a taker fill, as a fraction of notional, charged in the settle currency."""
    maker_fill_limit: Annotated[ExactDecimal, Field(gt=0)] | None = None
    """Most quantity a resting order fills per tick (simulated thin liquidity), floored to
    each market's amount step (one step at least): it stays PARTIALLY_FILLED until later ticks
    fill the rest. Unset: it fills completely on the tick that reaches it (contract section
    7)."""
    markets: tuple[MarketSettings, ...] = DEFAULT_PAPER_MARKETS
    """Markets listed here are added to DEFAULT_PAPER_MARKETS; one with the symbol of a
    default market replaces it. The result always includes the defaults."""

    @field_validator("markets")
    @classmethod
    def _add_to_defaults(cls, listed: tuple[MarketSettings, ...]) -> tuple[MarketSettings, ...]:
        seen: set[str] = set()
        for market in listed:
            if market.symbol in seen:
                raise ValueError(f"{market.symbol} is listed more than once")
            seen.add(market.symbol)
        merged = {market.symbol: market for market in DEFAULT_PAPER_MARKETS}
        merged.update((market.symbol, market) for market in listed)
        # Requests may name a market by its id, so an id must not name two markets.
        symbol_by_id: dict[str, str] = {}
        for market in merged.values():
            other = symbol_by_id.setdefault(market.market_id, market.symbol)
            if other != market.symbol:
                raise ValueError(
                    f"market_id {market.market_id!r} is used by both {other} and {market.symbol}"
                )
        return tuple(merged.values())


class ExchangeSettings(BaseModel):
    """One real exchange, by its ccxt id (TOML table `[exchanges.<id>]`). Every ccxt exchange
    works without a table; one is needed only to change these defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    rest_url: str | None = None
    """Replaces the scheme and host of every REST URL ccxt uses (a proxy, a local exchange)."""
    ws_url: str | None = None
    """Replaces the scheme and host of every websocket URL ccxt uses (ws:// or wss://)."""
    timeout_ms: int = Field(default=10_000, gt=0)
    """A request to the exchange that takes longer is treated as of unknown outcome."""
    rate_limit: bool = True
    """ccxt's own request throttle, spacing requests by the exchange's published limits."""
    poll_interval_s: float = Field(default=1.0, gt=0)
    """How often each active account's open orders are read back from the exchange: the
    safety net under its websocket order feed, and the only source where ccxt has none."""
    lookup_grace_s: float = Field(default=15.0, ge=0)
    """How long after an ambiguous submit the exchange may still show the order; only after
    it can the OMS conclude the order was never taken (REJECTED, or sent again for an order
    that fired). Never less than `timeout_ms`: each order goes with a window of that long
    (Binance's recvWindow, OKX's expTime), past which the exchange drops it; the rest
    covers the skew between this clock and the exchange's."""
    mark_interval_s: float = Field(default=1.0, gt=0)
    """How often the marks of the symbols in use (positions, held stops) are read over REST,
    the fallback under the exchange's websocket ticker feed."""
    fill_lookback_s: float = Field(default=86_400.0, gt=0)
    """How far back reconciliation reads the exchange's fills of orders the OMS holds
    finished (a fill reported after the cancel while the OMS was down)."""
    rate_limit_backoff_s: float = Field(default=1.0, ge=0)
    """After the exchange answers 429 (too many requests), new orders of that account (of
    every account, when the limit names the address) are refused for this long without
    being sent (RESOURCE_EXHAUSTED)."""
    ban_backoff_s: float = Field(default=120.0, ge=0)
    """After a 418 (the address is banned), new orders are refused for this long without
    being sent (UNAVAILABLE). Binance bans last from 2 minutes to 3 days."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Merged into the ccxt instance's `options` (e.g. `defaultType`)."""

    @field_validator("rest_url")
    @classmethod
    def _check_rest_url(cls, url: str | None) -> str | None:
        if url is not None and not re.fullmatch(r"https?://[^/\s]+/?", url):
            raise ValueError(f"{url!r} must be scheme and host only, such as 'https://proxy:8443'")
        return url

    @field_validator("ws_url")
    @classmethod
    def _check_ws_url(cls, url: str | None) -> str | None:
        if url is not None and not re.fullmatch(r"wss?://[^/\s]+/?", url):
            raise ValueError(f"{url!r} must be scheme and host only, such as 'wss://proxy:8443'")
        return url


LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]


class TokenSettings(BaseModel):
    """One API token, sent as `authorization: Bearer <token>`; TOML [[auth.tokens]].

    Give the token itself or, to keep it out of the file, its SHA-256 (`token_sha256`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Names the token in the audit log, which never shows the token itself."""
    token: SecretStr | None = None
    """At least 16 characters; a long random string."""
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Instead of `token`: its SHA-256 in lowercase hex (`printf %s "$TOKEN" | sha256sum`)."""
    users: list[str] = Field(default_factory=list)
    """The user_ids it may act for."""
    admin: bool = False
    """Acts for every user, lists every user's accounts, publishes prices."""
    publish_prices: bool = False
    """May publish paper prices (a price feeder) without acting for any user."""
    rate_limit_per_s: float = Field(default=100.0, gt=0)
    """Calls a second on average; more are RESOURCE_EXHAUSTED."""
    burst: int = Field(default=200, ge=1)
    """Calls allowed at once above the average rate."""
    max_price_streams: int = Field(default=100, ge=1)
    """Price streams it may hold open at once; more are RESOURCE_EXHAUSTED (STREAM_LIMIT).
    The server's max_price_streams bounds every client's together."""

    @field_validator("token")
    @classmethod
    def _check_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None:
            return None
        value = token.get_secret_value()
        if len(value) < 16:
            raise ValueError("must be at least 16 characters")
        # What a header can carry and the server compares as sent (it strips the ends).
        if not re.fullmatch(r"[!-~]+", value):
            raise ValueError("must be printable ASCII with no spaces (it travels in a header)")
        return token

    @field_validator("users")
    @classmethod
    def _check_users(cls, users: list[str]) -> list[str]:
        for user in users:
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", user):
                raise ValueError(f"{user[:64]!r} is not a user_id (1 to 64 of [A-Za-z0-9_.-])")
        return users

    @model_validator(mode="after")
    def _grants_something(self) -> TokenSettings:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token and token_sha256")
        if not (self.users or self.admin or self.publish_prices):
            raise ValueError("grants nothing: give users, admin or publish_prices")
        return self

    @property
    def digest(self) -> bytes:
        """The token's SHA-256, what a presented token is checked against."""
        if self.token_sha256 is not None:
            return bytes.fromhex(self.token_sha256)
        assert self.token is not None
        return token_digest(self.token.get_secret_value())


# The README's sample price-feeder token, given by its SHA-256 there.
_SAMPLE_TOKEN_SHA256 = hashlib.sha256(b"price-feeder-token-change-me").hexdigest()


class AuthSettings(BaseModel):
    """API tokens; none configured means auth is off (loopback only, or --insecure)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    tokens: list[TokenSettings] = Field(default_factory=list)
    unauthenticated_rate_per_s: float = Field(default=1.0, gt=0)
    """Calls a second on average, from one peer address, that bring no valid token; more
    are RESOURCE_EXHAUSTED (a guesser, or a misconfigured client flooding the audit log)."""
    unauthenticated_burst: int = Field(default=20, ge=1)
    """Such calls allowed at once above that rate."""
    audit_log: Path | None = None
    """Also write the audit log (one JSON line per accepted or denied call) to this file;
    it always goes to the `oms.audit` logger."""

    @model_validator(mode="after")
    def _distinct(self) -> AuthSettings:
        names = [token.name for token in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError("token names must be distinct")
        digests = [token.digest for token in self.tokens]
        if len(set(digests)) != len(digests):
            raise ValueError("two tokens have the same token string")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    @property
    def doubts(self) -> list[str]:
        """What these settings allow but is likely a mistake, a line each: said at start."""
        lines = [
            f"token {token.name} is a sample one ('change-me' in it): anyone who read the "
            "README can use it"
            for token in self.tokens
            if (token.token is not None and "change-me" in token.token.get_secret_value())
            or token.token_sha256 == _SAMPLE_TOKEN_SHA256
        ]
        if self.audit_log is not None and not self.tokens:
            lines.append("audit_log is set, but no token is: auth is off and nothing is audited")
        return lines


class Settings(BaseSettings):
    """Everything `oms serve` needs to start. Build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="OMS_",
        # `OMS_REDIS_URL=` (as compose files write it) means unset, not "".
        env_ignore_empty=True,
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    listen: str = "127.0.0.1:50051"
    """gRPC listen address, HOST:PORT ("[::1]:50051" for IPv6) or "unix:PATH"."""
    metrics_listen: str | None = None
    """Where Prometheus scrapes /metrics, HOST:PORT; None: no metrics (and no cost per call)."""
    redis_url: str | None = None
    """Redis holding all state; None starts an embedded private Redis under data_dir."""
    redis_timeout_s: float = Field(default=5.0, gt=0)
    """How long Redis may take to answer before a call fails UNAVAILABLE (a partition). A
    commit's connection is then presumed dead and the commit sent again on a new one."""
    redis_max_connections: int = Field(default=64, ge=1)
    """Connections to Redis for reads (commits have one of their own); a burst of more
    concurrent reads waits for a free one, up to redis_timeout_s."""
    store_check_interval_s: float = Field(default=1.0, gt=0)
    """How often Redis is pinged while serving: health is NOT_SERVING while it does not
    answer, SERVING again once it does."""
    writer_lease_s: float = Field(default=10.0, gt=0)
    """With redis_url: how long a server's claim to its Redis outlives the server (renewed
    at every store check, so at least 3 of them). Another server started on that Redis
    waits this long at most for a claim that is not renewed (a server killed), and refuses
    to start while it is."""
    data_dir: Path = Path(".oms-data")
    """Where the embedded Redis keeps its append-only file; with redis_url, where the server
    keeps the highest commit count each store answered it (commit-floors/).
    A relative path is from the working directory, wherever it was set."""
    config: Path | None = None
    """The TOML settings file that was read, if any (flag or OMS_CONFIG only)."""
    insecure: bool = False
    """Allow a non-loopback listen address while authentication is off."""
    keepalive_s: float = Field(default=30.0, gt=0)
    """While a client has calls open, the server pings it this often; one that does not
    answer within a third of that is disconnected and its streams end (a client that hung,
    or vanished behind a partition, would otherwise hold them for hours)."""
    heartbeat_interval_s: float = Field(default=10.0, gt=0, le=15)
    """An idle stream sends a heartbeat at least this often (the contract promises 15 s: the
    margin keeps a client's 15 s watchdog from racing a busy loop)."""
    stream_buffer_events: int = Field(default=10_000, ge=1)
    """Events buffered per stream; a subscriber that falls further behind gets
    RESOURCE_EXHAUSTED and resumes from its last sequence."""
    max_streams_per_user: int = Field(default=100, ge=1)
    """Order, fill, position, trailing-stop and rule streams one user may have open at once;
    one more is RESOURCE_EXHAUSTED. Each event is written to every stream of its user."""
    max_price_streams: int = Field(default=1000, ge=1)
    """StreamPrices streams open at once, all clients'; one more is RESOURCE_EXHAUSTED. Each
    tick is written to every stream that names its instrument."""
    retention_events: int = Field(default=100_000, ge=1)
    """Events kept per user in the Redis stream; older resume points are OUT_OF_RANGE."""
    finished_order_retention_s: float | None = Field(default=None, gt=0)
    """A finished paper order (and its fills) is removed from Redis once it has been finished
    this long, unless an open order linked to it or a conditional rule still to act keeps
    it; its events stay in the event stream (as retained) and the history archive. Orders
    on real exchanges are kept. None: every order kept for good."""
    position_mark_interval_s: float = Field(default=0.0, ge=0, le=3600)
    """A mark-price move rewrites an open position (and streams its update) at most this
    often; fills always do at once. 0: at every tick. More keeps more of a user's history
    for resume when many positions are marked many times a second."""
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    """On SIGTERM, how long in-flight unary calls may take to finish."""
    log_level: LogLevel = "INFO"
    """Root log level (case-insensitive)."""
    paper: PaperSettings = Field(default_factory=PaperSettings)
    """The built-in paper exchange; TOML table [paper] only."""
    exchanges: dict[str, ExchangeSettings] = Field(default_factory=dict)
    """Real exchanges by ccxt id; TOML tables [exchanges.<id>] only."""
    auth: AuthSettings = Field(default_factory=AuthSettings)
    """API tokens and the audit log; TOML table [auth] only."""
    postgres_dsn: SecretStr | None = None
    """PostgreSQL that keeps every user's events for good (asyncpg DSN, env
    OMS_POSTGRES_DSN; it may hold a password). Unset: no history archive."""
    master_key: SecretStr | None = None
    """32 bytes in urlsafe base64 that seal exchange credentials at rest (env
    OMS_MASTER_KEY). Unset: RegisterCredentials is refused. Starting with another key than
    the one the stored credentials were sealed with fails."""

    @field_validator("master_key")
    @classmethod
    def _check_master_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None:
            parse_master_key(key.get_secret_value())
        return key

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets directory: one settings file, named explicitly.
        return init_settings, env_settings, _TomlFileSource(settings_cls)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, listen: str) -> str:
        _split_listen(listen)
        return listen

    @field_validator("metrics_listen")
    @classmethod
    def _check_metrics_listen(cls, listen: str | None) -> str | None:
        if listen is not None:
            tcp_address(listen)
        return listen

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, url: str | None) -> str | None:
        # redis-py would only refuse it on the first connection, deep in start-up.
        if url is not None and not re.match(r"(redis|rediss|unix)://", url):
            raise ValueError(f"{url!r} must start with redis://, rediss:// or unix://")
        return url

    @field_validator("postgres_dsn")
    @classmethod
    def _check_postgres_dsn(cls, dsn: SecretStr | None) -> SecretStr | None:
        # asyncpg takes the URI form only, and would refuse it once a second, forever.
        if dsn is not None and not re.match(r"postgres(ql)?://", dsn.get_secret_value()):
            raise ValueError("must start with postgresql:// (asyncpg takes the URI form only)")
        return dsn

    @field_validator("data_dir", "config")
    @classmethod
    def _expand_home(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the TOML file that the flags or environment named in `config`."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        # current_state holds what the higher-priority sources (flags, env) resolved.
        raw_path = self.current_state.get("config")
        if raw_path is None:
            return {}
        path = Path(raw_path).expanduser()
        try:
            with path.open("rb") as file:
                data = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"config: cannot read settings file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {path} is not valid TOML: {exc}") from exc
        if "config" in data:
            raise ConfigError(f"config: {path} must not name another settings file")
        return data


def load_settings(argv_overrides: Mapping[str, object] | None = None) -> Settings:
    """Resolve settings from flags, environment, TOML file and defaults, in that order.

    `argv_overrides` maps field names (`listen`, `redis_url`, `data_dir`, `config`,
    `insecure`, ...) to flag values. None means "flag not given" and is skipped, so the
    CLI must default every flag to None (argparse: `default=None`; for `--insecure`
    `action="store_true", default=None`), or an absent flag would mask env and TOML.

    Raises ConfigError, with one line per offending key, when anything is invalid.
    """
    # Any: BaseSettings validates each value; the static field types do not apply here.
    overrides: dict[str, Any] = {
        key: value for key, value in (argv_overrides or {}).items() if value is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            loc = error["loc"]
            key = ".".join(str(part) for part in loc) or "settings"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(loc[-1]), _names_beside(loc), n=1)
                message = "names no setting" + (f" (did you mean {close[0]}?)" if close else "")
            elif loc[:1] in (("auth",), ("master_key",), ("postgres_dsn",)):
                pass  # what was given may hold a secret: never shown
            elif (given := repr(error["input"])) not in message:
                message += f" (got {_shorten(given)})"
            lines.append(f"  {key}: {message}{_source_of(loc, overrides)}")
        raise ConfigError("invalid settings:\n" + "\n".join(lines)) from exc


def _source_of(loc: tuple[int | str, ...], overrides: Mapping[str, object]) -> str:
    """Where the bad value came from, as the user wrote it there."""
    if not loc:
        return ""
    name = str(loc[0])
    if len(loc) == 1 and name in overrides:
        return f" (from --{name.replace('_', '-')})"
    variable = f"OMS_{name.upper()}"
    if len(loc) == 1 and os.environ.get(variable):
        return f" (from {variable})"
    config = overrides.get("config") or os.environ.get("OMS_CONFIG")
    return f" (in {config})" if config else ""


def _names_beside(loc: tuple[int | str, ...]) -> list[str]:
    """The setting names a key at `loc` could have meant: its table's fields."""
    kind: Any = Settings
    for part in loc[:-1]:
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(str(part))
            kind = None if field is None else field.annotation
        else:  # a list's index or a dict's key (an exchange's id): on to its items
            kind = next((a for a in typing.get_args(kind) if a is not str), None)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return list(kind.model_fields)
    return []


def unknown_env_settings(environ: Mapping[str, str], others: Iterable[str] = ()) -> list[str]:
    """A line for each `OMS_*` variable in `environ` that names no setting (nor one of
    `others`, variables read elsewhere): a misspelt `OMS_REDIS_URI` would otherwise start
    an embedded Redis without a word."""
    known = {f"OMS_{name.upper()}" for name in Settings.model_fields} | set(others)
    lines = []
    for name in sorted(environ):
        if name.startswith("OMS_") and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            lines.append(f"{name} names no setting and is ignored{hint}")
    return lines


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _split_listen(listen: str) -> tuple[str, int] | None:
    """(host, port) of a HOST:PORT address, None for a unix socket; ValueError if malformed."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return None
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{listen!r}: write an IPv6 address in brackets, e.g. '[::1]:50051'")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r} is not HOST:PORT (e.g. '127.0.0.1:50051') or unix:PATH")
    return host, int(port)


def tcp_address(listen: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT address; ValueError for anything else, a unix socket too."""
    try:
        split = _split_listen(listen)
    except ValueError:
        split = None
    if split is None:
        raise ValueError(f"{listen!r} is not HOST:PORT (e.g. '127.0.0.1:9464'; TCP only)")
    return split


def is_loopback(listen: str) -> bool:
    """Whether a listen address is reachable from this host only.

    True for 127.0.0.0/8, ::1 (also IPv4-mapped), `localhost` and unix sockets; False for
    anything else, including wildcard and malformed addresses, so callers fail safe.
    Host names are not resolved.
    """
    try:
        split = _split_listen(listen)
    except ValueError:
        return False
    if split is None:
        return True
    host = split[0]
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
