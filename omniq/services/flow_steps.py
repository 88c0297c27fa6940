"""Workflow steps: pieces of the completion and failure transactions of workflow members.

Only tasks with a ``workflow_id`` get here (the caller checks the claimed
task in Python), so the plain completion path pays nothing.

Each member row counts the inputs it still waits for (``remaining``). A
member that ends decrements the counter of each member downstream of it in
its own completion (or failure) transaction; the transaction that brings a
counter to zero writes the inputs' results into that member's arguments
and moves it from waiting to pending. Row locks (PostgreSQL) or the single
writer (SQLite) serialise the decrements, so exactly one transaction sees
zero: a chord's callback is released exactly once, whichever workers die.

A member that ends badly settles its downstream by its ``on_failure``:
``"cancel"`` cancels them (and, transitively, what depends on them);
``"continue"`` counts it as settled with ``None`` as its result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
import sqlalchemy as sa

from omniq.models import Task, TaskStatus
from omniq.services._shared import _ready_events
from omniq.services._storage import Storage
from omniq.services.waiting import cancel_waiting

__all__ = ["members_completed", "members_ended"]

_WAITING = frozenset({TaskStatus.WAITING})


def members_completed(
    conn: sa.Connection,
    storage: Storage,
    done: Sequence[tuple[Task, str | None]],
    now: datetime,
) -> None:
    """Record completed members' serialized results and settle their downstream."""
    rows = storage.workflows.members(conn, [task.id for task, _ in done])
    storage.workflows.record(
        conn,
        [
            {"id": task.id, "status": TaskStatus.COMPLETED.value, "result": text, "error": None}
            for task, text in done
        ],
    )
    _settle(conn, storage, [(rows[task.id], True) for task, _ in done if _open(rows, task)], now)


def members_ended(
    conn: sa.Connection,
    storage: Storage,
    ended: Sequence[tuple[Task, TaskStatus, str | None]],
    now: datetime,
) -> None:
    """Record members that ended badly (``(task, status, error)``) and settle their downstream."""
    rows = storage.workflows.members(conn, [task.id for task, _, _ in ended])
    storage.workflows.record(
        conn,
        [
            {"id": task.id, "status": status.value, "result": None, "error": error}
            for task, status, error in ended
        ],
    )
    _settle(
        conn, storage, [(rows[task.id], False) for task, _, _ in ended if _open(rows, task)], now
    )


def _open(rows: Mapping[str, sa.RowMapping], task: Task) -> bool:
    """True if ``task`` is a member that had not ended before: a member settles its
    downstream once (a requeued member that ends again changes nothing)."""
    row = rows.get(task.id)
    return row is not None and row["status"] is None


def _settle(
    conn: sa.Connection,
    storage: Storage,
    frontier: list[tuple[sa.RowMapping, bool]],
    now: datetime,
) -> None:
    """Count each ended member off its downstream's counters (or cancel them), transitively."""
    while frontier:
        cancel: dict[str, str] = {}
        counted: list[str] = []
        for member, ok in frontier:
            for down in member["downstream"]:
                if not ok and member["on_failure"] == "cancel":
                    cancel[down] = f"workflow member {member['task_id']} did not complete"
                else:
                    counted.append(down)
        # One order for every transaction: concurrent ones lock the rows alike.
        for down in sorted(counted):
            settled = storage.workflows.settle_input(conn, down)
            if settled is not None and settled[0] == 0:
                _release(conn, storage, down, settled[1], settled[2], now)
        cancelled = cancel_waiting(conn, storage, cancel, now) if cancel else []
        if not cancelled:
            return
        storage.workflows.record(
            conn,
            [
                {"id": x.id, "status": x.status.value, "result": None, "error": x.last_error}
                for x in cancelled
            ],
        )
        rows = storage.workflows.members(conn, [x.id for x in cancelled])
        frontier = [(rows[x.id], False) for x in cancelled if x.id in rows]


def _release(
    conn: sa.Connection,
    storage: Storage,
    task_id: str,
    inputs: list[str],
    mode: str,
    now: datetime,
) -> None:
    """Give a member whose inputs all settled their results, and make it pending."""
    task = storage.tasks.get(conn, task_id)
    if task is None or task.status is not TaskStatus.WAITING:
        return
    values = {}
    if mode != "none":
        rows = storage.workflows.members(conn, inputs)
        values = {
            "payload": storage.tasks.encode_payload(_with_inputs(storage, task, inputs, rows, mode))
        }
    released = storage.tasks.transition(
        conn, task_id, expected=_WAITING, values={"status": TaskStatus.PENDING, **values}
    )
    if released is not None:
        storage.events.insert_rows(
            conn,
            _ready_events(
                [(released.id, released.queue_name, released.schedule_id, released.attempts)], now
            ),
        )


def _with_inputs(
    storage: Storage,
    task: Task,
    inputs: list[str],
    rows: Mapping[str, sa.RowMapping],
    mode: str,
) -> Task:
    """``task`` with its inputs' results before its own positional arguments."""
    results = [_result_of(storage, rows.get(x)) for x in inputs]
    first = results[0] if mode == "one" else results
    return attrs.evolve(task, func_args=(first, *task.func_args))


def _result_of(storage: Storage, row: sa.RowMapping | None) -> Any:
    """A member's deserialized result; None if it did not complete (or had none)."""
    if row is None or row["result"] is None or row["status"] != TaskStatus.COMPLETED.value:
        return None
    return storage.results.codec.decode_value(row["serializer"], row["result"])
