"""Cancelling waiting tasks: a piece of transactions, run inside a service's body.

Shared by dependency cancellation (:mod:`omniq.services.dependencies`) and
workflows (:mod:`omniq.services.flow_steps`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import sqlalchemy as sa

from omniq.models import EventLevel, EventType, ResultStatus, Task, TaskStatus
from omniq.services._shared import _event, _final_result, _finish_values
from omniq.services._storage import Storage

__all__ = ["cancel_waiting", "to_cancelled"]

_WAITING = frozenset({TaskStatus.WAITING})


def to_cancelled(
    conn: sa.Connection, storage: Storage, reasons: Mapping[str, str], now: datetime
) -> list[Task]:
    """Move the tasks of ``reasons`` that are still waiting to cancelled, each with
    its reason (nothing else is written). Returns the tasks cancelled."""
    cancelled: list[Task] = []
    for task_id, reason in reasons.items():
        updated = storage.tasks.transition(
            conn,
            task_id,
            expected=_WAITING,
            values={**_finish_values(TaskStatus.CANCELLED, now), "last_error": reason},
        )
        if updated is not None:
            cancelled.append(updated)
    return cancelled


def cancel_waiting(
    conn: sa.Connection, storage: Storage, reasons: Mapping[str, str], now: datetime
) -> list[Task]:
    """Cancel the tasks of ``reasons`` that are still waiting, each with its reason;
    write their events and results. Returns the tasks cancelled."""
    cancelled = to_cancelled(conn, storage, reasons, now)
    storage.events.insert_rows(
        conn,
        [
            _event(
                EventType.CANCELLED,
                x,
                timestamp=now,
                message=x.last_error,
                level=EventLevel.WARNING,
                data={"cause": x.last_error},
            )
            for x in cancelled
        ],
    )
    storage.results.upsert_many(
        conn,
        [
            _final_result(x, ResultStatus.CANCELLED, x.last_error, now=now)
            for x in cancelled
            if x.store_result
        ],
    )
    return cancelled
