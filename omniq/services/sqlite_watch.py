"""SQLite: notice other processes' new work within milliseconds (PostgreSQL LISTENs instead).

SQLite has no LISTEN/NOTIFY. A worker in another process than the producer
found new tasks only by polling (5 ms after activity, doubling up to
``poll_interval``), so a task enqueued after a quiet spell waited for the
next poll, up to a second by default. ``PRAGMA data_version`` on a
connection changes when another connection commits to the file, and not
when that connection itself writes; reading it costs a few microseconds
(a read of the WAL index that never waits: ``busy_timeout`` is 0 around
it). Every few milliseconds (:data:`CHECK_MIN` after a change, doubling
while nothing changes up to :data:`CHECK_MAX`, since each reading wakes the
process: an idle worker spends about 4 ms of CPU a second on it) the watch
reads it on the connection of this process's writer thread (see
:meth:`omniq.db.writer.SQLiteWriter.data_version`), so this process's own
writes never wake it. When another connection committed and a worker waits
for work (has room to claim), one read asks whether a task is ready for the plain claim, and
only then are the waiters woken: another worker's completions or heartbeats
cost that read, never a claim or the write lock. Looks that find nothing
back off (doubling up to :data:`LOOK_MAX`), so a neighbour that commits all
the time costs an idle worker at most one read a second, as polling did.

Polling stays on: tasks that limits may hold back, tasks that become due
later, and whatever comes while the writer's connection is busy or closed
are found by it as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

from omniq.db.writer import SQLiteWriter

__all__ = ["CHECK_MAX", "CHECK_MIN", "LOOK_MAX", "SQLiteWorkWatch", "watching_file"]

log = logging.getLogger("omniq.listen")

#: Seconds between two readings of ``PRAGMA data_version`` after a change...
CHECK_MIN = 0.005
#: ... and at most, after a quiet spell.
CHECK_MAX = 0.05
#: The longest wait before looking again after looks that found nothing ready.
LOOK_MAX = 1.0


class SQLiteWorkWatch:
    """Call ``on_work`` when the file changed (``version``) and ``ready`` finds work.

    ``version`` returns the change counter (with anything that tells one
    connection's counter from another's), or None when it cannot be read now
    (that tick is skipped); ``ready`` is awaited after a change, when
    ``wanted()`` (someone waits for work), at most once per look gap. The
    gap doubles after each look that found nothing, and shrinks back when
    ``activity()`` (this process's notifier's generation) moved: work went
    on here, so other processes' work may follow.
    """

    def __init__(
        self,
        version: Callable[[], Hashable | None],
        ready: Callable[[], Awaitable[bool]],
        on_work: Callable[[], None],
        wanted: Callable[[], bool],
        activity: Callable[[], int],
        *,
        every: tuple[float, float] = (CHECK_MIN, CHECK_MAX),
        look_max: float = LOOK_MAX,
    ) -> None:
        self._version = version
        self._ready = ready
        self._on_work = on_work
        self._wanted = wanted
        self._activity = activity
        self._min, self._max = every
        self._look_max = look_max
        #: Readings that found the file changed by another connection (and the
        #: first reading), looks at the tasks, and looks that found work ready
        #: (and woke the waiters).
        self.changes = 0
        self.looks = 0
        self.wakes = 0

    async def run(self) -> None:
        """Watch until cancelled."""
        loop = asyncio.get_running_loop()
        last: Hashable | None = None
        unseen = False  # a change nobody looked at yet
        failing = False
        interval = 0.0  # the first reading at once
        gap, next_look = self._min, 0.0
        activity = self._activity()
        while True:
            await asyncio.sleep(interval)
            if (moved := self._activity()) != activity:
                activity, gap, next_look = moved, self._min, 0.0
            current = self._version()
            if current is not None and current != last:
                # Changed since the last reading; or the first reading (on this
                # connection), which cannot tell what came just before it: look
                # once (a spare wake-up is harmless).
                last, unseen = current, True
                self.changes += 1
            # Read again soon only while a look may follow: a change waits for the
            # next look (after looks that found nothing), or for work to be wanted
            # (a full worker); meanwhile the readings slow down as on a quiet file.
            if not (unseen and self._wanted()):
                interval = min(max(interval * 2, self._min), self._max)
                continue
            if loop.time() < next_look:
                interval = max(next_look - loop.time(), self._min)
                continue
            interval = self._min
            unseen = False
            self.looks += 1
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
                failing, ready = True, False
            else:
                failing = False
            if ready:
                self.wakes += 1
                self._on_work()
                gap = self._min
            else:
                gap = min(gap * 2, self._look_max)
            next_look = loop.time() + gap


@contextlib.asynccontextmanager
async def watching_file(
    writer: SQLiteWriter,
    ready: Callable[[], Awaitable[bool]],
    on_work: Callable[[], None],
    wanted: Callable[[], bool],
    activity: Callable[[], int],
) -> AsyncIterator[SQLiteWorkWatch]:
    """Run a :class:`SQLiteWorkWatch` on ``writer``'s connection while the block runs."""
    with contextlib.suppress(Exception):  # not now: the next write opens it, polling meanwhile
        await asyncio.wrap_future(writer.open_connection())
    watch = SQLiteWorkWatch(writer.data_version, ready, on_work, wanted, activity)
    watcher = asyncio.get_running_loop().create_task(watch.run())
    try:
        yield watch
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
