"""Exchange accounts: a user's credentials for one real exchange and whether the OMS follows
it. Credentials are only ever held in memory in the clear; they never reach a log line or a
response (their `repr` hides them)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from oms.domain.errors import InvalidArgument
from oms.domain.identifiers import check_user_id
from oms.domain.markets import PAPER

MAX_API_KEY_CHARS = 256
MAX_SECRET_CHARS = 4096


class AccountStatus(StrEnum):
    INACTIVE = "INACTIVE"
    ACTIVE = "ACTIVE"


@dataclass(frozen=True, slots=True)
class Credentials:
    api_key: str = field(repr=False)
    secret: str = field(repr=False)
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Account:
    user_id: str
    exchange: str
    sandbox: bool
    has_password: bool
    status: AccountStatus
    created_at_ns: int
    credentials_updated_at_ns: int
    updated_at_ns: int

    @property
    def is_active(self) -> bool:
        return self.status is AccountStatus.ACTIVE

    def with_status(self, status: AccountStatus, now_ns: int) -> Account:
        if status is self.status:
            return self
        return replace(self, status=status, updated_at_ns=now_ns)

    def with_credentials(self, credentials: Credentials, sandbox: bool, now_ns: int) -> Account:
        return replace(
            self,
            sandbox=sandbox,
            has_password=credentials.password is not None,
            credentials_updated_at_ns=now_ns,
            updated_at_ns=now_ns,
        )


def new_account(
    user_id: str, exchange: str, credentials: Credentials, sandbox: bool, now_ns: int
) -> Account:
    return Account(
        user_id=user_id,
        exchange=exchange,
        sandbox=sandbox,
        has_password=credentials.password is not None,
        status=AccountStatus.INACTIVE,
        created_at_ns=now_ns,
        credentials_updated_at_ns=now_ns,
        updated_at_ns=now_ns,
    )


def check_account_exchange(exchange: str, known: frozenset[str], field: str = "exchange") -> str:
    """A real exchange id: one ccxt knows, never `paper` (which needs no account)."""
    if not exchange:
        raise InvalidArgument(field, "is required")
    if exchange == PAPER:
        raise InvalidArgument(field, f"{PAPER} needs no account: every user can trade on it")
    if exchange not in known:
        raise InvalidArgument(field, f"unknown exchange {exchange[:64]!r} (not a ccxt exchange id)")
    return exchange


def check_credentials(api_key: str, secret: str, password: str | None) -> Credentials:
    password = password or None  # empty, as JSON clients send for none: none
    for name, value, limit in (
        ("api_key", api_key, MAX_API_KEY_CHARS),
        ("secret", secret, MAX_SECRET_CHARS),
        ("password", password, MAX_API_KEY_CHARS),
    ):
        if value is None:
            continue
        if not value:
            raise InvalidArgument(name, "is required")
        if len(value) > limit:
            raise InvalidArgument(name, f"is longer than {limit} characters")
        if value != value.strip() or any(not c.isprintable() for c in value):
            # Pasted keys often carry a newline or space; the exchange would refuse them later.
            raise InvalidArgument(name, "must not contain whitespace at its ends or control chars")
    return Credentials(api_key, secret, password)


def check_account_key(user_id: str, exchange: str, known: frozenset[str]) -> tuple[str, str]:
    return check_user_id(user_id), check_account_exchange(exchange, known)
