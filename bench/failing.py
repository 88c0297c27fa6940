"""9: tasks that fail, or are refused, vs tasks that succeed: one worker process each (SQLite).

Each run enqueues ``Sizes.failing`` tasks of one kind into a fresh SQLite file
and lets one default worker process (bench/omniq_worker.py) drain it in burst
mode; the rate runs from its first claim to its last committed outcome. The
outcome is then checked in the database: every task ended as expected, and
each failure stored its error type and traceback in its result row.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import omniq_side
from bench.common import Row, fmt_rate, ratio_row, sqlite_url
from bench.workers import client_profile, run_omniq_workers, span_rate
from bench.workspace import Sizes, Workspace
from omniq.db.schema import results as results_table
from omniq.db.schema import tasks as tasks_table

LABELS = (
    "9a. failing tasks vs no-op",
    "9b. refused tasks vs no-op",
    "9c. failing + 1 retry vs no-op",
)

#: A function in a module outside the workers' allow-list: refused, never imported.
REFUSED = "bench.unlisted:noop"


@dataclass(frozen=True)
class Kind:
    """One kind of task in this comparison, and how each must end."""

    func: str
    options: dict[str, Any]
    status: str
    error_type: str | None = None
    retry_count: int = 0


#: How the profile in each row's note names a task of that kind.
WHAT = {
    "noop": "no-op task",
    "fail": "failing task",
    "refused": "refused task",
    "retry": "retried task",
}
KINDS = {
    "noop": Kind(omniq_side.NOOP, {}, "completed"),
    "fail": Kind("bench.tasks:fail", {"max_retries": 0}, "failed", "ValueError"),
    "refused": Kind(REFUSED, {"max_retries": 0}, "failed", "TaskNotFound"),
    "retry": Kind(
        "bench.tasks:fail", {"max_retries": 1, "retry_delay": 0}, "failed", "ValueError", 1
    ),
}


def check_outcomes(db: Path, kind: Kind, n: int) -> None:
    """Raise unless all ``n`` tasks ended as ``kind`` says (failures: error and traceback)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            f"SELECT t.status, r.status, r.error_type, t.retry_count, "
            f"r.error_traceback LIKE '%Traceback%' || r.error_type || '%', count(*) "
            f"FROM {tasks_table.name} t LEFT JOIN {results_table.name} r ON r.task_id = t.id "
            f"GROUP BY 1, 2, 3, 4, 5"
        ).fetchall()
    finally:
        conn.close()
    want: tuple[Any, ...]
    if kind.error_type is None:
        want = (kind.status, "success", None, 0, None, n)
    else:
        want = (kind.status, "error", kind.error_type, kind.retry_count, 1, n)
    if rows != [want]:
        raise RuntimeError(f"{kind.func}: expected {n} tasks ending as {want[:5]}, got {rows}")


def _run(ws: Workspace, name: str, n: int) -> tuple[float, dict[str, Any]]:
    """(tasks/s to their final outcome, the worker's report) of one run of ``name``."""
    kind = KINDS[name]
    db = ws.omniq_db(f"outcome-{name}")
    asyncio.run(omniq_side.fill(db, n, kind.func, **kind.options))
    reports = run_omniq_workers(sqlite_url(db), 1, ws.root, extra=("--trace-sql",))
    done, tasks_per_s = span_rate(reports, settled=True)
    if done != n:
        raise RuntimeError(f"the worker settled {done} of {n} {name} tasks")
    check_outcomes(db, kind, n)
    return tasks_per_s, reports[0]


def bench_failing(ws: Workspace, sizes: Sizes) -> list[Row]:
    """Rows 9a-9c: each failing kind beside no-op tasks, best of the repeats, interleaved."""
    n = sizes.failing
    best = dict.fromkeys(KINDS, 0.0)
    profile = dict.fromkeys(KINDS, "")
    retried = 0
    for _ in range(sizes.process_repeats):
        for name in KINDS:
            tasks_per_s, report = _run(ws, name, n)
            if tasks_per_s > best[name]:
                best[name] = tasks_per_s
                profile[name] = client_profile(report, n, 1, WHAT[name])
                if report.get("timed_to_exit"):
                    profile[name] += " (span timed to the worker's return: not every failure "
                    profile[name] += "went through TaskQueue.fail_async)"
            if name == "retry":
                retried = int(report.get("retried", 0))
    noop = best["noop"]

    def where(name: str) -> str:
        noop_too = f"; in the no-op run {profile['noop']}" if name == "fail" else ""
        return f" Where the time goes: {profile[name]}{noop_too}."

    common = (
        f"one default worker process drains {n:,} pre-enqueued tasks, from its first claim to "
        f"its last committed outcome, vs {n:,} no-op tasks the same way (comparison) in this "
        "run; every outcome checked in the database afterwards."
    )
    return [
        ratio_row(
            LABELS[0],
            best["fail"],
            noop,
            1 / 3,
            ">= 0.33x (<= 3x a success)",
            "Tasks that raise ValueError (max_retries=0): each ends failed with an error "
            f"result row holding its traceback, and a `failed` event; {common}{where('fail')}",
        ),
        ratio_row(
            LABELS[1],
            best["refused"],
            noop,
            1 / 3,
            ">= 0.33x (<= 3x a success)",
            f"Tasks naming {REFUSED!r}, a module outside the worker's allow-list (not "
            "registered; never imported): each ends failed with TaskNotFound, never retried; "
            f"{common}{where('refused')}",
        ),
        ratio_row(
            LABELS[2],
            best["retry"],
            noop,
            1 / 6,
            ">= 0.17x (2 runs, each <= 3x)",
            "Tasks that raise ValueError with max_retries=1, retry_delay=0: each fails, is "
            f"retried at once ({retried:,} retries), fails again and ends failed; rate in tasks "
            f"(two runs each, {fmt_rate(2 * best['retry'])} runs); {common}{where('retry')}",
        ),
    ]
