"""One OmniQ write transaction at a time on a SQLite file, across processes.

SQLite lets one writer in at a time; the others wait in its busy handler,
which sleeps and retries (1, 2, 5, 10, 15, 20, 25 ms ... between tries). With
several worker processes on one file, a writer often sleeps through the
moment the lock came free, and throughput falls as processes are added.

OmniQ's writers on one file therefore also take an exclusive ``flock`` on a
lock file beside it (``<database>-omniq-lock``) for the length of each write
transaction: a waiting process is woken by the kernel the moment the holder
releases it. SQLite's own lock stays the one that keeps the data safe; this
one only orders OmniQ's writers. Others (the application's own writes,
migrations, older OmniQ versions) simply do not take it and are ordered by
SQLite as before. Where the lock file cannot be made (a read-only directory,
a platform without ``fcntl``) the writers fall back to SQLite alone.

A waiter never waits past its deadline: the blocking ``flock`` runs in a
helper thread, which hands the lock over if the writer still wants it and
gives it back otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("omniq.db")

__all__ = ["WriteLock", "lock_path"]


def lock_path(database: Path) -> Path:
    """The lock file of a SQLite database file."""
    return database.with_name(database.name + "-omniq-lock")


class WriteLock:
    """An exclusive, cross-process lock on a file, with a timed wait.

    One per writer (one holder per process at a time); its methods are
    thread-safe.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._fd: int | None = None
        self._held = False
        #: A helper thread is blocked in flock (it hands the lock over when it gets it).
        self._waiting = False
        #: A caller of acquire() waits for that helper.
        self._wanted = False
        self._unavailable = fcntl is None

    def try_acquire(self) -> bool | None:
        """Take the lock if it is free now: True, False if another holds it, None
        if there is no lock file (then SQLite alone orders the writers)."""
        with self._cond:
            fd = self._descriptor()
            if fd is None:
                return None
            if self._held or self._waiting:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            except OSError as exc:
                self._give_up(exc)
                return None
            self._held = True
            return True

    def acquire(self, timeout: float) -> bool | None:
        """Take the lock, waiting up to ``timeout`` seconds: True, False on timeout,
        None if there is no lock file."""
        taken = self.try_acquire()
        if taken is not False:
            return taken
        with self._cond:
            if self._held:
                return False  # held by this process: one writer per lock
            self._wanted = True
            try:
                if not self._waiting:
                    fd = self._fd
                    assert fd is not None
                    self._waiting = True
                    threading.Thread(
                        target=self._wait, args=(fd,), name="omniq-write-lock", daemon=True
                    ).start()
                self._cond.wait_for(lambda: self._held or self._unavailable, max(0.0, timeout))
                return None if self._unavailable else self._held
            finally:
                self._wanted = False

    def release(self) -> None:
        """Give the lock back (it must be held)."""
        with self._cond:
            if not self._held:
                return
            self._held = False
            if self._fd is not None:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                except OSError as exc:
                    self._give_up(exc)

    def close(self) -> None:
        """Release and close the lock file (a waiting helper gives it back)."""
        with self._cond:
            self._held = False
            fd, self._fd = self._fd, None
            if fd is not None and not self._waiting:
                os.close(fd)  # closing the descriptor releases the lock

    def _wait(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            with self._cond:
                self._waiting = False
                self._give_up(exc)
                self._cond.notify_all()
            return
        with self._cond:
            self._waiting = False
            if self._wanted and self._fd == fd:
                self._held = True
                self._cond.notify_all()
                return
            # Nobody waits for it any more (timed out, or closed): give it back.
            if self._fd == fd:
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:
                os.close(fd)

    def forget_parent(self) -> None:
        """In a forked child: drop the parent's descriptor and state (its lock stays
        the parent's: closing a copy of the descriptor does not release it)."""
        self._cond = threading.Condition()
        fd, self._fd = self._fd, None
        self._held = self._waiting = self._wanted = False
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _descriptor(self) -> int | None:
        """The lock file's descriptor (opened on first use)."""
        if self._unavailable:
            return None
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                self._give_up(exc)
                return None
        return self._fd

    def _give_up(self, exc: OSError) -> None:
        log.info("no write lock file %s (%s): SQLite alone orders the writers", self.path, exc)
        self._unavailable = True
        self._held = False
