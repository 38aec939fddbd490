"""The history archive in PostgreSQL (asyncpg): every user's events, kept for good.

One row per event, keyed by (user_id, sequence), holding the event document the state store
streams (JSON: "kind" is "order", "fill", "position", "trailing_stop" or "rule"). The tables
are made on first use; inserting a sequence already kept does nothing, so copying again after
a crash or a lost reply never duplicates a row. Each user's newest archived sequence is kept
beside the events, in the same transaction, so resuming reads one row per user instead of
scanning the events. Archived events the store no longer holds as they were (it lost its last
writes) are moved to oms_events_superseded, so that their sequences can be archived again.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import asyncpg

from oms.domain.errors import Unavailable

__all__ = ["PostgresArchive"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS oms_events (
    user_id text NOT NULL,
    sequence bigint NOT NULL,
    kind text GENERATED ALWAYS AS (event ->> 'kind') STORED,
    event jsonb NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, sequence)
);
CREATE TABLE IF NOT EXISTS oms_archive_cursors (
    user_id text PRIMARY KEY,
    sequence bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS oms_events_superseded (
    user_id text NOT NULL,
    sequence bigint NOT NULL,
    kind text GENERATED ALWAYS AS (event ->> 'kind') STORED,
    event jsonb NOT NULL,
    archived_at timestamptz NOT NULL,
    superseded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS oms_events_superseded_user ON oms_events_superseded (user_id, sequence)
"""

_INSERT = """
INSERT INTO oms_events (user_id, sequence, event) VALUES ($1, $2, $3::jsonb)
ON CONFLICT (user_id, sequence) DO NOTHING
"""

_ADVANCE = """
INSERT INTO oms_archive_cursors (user_id, sequence) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE
SET sequence = greatest(oms_archive_cursors.sequence, excluded.sequence)
"""

# jsonb equality: the same document whatever its key order or spacing.
_FIRST_MISMATCH = """
SELECT given.sequence
FROM unnest($2::bigint[], $3::jsonb[]) AS given (sequence, event)
LEFT JOIN oms_events kept ON kept.user_id = $1 AND kept.sequence = given.sequence
WHERE kept.event IS DISTINCT FROM given.event
ORDER BY given.sequence
LIMIT 1
"""

_SET_ASIDE = """
WITH moved AS (
    DELETE FROM oms_events WHERE user_id = $1 AND sequence >= $2
    RETURNING user_id, sequence, event, archived_at
)
INSERT INTO oms_events_superseded (user_id, sequence, event, archived_at)
SELECT user_id, sequence, event, archived_at FROM moved
"""

_DOWN = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class PostgresArchive:
    """EventArchive (engine.ports) on PostgreSQL. Connects on first use, so an archive
    that is down when the OMS starts delays the archive, not trading."""

    def __init__(self, dsn: str, timeout_s: float = 10.0) -> None:
        self._dsn = dsn
        parts = urlsplit(dsn)
        # Where, for messages: never the password (nor the user).
        self._where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        self._timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None

    async def last_sequences(self) -> dict[str, int]:
        pool = await self._connected()
        try:
            rows = await pool.fetch(
                "SELECT user_id, sequence FROM oms_archive_cursors", timeout=self._timeout_s
            )
        except _DOWN as error:
            raise _unavailable(error, self._where) from error
        return {row["user_id"]: row["sequence"] for row in rows}

    async def append(self, user_id: str, docs: Sequence[tuple[int, bytes]]) -> None:
        pool = await self._connected()
        rows = [(user_id, sequence, doc.decode()) for sequence, doc in docs]
        try:
            async with pool.acquire() as connection, connection.transaction():
                await connection.executemany(_INSERT, rows, timeout=self._timeout_s)
                await connection.execute(_ADVANCE, user_id, docs[-1][0], timeout=self._timeout_s)
        except _DOWN as error:
            raise _unavailable(error, self._where) from error

    async def first_mismatch(self, user_id: str, docs: Sequence[tuple[int, bytes]]) -> int | None:
        pool = await self._connected()
        try:
            found: int | None = await pool.fetchval(
                _FIRST_MISMATCH,
                user_id,
                [sequence for sequence, _ in docs],
                [doc.decode() for _, doc in docs],
                timeout=self._timeout_s,
            )
        except _DOWN as error:
            raise _unavailable(error, self._where) from error
        return found

    async def set_aside(self, user_id: str, from_sequence: int) -> int:
        pool = await self._connected()
        try:
            async with pool.acquire() as connection, connection.transaction():
                status = await connection.execute(
                    _SET_ASIDE, user_id, from_sequence, timeout=self._timeout_s
                )
                await connection.execute(
                    "UPDATE oms_archive_cursors SET sequence = $2 WHERE user_id = $1",
                    user_id,
                    from_sequence - 1,
                    timeout=self._timeout_s,
                )
        except _DOWN as error:
            raise _unavailable(error, self._where) from error
        return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _connected(self) -> asyncpg.Pool:
        if self._pool is None:
            try:
                # No floor of idle connections: asyncpg would log a traceback each time it
                # failed to restore one while PostgreSQL is down.
                pool = await asyncpg.create_pool(
                    self._dsn, min_size=0, max_size=2, timeout=self._timeout_s
                )
            except _DOWN as error:
                raise _unavailable(error, self._where) from error
            try:
                await pool.execute(_SCHEMA, timeout=self._timeout_s)
            except _DOWN as error:
                await pool.close()
                raise _unavailable(error, self._where) from error
            self._pool = pool
        return self._pool


_UNREACHABLE = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)


def _unavailable(error: BaseException, where: str) -> Unavailable:
    if isinstance(error, _UNREACHABLE):
        return Unavailable(f"PostgreSQL unreachable ({where}): {error}")
    # Reached, and it said no: a missing privilege, a full disk, a broken schema.
    return Unavailable(f"PostgreSQL refused ({where}): {type(error).__name__}: {error}")
