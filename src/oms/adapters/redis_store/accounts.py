"""Exchange accounts in Redis: one document per (user, exchange), its sealed credentials in a
hash of their own (listings never load them), and a lexically sorted set of active accounts
for start-up and paged listing."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from redis.asyncio import Redis

from oms.adapters.redis_store import keys
from oms.adapters.redis_store.store import unavailable_when_down
from oms.domain.accounts import Account, AccountStatus

# Below every character a user id may hold, so members sort by (user_id, exchange).
_SEPARATOR = " "


def account_member(user_id: str, exchange: str) -> str:
    return f"{user_id}{_SEPARATOR}{exchange}"


def _to_dict(account: Account) -> dict[str, Any]:
    return {
        "user_id": account.user_id,
        "exchange": account.exchange,
        "sandbox": account.sandbox,
        "has_password": account.has_password,
        "status": account.status.value,
        "created_at_ns": account.created_at_ns,
        "credentials_updated_at_ns": account.credentials_updated_at_ns,
        "updated_at_ns": account.updated_at_ns,
    }


def _from_dict(doc: dict[str, Any]) -> Account:
    return Account(
        user_id=doc["user_id"],
        exchange=doc["exchange"],
        sandbox=doc["sandbox"],
        has_password=doc["has_password"],
        status=AccountStatus(doc["status"]),
        created_at_ns=doc["created_at_ns"],
        credentials_updated_at_ns=doc["credentials_updated_at_ns"],
        updated_at_ns=doc["updated_at_ns"],
    )


class RedisAccountStore:
    """AccountStore on Redis (engine.ports). The `type: ignore[misc]`: see RedisStore."""

    def __init__(self, redis: Redis, timeout_s: float = 5.0) -> None:
        """`timeout_s`: how long a call may wait for Redis (see unavailable_when_down)."""
        self._redis = redis
        self.timeout_s = timeout_s

    @unavailable_when_down
    async def get(self, user_id: str, exchange: str) -> tuple[Account, bytes] | None:
        member = account_member(user_id, exchange)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(keys.accounts(), member)
        pipe.hget(keys.account_credentials(), member)
        doc, sealed = await pipe.execute()
        if doc is None or sealed is None:
            return None
        return _from_dict(orjson.loads(doc)), base64.b64decode(sealed)

    @unavailable_when_down
    async def put(self, account: Account, sealed: bytes | None = None) -> None:
        """Write the account (and new sealed credentials, when given) in one MULTI."""
        member = account_member(account.user_id, account.exchange)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(keys.accounts(), member, orjson.dumps(_to_dict(account)).decode())
        if sealed is not None:
            pipe.hset(keys.account_credentials(), member, base64.b64encode(sealed).decode())
        if account.is_active:
            pipe.zadd(keys.active_accounts(), {member: 0})
        else:
            pipe.zrem(keys.active_accounts(), member)
        await pipe.execute()

    @unavailable_when_down
    async def list_active(self, user_id: str, exchange: str, after: str, limit: int) -> list[str]:
        """Members of active accounts after `after`, in (user_id, exchange) order, at most
        `limit` of those matching the filters (the caller fetches one more to page)."""
        if user_id:
            low = account_member(user_id, "")
            # Never before the user's own range, whatever the page token says.
            start = f"({after}" if after > low else f"[{low}"
            stop = f"[{low}\xff"
        else:
            start, stop = (f"({after}" if after else "-"), "+"
        found: list[str] = []
        while len(found) < limit:
            batch = await self._redis.zrangebylex(
                keys.active_accounts(), start, stop, start=0, num=max(limit, 100)
            )
            if not batch:
                break
            for raw in batch:
                member = raw.decode()
                if not exchange or member.split(_SEPARATOR, 1)[1] == exchange:
                    found.append(member)
            start = f"({batch[-1].decode()}"
        return found[:limit]

    @unavailable_when_down
    async def get_many(self, members: list[str]) -> list[Account]:
        if not members:
            return []
        docs = await self._redis.hmget(keys.accounts(), members)  # type: ignore[misc]
        return [_from_dict(orjson.loads(doc)) for doc in docs if doc is not None]

    async def all_active(self) -> list[Account]:
        members = await self.list_active("", "", "", 1 << 30)
        return await self.get_many(members)

    @unavailable_when_down
    async def vault_check(self) -> bytes | None:
        value: bytes | None = await self._redis.get(keys.vault_check())
        return value

    @unavailable_when_down
    async def set_vault_check(self, sealed: bytes) -> None:
        await self._redis.set(keys.vault_check(), sealed)

    @unavailable_when_down
    async def has_credentials(self) -> bool:
        count: int = await self._redis.hlen(keys.account_credentials())  # type: ignore[misc]
        return count > 0
