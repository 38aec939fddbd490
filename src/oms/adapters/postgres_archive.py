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

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg

from oms.domain.errors import FailedPrecondition, Unavailable

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

_UNREACHABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # A connection in a state asyncpg did not expect, as after a restart.
    asyncpg.InternalClientError,
    # The server is starting, shutting down or restarting after a crash: not a refusal.
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    OSError,
)
_DOWN = (asyncpg.PostgresError, *_UNREACHABLE)
# SQLSTATE classes one user's events can cause: a data exception (a value PostgreSQL will
# not take), an integrity constraint, an exception raised by a trigger of the operator's.
_USER_REFUSED = ("22", "23", "P0")

# PostgreSQL's jsonb takes every character but NUL, which JSON writes as \u0000 (an escape
# preceded by an even number of backslashes; an odd one would escape the backslash instead).
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def _jsonb_text(doc: bytes) -> str:
    """An event document as jsonb takes it: a NUL (from an exchange's message, say) becomes
    U+FFFD rather than keep the user's every later event out of the archive."""
    if b"\\u0000" in doc:
        doc = _NUL_ESCAPE.sub(rb"\1\\ufffd", doc)
    return doc.decode()


class PostgresArchive:
    """EventArchive (engine.ports) on PostgreSQL. Connects on first use, so an archive
    that is down when the OMS starts delays the archive, not trading."""

    def __init__(self, dsn: str, timeout_s: float = 10.0) -> None:
        """`timeout_s`: about the most each call takes, whatever PostgreSQL does (a hung
        server or a dropped network included)."""
        self._dsn = dsn
        parts = urlsplit(dsn)
        # Where, for messages: never the password (nor the user).
        self._where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        # PostgreSQL's own messages quote it ('role "x" does not exist').
        self._user = f'"{parts.username}"' if parts.username else None
        self._timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None

    async def last_sequences(self) -> dict[str, int]:
        async with self._session() as pool:
            rows = await pool.fetch("SELECT user_id, sequence FROM oms_archive_cursors")
        return {row["user_id"]: row["sequence"] for row in rows}

    async def append(self, user_id: str, docs: Sequence[tuple[int, bytes]]) -> None:
        rows = [(user_id, sequence, _jsonb_text(doc)) for sequence, doc in docs]
        async with (
            self._session(events=True) as pool,
            pool.acquire() as connection,
            connection.transaction(),
        ):
            await connection.executemany(_INSERT, rows)
            await connection.execute(_ADVANCE, user_id, docs[-1][0])

    async def first_mismatch(self, user_id: str, docs: Sequence[tuple[int, bytes]]) -> int | None:
        async with self._session(events=True) as pool:
            found: int | None = await pool.fetchval(
                _FIRST_MISMATCH,
                user_id,
                [sequence for sequence, _ in docs],
                [_jsonb_text(doc) for _, doc in docs],
            )
        return found

    async def set_aside(self, user_id: str, from_sequence: int) -> int:
        async with (
            self._session(events=True) as pool,
            pool.acquire() as connection,
            connection.transaction(),
        ):
            status = await connection.execute(_SET_ASIDE, user_id, from_sequence)
            await connection.execute(
                "UPDATE oms_archive_cursors SET sequence = $2 WHERE user_id = $1",
                user_id,
                from_sequence - 1,
            )
        return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"

    async def close(self) -> None:
        """Say goodbye to the server on each connection, or, should it not answer within a
        second (hung, or the network gone), just drop them: a stop must not wait on it."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(1):
                await pool.close()
        except (TimeoutError, *_DOWN):
            pool.terminate()

    @asynccontextmanager
    async def _session(self, events: bool = False) -> AsyncIterator[asyncpg.Pool]:
        """The pool, for one call bounded by the timeout; `events`: a call on one user's
        events, which PostgreSQL may refuse as such (FailedPrecondition, not Unavailable).

        A statement that times out (or is cancelled) waits, shielded, for the server to take
        a cancel request, which a hung server never does: the pool's command timeout bounds
        that wait. Once the deadline passes, the pool's connections, whose state is then
        unknown, make way for new ones."""
        deadline = asyncio.timeout(self._timeout_s)
        connected = False
        try:
            async with deadline:
                pool = await self._connected()
                connected = True
                yield pool
        except TimeoutError as error:
            self._drop_pool()
            if error.errno is not None:  # the network's own (ETIMEDOUT), not a deadline
                raise self._domain_error(error, events=False) from error
            # Either the call's deadline, or first the pool's timeout on one statement (one
            # waiting for a lock, say).
            waited = (
                f"within {self._timeout_s:g} s"
                if deadline.expired()
                else f"a statement within {self._timeout_s / 2:g} s"
            )
            raise Unavailable(f"PostgreSQL did not answer {waited} ({self._where})") from error
        except _DOWN as error:
            if isinstance(error, _UNREACHABLE):
                self._drop_pool()
            # A refusal while connecting (making the tables) is the archive's, not the events'.
            raise self._domain_error(error, events and connected) from error

    def _domain_error(self, error: BaseException, events: bool) -> Unavailable | FailedPrecondition:
        said = str(error) if self._user is None else str(error).replace(self._user, '"<user>"')
        if isinstance(error, _UNREACHABLE):
            return Unavailable(f"PostgreSQL unreachable ({self._where}): {said}")
        said = said.partition("\n")[0]  # a DETAIL would repeat the refused row
        refused = f"PostgreSQL refused ({self._where}): {type(error).__name__}: {said}"
        if (
            events
            and isinstance(error, asyncpg.PostgresError)
            and error.sqlstate[:2] in _USER_REFUSED
        ):
            return FailedPrecondition(refused)  # these events, not the archive
        # Reached, and it said no to anything: a missing privilege, a full disk, a broken
        # schema.
        return Unavailable(refused)

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    async def _connected(self) -> asyncpg.Pool:
        if self._pool is None:
            # No floor of idle connections: asyncpg would log a traceback each time it
            # failed to restore one while PostgreSQL is down. The command timeout bounds a
            # statement, then its cancel request: half the call's deadline each.
            pool = await asyncpg.create_pool(
                self._dsn, min_size=0, max_size=2, command_timeout=self._timeout_s / 2
            )
            try:
                await pool.execute(_SCHEMA)
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool
        return self._pool
