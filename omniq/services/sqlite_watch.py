"""SQLite: notice other processes' new work within milliseconds (PostgreSQL LISTENs instead).

SQLite has no LISTEN/NOTIFY. A worker in another process than the producer
found new tasks only by polling (5 ms after activity, doubling up to
``poll_interval``), so a task enqueued after a quiet spell waited for the
next poll, up to a second by default. ``PRAGMA data_version`` on a
connection changes when another connection commits to the file, and not
when that connection itself writes; reading it costs a few microseconds and
takes no lock. Every few milliseconds (:data:`CHECK_MIN` after a change,
doubling while nothing changes up to :data:`CHECK_MAX`, since each reading
wakes the process: an idle worker spends about 4 ms of CPU a second on it)
the watch reads it on the
connection of this process's writer thread (see
:meth:`omniq.db.writer.SQLiteWriter.data_version`), so this process's own
writes never wake it. When another process committed, one indexed read asks
whether a task is ready for the plain claim, and only then are the waiters
woken: another worker's completions or heartbeats cost that read, never a
claim or the write lock.

Polling stays on: tasks that limits may hold back, tasks that become due
later, and whatever comes while the writer's connection is busy or closed
are found by it as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["CHECK_MAX", "CHECK_MIN", "SQLiteWorkWatch"]

log = logging.getLogger("omniq.listen")

#: Seconds between two readings of ``PRAGMA data_version`` after a change...
CHECK_MIN = 0.005
#: ... and at most, after a quiet spell.
CHECK_MAX = 0.05


class SQLiteWorkWatch:
    """Call ``on_work`` when the file changed (``version``) and ``ready`` finds work.

    ``version`` returns the change counter, or None when it cannot be read
    now (that tick is skipped); ``ready`` is awaited only after a change.
    """

    def __init__(
        self,
        version: Callable[[], int | None],
        ready: Callable[[], Awaitable[bool]],
        on_work: Callable[[], None],
        *,
        every: tuple[float, float] = (CHECK_MIN, CHECK_MAX),
    ) -> None:
        self._version = version
        self._ready = ready
        self._on_work = on_work
        self._min, self._max = every
        #: Readings that found the file changed by another connection (and the
        #: first reading), and of those, the ones that found work ready (and
        #: woke the waiters).
        self.changes = 0
        self.wakes = 0

    async def run(self) -> None:
        """Watch until cancelled."""
        last: int | None = None
        failing = False
        interval = 0.0  # the first reading at once
        while True:
            await asyncio.sleep(interval)
            current = self._version()
            if current is None or current == last:
                interval = min(max(interval * 2, self._min), self._max)
                continue
            # Changed since the last reading; or the first reading, which cannot
            # tell what came just before it: look once (a spare wake-up is harmless).
            last, interval = current, self._min
            self.changes += 1
            try:
                ready = await self._ready()
            except Exception as exc:
                # The database cannot be read now: polling finds the work meanwhile.
                if not failing:
                    log.warning(
                        "cannot look for new work (%s: %s); polling finds it meanwhile",
                        type(exc).__name__,
                        exc,
                    )
                failing = True
                continue
            failing = False
            if ready:
                self.wakes += 1
                self._on_work()
