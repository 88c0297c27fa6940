"""The ``omniq`` commands that work on tasks, results, schedules, events and workers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from omniq._time import utcnow
from omniq.cli_context import open_app
from omniq.cli_errors import EXIT_FAILED, EXIT_TIMEOUT
from omniq.cli_output import CLIError, duration_arg, emit, json_arg, plain, record, table
from omniq.cli_progress import progress_data, with_progress
from omniq.cli_workflow import workflow_command
from omniq.config import OmniQConfig
from omniq.errors import TaskNotFound

if TYPE_CHECKING:
    from omniq.app import AsyncOmniQ
    from omniq.models import Task, TaskAttempt, WorkerInfo

__all__ = ["dispatch"]

#: Commands that only read: they never create a database file or migrate one.
READ_ONLY = frozenset(
    {"tasks", "task", "results", "result", "events", "stats", "schedules", "workers", "workflow"}
)


def note(text: str) -> None:
    """A line for the person at the terminal, on stderr (stdout stays parseable)."""
    print(f"omniq: {text}", file=sys.stderr)


async def dispatch(args: argparse.Namespace, config: OmniQConfig) -> int:
    """Open the database and run the command."""
    # Only `enqueue` may create the database; the others act on what is stored.
    read_only = args.command in READ_ONLY
    async with open_app(config, read_only=read_only, must_exist=args.command != "enqueue") as oq:
        handler = _COMMANDS[args.command]
        return await handler(args, oq)


async def _enqueue(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    options: dict[str, Any] = {"priority": args.priority}
    if args.queue:  # empty: not given, as for every option here
        options["queue_name"] = args.queue
    if args.run_in:
        options["run_in"] = duration_arg(args.run_in, "--in")
    if args.timeout:
        options["timeout"] = duration_arg(args.timeout, "--timeout")
    if args.max_retries is not None:
        options["max_retries"] = args.max_retries
    if args.unique_key:
        options["unique_key"] = args.unique_key
    task_id = await oq.enqueue_async(
        args.func,
        json_arg(args.args, "--args", list),
        json_arg(args.kwargs, "--kwargs", dict),
        **options,
    )
    emit(args, {"task_id": task_id}, lambda: task_id)
    return 0


def _more(what: str, args: argparse.Namespace, shown: int) -> None:
    first, last = args.offset + 1, args.offset + shown
    note(
        f"showing {what} {first}-{last} of more; next page: --offset {last} (--limit {args.limit})"
    )


async def _tasks(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    # One row beyond the page says whether there are more, without counting them all.
    tasks = await oq.list_tasks_async(
        args.status, args.queue, limit=args.limit + 1, offset=args.offset
    )
    more = len(tasks) > args.limit
    tasks = tasks[: args.limit]
    rows = [
        (t.id, t.queue_name, t.status, t.priority, t.func, t.created_at, t.attempts) for t in tasks
    ]
    emit(
        args,
        tasks,
        lambda: table(rows, ["id", "queue", "status", "priority", "func", "created", "attempts"]),
    )
    if more:
        _more("tasks", args, len(tasks))
    return 0


async def _require_task(oq: AsyncOmniQ, task_id: str) -> Task:
    task = await oq.get_task_async(task_id)
    if task is None:
        raise TaskNotFound(f"no task with id {task_id!r}")
    return task


async def _task(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    task = await _require_task(oq, args.task_id)
    attempts = await oq.get_attempts_async(args.task_id)
    progress = await oq.get_progress_async(args.task_id)
    emit(
        args,
        {**plain(task), "failed_attempts": plain(attempts), "progress": progress_data(progress)},
        lambda: with_progress(_task_text(task, attempts), progress),
    )
    return 0


async def _results(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    now = utcnow()
    results = await oq.list_results_async(
        args.statuses,
        func=args.func,
        task_name=args.name,
        schedule_id=args.schedule,
        start_time=ago(now, args.since, "--since"),
        end_time=ago(now, args.until, "--until"),
        limit=args.limit + 1,
        offset=args.offset,
    )
    more = len(results) > args.limit
    results = results[: args.limit]
    rows = [
        (r.task_id, r.status, r.created_at, r.execution_time, r.error or r.result) for r in results
    ]
    emit(
        args,
        results,
        lambda: table(rows, ["task", "status", "stored", "seconds", "result or error"]),
    )
    if more:
        _more("results", args, len(results))
    return 0


async def _result(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    timeout = duration_arg(args.timeout, "--timeout") if args.timeout else None
    if timeout is not None and not args.wait:
        raise CLIError("--timeout: only with --wait")
    await _require_task(oq, args.task_id)
    result = await oq.get_result_async(args.task_id, wait=args.wait, timeout=timeout)
    if result is None:
        task = await _require_task(oq, args.task_id)
        if not task.status.is_final:
            if args.wait:
                raise CLIError(
                    f"timed out after {args.timeout}: task {task.id} is still {task.status}",
                    code=EXIT_TIMEOUT,
                )
            raise CLIError(
                f"task {task.id} has no result yet (it is {task.status}; --wait waits for it)",
                code=EXIT_FAILED,
            )
        raise CLIError(f"task {task.id} is {task.status} with no stored result", code=EXIT_FAILED)
    emit(args, result, lambda: record(result))
    return 0


async def _cancel(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    task = await _require_task(oq, args.task_id)
    done = await oq.cancel_async(args.task_id)
    if not done:
        # Read again: it may have finished between the two statements.
        task = await _require_task(oq, args.task_id)
        if args.json:
            emit(args, {"cancelled": False, "status": task.status}, str)
        note(f"task {task.id} already finished ({task.status}): nothing to cancel")
        return EXIT_FAILED
    text = "cancellation requested (it is running)" if task.status == "running" else "cancelled"
    emit(args, {"cancelled": True, "status": task.status}, lambda: text)
    return 0


async def _requeue(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    task = await oq.requeue_async(args.task_id)
    emit(args, task, lambda: f"requeued {task.id} ({task.status})")
    return 0


async def _schedules(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    schedules = await oq.list_schedules_async()
    rows = [
        (
            s.id,
            s.name or s.func,
            s.schedule_type,
            s.cron_expression or s.interval,
            s.status,
            s.next_run_at,
            s.run_count,
        )
        for s in schedules
    ]
    emit(
        args,
        schedules,
        lambda: table(rows, ["id", "name", "type", "spec", "status", "next run", "runs"]),
    )
    return 0


async def _schedule(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    action = {
        "pause": oq.pause_schedule_async,
        "resume": oq.resume_schedule_async,
        "cancel": oq.cancel_schedule_async,
    }[args.action]
    schedule = await action(args.schedule_id)
    emit(args, schedule, lambda: f"schedule {schedule.id} is {schedule.status}")
    return 0


async def _events(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    since = ago(utcnow(), args.since, "--since")
    events = await oq.get_events_async(
        task_id=args.task,
        event_type=args.types,
        queue_name=args.queue,
        start_time=since,
        limit=args.limit + 1,
        offset=args.offset,
    )
    more = len(events) > args.limit
    # Newest first by time: event ids are handed out when a row is inserted, which on
    # PostgreSQL is not always the order the transactions committed in.
    events = sorted(events[: args.limit], key=lambda e: (e.timestamp, e.id), reverse=True)
    rows = [
        (e.id, e.timestamp, e.event_type, e.task_id, e.queue_name, e.level, e.error or e.message)
        for e in events
    ]
    emit(
        args,
        events,
        lambda: table(rows, ["id", "time", "type", "task", "queue", "level", "detail"]),
    )
    if more:
        _more("events", args, len(events))
    return 0


async def _stats(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    stats = await oq.stats_async()
    emit(args, stats, lambda: _stats_text(stats))
    return 0


def worker_state(worker: WorkerInfo) -> str:
    """``alive``, or ``lost`` when its heartbeat is older than the lease."""
    return "lost" if worker.lost else "alive"


async def _workers(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    workers = await oq.list_workers_async()
    data = [{**plain(w), "state": worker_state(w)} for w in workers]
    rows = [
        (
            w.id,
            w.host,
            w.pid,
            ",".join(w.queues) if w.queues else "all",
            w.concurrency,
            w.executor,
            w.version,
            w.started_at,
            w.last_heartbeat,
            w.tasks_held,
            worker_state(w),
        )
        for w in workers
    ]
    headers = ["id", "host", "pid", "queues", "concurrency", "executor", "version"]
    headers += ["started", "last heartbeat", "tasks", "state"]
    emit(args, data, lambda: table(rows, headers) if rows else "no workers registered")
    return 0


def _task_text(task: Task, attempts: Sequence[TaskAttempt]) -> str:
    if not attempts:
        return record(task)
    rows = [
        (a.attempt, a.started_at, a.finished_at, a.error, "yes" if a.will_retry else "no")
        for a in attempts
    ]
    history = table(rows, ["attempt", "started", "finished", "error", "retried"])
    return f"{record(task)}\n\nfailed attempts:\n{history}"


def _stats_text(stats: dict[str, Any]) -> str:
    statuses = sorted({s for per in stats["tasks"].values() for s in per})
    rows = [[q, *(per.get(s, 0) for s in statuses)] for q, per in sorted(stats["tasks"].items())]
    parts = [table(rows, ["queue", *statuses]) if rows else "no tasks"]
    results = {k: v for k, v in stats["results"].items() if k != "total"}
    results_text = ", ".join(f"{k} {v}" for k, v in sorted(results.items())) or "none"
    parts.append("results: " + results_text)
    by_type = stats["events"]["by_type"]
    parts.append("events: " + (", ".join(f"{k} {v}" for k, v in sorted(by_type.items())) or "none"))
    parts.append(f"active schedules: {stats['schedules']}")
    paused = stats.get("paused_queues") or []
    parts.append("paused queues: " + (", ".join(paused) or "none"))
    for name, limits in sorted((stats.get("queue_limits") or {}).items()):
        words = [f"{limits['concurrency']} running"] if limits["concurrency"] else []
        if limits["rate"]:
            words.append(f"{limits['rate']['limit']} per {limits['rate']['per']:g}s")
        if words:
            parts.append(f"queue {name} limits: " + ", ".join(words))
    return "\n".join(parts)


async def _queue(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    if args.action == "pause":
        changed = await oq.pause_queue_async(args.queue_name)
        text = "paused" if changed else "already paused"
    else:
        changed = await oq.resume_queue_async(args.queue_name)
        text = "resumed" if changed else "not paused"
    state = await oq.get_queue_limit_async(args.queue_name)
    data = {"queue": args.queue_name, "paused": state.paused, "changed": changed}
    emit(args, data, lambda: f"queue {args.queue_name}: {text}")
    return 0


_COMMANDS = {
    "enqueue": _enqueue,
    "tasks": _tasks,
    "task": _task,
    "results": _results,
    "result": _result,
    "cancel": _cancel,
    "requeue": _requeue,
    "schedules": _schedules,
    "schedule": _schedule,
    "events": _events,
    "stats": _stats,
    "queue": _queue,
    "workers": _workers,
    "workflow": workflow_command,
}


def ago(now: datetime, text: str | None, what: str) -> datetime | None:
    """``now`` minus the duration ``text`` (None: not given); CLIError past year 1."""
    if not text:
        return None
    try:
        return now - duration_arg(text, what)
    except OverflowError:
        raise CLIError(f"{what}: {text!r} reaches before year 1") from None
