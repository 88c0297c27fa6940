"""Eager mode: an enqueue runs its task inline, then the tasks its completion released.

``AsyncOmniQ(mode="eager")`` is for tests of users' code: each enqueue runs
exactly the task it enqueued (never other tasks that happen to be ready),
through the same code paths as a worker (claim, run, outcome, retries,
callbacks, events), and returns once it is settled. A task that completes
releases its dependents; those that became ready run next, in turn. A task
that is not ready (delayed with ``run_in``/``run_at``, or waiting for
dependencies) stays queued until a later enqueue releases it, or a worker
runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from sqlalchemy import Connection

from omniq.models import Task, TaskStatus
from omniq.services import Services
from omniq.worker import Worker

__all__ = ["run_inline"]

#: A task retried without delay runs again inline, at most this many times in all.
_MAX_RUNS = 1000


async def run_inline(services: Services, worker: Worker, task_ids: Sequence[str]) -> None:
    """Run the ready tasks among ``task_ids``, then the dependents their completions release.

    Should the caller be cancelled (or fail) meanwhile, the tasks claimed here
    and not settled go back to pending, nothing spent (as a stopping worker's
    do): none is left running under a lease nobody holds.
    """
    queue = services.queue
    todo = list(task_ids)
    runs = 0
    claimed: list[Task] = []
    try:
        while todo and runs < _MAX_RUNS:
            # A claim cancelled while it runs gives its tasks back itself (its undo).
            claimed = await queue.dequeue_ids_async(todo, worker_id=worker.worker_id)
            todo = []
            while claimed:
                task = claimed[0]
                runs += 1
                status = await worker.run_claimed_async(task)
                claimed.pop(0)
                if status is TaskStatus.COMPLETED:
                    todo.extend(await _dependents(services, task.id))
                elif status is TaskStatus.PENDING:
                    todo.append(task.id)  # retried: again now, if its retry is due now
    except BaseException:
        if claimed:
            # Fenced by each lease: a task whose outcome landed is left as it is.
            release = queue.release_many_async(claimed, worker_id=worker.worker_id)
            with contextlib.suppress(Exception):  # else their leases expire: recovered then
                await asyncio.shield(asyncio.ensure_future(release))
        raise
    finally:
        worker.executor.shutdown()


async def _dependents(services: Services, task_id: str) -> list[str]:
    storage = services.storage

    def body(conn: Connection) -> list[str]:
        return [
            *storage.tasks.dependents_of(conn, task_id),
            *storage.workflows.downstream_of(conn, task_id),
        ]

    return await storage.read(body, what="find dependents")
