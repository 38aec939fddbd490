"""Settings: defaults, precedence (flags > env > TOML > defaults), exact decimals."""

from __future__ import annotations

import hashlib
import os
import re
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from oms.bootstrap import venue_policy
from oms.config import (
    DEFAULT_PAPER_MARKETS,
    ConfigError,
    ExchangeSettings,
    MarketSettings,
    Settings,
    is_loopback,
    load_settings,
    unknown_env_settings,
)


@pytest.fixture(autouse=True)
def no_oms_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own OMS_* variables must not leak into these tests.
    for name in list(os.environ):
        if name.upper().startswith("OMS_"):
            monkeypatch.delenv(name)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "oms.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings()

    assert settings.listen == "127.0.0.1:50051"
    assert settings.redis_url is None
    assert settings.data_dir == Path(".oms-data")
    assert settings.config is None
    assert settings.insecure is False
    assert settings.heartbeat_interval_s == 10.0
    assert settings.stream_buffer_events == 10_000
    assert settings.max_streams_per_user == 100
    assert settings.max_price_streams == 1000
    assert settings.redis_max_connections == 64
    assert settings.metrics_listen is None
    assert settings.retention_events == 100_000
    assert settings.shutdown_grace_s == 5.0
    assert settings.log_level == "INFO"
    assert settings.paper.maker_fee_rate == Decimal("0.0002")
    assert settings.paper.taker_fee_rate == Decimal("0.0005")
    assert [(m.symbol, m.market_id) for m in settings.paper.markets] == [
        ("BTC/USDT:USDT", "BTC-USDT-SWAP"),
        ("ETH/USDT:USDT", "ETH-USDT-SWAP"),
        ("SOL/USDT:USDT", "SOL-USDT-SWAP"),
    ]
    btc = settings.paper.markets[0]
    assert (btc.base, btc.quote, btc.settle) == ("BTC", "USDT", "USDT")
    assert btc.contract_size == Decimal(1)
    assert btc.amount_step == Decimal("0.001")
    assert btc.min_amount == Decimal("0.001")
    assert btc.price_tick == Decimal("0.01")
    assert btc.maintenance_margin_rate == Decimal("0.005")
    assert (btc.max_leverage, btc.highest_leverage) == (None, 125)


@pytest.mark.parametrize(
    ("rate", "highest"),
    [("0.005", 125), ("0.008", 124), ("0.01", 99), ("0.02", 49), ("0.03", 33), ("0.5", 1)],
)
def test_a_paper_markets_highest_leverage_keeps_its_initial_margin_above_maintenance(
    rate: str, highest: int
) -> None:
    market = MarketSettings(
        symbol="X/USDT:USDT", market_id="X", maintenance_margin_rate=Decimal(rate)
    )
    assert market.highest_leverage == highest
    assert 1 / Decimal(highest) > Decimal(rate) >= 1 / Decimal(highest + 1) or highest == 125


def test_env_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMS_LISTEN", "0.0.0.0:6000")
    monkeypatch.setenv("OMS_REDIS_URL", "redis://10.0.0.5:6379/0")
    monkeypatch.setenv("OMS_RETENTION_EVENTS", "500")
    monkeypatch.setenv("OMS_INSECURE", "true")
    monkeypatch.setenv("OMS_LOG_LEVEL", "debug")

    settings = load_settings()

    assert settings.listen == "0.0.0.0:6000"
    assert settings.redis_url == "redis://10.0.0.5:6379/0"
    assert settings.retention_events == 500
    assert settings.insecure is True
    assert settings.log_level == "DEBUG"


def test_the_archive_dsn_comes_from_env_or_flag_and_is_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().postgres_dsn is None  # no history archive
    monkeypatch.setenv("OMS_POSTGRES_DSN", "postgresql://oms:hunter2@db:5432/history")
    dsn = load_settings().postgres_dsn
    assert dsn is not None and dsn.get_secret_value().endswith("@db:5432/history")
    assert "hunter2" not in repr(load_settings())
    flag = load_settings({"postgres_dsn": "postgresql://other/db"}).postgres_dsn
    assert flag is not None and flag.get_secret_value() == "postgresql://other/db"


def test_empty_env_var_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMS_REDIS_URL", "")
    monkeypatch.setenv("OMS_CONFIG", "")

    settings = load_settings()

    assert settings.redis_url is None
    assert settings.config is None


def test_toml_file_adds_a_market_and_changes_fees(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        """
        heartbeat_interval_s = 2.5

        [paper]
        maker_fee_rate = "0.0001"
        taker_fee_rate = "0.00035"

        [[paper.markets]]
        symbol = "DOGE/USDT:USDT"
        market_id = "DOGE-USDT-SWAP"
        contract_size = 1000
        price_tick = "0.00001"

        [[paper.markets]]   # same symbol as a default: replaces it
        symbol = "BTC/USDT:USDT"
        market_id = "BTC-USDT-SWAP"
        price_tick = "0.1"
        """,
    )

    settings = load_settings({"config": config})

    assert settings.config == config
    assert settings.heartbeat_interval_s == 2.5
    assert settings.paper.maker_fee_rate == Decimal("0.0001")
    assert settings.paper.taker_fee_rate == Decimal("0.00035")
    markets = {m.symbol: m for m in settings.paper.markets}
    assert list(markets) == ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT", "DOGE/USDT:USDT"]
    assert markets["BTC/USDT:USDT"].price_tick == Decimal("0.1")
    assert markets["ETH/USDT:USDT"] == DEFAULT_PAPER_MARKETS[1]
    doge = markets["DOGE/USDT:USDT"]
    assert (doge.base, doge.quote, doge.settle) == ("DOGE", "USDT", "USDT")
    assert doge.contract_size == Decimal(1000)
    assert doge.amount_step == Decimal("0.001")  # unset precision takes the paper default


def test_config_path_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'listen = "127.0.0.1:7000"\n')
    monkeypatch.setenv("OMS_CONFIG", str(config))

    assert load_settings().listen == "127.0.0.1:7000"


def test_env_beats_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'listen = "127.0.0.1:7000"\nshutdown_grace_s = 1\n')
    monkeypatch.setenv("OMS_LISTEN", "127.0.0.1:8000")

    settings = load_settings({"config": config})

    assert settings.listen == "127.0.0.1:8000"
    assert settings.shutdown_grace_s == 1.0


def test_cli_override_beats_env_and_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'listen = "127.0.0.1:7000"\ndata_dir = "/srv/toml"\n')
    monkeypatch.setenv("OMS_LISTEN", "127.0.0.1:8000")
    monkeypatch.setenv("OMS_DATA_DIR", "/srv/env")

    settings = load_settings(
        {"config": config, "listen": "127.0.0.1:9000", "data_dir": None, "redis_url": None}
    )

    assert settings.listen == "127.0.0.1:9000"
    # None means the flag was not given: the env value stands.
    assert settings.data_dir == Path("/srv/env")
    assert settings.redis_url is None


def test_float_in_toml_for_a_decimal_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        """
        [paper]
        taker_fee_rate = 0.0005

        [[paper.markets]]
        symbol = "XRP/USDT:USDT"
        market_id = "XRP-USDT-SWAP"
        price_tick = 0.0001
        """,
    )

    with pytest.raises(ConfigError) as raised:
        load_settings({"config": config})

    message = str(raised.value)
    assert 'paper.taker_fee_rate: must be a decimal string such as "0.0005"' in message
    assert 'paper.markets.0.price_tick: must be a decimal string such as "0.0001"' in message


def test_decimals_stay_exact(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        """
        [paper]
        maker_fee_rate = "0.1"

        [[paper.markets]]
        symbol = "PEPE/USDT:USDT"
        market_id = "PEPE-USDT-SWAP"
        price_tick = "0.000000001"
        amount_step = "100"
        min_amount = "100"
        """,
    )

    settings = load_settings({"config": config})

    assert settings.paper.maker_fee_rate * 3 == Decimal("0.3")
    pepe = settings.paper.markets[-1]
    assert str(pepe.price_tick) == "1E-9"
    assert pepe.price_tick == Decimal("0.000000001")
    assert pepe.amount_step == Decimal(100)


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("OMS_RETENTION_EVENTS", "0", "retention_events"),
        ("OMS_MAX_STREAMS_PER_USER", "0", "max_streams_per_user"),
        ("OMS_MAX_PRICE_STREAMS", "0", "max_price_streams"),
        ("OMS_REDIS_MAX_CONNECTIONS", "0", "redis_max_connections"),
        ("OMS_METRICS_LISTEN", "unix:/tmp/metrics.sock", "metrics_listen"),
        ("OMS_METRICS_LISTEN", "9464", "metrics_listen"),
        ("OMS_HEARTBEAT_INTERVAL_S", "-1", "heartbeat_interval_s"),
        ("OMS_HEARTBEAT_INTERVAL_S", "16", "heartbeat_interval_s"),  # the contract's 15 s
        ("OMS_HEARTBEAT_INTERVAL_S", "inf", "heartbeat_interval_s"),
        ("OMS_POSTGRES_DSN", "notadsn", "postgres_dsn"),
        ("OMS_POSTGRES_DSN", "host=db dbname=oms", "postgres_dsn"),
        ("OMS_LISTEN", "localhost", "listen"),
        ("OMS_LISTEN", "::1:50051", "listen"),
        ("OMS_LOG_LEVEL", "LOUD", "log_level"),
    ],
)
def test_invalid_env_value_names_the_key(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, key: str
) -> None:
    monkeypatch.setenv(env, value)

    with pytest.raises(ConfigError, match=rf"\n  {key}: "):
        load_settings()


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[[auth.tokens]]\nname = "bot"\ntoken = "t"\nusers = ["alice"]\n', "auth.tokens.0"),
        ('[paper]\nmaker_fee = "0.1"\n', "paper.maker_fee"),
        ('[[paper.markets]]\nsymbol = "BTCUSDT"\nmarket_id = "BTCUSDT"\n', "paper.markets.0"),
        (
            '[[paper.markets]]\nsymbol = "BTC/USD:BTC"\nmarket_id = "BTCUSD"\n',
            "paper.markets.0",
        ),
        (
            '[[paper.markets]]\nsymbol = "BTC/USDC:USDC"\nmarket_id = "BTC-USDT-SWAP"\n',
            "paper.markets",
        ),
        ('[[paper.markets]]\nsymbol = "X/USDT:USDT"\nmarket_id = "X"\nprice_tick = "0"\n', "paper"),
        # 1/100 of the notional as margin, 0.01 to maintain: it would open liquidatable.
        (
            '[[paper.markets]]\nsymbol = "X/USDT:USDT"\nmarket_id = "X"\n'
            'maintenance_margin_rate = "0.01"\nmax_leverage = 100\n',
            "paper.markets.0",
        ),
        (
            '[[paper.markets]]\nsymbol = "X/USDT:USDT"\nmarket_id = "X"\nmax_leverage = 126\n',
            "paper",
        ),
    ],
)
def test_invalid_toml_value_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    config = write_toml(tmp_path, toml)

    with pytest.raises(ConfigError, match=rf"\n  {key}"):
        load_settings({"config": config})


def test_a_key_that_names_no_setting_gets_the_nearest_name_and_the_file(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        'listne = "127.0.0.1:6000"\n[paper]\nmaker_fee = "0.1"\n'
        "[exchanges.okx]\ntimout_ms = 5000\n",
    )

    with pytest.raises(ConfigError) as error:
        load_settings({"config": config})
    assert str(error.value).splitlines()[1:] == [
        f"  paper.maker_fee: names no setting (did you mean maker_fee_rate?) (in {config})",
        f"  exchanges.okx.timout_ms: names no setting (did you mean timeout_ms?) (in {config})",
        f"  listne: names no setting (did you mean listen?) (in {config})",
    ]


def test_a_bad_value_is_reported_where_it_was_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OMS_REDIS_TIMEOUT_S", "-1")
    config = write_toml(tmp_path, "heartbeat_interval_s = 99\n")

    with pytest.raises(ConfigError) as error:
        load_settings({"config": config, "listen": "localhost"})
    assert str(error.value).splitlines()[1:] == [
        "  listen: 'localhost' is not HOST:PORT (e.g. '127.0.0.1:50051') or unix:PATH"
        " (from --listen)",
        "  redis_timeout_s: Input should be greater than 0 (got '-1') (from OMS_REDIS_TIMEOUT_S)",
        f"  heartbeat_interval_s: Input should be less than or equal to 15 (got 99) (in {config})",
    ]


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: cannot read settings file .*nope\.toml"):
        load_settings({"config": tmp_path / "nope.toml"})


def test_settings_are_frozen() -> None:
    settings = load_settings()

    with pytest.raises(ValidationError):
        settings.listen = "0.0.0.0:1"


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("[::ffff:127.0.0.1]:50051", True),
        ("unix:/tmp/oms.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.1.2.3:50051", False),
        ("oms.example.com:50051", False),
        ("127.0.0.1", False),  # malformed: fail safe
    ],
)
def test_is_loopback(listen: str, expected: bool) -> None:
    assert is_loopback(listen) is expected


def test_an_exchange_table_is_read_and_bad_urls_are_refused_naming_the_key(
    tmp_path: Path,
) -> None:
    good = write_toml(
        tmp_path,
        """
        [exchanges.okx]
        rest_url = "https://proxy:8443"
        ws_url = "wss://proxy:8443"
        mark_interval_s = 2
        options = { defaultType = "swap" }
        """,
    )
    okx = load_settings({"config": good}).exchanges["okx"]
    assert (okx.rest_url, okx.ws_url, okx.mark_interval_s) == (
        "https://proxy:8443",
        "wss://proxy:8443",
        2,
    )
    assert okx.options == {"defaultType": "swap"}

    bad = write_toml(
        tmp_path,
        """
        [exchanges.okx]
        rest_url = "https://proxy:8443/api"
        ws_url = "https://proxy:8443"
        """,
    )
    with pytest.raises(ConfigError) as raised:
        load_settings({"config": bad})
    message = str(raised.value)
    assert "exchanges.okx.rest_url" in message
    assert "exchanges.okx.ws_url" in message


def test_auth_tokens_are_read_from_the_toml_file(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        """
        [auth]
        audit_log = "/var/log/oms-audit.jsonl"

        [[auth.tokens]]
        name = "rsi-bot"
        token = "0123456789abcdef-rsi"
        users = ["alice", "bob"]
        rate_limit_per_s = 20

        [[auth.tokens]]
        name = "ops"
        token = "0123456789abcdef-ops"
        admin = true
        """,
    )
    auth = load_settings({"config": config}).auth
    assert auth.enabled and auth.audit_log == Path("/var/log/oms-audit.jsonl")
    bot, ops = auth.tokens
    assert (bot.name, bot.users, bot.admin, bot.rate_limit_per_s, bot.burst) == (
        "rsi-bot",
        ["alice", "bob"],
        False,
        20.0,
        200,
    )
    assert ops.admin
    assert ops.token is not None and ops.token.get_secret_value() == "0123456789abcdef-ops"
    assert not Settings().auth.enabled


def test_a_token_may_be_given_by_its_sha256(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"0123456789abcdef-rsi").hexdigest()
    config = write_toml(
        tmp_path,
        f'[[auth.tokens]]\nname = "rsi-bot"\ntoken_sha256 = "{digest}"\nusers = ["alice"]\n',
    )
    [bot] = load_settings({"config": config}).auth.tokens
    assert bot.token is None
    assert bot.digest == hashlib.sha256(b"0123456789abcdef-rsi").digest()


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ('name = "bot"\ntoken = "short-secret"\nusers = ["alice"]', "at least 16"),
        ('name = "bot"\ntoken = "long-enough-secret"', "grants nothing"),
        ('name = "bot"\ntoken = " long-enough-secret"\nusers = ["alice"]', "printable ASCII"),
        ('name = "bot"\ntoken = "long-enough-secret-é"\nusers = ["alice"]', "printable ASCII"),
        ('name = "bot"\ntoken = "long-enough-secret"\nusers = ["bad user"]', "not a user_id"),
        (
            'name = "bot"\ntoken = "long-enough-secret"\nadmin = true\n'
            '[[auth.tokens]]\nname = "bot"\ntoken = "long-enough-other"\nadmin = true',
            "distinct",
        ),
        ('name = "bot"\nusers = ["alice"]', "exactly one of token and token_sha256"),
        (
            f'name = "bot"\ntoken = "long-enough-secret"\ntoken_sha256 = "{"0" * 64}"\n'
            'users = ["alice"]',
            "exactly one of token and token_sha256",
        ),
        ('name = "bot"\ntoken_sha256 = "secret-not-hex"\nusers = ["alice"]', "token_sha256"),
        (
            'name = "bot"\ntoken = "long-enough-secret"\nadmin = true\n[[auth.tokens]]\n'
            f'name = "ops"\ntoken_sha256 = "{hashlib.sha256(b"long-enough-secret").hexdigest()}"'
            "\nadmin = true",
            "same token string",
        ),
    ],
)
def test_bad_tokens_are_refused_without_echoing_them(
    tmp_path: Path, tokens: str, message: str
) -> None:
    config = write_toml(tmp_path, f"[[auth.tokens]]\n{tokens}\n")
    with pytest.raises(ConfigError, match=message) as error:
        load_settings({"config": config})
    assert "secret" not in str(error.value)
    assert "long-enough" not in str(error.value)


def test_the_readme_sample_file_loads_as_written(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    [sample] = re.findall(r"```toml\n(# oms\.toml.*?)```", readme, re.DOTALL)
    settings = load_settings({"config": write_toml(tmp_path, sample)})
    assert [token.name for token in settings.auth.tokens] == ["rsi-bot", "ops", "price-feeder"]
    assert (
        settings.auth.tokens[2].token_sha256
        == hashlib.sha256(b"price-feeder-token-change-me").hexdigest()
    )
    assert "DOGE/USDT:USDT" in [market.symbol for market in settings.paper.markets]
    assert settings.exchanges["okx"].lookup_grace_s == 15.0
    # Loaded, and its sample tokens said to be samples at start: all three, the hashed one too.
    assert [line.split(" is ")[0] for line in settings.auth.doubts] == [
        "token rsi-bot",
        "token ops",
        "token price-feeder",
    ]


def test_an_audit_log_without_tokens_is_doubted_and_real_tokens_are_not(tmp_path: Path) -> None:
    lonely = load_settings({"config": write_toml(tmp_path, '[auth]\naudit_log = "a.jsonl"\n')})
    assert lonely.auth.doubts == [
        "audit_log is set, but no token is: auth is off and nothing is audited"
    ]
    real = write_toml(
        tmp_path,
        '[[auth.tokens]]\nname = "bot"\ntoken = "k3J9xQ2mV8pL5wR7tY1z"\nusers = ["alice"]\n',
    )
    assert load_settings({"config": real}).auth.doubts == []


def test_a_lookup_never_gives_up_on_an_order_before_its_request_window_closed() -> None:
    settings = Settings(
        exchanges={
            "okx": ExchangeSettings(timeout_ms=3000, lookup_grace_s=1.0),
            "binanceusdm": ExchangeSettings(timeout_ms=3000, lookup_grace_s=15.0),
        }
    )
    policy = venue_policy(settings)
    assert policy("okx").lookup_grace_s == 3.0  # the exchange may take it until then
    assert policy("binanceusdm").lookup_grace_s == 15.0


def test_an_oms_variable_that_names_no_setting_is_reported_with_the_nearest_name() -> None:
    # A misspelt OMS_REDIS_URL would otherwise start an embedded Redis without a word.
    environ = {
        "OMS_REDIS_URI": "redis://10.0.0.5:6379",
        "OMS_LISTEN": "127.0.0.1:50051",
        "OMS_FAILPOINTS": "rule-fired",
        "OMS_ZZZ": "1",
        "PATH": "/usr/bin",
    }
    assert unknown_env_settings(environ, others=["OMS_FAILPOINTS"]) == [
        "OMS_REDIS_URI names no setting and is ignored (did you mean OMS_REDIS_URL?)",
        "OMS_ZZZ names no setting and is ignored",
    ]
