"""SQLite: OmniQ's writers on one file take turns through a lock file (omniq.db.write_lock).

Another process holding the lock is a real process here (``flock`` locks
belong to an open file, so a second process is the honest stand-in for a
second worker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

from omniq.db.write_lock import WriteLock, lock_path
from omniq.db.writer import DECLINED
from omniq.errors import DatabaseBusy
from omniq.models import Settings, Task
from omniq.services import Storage

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")

_HOLD = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.readline()
    """
)

_TAKE = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(0.01)
        else:
            print("took", flush=True)
            break
    else:
        print("never", flush=True)
    """
)


@contextmanager
def held_by_another_process(path: Path) -> Iterator[subprocess.Popen[str]]:
    """The lock file ``path`` locked by a child process until the block ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        yield child
    finally:
        if child.poll() is None:
            assert child.stdin is not None
            child.stdin.write("\n")
            child.stdin.flush()
        child.wait(timeout=20)


def release(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("\n")
    child.stdin.flush()
    child.wait(timeout=20)


def test_one_holder_at_a_time_and_the_waiter_is_handed_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "db-omniq-lock"
    lock = WriteLock(path)
    with held_by_another_process(path) as child:
        assert lock.try_acquire() is False
        # A timed wait ends at its timeout, not before and never after long.
        started = time.monotonic()
        assert lock.acquire(0.2) is False
        assert time.monotonic() - started >= 0.2
        release(child)
        # The kernel wakes the waiter once the holder let go.
        assert lock.acquire(20) is True
    # Held here now: another process cannot take it until it is released.
    taker = subprocess.run(
        [sys.executable, "-c", _TAKE, str(path), "0.3"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert taker.stdout.strip() == "never"
    lock.release()
    lock.close()


def test_a_wait_that_timed_out_gives_the_lock_back_when_it_comes(tmp_path: Path) -> None:
    path = tmp_path / "db-omniq-lock"
    lock = WriteLock(path)
    with held_by_another_process(path) as child:
        assert lock.acquire(0.05) is False  # its helper thread still waits in flock
        release(child)
    # The helper got the lock after nobody wanted it any more and gave it back:
    # another process can take it.
    taker = subprocess.run(
        [sys.executable, "-c", _TAKE, str(path), "20"], capture_output=True, text=True, timeout=30
    )
    assert taker.stdout.strip() == "took"
    assert lock.try_acquire() is True
    lock.release()
    lock.close()


def test_the_lock_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "db-omniq-lock"
    lock = WriteLock(path)
    assert lock.try_acquire() is True
    assert path.stat().st_mode & 0o777 == 0o600
    lock.release()
    lock.close()


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "omniq.db"
    path.write_bytes(sqlite_template.read_bytes())
    return f"sqlite+aiosqlite:///{path}"


def _count(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("SELECT count(*) FROM omniq_tasks").scalar_one())


@pytest.mark.anyio
async def test_a_writer_waits_for_another_process_at_most_its_lock_deadline(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = Settings(lock_deadline=timedelta(milliseconds=300))
    storage = Storage.from_url(sqlite_url, settings)
    await storage.open()
    try:
        task = Task(func="m:f")

        def insert(conn: sa.Connection) -> None:
            storage.tasks.insert_many(conn, [task])

        with held_by_another_process(lock_path(tmp_path / "omniq.db")) as child:
            with anyio.fail_after(20), pytest.raises(DatabaseBusy, match="locked"):
                await storage.write(insert)
            with anyio.fail_after(20), pytest.raises(DatabaseBusy, match="locked"):
                await storage.write(insert, small=True)
            assert await storage.read(_count) == 0
            release(child)
        with anyio.fail_after(20):
            await storage.write(insert, small=True)
        assert await storage.read(_count) == 1
    finally:
        await storage.close()


@pytest.mark.anyio
async def test_without_a_lock_file_sqlite_alone_orders_the_writers(
    sqlite_url: str, tmp_path: Path
) -> None:
    # Something in the way of the lock file (here a directory of that name):
    # writes still work, with SQLite's own lock.
    lock_path(tmp_path / "omniq.db").mkdir()
    storages = [Storage.from_url(sqlite_url, Settings()) for _ in range(2)]
    for storage in storages:
        await storage.open()
    try:

        async def write(storage: Storage, small: bool) -> None:
            def insert(conn: sa.Connection) -> None:
                storage.tasks.insert_many(conn, [Task(func="m:f")])

            await storage.write(insert, small=small)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(write, storages[i % 2], i % 4 < 2)  # small writes too
        assert await storages[0].read(_count) == 40
    finally:
        for storage in storages:
            await storage.close()


def _fork(child: Callable[[], int]) -> int:
    """Fork; the child runs ``child()`` and exits with what it returns (1 if it raised)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


async def _exit_code(pid: int, within: float = 60) -> int:
    """The forked child's exit code; fail (and kill it) if it runs past ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG: never blocks)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)  # noqa: ASYNC222 (killed: returns at once)
            raise AssertionError(f"the forked child ran past {within} s (a hang)")
        await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_a_process_forked_after_writes_writes_on_its_own(sqlite_url: str) -> None:
    storage = Storage.from_url(sqlite_url, Settings())
    await storage.open()
    try:
        await storage.write(lambda conn: None)  # the writer's connection and lock file open
        writer = storage.writer
        assert writer is not None

        def child() -> int:
            def insert(conn: sa.Connection) -> None:
                storage.tasks.insert_many(conn, [Task(func="m:f")])

            writer.submit(insert).result(timeout=30)  # its own thread and connection
            assert writer.run_inline(insert) is not DECLINED  # and then inline
            return 0

        assert await _exit_code(_fork(child)) == 0
        assert await storage.read(_count) == 2
        await storage.write(lambda conn: storage.tasks.insert_many(conn, [Task(func="m:f")]))
        assert await storage.read(_count) == 3
    finally:
        await storage.close()


@pytest.mark.anyio
async def test_a_process_forked_in_the_middle_of_a_write_never_hangs(sqlite_url: str) -> None:
    # SQLite cannot hand its lock state to a forked child: a child forked while
    # this process was inside a write may find the file locked ("database is
    # locked" once busy_timeout and lock_deadline passed). It must not wait
    # forever on the locks the parent held at the fork.
    quick = Settings(busy_timeout=timedelta(seconds=1), lock_deadline=timedelta(seconds=2))
    storage = Storage.from_url(sqlite_url, quick)
    await storage.open()
    try:
        await storage.write(lambda conn: None)
        writer = storage.writer
        assert writer is not None
        inside, release = threading.Event(), threading.Event()

        def hold(conn: sa.Connection) -> None:
            inside.set()
            release.wait(30)

        holding = writer.submit(hold)
        assert inside.wait(20)

        def child() -> int:
            try:
                writer.submit(
                    lambda conn: storage.tasks.insert_many(conn, [Task(func="m:f")])
                ).result(timeout=40)
            except (DatabaseBusy, sa.exc.OperationalError) as exc:
                return 3 if "locked" in str(exc) else 1
            return 0

        pid = _fork(child)
        release.set()
        await anyio.to_thread.run_sync(holding.result, 20)
        assert await _exit_code(pid) in (0, 3)
    finally:
        await storage.close()


@pytest.mark.anyio
async def test_one_lock_file_per_database_file_however_it_is_named(
    sqlite_url: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "link.db").symlink_to(tmp_path / "omniq.db")
    storage = Storage.from_url(f"sqlite+aiosqlite:///{elsewhere / 'link.db'}", Settings())
    await storage.open()
    try:
        await storage.write(lambda conn: storage.tasks.insert_many(conn, [Task(func="m:f")]))
    finally:
        await storage.close()
    assert lock_path(tmp_path / "omniq.db").exists()
    assert not lock_path(elsewhere / "link.db").exists()
