"""Wake this process's workers after the caller's commit, never before, never on rollback.

A task enqueued in an application's transaction exists for workers only once
that transaction commits. PostgreSQL's ``NOTIFY`` (revision 0004's trigger)
is transactional and reaches listening workers at the commit by itself; the
in-process wake-up (:class:`~omniq.services._storage.Notifier`) is arranged
here, on the connection that carries the transaction (a Session's too: the
Connection it writes on).

SQLAlchemy's ``commit`` event of a Connection runs just *before* the driver's
COMMIT, and Core has no event after it. So the ``commit`` event hands the
root transaction to a watcher on an event loop, which notifies once
:attr:`Transaction.is_active` turned false: the driver's COMMIT has returned.
A ``rollback`` (or a connection closed without commit) drops the pending
wake-ups. A commit that fails also ends the transaction; the wake-up it then
causes finds no new task, which costs one empty claim and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref

import sqlalchemy as sa
from sqlalchemy import event

from omniq.services._storage import Notifier

__all__ = ["wake_after_commit"]

log = logging.getLogger("omniq.db")

#: How soon, and at most how often, a watcher looks whether the COMMIT returned.
_FIRST_LOOK = 0.0005
_SLOWEST_LOOK = 0.05
#: A COMMIT still running after this long: notify anyway (a spare wake-up is harmless).
_GIVE_UP = 300.0


class _Pending:
    """The wake-ups owed to one Connection's current transaction, by notifier."""

    def __init__(self) -> None:
        self.notifiers: dict[Notifier, asyncio.AbstractEventLoop | None] = {}


_pending: weakref.WeakKeyDictionary[sa.Connection, _Pending] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def wake_after_commit(
    conn: sa.Connection, notifier: Notifier, loop: asyncio.AbstractEventLoop | None
) -> None:
    """Wake ``notifier``'s waiters once ``conn``'s current transaction has committed.

    ``loop`` (OmniQ's own) runs the watcher when the commit happens on a thread
    without a running event loop (a sync caller).
    """
    with _lock:
        pending = _pending.get(conn)
        if pending is None:
            pending = _pending[conn] = _Pending()
            # Listeners live as long as this Connection object: registered once.
            event.listen(conn, "commit", _on_commit)
            event.listen(conn, "rollback", _on_rollback)
        pending.notifiers[notifier] = loop


def _take(conn: sa.Connection) -> dict[Notifier, asyncio.AbstractEventLoop | None]:
    with _lock:
        pending = _pending.get(conn)
        if pending is None or not pending.notifiers:
            return {}
        owed, pending.notifiers = pending.notifiers, {}
        return owed


def _on_rollback(conn: sa.Connection) -> None:
    _take(conn)


def _on_commit(conn: sa.Connection) -> None:
    owed = _take(conn)
    if not owed:
        return
    try:
        _watch(conn, owed)
    except Exception as exc:  # never let a wake-up break the caller's COMMIT
        log.warning("could not arrange the wake-up after a commit (workers poll): %s", exc)


def _watch(conn: sa.Connection, owed: dict[Notifier, asyncio.AbstractEventLoop | None]) -> None:
    transaction = conn.get_transaction()
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None  # a sync caller: watch from OmniQ's loop
    for notifier, loop in owed.items():
        if transaction is None:
            notifier.notify()
            continue
        watcher = _Watcher(transaction, notifier)
        if running is not None:
            running.call_soon(watcher.look, running)
        elif loop is not None and loop.is_running():
            loop.call_soon_threadsafe(watcher.look, loop)
        else:
            # No event loop runs OmniQ here, so no worker of this process waits
            # on one; SQLite's write lock (held until the COMMIT ends) keeps any
            # other claim from starting before it anyway.
            notifier.notify()


class _Watcher:
    """Notifies once a root transaction is no longer active (its COMMIT returned)."""

    def __init__(self, transaction: sa.Transaction, notifier: Notifier) -> None:
        self.transaction = transaction
        self.notifier = notifier
        self.delay = _FIRST_LOOK
        self.deadline = time.monotonic() + _GIVE_UP

    def look(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.transaction.is_active and time.monotonic() < self.deadline:
            loop.call_later(self.delay, self.look, loop)
            self.delay = min(self.delay * 2, _SLOWEST_LOOK)
            return
        self.notifier.notify()
