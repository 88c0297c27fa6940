"""The floor: the same rows OmniQ writes on enqueue, inserted with plain ``sqlite3``.

One task row and one ``enqueued`` event row per task, into OmniQ's own schema
(same tables and indexes), WAL + ``synchronous=NORMAL``, ``executemany`` in
one transaction per batch. Rows are copied from a template that OmniQ wrote,
with a fresh time-ordered id, payload and timestamps per task.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.common import rate

Template = tuple[dict[str, Any], dict[str, Any]]


def template_rows(path: Path) -> Template:
    """The first task row and its event row (without id) of an OmniQ database."""
    conn = sqlite3.connect(path)
    try:
        conn.row_factory = sqlite3.Row
        task = dict(conn.execute("SELECT * FROM omniq_tasks ORDER BY id LIMIT 1").fetchone())
        event = dict(
            conn.execute(
                "SELECT * FROM omniq_events WHERE task_id = ? ORDER BY id LIMIT 1", (task["id"],)
            ).fetchone()
        )
    finally:
        conn.close()
    event.pop("id")
    return task, event


def enqueue_rate(path: Path, n: int, template: Template, batch: int = 1000) -> float:
    """Rows/s: ``n`` (task, event) row pairs in transactions of ``batch``."""
    task_tpl, event_tpl = template
    task_cols = list(task_tpl)
    event_cols = list(event_tpl)
    insert_task = (
        f"INSERT INTO omniq_tasks ({', '.join(task_cols)}) "
        f"VALUES ({', '.join('?' * len(task_cols))})"
    )
    insert_event = (
        f"INSERT INTO omniq_events ({', '.join(event_cols)}) "
        f"VALUES ({', '.join('?' * len(event_cols))})"
    )
    t_id, t_payload = task_cols.index("id"), task_cols.index("payload")
    t_created, t_run = task_cols.index("created_at"), task_cols.index("run_at")
    e_task, e_ts = event_cols.index("task_id"), event_cols.index("timestamp")
    task_base = list(task_tpl.values())
    event_base = list(event_tpl.values())

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        started = time.perf_counter()
        for start in range(0, n, batch):
            task_rows = []
            event_rows = []
            for i in range(start, min(start + batch, n)):
                now = time.time_ns() // 1000
                task_id = f"{now:016x}-{i:012x}"
                row = task_base.copy()
                row[t_id] = task_id
                row[t_payload] = json.dumps({"a": [i]}, separators=(",", ":"))
                row[t_created] = row[t_run] = now
                task_rows.append(row)
                event = event_base.copy()
                event[e_task] = task_id
                event[e_ts] = now
                event_rows.append(event)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert_task, task_rows)
            conn.executemany(insert_event, event_rows)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return rate(n, elapsed)
