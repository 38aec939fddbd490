"""Who may do what: the grant behind each API token, and its rate limit."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field


def token_digest(token: str) -> bytes:
    """What a token is known by: its SHA-256. Callers are looked up by digest, so a dict
    lookup cannot leak the token through timing, and a config can hold the digest alone."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows. `name` identifies it in the audit log; the token never is."""

    name: str
    users: frozenset[str] = frozenset()
    """The user_ids it may act for."""
    admin: bool = False
    """Acts for every user, lists every user's accounts and publishes prices."""
    publish_prices: bool = False
    """May publish paper prices (a price feeder), without acting for any user."""

    def may_act_for(self, user_id: str) -> bool:
        return self.admin or user_id in self.users

    @property
    def may_publish_prices(self) -> bool:
        return self.admin or self.publish_prices


@dataclass(slots=True)
class TokenBucket:
    """`rate_per_s` calls a second on average, `burst` at once."""

    rate_per_s: float
    burst: int
    clock_s: Callable[[], float]
    _tokens: float = field(init=False)
    _at_s: float = field(init=False)

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)
        self._at_s = self.clock_s()

    def take(self) -> bool:
        """One call's worth, if there is one left."""
        now = self.clock_s()
        self._tokens = min(self.burst, self._tokens + (now - self._at_s) * self.rate_per_s)
        self._at_s = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
