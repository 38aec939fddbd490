"""`oms serve`: the console script."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import uvloop

from oms import failpoints
from oms.adapters.redis_store.embedded import EmbeddedRedis, EmbeddedRedisError
from oms.api.auth import audit_to_file
from oms.bootstrap import StartupError, serve
from oms.config import (
    ConfigError,
    Settings,
    is_loopback,
    load_settings,
    unknown_env_settings,
)

log = logging.getLogger(__name__)


def _default(setting: str) -> object:
    return Settings.model_fields[setting].default


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oms", description="gRPC order-management service")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the gRPC server. Flags win over OMS_* environment variables, which "
        "win over the --config TOML file.",
        epilog="Every other setting (auth tokens, exchanges, paper markets and fees, timeouts, "
        "limits) is an OMS_* environment variable or a key of the TOML file: see the README's "
        "configuration table.",
    )
    # Every flag defaults to None so that an absent flag leaves env and TOML in force.
    run.add_argument(
        "--listen", default=None, help=f"HOST:PORT (env OMS_LISTEN; default {_default('listen')})"
    )
    run.add_argument(
        "--redis-url",
        default=None,
        help="Redis URL; unset starts an embedded Redis (env OMS_REDIS_URL)",
    )
    run.add_argument(
        "--data-dir",
        default=None,
        help=f"embedded Redis data (env OMS_DATA_DIR; default {_default('data_dir')})",
    )
    run.add_argument("--config", default=None, help="TOML settings file (env OMS_CONFIG)")
    run.add_argument(
        "--postgres-dsn", default=None, help="history archive; unset: none (env OMS_POSTGRES_DSN)"
    )
    run.add_argument(
        "--metrics-listen",
        default=None,
        help="HOST:PORT to serve Prometheus /metrics on; unset: none (env OMS_METRICS_LISTEN)",
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback --listen address without auth (env OMS_INSECURE)",
    )
    return parser


def listen_refusal(settings: Settings) -> str:
    """Why the server may not start on its listen address; empty when it may."""
    if is_loopback(settings.listen) or settings.insecure or settings.auth.enabled:
        return ""
    return (
        f"refusing to listen on {settings.listen} without auth; configure [[auth.tokens]], "
        "use a loopback address, or pass --insecure"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(
            {
                "listen": args.listen,
                "redis_url": args.redis_url,
                "data_dir": args.data_dir,
                "config": args.config,
                "postgres_dsn": args.postgres_dsn,
                "metrics_listen": args.metrics_listen,
                "insecure": args.insecure,
            }
        )
    except ConfigError as error:
        print(f"oms: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for line in unknown_env_settings(os.environ, others=[failpoints.ENV]):
        log.warning("environment: %s", line)
    for line in settings.auth.doubts:
        log.warning("auth: %s", line)
    refusal = listen_refusal(settings)
    if refusal:
        print(f"oms: {refusal}", file=sys.stderr)
        return 2
    if settings.auth.audit_log is not None:
        try:
            audit_to_file(settings.auth.audit_log)
        except OSError as error:
            print(
                f"oms: cannot start: audit log {settings.auth.audit_log}: {error}", file=sys.stderr
            )
            return 1
    embedded = None
    redis_url = settings.redis_url
    try:
        if redis_url is None:
            embedded = EmbeddedRedis(settings.data_dir)
            try:
                redis_url = embedded.start()
            except OSError as error:  # the data dir cannot be made or used
                raise EmbeddedRedisError(f"cannot use {settings.data_dir}: {error}") from error
        return uvloop.run(serve(settings, redis_url, embedded=embedded))
    except (StartupError, EmbeddedRedisError) as error:
        print(f"oms: cannot start: {error}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()
