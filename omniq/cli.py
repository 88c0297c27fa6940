"""The ``omniq`` command (also ``python -m omniq``).

Output is an aligned table for humans, or JSON with ``--json``. Bad input
gives one clear line on stderr and a non-zero exit code: 2 for usage and
input errors, 1 for everything else that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import attrs

from omniq._time import utcnow
from omniq.app import AsyncOmniQ
from omniq.cli_output import CLIError, duration_arg, emit, json_arg, plain, record, table
from omniq.config import OmniQConfig
from omniq.db import migrate
from omniq.db.engine import create_engine, default_sqlite_url
from omniq.errors import (
    ConfigurationError,
    OmniQError,
    ScheduleNotFound,
    SerializationError,
    TaskNotFound,
    ValidationError,
)
from omniq.models import Task, TaskAttempt

__all__ = ["main"]

_INPUT_ERRORS = (ValidationError, ConfigurationError, SerializationError)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="database URL (default: OMNIQ_DATABASE_URL or SQLite file)")
    common.add_argument("--project", help="project name (default database <project>.db)")
    common.add_argument("--base-dir", help="directory of the default SQLite database")
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser = argparse.ArgumentParser(
        prog="omniq",
        description="OmniQ: a task queue whose whole state lives in SQL.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", parents=[common], help="run a worker")
    p.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE",
        help="module(s) whose functions this worker may run (repeatable)",
    )
    p.add_argument("--queues", help="comma-separated queues, served in this order")
    p.add_argument("--concurrency", type=int, help="tasks run at once")
    p.add_argument("--executor", choices=["async", "thread", "process"])
    p.add_argument("--burst", action="store_true", help="drain ready tasks, then exit")
    p.add_argument("--poll-interval", help="longest idle poll (e.g. 1s)")
    p.add_argument("--lease-duration", help="task lease (e.g. 60s)")
    p.add_argument("--heartbeat-interval", help="lease renewal interval (e.g. 15s)")
    p.add_argument("--grace-period", help="shutdown grace period (e.g. 30s)")
    p.add_argument(
        "--maintenance-interval",
        help="how often to recover lost leases, expire tasks, apply retention (e.g. 30s)",
    )
    p.add_argument(
        "--prefetch",
        type=int,
        help="tasks claimed beyond the free slots (default: adapts to task run time)",
    )
    p.add_argument("--no-scheduler", action="store_true", help="do not fire schedules")

    p = sub.add_parser("enqueue", parents=[common], help="enqueue a task")
    p.add_argument("func", help="function reference, package.module:function")
    p.add_argument("--args", default="[]", help="positional arguments as a JSON list")
    p.add_argument("--kwargs", default="{}", help="keyword arguments as a JSON object")
    p.add_argument("--queue", help="queue name")
    p.add_argument("--in", dest="run_in", help="delay, e.g. 10s, 5m")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--max-retries", type=int)
    p.add_argument("--timeout", help="task timeout, e.g. 30s")
    p.add_argument("--unique-key")

    p = sub.add_parser("tasks", parents=[common], help="list tasks")
    p.add_argument("--status")
    p.add_argument("--queue")
    p.add_argument("--limit", type=int, default=50)

    p = sub.add_parser("task", parents=[common], help="show one task")
    p.add_argument("task_id")

    p = sub.add_parser("results", parents=[common], help="list results, newest first")
    p.add_argument("--status", action="append", dest="statuses")
    p.add_argument("--func", help="the task's function reference, e.g. app.tasks:send")
    p.add_argument("--name", help="the task's name")
    p.add_argument("--schedule", help="results of this schedule's tasks")
    p.add_argument("--since", help="only results newer than this, e.g. 1h")
    p.add_argument("--until", help="only results older than this, e.g. 10m")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)

    p = sub.add_parser("result", parents=[common], help="show a task's result")
    p.add_argument("task_id")
    p.add_argument("--wait", action="store_true", help="wait until the task is final")
    p.add_argument("--timeout", help="how long to wait (with --wait)")

    for name, text in (("cancel", "cancel a task"), ("requeue", "requeue a dead task")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("task_id")

    sub.add_parser("schedules", parents=[common], help="list schedules")
    p = sub.add_parser("schedule", parents=[common], help="pause, resume or cancel a schedule")
    p.add_argument("action", choices=["pause", "resume", "cancel"])
    p.add_argument("schedule_id")

    p = sub.add_parser("events", parents=[common], help="query events, newest first")
    p.add_argument("--task")
    p.add_argument("--type", action="append", dest="types")
    p.add_argument("--queue")
    p.add_argument("--since", help="only events newer than this, e.g. 1h")
    p.add_argument("--limit", type=int, default=50)

    sub.add_parser("stats", parents=[common], help="counts per queue, status, event type")

    p = sub.add_parser("db", parents=[common], help="database schema (Alembic)")
    p.add_argument("action", choices=["upgrade", "current", "check", "downgrade"])
    p.add_argument("revision", nargs="?", help="target revision (default head / base)")

    p = sub.add_parser("dashboard", parents=[common], help='serve the web dashboard ("omniq[web]")')
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")

    p = sub.add_parser("demo", parents=[common], help="run the demo on embedded SQLite")
    p.add_argument("--tasks", type=int, default=3000)
    return parser


# --- commands ----------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> OmniQConfig:
    config = OmniQConfig.from_env()
    changes: dict[str, Any] = {}
    if args.url:
        changes["url"] = args.url
    if args.project:
        changes["project_name"] = args.project
    if args.base_dir:
        changes["base_dir"] = args.base_dir
    return attrs.evolve(config, **changes)


def _url(config: OmniQConfig) -> str:
    return config.url or default_sqlite_url(config.project_name, config.base_dir)


async def _cmd_db(args: argparse.Namespace, config: OmniQConfig) -> int:
    engine = create_engine(_url(config), config.settings)
    try:
        if args.action == "upgrade":
            await migrate.upgrade_async(engine, args.revision or "head")
            current = await migrate.current_async(engine)
            emit(args, {"current": current}, lambda: f"database at revision {current}")
        elif args.action == "downgrade":
            await migrate.downgrade_async(engine, args.revision or "base")
            current = await migrate.current_async(engine)
            emit(args, {"current": current}, lambda: f"database at revision {current}")
        elif args.action == "current":
            current = await migrate.current_async(engine)
            head = migrate.head()
            data: dict[str, Any] = {
                "current": current,
                "head": head,
                "up_to_date": current == head,
            }
            emit(args, data, lambda: f"current {current or '<empty>'} (head {head})")
        else:
            diffs = await migrate.diff_async(engine)
            current = await migrate.current_async(engine)
            ok = not diffs and current == migrate.head()
            data = {
                "current": current,
                "head": migrate.head(),
                "differences": [str(d) for d in diffs],
            }
            emit(
                args,
                data,
                lambda: (
                    "schema matches head"
                    if ok
                    else f"schema differs from head ({current=}): {diffs!r}"
                ),
            )
            return 0 if ok else 1
    finally:
        await engine.dispose()
    return 0


async def _cmd_worker(args: argparse.Namespace, config: OmniQConfig) -> int:
    settings = config.settings
    changes: dict[str, Any] = {
        name: duration_arg(value, f"--{name.replace('_', '-')}")
        for name, value in (
            ("lease_duration", args.lease_duration),
            ("heartbeat_interval", args.heartbeat_interval),
        )
        if value
    }
    if changes:
        settings = attrs.evolve(settings, **changes)
    oq = AsyncOmniQ.from_config(attrs.evolve(config, settings=settings))
    try:
        oq.registry.import_modules(args.app)
    except ImportError as exc:
        raise CLIError(f"--app: cannot import {exc.name or exc}: {exc}") from None
    oq.adopt_periodic(args.app)  # @periodic schedules of those modules: upserted on open
    options: dict[str, Any] = {"run_scheduler": not args.no_scheduler}
    if args.poll_interval:
        options["poll_interval"] = duration_arg(args.poll_interval, "--poll-interval")
    if args.grace_period:
        options["grace_period"] = duration_arg(args.grace_period, "--grace-period")
    if args.maintenance_interval:
        options["maintenance_interval"] = duration_arg(
            args.maintenance_interval, "--maintenance-interval"
        )
    if args.prefetch is not None:
        if args.prefetch < 0:
            raise CLIError(f"--prefetch: must be 0 or more, got {args.prefetch}")
        options["prefetch"] = args.prefetch
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    async with oq:
        worker = oq._make_worker(
            queues=queues, concurrency=args.concurrency, executor=args.executor, **options
        )
        logging.getLogger("omniq").info(
            "worker %s serving %s", worker.worker_id, ",".join(worker.queues or ["all queues"])
        )
        if args.burst:
            total = sum(
                n
                for per in (await oq.services.queue.stats_async()).values()
                for s, n in per.items()
                if s in ("pending", "waiting")
            )
            reporter = asyncio.get_running_loop().create_task(_progress(worker, total))
            try:
                stats = await worker.run_until_complete_async()
            finally:
                reporter.cancel()
            sys.stderr.write("\n")
            emit(args, stats, lambda: record(stats))
        else:
            await worker.run_async(install_signal_handlers=True)
            stats = worker.get_stats()
            logging.getLogger("omniq").info("worker stopped: %s", stats)
    return 0


async def _progress(worker: Any, total: int) -> None:
    started = time.perf_counter()
    while True:
        stats = worker.get_stats()
        done = stats.completed + stats.failed
        rate = done / max(time.perf_counter() - started, 1e-9)
        sys.stderr.write(f"\r  {done}/{total} done, {stats.running} running, {rate:,.0f} tasks/s ")
        sys.stderr.flush()
        await asyncio.sleep(0.2)


async def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.command == "db":
        return await _cmd_db(args, config)
    if args.command == "worker":
        return await _cmd_worker(args, config)
    if args.command == "dashboard":
        try:
            from omniq.web.serve import serve_async
        except ImportError as exc:
            raise CLIError(
                f'the dashboard needs the web extra: pip install "omniq[web]" ({exc})', 1
            ) from None
        await serve_async(AsyncOmniQ.from_config(config), host=args.host, port=args.port)
        return 0
    if args.command == "demo":
        from omniq.demo import run_demo

        summary = await run_demo(config.base_dir, tasks=args.tasks)
        if args.json:
            print(json.dumps(plain(summary), indent=2))
        return 0
    async with AsyncOmniQ.from_config(config) as oq:
        return await _dispatch(args, oq)


async def _dispatch(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    command = args.command
    if command == "enqueue":
        options: dict[str, Any] = {"priority": args.priority}
        if args.queue:
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
    elif command == "tasks":
        tasks = await oq.list_tasks_async(args.status, args.queue, limit=args.limit)
        rows: list[tuple[Any, ...]] = [
            (t.id, t.queue_name, t.status, t.priority, t.func, t.created_at, t.attempts)
            for t in tasks
        ]
        emit(
            args,
            tasks,
            lambda: table(
                rows, ["id", "queue", "status", "priority", "func", "created", "attempts"]
            ),
        )
    elif command == "task":
        task = await oq.get_task_async(args.task_id)
        if task is None:
            raise TaskNotFound(f"no task with id {args.task_id!r}")
        attempts = await oq.get_attempts_async(args.task_id)
        shown: Task = task
        emit(
            args,
            {**plain(shown), "failed_attempts": plain(attempts)},
            lambda: _task_text(shown, attempts),
        )
    elif command == "results":
        now = utcnow()
        results = await oq.list_results_async(
            args.statuses,
            func=args.func,
            task_name=args.name,
            schedule_id=args.schedule,
            start_time=now - duration_arg(args.since, "--since") if args.since else None,
            end_time=now - duration_arg(args.until, "--until") if args.until else None,
            limit=args.limit,
            offset=args.offset,
        )
        rows = [
            (r.task_id, r.status, r.created_at, r.execution_time, r.error or r.result)
            for r in results
        ]
        emit(
            args,
            results,
            lambda: table(rows, ["task", "status", "stored", "seconds", "result or error"]),
        )
    elif command == "result":
        timeout = duration_arg(args.timeout, "--timeout") if args.timeout else None
        if await oq.get_task_async(args.task_id) is None:
            raise TaskNotFound(f"no task with id {args.task_id!r}")
        result = await oq.get_result_async(args.task_id, wait=args.wait, timeout=timeout)
        if result is None:
            raise CLIError(f"task {args.task_id} has no result yet", code=1)
        emit(args, result, lambda: record(result))
    elif command == "cancel":
        done = await oq.cancel_async(args.task_id)
        emit(args, {"cancelled": done}, lambda: "cancelled" if done else "already finished")
        return 0 if done else 1
    elif command == "requeue":
        task = await oq.requeue_async(args.task_id)
        emit(args, task, lambda: f"requeued {task.id} ({task.status})")
    elif command == "schedules":
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
    elif command == "schedule":
        action = {
            "pause": oq.pause_schedule_async,
            "resume": oq.resume_schedule_async,
            "cancel": oq.cancel_schedule_async,
        }[args.action]
        schedule = await action(args.schedule_id)
        emit(args, schedule, lambda: f"schedule {schedule.id} is {schedule.status}")
    elif command == "events":
        since = utcnow() - duration_arg(args.since, "--since") if args.since else None
        events = await oq.get_events_async(
            task_id=args.task,
            event_type=args.types,
            queue_name=args.queue,
            start_time=since,
            limit=args.limit,
        )
        rows = [
            (
                e.id,
                e.timestamp,
                e.event_type,
                e.task_id,
                e.queue_name,
                e.level,
                e.error or e.message,
            )
            for e in events
        ]
        emit(
            args,
            events,
            lambda: table(rows, ["id", "time", "type", "task", "queue", "level", "detail"]),
        )
    elif command == "stats":
        stats = await oq.stats_async()
        emit(args, stats, lambda: _stats_text(stats))
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
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``omniq`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    level = os.environ.get("OMNIQ_LOG_LEVEL", "INFO" if args.command == "worker" else "WARNING")
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(_run(args))
    except CLIError as exc:
        print(f"omniq: error: {exc}", file=sys.stderr)
        return exc.code
    except _INPUT_ERRORS as exc:
        print(f"omniq: error: {exc}", file=sys.stderr)
        return 2
    except (TaskNotFound, ScheduleNotFound) as exc:
        print(f"omniq: error: {exc}", file=sys.stderr)
        return 1
    except OmniQError as exc:
        print(f"omniq: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
