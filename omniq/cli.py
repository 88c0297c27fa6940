"""The ``omniq`` command (also ``python -m omniq``): its options and its entry point.

Output is an aligned table for humans, or JSON with ``--json``. Every failure
is one line ``omniq: error: ...`` on stderr (a traceback only with
``--debug``) and an exit code from :mod:`omniq.cli_errors` (see the README's
CLI section). The global options (``--url``, ``--project``, ``--base-dir``,
``--json``, ``--debug``) work before and after the command.

This module imports nothing heavy at import time: ``omniq --help`` and
``omniq --version`` never load SQLAlchemy; each command imports what it uses.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line ``omniq: error: ...`` for usage errors (exit 2)."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see `{self.prog} --help`)"
        self.exit(2, f"omniq: error: {message}{hint}\n")


def _version() -> str:
    from omniq._version import VERSION

    return f"omniq {VERSION}"


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    return parse


_non_negative_int = _int_at_least(0)
_positive_int = _int_at_least(1)


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0-65535 (0: any free one)."""
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value}")
    return value


#: Options that take no value (a negative number after them is not theirs).
_FLAGS = frozenset(
    {
        "--json",
        "--debug",
        "--burst",
        "--wait",
        "--yes",
        "--no-scheduler",
        "--no-gc-freeze",
        "--help",
        "--version",
        "--dry-run",
        "--force",
        "--events",
        "--unflag",
    }
)


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--in -5s`` -> ``--in=-5s``: argparse would take ``-5s`` for an option.

    The value then reaches the option's own check, which names what is wrong
    with it ("cannot be negative") instead of "expected one argument".
    """
    out: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        takes_value = token.startswith("--") and len(token) > 2 and token not in _FLAGS
        if takes_value and "=" not in token and re.match(r"-\.?\d", following):
            out.append(f"{token}={following}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _global_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: an option left out of one position never overwrites the other's value.
    s = argparse.SUPPRESS
    parser.add_argument(
        "--url", default=s, help="database URL (default: OMNIQ_DATABASE_URL or SQLite file)"
    )
    parser.add_argument("--project", default=s, help="project name (default database <project>.db)")
    parser.add_argument("--base-dir", default=s, help="directory of the default SQLite database")
    parser.add_argument("--json", action="store_true", default=s, help="print JSON, not tables")
    parser.add_argument(
        "--debug", action="store_true", default=s, help="show tracebacks and debug logs"
    )


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    _global_options(common)
    parser = _Parser(
        prog="omniq",
        description="OmniQ: a task queue whose whole state lives in SQL.",
        epilog="Exit codes: 0 ok, 1 failed, 2 bad input, 3 timed out, 130 interrupted.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=text)
        return p

    p = command("worker", "run a worker")
    p.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE",
        help="module(s) whose functions this worker may run (repeatable)",
    )
    p.add_argument("--queues", help="comma-separated queues, served in this order")
    p.add_argument("--concurrency", type=_positive_int, help="tasks run at once")
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
        type=_non_negative_int,
        help="tasks claimed beyond the free slots (default: adapts to task run time)",
    )
    p.add_argument("--no-scheduler", action="store_true", help="do not fire schedules")
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the garbage collector as it is (by default the start-up heap is "
        "frozen out of its walk and its youngest generation's threshold raised)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        help='serve Prometheus metrics on this port ("omniq[metrics]")',
    )
    p.add_argument("--metrics-addr", default="127.0.0.1", help="metrics address (127.0.0.1)")
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="level of OmniQ's log lines (default: OMNIQ_LOG_LEVEL or INFO)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text lines, or one JSON object per line (default: OMNIQ_LOG_FORMAT or text)",
    )

    p = command("workers", "list registered workers (alive or lost)")

    p = command("enqueue", "enqueue a task")
    p.add_argument("func", help="function reference, package.module:function")
    p.add_argument("--args", default="[]", help="positional arguments as a JSON list")
    p.add_argument("--kwargs", default="{}", help="keyword arguments as a JSON object")
    p.add_argument("--queue", help="queue name")
    p.add_argument("--in", dest="run_in", help="delay, e.g. 10s, 5m")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--max-retries", type=_non_negative_int)
    p.add_argument("--timeout", help="task timeout, e.g. 30s")
    p.add_argument("--unique-key")

    p = command("tasks", "list tasks, oldest first")
    p.add_argument("--status")
    p.add_argument("--queue")
    p.add_argument("--limit", type=_positive_int, default=50, help="rows shown (default 50)")
    p.add_argument("--offset", type=_non_negative_int, default=0, help="rows skipped first")

    p = command("task", "show one task")
    p.add_argument("task_id")

    p = command("workflow", "show a workflow (chain, group, chord) and its members")
    p.add_argument("workflow_id")

    p = command("results", "list results, newest first")
    p.add_argument("--status", action="append", dest="statuses")
    p.add_argument("--func", help="the task's function reference, e.g. app.tasks:send")
    p.add_argument("--name", help="the task's name")
    p.add_argument("--schedule", help="results of this schedule's tasks")
    p.add_argument("--since", help="only results newer than this, e.g. 1h")
    p.add_argument("--until", help="only results older than this, e.g. 10m")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--offset", type=_non_negative_int, default=0)

    p = command("result", "show a task's result")
    p.add_argument("task_id")
    p.add_argument("--wait", action="store_true", help="wait until the task is final")
    p.add_argument("--timeout", help="how long to wait (with --wait); exit 3 when it runs out")

    for name, text in (("cancel", "cancel a task"), ("requeue", "requeue a dead task")):
        p = command(name, text)
        p.add_argument("task_id")

    command("schedules", "list schedules")
    p = command("schedule", "pause, resume or cancel a schedule")
    p.add_argument("action", choices=["pause", "resume", "cancel"])
    p.add_argument("schedule_id")

    p = command("events", "query events, newest first (by time)")
    p.add_argument("--task")
    p.add_argument("--type", action="append", dest="types")
    p.add_argument("--queue")
    p.add_argument("--since", help="only events newer than this, e.g. 1h")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--offset", type=_non_negative_int, default=0)

    command("stats", "counts per queue, status, event type")
    p = command("queue", "pause or resume a queue (workers stop or resume claiming it)")
    p.add_argument("action", choices=["pause", "resume"])
    p.add_argument("queue_name")

    p = command("db", "database schema (Alembic)")
    p.add_argument("action", choices=["upgrade", "current", "check", "downgrade"])
    p.add_argument(
        "revision", nargs="?", help="target revision (upgrade: default head; downgrade: required)"
    )
    p.add_argument("--yes", action="store_true", help="downgrade without asking")

    from omniq.cli_migrate import add_arguments as migrate_arguments

    migrate_arguments(command("migrate-db", "copy the queue into another database (PostgreSQL)"))

    p = command("dashboard", 'serve the web dashboard ("omniq[web]")')
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080)")

    p = command("metrics", 'serve the database gauges ("omniq[metrics]")')
    p.add_argument("--port", type=_port, default=9100, help="port (default 9100; 0: any free one)")
    p.add_argument("--addr", default="127.0.0.1", help="address to bind (default 127.0.0.1)")

    p = command("demo", "run the demo on embedded SQLite")
    p.add_argument("--tasks", type=_positive_int, default=3000)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; the global options get their defaults here."""
    tokens = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(_join_negative_values(tokens))
    for name in ("url", "project", "base_dir"):
        if not hasattr(args, name):
            setattr(args, name, None)
    for name in ("json", "debug"):
        if not hasattr(args, name):
            setattr(args, name, False)
    return args


# --- running -------------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    from omniq.cli_context import config_of

    config = config_of(args)
    command = args.command
    if command == "db":
        from omniq.cli_db import cmd_db

        return await cmd_db(args, config)
    if command == "migrate-db":
        from omniq.cli_migrate import cmd_migrate_db

        return await cmd_migrate_db(args)
    if command == "worker":
        from omniq.cli_worker import cmd_worker

        return await cmd_worker(args, config)
    if command == "dashboard":
        try:
            from omniq.web.serve import serve_async
        except ImportError as exc:
            from omniq.cli_output import CLIError

            raise CLIError(
                f'the dashboard needs the web extra: pip install "omniq[web]" ({exc})', 1
            ) from None
        from omniq.cli_context import open_app

        app = open_app(config, read_only=False, must_exist=True)  # a mistyped path: refused
        await serve_async(app, host=args.host, port=args.port)
        return 0
    if command == "metrics":
        from omniq.cli_context import open_app
        from omniq.cli_worker import metrics_extra

        await metrics_extra("omniq metrics").serve_async(
            open_app(config, read_only=True),  # it only reads: creates and migrates nothing
            port=args.port,
            addr=args.addr,
            ready=lambda url: print(f"serving metrics on {url}", flush=True),
        )
        return 0
    if command == "demo":
        import json

        from omniq.cli_output import plain
        from omniq.demo import run_demo

        summary = await run_demo(config.base_dir, tasks=args.tasks)
        if args.json:
            print(json.dumps(plain(summary), indent=2))
        return 0
    from omniq.cli_commands import dispatch

    return await dispatch(args, config)


def _configure_logging(args: argparse.Namespace) -> None:
    """OmniQ's log lines at the chosen level and format (libraries only warn); ValueError if bad."""
    from omniq.logs import configure_logging

    default = "INFO" if args.command == "worker" else "WARNING"
    level = (
        "DEBUG"
        if args.debug
        else getattr(args, "log_level", None) or os.environ.get("OMNIQ_LOG_LEVEL") or default
    )
    configure_logging(level, getattr(args, "log_format", None))


def _quiet_closed_pipe() -> int:
    # The reader went away (``omniq tasks | head -1``): stop quietly, like other
    # Unix tools, and keep the interpreter from complaining when it flushes stdout.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE: what a shell reports for a tool stopped by a closed pipe


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``omniq`` command; returns the exit code."""
    args = parse_args(argv)
    if args.command == "worker":
        from omniq.cli_worker import early_signals_caught

        with early_signals_caught():  # a SIGTERM while it starts stops it, not kills it
            return _main(args)
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        _configure_logging(args)
    except ValueError as exc:
        print(f"omniq: error: {exc}", file=sys.stderr)
        return 2
    import asyncio

    try:
        code = asyncio.run(_run(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_closed_pipe()
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from omniq.cli_errors import explain

        message, code = explain(exc, args)
        if args.debug:
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        with contextlib.suppress(BrokenPipeError):
            print(f"omniq: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
