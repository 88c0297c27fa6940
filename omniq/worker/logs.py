"""What a worker tells its operator, on the ``omniq.worker`` logger.

- a start banner (version, pid, database URL with the password masked,
  queues, concurrency, executor, prefetch);
- one line per task outcome: ``succeeded`` (INFO), ``retrying`` (INFO, with
  the error), ``failed`` (ERROR, with the traceback), ``timed_out`` (INFO when
  it is retried, else ERROR), ``cancelled`` (INFO);
- a line when shutdown starts (why, how many tasks still run, the grace
  period) and a summary when the worker has stopped.

Each record also carries structured fields (``extra``): ``worker_id``,
``task_id``, ``func``, ``queue``, ``outcome``, ``duration`` (seconds),
``attempt``, ``error``..., which :class:`omniq.logs.JsonFormatter` writes as
JSON keys. The worker calls these functions only when the level lets the line
through, so a filtered level costs one ``isEnabledFor`` per task.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from omniq._version import VERSION
from omniq.models import Task, TaskError, TaskStatus

if TYPE_CHECKING:
    from omniq.worker.stats import WorkerStats

__all__ = [
    "log",
    "shutting_down",
    "started",
    "stopped",
    "task_cancelled",
    "task_failed",
    "task_succeeded",
]

log = logging.getLogger("omniq.worker")

_TIMEOUT = "TaskTimeout"


def _emit(level: int, msg: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
    """Log ``msg % args`` with ``fields``; ``fields["traceback"]`` becomes the record's exc_text.

    The traceback travels as the record's exception text, so any formatter
    (plain :mod:`logging` included) prints it under the line, and the JSON
    formatter puts it under ``traceback``. A worker's error may come from a
    child process, with only its text left.
    """
    if not log.isEnabledFor(level):
        return
    traceback = fields.pop("traceback", None)
    record = log.makeRecord(log.name, level, __file__, 0, msg, args, None, extra=fields)
    if traceback:
        record.exc_text = traceback.rstrip("\n")
    log.handle(record)


def _task_fields(
    worker_id: str, task: Task, outcome: str, duration: float | None
) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "task_id": task.id,
        "func": task.func,
        "queue": task.queue_name,
        "outcome": outcome,
        "duration": None if duration is None else round(duration, 6),
        "attempt": task.attempts,
    }


def task_succeeded(worker_id: str, task: Task, duration: float) -> None:
    """``task f[id] succeeded in 0.004s``."""
    fields = _task_fields(worker_id, task, "succeeded", duration)
    _emit(
        logging.INFO,
        "task %s[%s] succeeded in %.3fs",
        (task.func, task.id, duration),
        fields,
    )


def task_failed(
    worker_id: str, task: Task, error: TaskError, status: TaskStatus, duration: float
) -> None:
    """A failed attempt: ``retrying`` (status PENDING), ``failed``/``timed_out``, ``cancelled``."""
    if status is TaskStatus.CANCELLED:
        task_cancelled(worker_id, task, duration)
        return
    timed_out = error.type == _TIMEOUT
    retrying = status is TaskStatus.PENDING
    if not log.isEnabledFor(logging.INFO if retrying else logging.ERROR):
        return
    outcome = "timed_out" if timed_out else ("retrying" if retrying else "failed")
    fields = _task_fields(worker_id, task, outcome, duration)
    fields.update(error=str(error), error_type=error.type, will_retry=retrying)
    what = "timed out after" if timed_out else "failed in"
    if retrying:
        fields["retry"] = task.retry_count + 1
        fields["max_retries"] = task.max_retries
        _emit(
            logging.INFO,
            "task %s[%s] %s %.3fs, retrying (retry %d of %d): %s",
            (task.func, task.id, what, duration, task.retry_count + 1, task.max_retries, error),
            fields,
        )
        return
    if not timed_out:
        fields["traceback"] = error.traceback
    attempts = task.attempts
    _emit(
        logging.ERROR,
        "task %s[%s] %s %.3fs (attempt %d, no retries left): %s",
        (task.func, task.id, what, duration, attempts, error),
        fields,
    )


def task_cancelled(worker_id: str, task: Task, duration: float | None) -> None:
    """``task f[id] cancelled after 0.200s`` (or ``before it started``)."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields = _task_fields(worker_id, task, "cancelled", duration)
    if duration is None:
        _emit(logging.INFO, "task %s[%s] cancelled before it started", (task.func, task.id), fields)
    else:
        _emit(
            logging.INFO,
            "task %s[%s] cancelled after %.3fs",
            (task.func, task.id, duration),
            fields,
        )


def started(
    *,
    worker_id: str,
    url: str,
    queues: list[str] | None,
    concurrency: int,
    executor: str,
    prefetch: int | None,
    burst: bool,
    scheduler: bool,
    maintenance: bool,
    gc_frozen: int | None = None,
) -> None:
    """The start banner (one line). ``gc_frozen``: the objects frozen out of the
    garbage collector's walk (``gc.get_freeze_count()``), None with ``gc_freeze`` off."""
    shown_queues = "queues " + ",".join(queues) if queues else "all queues"
    fields = {
        "worker_id": worker_id,
        "version": VERSION,
        "pid": os.getpid(),
        "url": url,
        "queues": queues,
        "concurrency": concurrency,
        "executor": executor,
        "prefetch": prefetch,
        "burst": burst,
        "scheduler": scheduler,
        "maintenance": maintenance,
        "gc_frozen": gc_frozen,
    }
    _emit(
        logging.INFO,
        "omniq %s worker %s starting%s: pid %d, database %s, serving %s, concurrency %d, "
        "executor %s, prefetch %s, scheduler %s, maintenance %s, %s",
        (
            VERSION,
            worker_id,
            " (burst)" if burst else "",
            os.getpid(),
            url,
            shown_queues,
            concurrency,
            executor,
            "adaptive" if prefetch is None else prefetch,
            "on" if scheduler else "off",
            "on" if maintenance else "off",
            "gc freeze off" if gc_frozen is None else f"gc freeze on ({gc_frozen:,} objects)",
        ),
        fields,
    )


def left_running(worker_id: str, task: Task) -> None:
    """Past the grace period, a sync function still runs in a thread that cannot be stopped."""
    _emit(
        logging.WARNING,
        "task %s (%s) still runs in a thread past the grace period: left running under "
        "its lease, which lease recovery takes back once it expires",
        (task.id, task.func),
        {"worker_id": worker_id, "task_id": task.id, "func": task.func},
    )


def shutting_down(worker_id: str, reason: str, running: int, grace_period: float) -> None:
    """Shutdown starts: why, and what it waits for."""
    fields = {
        "worker_id": worker_id,
        "reason": reason,
        "running": running,
        "grace_period": grace_period,
    }
    if running:
        _emit(
            logging.INFO,
            "worker %s shutting down (%s): waiting up to %gs for %d running task%s",
            (worker_id, reason, grace_period, running, "" if running == 1 else "s"),
            fields,
        )
    else:
        _emit(logging.INFO, "worker %s shutting down (%s)", (worker_id, reason), fields)


def stopped(stats: WorkerStats) -> None:
    """The summary once the worker has stopped."""
    fields = {
        "worker_id": stats.worker_id,
        "uptime": round(stats.uptime, 3),
        "succeeded": stats.completed,
        "failed": stats.failed,
        "retried": stats.retried,
        "cancelled": stats.cancelled,
        "lost": stats.lost,
    }
    _emit(
        logging.INFO,
        "worker %s stopped after %.1fs: %d succeeded, %d failed, %d retried, %d cancelled, %d lost",
        (
            stats.worker_id,
            stats.uptime,
            stats.completed,
            stats.failed,
            stats.retried,
            stats.cancelled,
            stats.lost,
        ),
        fields,
    )
