"""The history archive (OMS_POSTGRES_DSN): every user's events copied into a real
PostgreSQL in order and once, including what was committed while no archive was configured
or while it was down; trading never waits for it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
import pytest
import redis
from fixtures.client_streams import until
from fixtures.metrics import plain, scrape
from fixtures.oms_server import OmsHarness, make_oms
from fixtures.postgres_server import private_postgres
from fixtures.redis_proxy import RedisFaultProxy, landed_unanswered
from fixtures.redis_server import free_port, go_back_to, snapshot
from fixtures.trading import USER, place, tick
from tradingboost.oms.v1 import order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb

from oms.adapters.postgres_archive import PostgresArchive
from oms.domain.errors import Unavailable
from oms.engine.archiving import Archiver


async def newest_sequence(oms: OmsHarness) -> int:
    listing = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
    return listing.as_of_sequence


async def archived(dsn: str, newest: int) -> list[Any]:
    """USER's archived rows, once the archive holds `newest` (within 10 s)."""
    connection = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                rows = await connection.fetch(
                    "SELECT sequence, kind, event FROM oms_events WHERE user_id = $1"
                    " ORDER BY sequence",
                    USER,
                )
            except asyncpg.UndefinedTableError:  # the archiver has not made it yet
                rows = []
            if (rows and rows[-1]["sequence"] >= newest) or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def test_every_event_is_archived_in_order_with_its_sequence(
    redis_url: str, postgres_dsn: str
) -> None:
    oms = await make_oms(redis_url, postgres_dsn=postgres_dsn)
    try:
        await tick(oms, "50000")
        await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
        await tick(oms, "48000")  # the fill: order, fill and position events
        newest = await newest_sequence(oms)
        rows = await archived(postgres_dsn, newest)
    finally:
        await oms.close()
    assert [row["sequence"] for row in rows] == list(range(1, newest + 1))
    assert {"order", "fill", "position"} <= {row["kind"] for row in rows}
    [fill] = [row for row in rows if row["kind"] == "fill"]
    assert '"price": "49000"' in fill["event"]
    # Where the next start resumes: kept with the events, one row per user.
    connection = await asyncpg.connect(postgres_dsn)
    try:
        cursor = await connection.fetchval(
            "SELECT sequence FROM oms_archive_cursors WHERE user_id = $1", USER
        )
    finally:
        await connection.close()
    assert cursor == newest


@pytest.mark.parametrize("replies_lost", ["one", "all"])
async def test_a_commit_whose_reply_was_lost_is_archived_all_the_same(
    proxy: RedisFaultProxy, postgres_dsn: str, replies_lost: str
) -> None:
    # Its events never reached this process: with no stream open for the user, nothing told
    # the archiver, and they waited for the user's next commit or the next start.
    oms = await make_oms(
        await proxy.start(),
        postgres_dsn=postgres_dsn,
        redis_timeout_s=0.2,
        store_check_interval_s=0.05,
    )
    try:
        await tick(oms, "50000")
        await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", client_order_id="a")
        await archived(postgres_dsn, await newest_sequence(oms))
        later = place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="48000", client_order_id="b")
        if replies_lost == "one":  # the commit's retry answers that it landed already
            proxy.lose_reply_to(b"EVALSHA")
            await later
            assert proxy.lost_replies == 1
        else:  # every attempt's: the next store check reads its events back
            await landed_unanswered(proxy, b"EVALSHA", later)
        newest = await newest_sequence(oms)
        rows = await archived(postgres_dsn, newest)
    finally:
        await oms.close()
    assert [row["sequence"] for row in rows] == list(range(1, newest + 1))


async def test_what_was_committed_without_the_archive_is_copied_at_start(
    redis_url: str, postgres_dsn: str
) -> None:
    oms = await make_oms(redis_url)
    try:
        await tick(oms, "50000")
        for price in ("49000", "48000", "47000"):
            await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price=price)
        newest = await newest_sequence(oms)
    finally:
        await oms.close()
    oms = await make_oms(redis_url, postgres_dsn=postgres_dsn)
    try:
        rows = await archived(postgres_dsn, newest)
    finally:
        await oms.close()
    assert [row["sequence"] for row in rows] == list(range(1, newest + 1))


async def test_trading_goes_on_while_the_archive_is_down_and_it_catches_up(
    redis_url: str, postgres_server: str
) -> None:
    # A database that does not exist yet: every connection is refused until it does.
    name = "test_late_archive"
    dsn = f"{postgres_server}/{name}"
    oms = await make_oms(redis_url, postgres_dsn=dsn)
    try:
        await tick(oms, "50000")
        order = await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
        assert order.status == order_pb2.ORDER_STATUS_OPEN
        newest = await newest_sequence(oms)
        admin = await asyncpg.connect(f"{postgres_server}/postgres")
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        rows = await archived(dsn, newest)  # the archiver retries every second
    finally:
        await oms.close()
    assert [row["sequence"] for row in rows] == list(range(1, newest + 1))


async def test_an_archive_that_stays_down_is_retried_less_and_less_often(
    redis_url: str, postgres_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Each failed pass waits twice as long as the one before, up to a cap: an archive down
    # for hours costs a log line every half-minute (here 0.04 s), not one a second.
    caplog.set_level(logging.INFO, logger="oms.engine.archiving")
    name = f"test_backoff_{uuid.uuid4().hex[:8]}"
    dsn = f"{postgres_server}/{name}"
    oms = await make_oms(redis_url)
    archiver = Archiver(oms.app.store, PostgresArchive(dsn), retry_s=0.01, max_retry_s=0.04)
    copying = asyncio.create_task(archiver.run())
    try:
        await tick(oms, "50000")

        def waits() -> list[str]:
            return [
                message.rpartition("again in ")[2]
                for message in (r.getMessage() for r in caplog.records)
                if message.startswith("history archive") and f"/{name})" in message
            ]

        await until(lambda: len(waits()) >= 5)
        assert waits()[:5] == ["0.01 s", "0.02 s", "0.04 s", "0.04 s", "0.04 s"]
        admin = await asyncpg.connect(f"{postgres_server}/postgres")
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        await until(lambda: any("caught up after" in r.getMessage() for r in caplog.records))
    finally:
        copying.cancel()
        await archiver.close()
        await oms.close()


async def test_events_trimmed_before_they_were_archived_are_reported(
    redis_url: str, postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    oms = await make_oms(redis_url, retention_events=3)
    try:
        await tick(oms, "50000")
        for price in ("49000", "48000", "47000", "46000", "45000"):
            await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price=price)
        newest = await newest_sequence(oms)
    finally:
        await oms.close()
    oms = await make_oms(
        redis_url, retention_events=3, postgres_dsn=postgres_dsn, metrics_listen="127.0.0.1:0"
    )
    try:
        rows = await archived(postgres_dsn, newest)
        missed = (await scrape(oms))[plain("oms_archive_missed_events_total")]
    finally:
        await oms.close()
    assert missed == newest - 3
    # Only what Redis still held could be copied, and the hole is said out loud.
    assert [row["sequence"] for row in rows] == [newest - 2, newest - 1, newest]
    [gap] = [r for r in caplog.records if "left the store's retention" in r.getMessage()]
    assert gap.levelname == "ERROR"
    assert f"events 1 to {newest - 3}" in gap.getMessage()


async def test_the_archive_says_whether_it_was_unreachable_or_refused(
    postgres_server: str, postgres_dsn: str
) -> None:
    closed = PostgresArchive(f"postgresql://oms@127.0.0.1:{free_port()}/none", timeout_s=2)
    with pytest.raises(Unavailable, match=r"PostgreSQL unreachable \(127\.0\.0\.1:\d+/none\)"):
        await closed.last_sequences()
    # A role that may connect but not create the archive's tables (PostgreSQL 15 and later
    # give PUBLIC no CREATE on schema public).
    role = f"reader_{uuid.uuid4().hex[:12]}"  # roles are the whole server's
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    finally:
        await admin.close()
    reader = PostgresArchive(postgres_dsn.replace("//oms@", f"//{role}@"), timeout_s=5)
    with pytest.raises(
        Unavailable, match=r"PostgreSQL refused \(.*\): InsufficientPrivilegeError: permission"
    ):
        await reader.last_sequences()
    await reader.close()
    # PostgreSQL quotes the user it refused; the log names no user.
    stranger = f"nobody_{uuid.uuid4().hex[:12]}"
    unknown = PostgresArchive(postgres_dsn.replace("//oms@", f"//{stranger}@"), timeout_s=5)
    with pytest.raises(Unavailable, match=r'PostgreSQL refused \(.*\): .*role "<user>"') as error:
        await unknown.last_sequences()
    assert stranger not in str(error.value)


async def _client_order_ids(dsn: str, table: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            f"SELECT event -> 'order' ->> 'client_order_id' AS id FROM {table}"
            " WHERE user_id = $1 AND kind = 'order' ORDER BY sequence",
            USER,
        )
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await connection.close()
    return [row["id"] for row in rows]


async def _place_resting(redis_url: str, postgres_dsn: str, *client_order_ids: str) -> None:
    """Rests one paper order per id (one event each), then waits until they are archived."""
    oms = await make_oms(redis_url, postgres_dsn=postgres_dsn)
    try:
        for client_order_id in client_order_ids:
            await place(
                oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", client_order_id=client_order_id
            )
        await archived(postgres_dsn, await newest_sequence(oms))
    finally:
        await oms.close()


async def test_events_a_store_lost_are_set_aside_and_their_sequences_archived_anew(
    redis_url: str, postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _place_resting(redis_url, postgres_dsn, "before-1", "before-2")
    store = redis.Redis.from_url(redis_url)
    try:
        # What an OS crash with appendfsync everysec can leave: Redis as it was a moment ago.
        older = snapshot(store)
        await _place_resting(redis_url, postgres_dsn, "lost-1", "lost-2")
        go_back_to(store, older)
    finally:
        store.close()
    oms = await make_oms(redis_url, postgres_dsn=postgres_dsn)
    try:
        for client_order_id in ("new-1", "new-2", "new-3"):
            await place(
                oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", client_order_id=client_order_id
            )
        expected = ["before-1", "before-2", "new-1", "new-2", "new-3"]
        async with asyncio.timeout(10):
            while True:
                if await _client_order_ids(postgres_dsn, "oms_events") == expected:
                    break
                await asyncio.sleep(0.05)
    finally:
        await oms.close()
    assert await _client_order_ids(postgres_dsn, "oms_events_superseded") == ["lost-1", "lost-2"]
    [said] = [r for r in caplog.records if "no longer holds" in r.getMessage()]
    assert said.levelname == "ERROR"


class _Relay:
    """A TCP relay in front of PostgreSQL that can hang: while hung it passes nothing either
    way and keeps every connection open, as a frozen server or a dropped network does."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def hang(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()


async def _relayed(postgres_dsn: str) -> tuple[_Relay, str]:
    """A relay in front of the test database, and the DSN through it."""
    host, _, rest = postgres_dsn.removeprefix("postgresql://oms@").partition(":")
    port, _, database = rest.partition("/")
    relay = _Relay(int(port))
    return relay, f"postgresql://oms@{host}:{await relay.start()}/{database}"


@asynccontextmanager
async def _committing_all_the_time(oms: OmsHarness) -> AsyncIterator[asyncio.Future[Any]]:
    """Users placing order after order (commits land while each batch is copied, and some
    user always has events pending) until the block ends; yields once they are at it."""
    stop = asyncio.Event()
    busy = asyncio.Event()

    async def commit(user_id: str) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            await place(
                oms,
                type=order_pb2.ORDER_TYPE_LIMIT,
                price="49000",
                user_id=user_id,
                client_order_id=f"b{n}",
            )
            busy.set()

    load = asyncio.gather(*(commit(f"busy-{k}") for k in range(8)))
    try:
        await busy.wait()
        yield load
    finally:
        stop.set()
        await load


async def test_a_hung_archive_fails_the_call_in_time_and_is_used_again_once_it_answers(
    postgres_dsn: str,
) -> None:
    # Left to asyncpg, a statement that timed out waits for the hung server to take its
    # cancel request, with no end: the archive then stalled, silent, until the server came
    # back.
    relay, dsn = await _relayed(postgres_dsn)
    archive = PostgresArchive(dsn, 1)
    try:
        assert await archive.last_sequences() == {}  # connected, tables made
        relay.hang()
        doc = b'{"kind":"order","sequence":1}'
        async with asyncio.timeout(10):  # rather than forever
            with pytest.raises(Unavailable, match=r"did not answer within 1 s \(127\.0\.0\.1:"):
                await archive.append(USER, [(1, doc)])
            with pytest.raises(Unavailable, match="did not answer within 1 s"):
                await archive.last_sequences()
        relay.resume()
        await archive.append(USER, [(1, doc)])
        assert await archive.last_sequences() == {USER: 1}
        assert await archive.first_mismatch(USER, [(1, doc)]) is None
    finally:
        relay.resume()
        await archive.close()
        await relay.close()


async def test_closing_an_archive_whose_server_hangs_ends_in_time_without_an_error(
    postgres_dsn: str,
) -> None:
    # A graceful close waits for the server to see each connection out; a hung one never
    # does, and the close raised TimeoutError: the stop of the OMS ended there, its lease
    # not released, its commit floor not saved.
    relay, dsn = await _relayed(postgres_dsn)
    archive = PostgresArchive(dsn, 2)
    try:
        assert await archive.last_sequences() == {}  # an idle connection in the pool
        relay.hang()
        started = time.monotonic()
        await archive.close()
        assert time.monotonic() - started < 2
    finally:
        relay.resume()
        await relay.close()


async def test_an_archive_too_slow_for_a_whole_batch_takes_smaller_ones(
    redis_url: str, postgres_dsn: str
) -> None:
    # 2 ms a row (a trigger of the operator's, a starved disk): no batch of 500 lands
    # within the 1 s given a call, and the same batch retried at the same size never did.
    archive = PostgresArchive(postgres_dsn, timeout_s=1)
    await archive.last_sequences()  # makes the tables
    admin = await asyncpg.connect(postgres_dsn)
    await admin.execute(
        "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$;"
        "CREATE TRIGGER slow BEFORE INSERT ON oms_events FOR EACH ROW EXECUTE FUNCTION slow_row()"
    )
    try:
        async with _own_archiver(redis_url, archive, 0.01) as (oms, archiver):
            await tick(oms, "50000")
            for _ in range(8):
                await asyncio.gather(
                    *(place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000") for _ in range(50))
                )
            newest = await newest_sequence(oms)
            copying = asyncio.create_task(archiver.run())
            try:
                rows = await archived(postgres_dsn, newest)  # within 10 s: here ~2
            finally:
                copying.cancel()
    finally:
        await admin.close()
    assert newest >= 400
    assert [row["sequence"] for row in rows] == list(range(1, newest + 1))


async def test_a_nul_in_an_event_is_archived_as_a_replacement_character(
    postgres_dsn: str,
) -> None:
    # jsonb takes every character but NUL. Requests refuse it; text an exchange sends (a
    # reject reason, an order id) is not checked, and must not keep the user's later events
    # out of the archive.
    archive = PostgresArchive(postgres_dsn)
    event = {"kind": "order", "reject_reason": "bad\x00char", "note": "\\u0000 typed as text"}
    doc = orjson.dumps(event)
    try:
        await archive.append(USER, [(1, doc), (2, b'{"kind":"fill"}')])
        assert await archive.first_mismatch(USER, [(1, doc)]) is None
    finally:
        await archive.close()
    connection = await asyncpg.connect(postgres_dsn)
    try:
        rows = await connection.fetch("SELECT sequence, event FROM oms_events ORDER BY sequence")
    finally:
        await connection.close()
    assert [row["sequence"] for row in rows] == [1, 2]
    assert orjson.loads(rows[0]["event"]) == {**event, "reject_reason": "bad\ufffdchar"}


async def test_a_statement_kept_waiting_fails_the_call_and_says_so(postgres_dsn: str) -> None:
    archive = PostgresArchive(postgres_dsn, timeout_s=2)
    holder = await asyncpg.connect(postgres_dsn)
    try:
        await archive.append(USER, [(1, b'{"kind":"order","sequence":1}')])
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM oms_archive_cursors WHERE user_id = $1 FOR UPDATE", USER
            )
            with pytest.raises(
                Unavailable, match=r"did not answer a statement within 1 s \(127\.0\.0\.1:"
            ):
                await archive.append(USER, [(2, b'{"kind":"order","sequence":2}')])
        assert await archive.last_sequences() == {USER: 1}
    finally:
        await holder.close()
        await archive.close()


async def test_a_server_shutting_down_is_unreachable_not_refused() -> None:
    # PostgreSQL answers a new connection with an error while it shuts down (or starts, or
    # recovers from a crash): a passing state, not a refusal of what the archive asked.
    with private_postgres() as (dsn, server):
        session = await asyncpg.connect(f"{dsn}/postgres")
        try:
            server.send_signal(signal.SIGTERM)  # a smart shutdown: it waits for `session`
            async with asyncio.timeout(10):  # the server takes the signal in its own time
                while True:
                    try:
                        await (await asyncpg.connect(f"{dsn}/postgres")).close()
                    except asyncpg.CannotConnectNowError:
                        break
                    await asyncio.sleep(0.01)
            archive = PostgresArchive(f"{dsn}/postgres", timeout_s=5)
            with pytest.raises(
                Unavailable, match=r"PostgreSQL unreachable \(.*\): the database system is shut"
            ):
                await archive.last_sequences()
        finally:
            await session.close()


HELD = "held-user"


async def _refuse_held_user(admin: asyncpg.Connection) -> None:
    """A rule of the operator's that refuses one user's events: a check, as one added to
    the archive's table later might be (NOT VALID: the rows it holds are not checked)."""
    await admin.execute(
        f"ALTER TABLE oms_events ADD CONSTRAINT refuse CHECK (user_id <> '{HELD}') NOT VALID"
    )


async def _held_user_rows(admin: asyncpg.Connection) -> list[int]:
    rows = await admin.fetch("SELECT sequence FROM oms_events WHERE user_id = $1", HELD)
    return [row["sequence"] for row in rows]


@asynccontextmanager
async def _own_archiver(
    redis_url: str, archive: PostgresArchive, retry_s: float, *, running: bool = False
) -> AsyncIterator[tuple[OmsHarness, Archiver]]:
    """A server, and an archiver of the test's own into `archive` (a held user tried again
    after `retry_s`, always), told of every commit, and copying all along if `running`
    (else the test runs its passes); both closed after, the archive too."""
    oms = await make_oms(redis_url)
    archiver = Archiver(oms.app.store, archive, retry_s=retry_s, max_retry_s=retry_s)
    oms.app.hub.add_listener(archiver.committed)
    copying = asyncio.create_task(archiver.run()) if running else None
    try:
        yield oms, archiver
    finally:
        if copying is not None:
            copying.cancel()
        await archive.close()
        await oms.close()


@asynccontextmanager
async def _archiving_with_held_user(
    redis_url: str, postgres_dsn: str, retry_s: float
) -> AsyncIterator[tuple[OmsHarness, Archiver, asyncpg.Connection]]:
    """A server, and an archiver of the test's own (a held user tried again after
    `retry_s`) copying into an archive that refuses HELD's events; an admin connection."""
    archive = PostgresArchive(postgres_dsn)
    await archive.last_sequences()  # makes the tables
    admin = await asyncpg.connect(postgres_dsn)
    await _refuse_held_user(admin)
    try:
        async with _own_archiver(redis_url, archive, retry_s, running=True) as (oms, archiver):
            yield oms, archiver, admin
    finally:
        await admin.close()


async def test_events_the_archive_refuses_hold_back_their_user_only(
    redis_url: str, postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Tried again only after an hour: the others' events cannot be waiting for that.
    async with _archiving_with_held_user(redis_url, postgres_dsn, 3600) as (oms, archiver, admin):
        await tick(oms, "50000")
        await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", user_id=HELD)
        for price in ("48000", "47000"):
            await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price=price)
            newest = await newest_sequence(oms)
            assert (await archived(postgres_dsn, newest))[-1]["sequence"] == newest
        assert archiver.held_users == 1
        [said] = [r for r in caplog.records if "CheckViolationError" in r.getMessage()]
        assert said.levelname == "ERROR"
        # One line, without the DETAIL that would repeat the refused row.
        assert said.getMessage().startswith("history archive: PostgreSQL refused (127.0.0.1:")
        assert "\n" not in said.getMessage()
        assert f"events held back: {HELD}; each tried again after 3600 s" in said.getMessage()
        await admin.execute("ALTER TABLE oms_events DROP CONSTRAINT refuse")
        # Nothing of the held user's was skipped: a pass once it is due copies it all.
        again = Archiver(oms.app.store, PostgresArchive(postgres_dsn))
        await again.copy_pending()
        await again.close()
        assert await _held_user_rows(admin) == [1]


async def test_a_held_user_is_tried_again_when_due_while_others_commit_all_the_time(
    redis_url: str, postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="oms.engine.archiving")
    async with _archiving_with_held_user(redis_url, postgres_dsn, 0.05) as (oms, archiver, admin):
        await tick(oms, "50000")
        await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", user_id=HELD)
        await until(lambda: archiver.held_users == 1)
        async with _committing_all_the_time(oms) as load:
            await asyncio.sleep(0.3)  # a few retries, each refused
            await admin.execute("ALTER TABLE oms_events DROP CONSTRAINT refuse")
            await until(lambda: archiver.held_users == 0)
            assert not load.done()  # the others' commits went on all along
        assert await _held_user_rows(admin) == [1]
        # Said when it was held and when it was archived again, not at every retry.
        said = [r.getMessage() for r in caplog.records if HELD in r.getMessage()]
        assert len(said) == 2, said
        assert said[1] == f"history archive: {HELD}'s events are archived again"


async def test_a_refusal_while_connecting_is_the_archive_s_not_one_user_s(
    redis_url: str, postgres_dsn: str
) -> None:
    await PostgresArchive(postgres_dsn).last_sequences()  # the tables, made
    admin = await asyncpg.connect(postgres_dsn)
    try:
        # An operator's rule against DDL: it refuses the CREATE ... IF NOT EXISTS a new
        # connection runs, whoever's events were to follow.
        await admin.execute("""
            CREATE FUNCTION no_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'no DDL here'; END $$;
            CREATE EVENT TRIGGER no_ddl ON ddl_command_start EXECUTE FUNCTION no_ddl();
        """)
        archive = PostgresArchive(postgres_dsn)
        with pytest.raises(Unavailable, match=r"PostgreSQL refused .*: RaiseError: no DDL here"):
            await archive.append(USER, [(1, b'{"kind":"order","sequence":1}')])
        # And a server whose last pass meets it still stops as it should.
        oms = await make_oms(redis_url, postgres_dsn=postgres_dsn)
        await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
        await oms.close()
    finally:
        await admin.execute("DROP EVENT TRIGGER no_ddl")
        await admin.close()


async def test_users_held_back_are_gauged(redis_url: str, postgres_dsn: str) -> None:
    await PostgresArchive(postgres_dsn).last_sequences()
    admin = await asyncpg.connect(postgres_dsn)
    oms = await make_oms(redis_url, postgres_dsn=postgres_dsn, metrics_listen="127.0.0.1:0")

    async def gauged(users: int) -> None:
        async with asyncio.timeout(10):  # the app's archiver tries again after 1 s
            while True:
                if (await scrape(oms))[plain("oms_archive_held_users")] == users:
                    return
                await asyncio.sleep(0.05)

    try:
        await _refuse_held_user(admin)
        await tick(oms, "50000")
        await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", user_id=HELD)
        await gauged(1)
        await admin.execute("ALTER TABLE oms_events DROP CONSTRAINT refuse")
        await gauged(0)
        assert await _held_user_rows(admin) == [1]
    finally:
        await admin.close()
        await oms.close()


class _Recording(PostgresArchive):
    """The archive, noting whose events each call was for (in order)."""

    def __init__(self, dsn: str, timeout_s: float = 10.0) -> None:
        super().__init__(dsn, timeout_s)
        self.appends: list[str] = []

    async def append(self, user_id: str, docs: Sequence[tuple[int, bytes]]) -> None:
        self.appends.append(user_id)
        await super().append(user_id, docs)


async def test_a_pass_tries_again_only_a_few_held_users_the_earliest_due_first(
    redis_url: str, postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Many users held (a rule that refuses everyone's events, say) must not make every pass,
    # and with it the others' wait, as long as their number.
    archive = _Recording(postgres_dsn)
    await archive.last_sequences()
    admin = await asyncpg.connect(postgres_dsn)
    await admin.execute(
        "ALTER TABLE oms_events ADD CONSTRAINT refuse CHECK (user_id NOT LIKE 'held-%') NOT VALID"
    )
    try:
        async with _own_archiver(redis_url, archive, 0.01) as (oms, archiver):
            await tick(oms, "50000")
            held = [f"held-{n:02}" for n in range(20)]
            for user_id in held:
                await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", user_id=user_id)
            await archiver.copy_one_pass()  # each of them refused, and held
            assert archiver.held_users == 20
            # One line for the one reason, naming some.
            [said] = [
                r.getMessage() for r in caplog.records if "CheckViolationError" in r.getMessage()
            ]
            assert "events held back: held-00, held-01," in said
            assert "held-09 and 10 more; each tried again after 0.01 s" in said
            await asyncio.sleep(0.05)  # every retry due
            await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
            archive.appends.clear()
            await archiver.copy_one_pass()
            assert archive.appends == [USER, *held[:8]]
            archive.appends.clear()
            await archiver.copy_one_pass()
            assert archive.appends == held[8:16]
            # A stop's last pass tries none of them again: it would spend the grace in vain.
            await asyncio.sleep(0.05)
            await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="48000")
            archive.appends.clear()
            await archiver.copy_pending()
            assert archive.appends == [USER]
    finally:
        await admin.close()


async def test_a_pass_that_goes_well_under_steady_commits_ends_the_back_off(
    redis_url: str, postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="oms.engine.archiving")
    relay, dsn = await _relayed(postgres_dsn)
    archive = PostgresArchive(dsn, 1)
    try:
        async with _own_archiver(redis_url, archive, 0.01, running=True) as (oms, _):
            await tick(oms, "50000")
            async with _committing_all_the_time(oms) as load:
                relay.hang()
                await until(lambda: any("did not answer" in r.getMessage() for r in caplog.records))
                relay.resume()
                await until(
                    lambda: any("caught up after" in r.getMessage() for r in caplog.records)
                )
                assert not load.done()  # the commits went on all along
    finally:
        relay.resume()
        await relay.close()


async def _cursors(connection: asyncpg.Connection) -> dict[str, int]:
    rows = await connection.fetch("SELECT user_id, sequence FROM oms_archive_cursors")
    return {row["user_id"]: row["sequence"] for row in rows}


async def _lock_cursor(connection: asyncpg.Connection, user_id: str) -> None:
    """In `connection`'s open transaction: `user_id`'s archive statements wait for it."""
    await connection.execute(
        "SELECT 1 FROM oms_archive_cursors WHERE user_id = $1 FOR UPDATE", user_id
    )


@asynccontextmanager
async def _passes_by_hand(
    redis_url: str, postgres_dsn: str, retry_s: float = 1.0
) -> AsyncIterator[tuple[OmsHarness, Archiver, asyncpg.Connection]]:
    """A server, an archiver of the test's own whose passes the test runs (a statement
    waits 1 s at most), and an admin connection; a first price set."""
    admin = await asyncpg.connect(postgres_dsn)
    try:
        archive = PostgresArchive(postgres_dsn, timeout_s=2)
        async with _own_archiver(redis_url, archive, retry_s) as (oms, archiver):
            await tick(oms, "50000")
            yield oms, archiver, admin
    finally:
        await admin.close()


async def test_after_a_pass_failed_at_one_user_the_others_go_first(
    redis_url: str, postgres_dsn: str
) -> None:
    # One user's cursor row locked (an operator's transaction left open): that user's
    # statement waits out its timeout, which fails the pass; the others are not stuck behind,
    # not even those with events committed while the pass waited.
    async with _passes_by_hand(redis_url, postgres_dsn) as (oms, archiver, holder):
        for user_id in ("locked", "second", "third"):
            await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", user_id=user_id)
        await archiver.copy_pending()
        async with holder.transaction():
            await _lock_cursor(holder, "locked")
            for user_id in ("second", "third", "locked"):  # "locked" pending last
                await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="48000", user_id=user_id)
            waiting = asyncio.create_task(archiver.copy_one_pass())
            await asyncio.sleep(0.3)  # "second" and "third" copied, "locked" waits
            for user_id in ("second", "third"):
                await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="47000", user_id=user_id)
            with pytest.raises(Unavailable, match="did not answer a statement"):
                await waiting
            # And not behind it either: one with events committed after that pass.
            await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", user_id="late")
            with pytest.raises(Unavailable, match="did not answer a statement"):
                await archiver.copy_one_pass()
            assert await _cursors(holder) == {"locked": 1, "second": 3, "third": 3, "late": 1}


async def test_a_held_user_whose_retry_fails_the_pass_does_not_keep_the_other_held_back(
    redis_url: str, postgres_dsn: str
) -> None:
    held = ["held-0", "held-1", "held-2"]
    async with _passes_by_hand(redis_url, postgres_dsn, retry_s=0.5) as (oms, archiver, admin):
        for user_id in held:
            await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", user_id=user_id)
        await archiver.copy_pending()
        await admin.execute(
            "ALTER TABLE oms_events ADD CONSTRAINT refuse CHECK (user_id NOT LIKE 'held-%')"
            " NOT VALID"
        )
        for user_id in held:  # "held-0" held first, so due first
            await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="48000", user_id=user_id)
            await archiver.copy_one_pass()
        assert archiver.held_users == 3
        await admin.execute("ALTER TABLE oms_events DROP CONSTRAINT refuse")
        await asyncio.sleep(0.6)  # every retry due
        async with admin.transaction():
            await _lock_cursor(admin, "held-0")
            with pytest.raises(Unavailable, match="did not answer a statement"):
                await archiver.copy_one_pass()
            await archiver.copy_one_pass()
            assert archiver.held_users == 1
            assert await _cursors(admin) == {"held-0": 1, "held-1": 2, "held-2": 2}


async def test_held_users_are_tried_again_before_the_one_a_pass_failed_at(
    redis_url: str, postgres_dsn: str
) -> None:
    async with _passes_by_hand(redis_url, postgres_dsn, retry_s=0.1) as (oms, archiver, admin):
        await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", user_id="locked")
        await archiver.copy_pending()
        await _refuse_held_user(admin)
        await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000", user_id=HELD)
        await archiver.copy_one_pass()
        assert archiver.held_users == 1
        await admin.execute("ALTER TABLE oms_events DROP CONSTRAINT refuse")
        await asyncio.sleep(0.2)  # its retry due
        async with admin.transaction():
            await _lock_cursor(admin, "locked")
            await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="48000", user_id="locked")
            for _ in range(2):
                with pytest.raises(Unavailable, match="did not answer a statement"):
                    await archiver.copy_one_pass()
            assert archiver.held_users == 0
            assert await _cursors(admin) == {"locked": 1, HELD: 1}
