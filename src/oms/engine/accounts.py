"""Exchange accounts: credentials registered sealed, and the set of accounts the OMS follows
(the seed design's "active user manager"). Activating an account connects to the exchange,
checks the credentials and reconciles the account before it counts as ACTIVE; at start-up
every ACTIVE account is followed again before the server reports SERVING."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from oms.domain.accounts import (
    Account,
    AccountStatus,
    Credentials,
    check_account_exchange,
    check_account_key,
    check_credentials,
    new_account,
)
from oms.domain.errors import FailedPrecondition, NotFound, Unavailable
from oms.domain.identifiers import check_user_id
from oms.domain.paging import decode_key_token, encode_key_token, listing_of, page_size
from oms.engine.backoff import Backoff
from oms.engine.keyed_locks import KeyedLocks
from oms.engine.ports import AccountStore, Vault
from oms.engine.run_to_end import run_to_end

log = logging.getLogger(__name__)


class Follower(Protocol):
    """What follows an account's exchange feeds (engine.live_exchanges.LiveExchanges)."""

    async def follow(self, account: Account, credentials: Credentials) -> None: ...

    async def unfollow(self, account: Account) -> None: ...

    def follows(self, user_id: str, exchange: str) -> bool:
        """Whether the account is followed now."""
        ...

    def resuming(self, user_id: str, exchange: str, why: str | None) -> None:
        """The start has yet to follow this active account, for `why`; None: no longer."""
        ...


@dataclass(frozen=True, slots=True)
class AccountPage:
    accounts: list[Account]
    next_key: str | None
    listing: str

    @property
    def next_page_token(self) -> str:
        return encode_key_token(self.next_key, self.listing)


@dataclass(frozen=True, slots=True)
class ActiveAccountQuery:
    """What a ListActiveAccounts page token is bound to."""

    user_id: str
    exchange: str


@dataclass(frozen=True, slots=True)
class RegisterCredentials:
    user_id: str
    exchange: str
    api_key: str
    secret: str
    password: str | None
    sandbox: bool


def _owner(user_id: str, exchange: str) -> str:
    return f"{user_id}|{exchange}"


class Accounts:
    def __init__(
        self,
        store: AccountStore,
        vault: Vault | None,
        follower: Follower,
        known_exchanges: frozenset[str],
        clock_ns: Callable[[], int],
        resume_backoff_s: float = 1.0,
    ) -> None:
        self._store = store
        self._vault = vault
        self._follower = follower
        self._known = known_exchanges
        self._clock_ns = clock_ns
        self._resume_backoff_s = resume_backoff_s
        # One change at a time per account: activation and re-registration both reconnect.
        self._lock: KeyedLocks[str] = KeyedLocks()

    @run_to_end
    async def register(self, command: RegisterCredentials) -> Account:
        user_id, exchange = check_account_key(command.user_id, command.exchange, self._known)
        credentials = check_credentials(command.api_key, command.secret, command.password)
        vault = self._require_vault()
        now = self._clock_ns()
        async with self._lock(_owner(user_id, exchange)):
            stored = await self._store.get(user_id, exchange)
            if stored is None:
                account = new_account(user_id, exchange, credentials, command.sandbox, now)
            else:
                account = stored[0].with_credentials(credentials, command.sandbox, now)
                if account.is_active:
                    # Key rotation: only credentials the exchange takes replace working ones.
                    await self._follower.follow(account, credentials)
            await self._store.put(account, vault.seal(_owner(user_id, exchange), credentials))
        log.info("credentials registered for %s on %s", user_id, exchange)
        return account

    @run_to_end
    async def activate(self, user_id: str, exchange: str) -> Account:
        user_id, exchange = check_account_key(user_id, exchange, self._known)
        async with self._lock(_owner(user_id, exchange)):
            account, credentials = await self._load(user_id, exchange)
            if account.is_active and self._follower.follows(user_id, exchange):
                return account
            # (Stored active yet not followed: the retry of an activation whose write landed
            # unanswered.)
            await self._follower.follow(account, credentials)
            if account.is_active:
                return account
            active = account.with_status(AccountStatus.ACTIVE, self._clock_ns())
            try:
                await self._store.put(active)
            except BaseException:
                await self._follower.unfollow(account)
                raise
        log.info("account %s on %s activated", user_id, exchange)
        return active

    @run_to_end
    async def deactivate(self, user_id: str, exchange: str) -> Account:
        user_id, exchange = check_account_key(user_id, exchange, self._known)
        async with self._lock(_owner(user_id, exchange)):
            stored = await self._store.get(user_id, exchange)
            if stored is None:
                raise NotFound(f"no credentials registered for {user_id} on {exchange}")
            account = stored[0]
            # Trading on it stops first, whatever becomes of the write: also for the retry of
            # a deactivation whose write landed unanswered.
            await self._follower.unfollow(account)
            if not account.is_active:
                return account
            inactive = account.with_status(AccountStatus.INACTIVE, self._clock_ns())
            await self._store.put(inactive)
        log.info("account %s on %s deactivated", user_id, exchange)
        return inactive

    async def list_active(
        self, user_id: str, exchange: str, size: int, page_token: str
    ) -> AccountPage:
        if user_id:
            check_user_id(user_id)
        if exchange:
            check_account_exchange(exchange, self._known)
        limit = page_size(size)
        listing = listing_of(ActiveAccountQuery(user_id, exchange))
        after = decode_key_token(page_token, listing)
        members = await self._store.list_active(user_id, exchange, after, limit + 1)
        more = len(members) > limit
        members = members[:limit]
        accounts = await self._store.get_many(members)
        return AccountPage(accounts, members[-1] if more else None, listing)

    async def resume(self) -> None:
        """Start-up: prove the master key is the one the stored credentials were sealed
        with, then follow every ACTIVE account, retrying an unreachable exchange until it
        answers. An account whose credentials are refused is left unfollowed and logged."""
        sealed = await self._store.has_credentials()
        if self._vault is None:
            if sealed:
                raise FailedPrecondition("credentials are stored but OMS_MASTER_KEY is not set")
            return
        check = await self._store.vault_check() if sealed else None
        if check is None:
            # Nothing sealed yet: whichever key this start brings is the one from now on.
            await self._store.set_vault_check(self._vault.check_value())
        else:
            self._vault.verify_check_value(check)
        await asyncio.gather(*(self._resume(a) for a in await self._store.all_active()))

    async def _resume(self, account: Account) -> None:
        backoff = Backoff(self._resume_backoff_s, 30.0)
        user_id, exchange = account.user_id, account.exchange
        self._follower.resuming(user_id, exchange, "it has not answered yet")
        try:
            while True:
                try:
                    # The server takes calls meanwhile: each attempt reads the account again,
                    # which a call may have deactivated, given new credentials, or followed.
                    async with self._lock(_owner(user_id, exchange)):
                        current, credentials = await self._load(user_id, exchange)
                        if current.is_active and not self._follower.follows(user_id, exchange):
                            await self._follower.follow(current, credentials)
                    return
                except FailedPrecondition as error:
                    log.error("account %s on %s not followed: %s", user_id, exchange, error.message)
                    return
                except Unavailable as error:
                    # Not while deactivated: only an active account's follow gets this far.
                    self._follower.resuming(user_id, exchange, error.message)
                    log.warning(
                        "account %s on %s: %s; retrying in %.1f s",
                        user_id,
                        exchange,
                        error.message,
                        backoff.next_s,
                    )
                await backoff.wait()
        finally:
            self._follower.resuming(user_id, exchange, None)

    async def _load(self, user_id: str, exchange: str) -> tuple[Account, Credentials]:
        stored = await self._store.get(user_id, exchange)
        if stored is None:
            raise NotFound(f"no credentials registered for {user_id} on {exchange}")
        account, sealed = stored
        return account, self._require_vault().open(_owner(user_id, exchange), sealed)

    def _require_vault(self) -> Vault:
        if self._vault is None:
            raise FailedPrecondition(
                "the server has no OMS_MASTER_KEY: it cannot store exchange credentials"
            )
        return self._vault
