"""11: the dashboard's task list over a big table (SQLite): one page, by keyset.

The database is filled with plain ``sqlite3`` (rows copied from a template
OmniQ wrote, so the schema and indexes are OmniQ's own): a spread of
statuses, queues, priorities and creation times. Each page is read through
the service the dashboard uses (:class:`omniq.services.browse.TaskBrowser`,
decoding included); the comparison reads the same depth with OFFSET
(``list_tasks_async``), which is what keysets avoid.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.common import Row, sqlite_url, verdict
from bench.workspace import Sizes, Workspace
from omniq.models import TaskFilter, TaskSort, TaskStatus
from omniq.services import Services
from omniq.services.browse import TaskBrowser, encode_cursor
from omniq.services.overview import QueueOverview

LABELS = (
    "11a. task page, newest, deep",
    "11b. task page, failed only, deep",
    "11c. task page, by priority",
    "11d. dead letters page (3 statuses)",
    "11e. task page, by priority, all",
    "11f. task page, function filter",
    "11g. overview page data (reference)",
)
TARGET_MS = 100.0
PAGE = 50
#: Status of row i (out of 100): mostly finished work, like a busy queue's table.
_STATUSES = (
    [TaskStatus.COMPLETED] * 70
    + [TaskStatus.FAILED] * 10
    + [TaskStatus.PENDING] * 15
    + [TaskStatus.CANCELLED] * 3
    + [TaskStatus.EXPIRED, TaskStatus.WAITING]
)


def fill(path: Path, n: int, template: dict[str, object], batch: int = 20_000) -> None:
    """``n`` task rows, one second of creation time apart (oldest first)."""
    cols = list(template)
    insert = f"INSERT INTO omniq_tasks ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    index = {c: cols.index(c) for c in ("id", "created_at", "run_at", "status", "queue_name")}
    prio = cols.index("priority")
    base = list(template.values())
    start = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")
        for first in range(0, n, batch):
            rows = []
            for i in range(first, min(first + batch, n)):
                row = base.copy()
                at = start + i * 1_000_000
                row[index["id"]] = f"{at:016x}-{i:012x}"
                row[index["created_at"]] = row[index["run_at"]] = at
                row[index["status"]] = _STATUSES[(i * 37) % 100].value
                row[index["queue_name"]] = ("default", "emails", "reports")[i % 3]
                row[prio] = (i * 7) % 5
                rows.append(row)
            conn.execute("BEGIN")
            conn.executemany(insert, rows)
            conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _middle_key(path: Path, n: int, where: str) -> tuple[int, str]:
    """(created_at, id) of the row halfway down the newest-first order of ``where``."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(
            f"SELECT created_at, id FROM omniq_tasks WHERE {where} "  # bench-only, fixed text
            "ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?",
            (n,),
        ).fetchone()
    finally:
        conn.close()
    return int(row[0]), str(row[1])


Read = Callable[[], Awaitable[object]]


async def _median_ms(call: Read, runs: int) -> float:
    await call()  # warm: statement compilation, page cache
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        await call()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


async def _measure(path: Path, n: int, runs: int) -> dict[str, tuple[float, float]]:
    from omniq._time import from_micros

    services = await Services.open_async(sqlite_url(path))
    try:
        browser = TaskBrowser(services.storage, services.queue)
        queue = services.queue
        half = n // 2
        created, task_id = _middle_key(path, half, "1=1")
        deep = encode_cursor(TaskSort.NEWEST, (from_micros(created), task_id))
        failed = TaskFilter(statuses=frozenset({TaskStatus.FAILED}))
        f_created, f_id = _middle_key(path, n // 20, "status = 'failed'")
        deep_failed = encode_cursor(TaskSort.NEWEST, (from_micros(f_created), f_id))
        pending = TaskFilter(statuses=frozenset({TaskStatus.PENDING}))
        dead = TaskFilter(
            statuses=frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED})
        )
        everything = TaskFilter()
        by_func = TaskFilter(func="noop")
        rare_func = TaskFilter(func="no-such-function")
        keyset = browser.page_async
        # (label, the dashboard's read, its comparison)
        pairs: list[tuple[str, Read, Read]] = [
            (
                LABELS[0],
                lambda: keyset(everything, cursor=deep, limit=PAGE),
                lambda: queue.list_tasks_async(
                    limit=PAGE, offset=half, order_by="created_at", descending=True
                ),
            ),
            (
                LABELS[1],
                lambda: keyset(failed, cursor=deep_failed, limit=PAGE),
                lambda: queue.list_tasks_async(
                    "failed", limit=PAGE, offset=n // 20, descending=True
                ),
            ),
            (
                LABELS[2],
                lambda: keyset(pending, TaskSort.PRIORITY, limit=PAGE),
                lambda: queue.list_tasks_async(
                    "pending", limit=PAGE, order_by="priority", descending=True
                ),
            ),
            (
                LABELS[3],
                lambda: keyset(dead, limit=PAGE),
                lambda: queue.list_tasks_async(
                    ["failed", "cancelled", "expired"], limit=PAGE, descending=True
                ),
            ),
            (
                LABELS[4],
                lambda: keyset(everything, TaskSort.PRIORITY, limit=PAGE),
                lambda: queue.list_tasks_async(limit=PAGE, order_by="priority", descending=True),
            ),
            (
                LABELS[5],
                lambda: keyset(by_func, limit=PAGE),
                lambda: keyset(rare_func, limit=PAGE),
            ),
        ]
        out = {
            label: (await _median_ms(ours, runs), await _median_ms(theirs, max(3, runs // 4)))
            for label, ours, theirs in pairs
        }
        overview = QueueOverview(services.storage)
        out[LABELS[6]] = (await _median_ms(overview.overview_async, 5), 0.0)
    finally:
        await services.close_async()
    return out


def bench_dashboard(ws: Workspace, sizes: Sizes) -> list[Row]:
    """Median time of one page of 50 tasks over ``sizes.dashboard_tasks`` rows."""
    path = ws.omniq_db("dashboard")
    n = sizes.dashboard_tasks
    fill(path, n, ws.template[0])
    measured = asyncio.run(_measure(path, n, runs=20))
    notes = {
        LABELS[0]: "newest first, the page halfway down (keyset cursor)",
        LABELS[1]: "status=failed, newest first, halfway down the failed tasks",
        LABELS[2]: "status=pending by priority (claim order), first page",
        LABELS[3]: "failed+cancelled+expired, newest first, first page",
        LABELS[4]: "every status by priority (claim order), first page",
        LABELS[5]: "function contains 'noop' (every row matches), first page",
    }
    offset = (
        "comparison: the same listing through list_tasks_async (OFFSET to the same depth; "
        "lower is better)"
    )
    compared = dict.fromkeys(LABELS[:5], offset)
    compared[LABELS[5]] = (
        "comparison: a function that no row matches, so the whole table is read (a "
        "substring filter has no index)"
    )
    overview_ms, _ = measured.pop(LABELS[6])
    rows = []
    for label, (ms, offset_ms) in measured.items():
        ok = ms < TARGET_MS
        rows.append(
            Row(
                label,
                f"{ms:.1f} ms",
                f"{offset_ms:.1f} ms",
                offset_ms / ms if ms else None,
                f"{verdict(ok)} < {TARGET_MS:g} ms",
                ok,
                f"{notes[label]}: median of 20 reads of {PAGE} tasks through TaskBrowser over "
                f"{n:,} tasks on SQLite (the dashboard's query, rows decoded); "
                f"{compared[label]}.",
            )
        )
    rows.append(
        Row(
            LABELS[6],
            f"{overview_ms:.0f} ms",
            "-",
            None,
            "ref",
            None,
            f"everything the overview shows (counts per queue and status, oldest pending per "
            f"queue, completed/failed per minute, workers, due schedules), median of 5 reads "
            f"over {n:,} tasks: the counts read the whole table; the page refreshes every 5 s.",
        )
    )
    return rows
