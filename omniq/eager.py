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

from collections.abc import Sequence

from sqlalchemy import Connection

from omniq.models import TaskStatus
from omniq.services import Services
from omniq.worker import Worker

__all__ = ["run_inline"]

#: A task retried without delay runs again inline, at most this many times in all.
_MAX_RUNS = 1000


async def run_inline(services: Services, worker: Worker, task_ids: Sequence[str]) -> None:
    """Run the ready tasks among ``task_ids``, then the dependents their completions release."""
    queue = services.queue
    todo = list(task_ids)
    runs = 0
    try:
        while todo and runs < _MAX_RUNS:
            claimed = await queue.dequeue_ids_async(todo, worker_id=worker.worker_id)
            todo = []
            for task in claimed:
                runs += 1
                status = await worker.process_task_async(task)
                if status is TaskStatus.COMPLETED:
                    todo.extend(await _dependents(services, task.id))
                elif status is TaskStatus.PENDING:
                    todo.append(task.id)  # retried: again now, if its retry is due now
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
